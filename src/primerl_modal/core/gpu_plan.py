"""Split one node's GPUs between the prime-rl trainer and vLLM inference."""

from __future__ import annotations

import math
from dataclasses import dataclass

from primerl_modal.core.gpus import Catalogue
from primerl_modal.errors import PlanError


@dataclass(frozen=True)
class GpuPlan:
    type: str
    count: int
    trainer: int
    inference: int
    tp: int
    dp: int
    trainer_gpu_ids: tuple[int, ...]
    inference_gpu_ids: tuple[int, ...]
    memory_gb: int
    usd_per_gpu_hour: float

    @property
    def modal_gpu(self) -> str:
        return f"{self.type}:{self.count}"

    @property
    def short(self) -> str:
        return f"{self.type}x{self.count} {self.trainer}T/{self.inference}I"


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def split(count: int, ratio: float) -> tuple[int, int]:
    """Trainer and inference GPU counts: round(count*ratio), half up, kept in [1, count-1].

    (The original script truncated with int() and could overcommit; this never does.)
    """
    trainer = min(max(math.floor(count * ratio + 0.5), 1), count - 1)
    return trainer, count - trainer


def plan_gpus(
    catalogue: Catalogue,
    gpu_type: str,
    count: int | None,
    trainer_ratio: float,
    tp: int,
    trainer: int | None = None,
    inference: int | None = None,
    trainer_first: bool = False,
) -> GpuPlan:
    """The GPU plan of one node. ``trainer_first`` gives the trainer the low GPU ids
    (dialect 2025-10); otherwise inference takes the low ids (dialect current).

    Raises PlanError for an unknown type, a count out of range, a ratio outside (0, 1),
    explicit counts that disagree, or a TP that does not divide the inference GPUs.
    """
    kind = catalogue.get(gpu_type)
    if trainer is not None or inference is not None:
        if trainer is None or inference is None:
            raise PlanError(
                "set both [gpu] trainer and inference, or neither",
                "or use trainer_ratio with count",
            )
        if trainer < 1 or inference < 1:
            raise PlanError(
                f"trainer and inference need at least 1 GPU each, got {trainer} and {inference}"
            )
        if count is not None and count != trainer + inference:
            raise PlanError(
                f"gpu count {count} does not equal trainer {trainer} + inference {inference}",
                "drop one of them or make them agree",
            )
        count = trainer + inference
    if count is None:
        raise PlanError("no GPU count", "set [gpu] count or pass --gpus N")
    if count < 2:
        raise PlanError(
            f"a run needs at least 2 GPUs (1 trainer + 1 inference), got {count}",
            "use --gpus 2 or more",
        )
    if count > kind.max_per_container:
        raise PlanError(
            f"{count} x {kind.name} do not fit on one node: at most {kind.max_per_container}",
            f"use --gpus {kind.max_per_container} or fewer",
        )
    if trainer is None or inference is None:
        if not 0 < trainer_ratio < 1:
            raise PlanError(
                f"trainer ratio must be between 0 and 1 (exclusive), got {trainer_ratio}",
                "e.g. --trainer-ratio 0.25 gives a quarter of the GPUs to the trainer",
            )
        trainer, inference = split(count, trainer_ratio)
    if tp < 1 or inference % tp:
        valid = ", ".join(str(d) for d in _divisors(inference))
        raise PlanError(
            f"inference tensor parallel {tp} does not divide the {inference} inference GPUs",
            f"valid --tp values: {valid}",
        )
    ids = list(range(count))
    if trainer_first:
        trainer_ids, inference_ids = ids[:trainer], ids[trainer:]
    else:
        inference_ids, trainer_ids = ids[:inference], ids[inference:]
    return GpuPlan(
        type=kind.name,
        count=count,
        trainer=trainer,
        inference=inference,
        tp=tp,
        dp=inference // tp,
        trainer_gpu_ids=tuple(trainer_ids),
        inference_gpu_ids=tuple(inference_ids),
        memory_gb=kind.memory_gb,
        usd_per_gpu_hour=kind.usd_per_hour,
    )
