"""Which checkpoints a run keeps on its outputs, and roughly how much space they hold.

Checkpoints on the outputs volume are paid storage, and without a retention prime-rl keeps
every one: a DCP checkpoint with its optimizer state is roughly 12-16 bytes a parameter
(bf16 or fp32 weights, fp32 AdamW moments, fp32 master weights), ~100 GB for an 8B model,
every `ckpt_interval` steps. prime-rl deletes old ones itself when told to keep the newest
N, and (current dialect) keeps every checkpoint at a multiple of M steps for good.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from primerl_modal.errors import PlanError

# At least two: the newest checkpoint may be incomplete when a run is cut mid-save, and a
# resume then needs a complete one before it.
MIN_KEEP_LAST = 2
BYTES_PER_PARAM = (12, 16)


@dataclass(frozen=True)
class Retention:
    keep_last: int
    keep_every: int | None = None  # also keep steps at multiples of this, for good
    checkpoints: int | None = None  # most held at once; None: the permanent ones keep growing

    def to_json(self, params_b: float | None) -> dict[str, Any]:
        """With the space estimate for a model of ``params_b`` billion parameters."""
        each, total = gb_each(params_b), self.gb(params_b)
        return {"keep_last": self.keep_last, "keep_every": self.keep_every,
                "checkpoints": self.checkpoints, "params_b": params_b,
                "gb_each": list(each) if each else None, "gb": list(total) if total else None}

    def gb(self, params_b: float | None) -> tuple[float, float] | None:
        """The space all of them hold at most (low, high), when it is known."""
        each = gb_each(params_b)
        if self.checkpoints is None or each is None:
            return None
        return round(self.checkpoints * each[0], 1), round(self.checkpoints * each[1], 1)


def gb_each(params_b: float | None) -> tuple[float, float] | None:
    """One checkpoint of a model of ``params_b`` billion parameters (low, high)."""
    if params_b is None:
        return None
    return round(params_b * BYTES_PER_PARAM[0], 1), round(params_b * BYTES_PER_PARAM[1], 1)


def retention_from(get: Callable[[str], Any], dialect: str,
                   max_steps: int | None) -> tuple[Retention | None, list[str]]:
    """The retention of a resolved profile (``get("prime_rl.KEY")``), None without
    checkpoints (no ``ckpt_interval``), and warnings about it; a bound on the permanent
    checkpoints needs ``max_steps``.

    Raises PlanError for a retention that could leave no complete checkpoint to resume.
    """
    interval, keep_last = get("prime_rl.ckpt_interval"), get("prime_rl.ckpt_keep_last")
    keep_every = get("prime_rl.ckpt_keep_every")
    if keep_last < MIN_KEEP_LAST:
        raise PlanError(
            f"prime_rl.ckpt_keep_last must be at least {MIN_KEEP_LAST}, got {keep_last}: the "
            "newest checkpoint may be incomplete when a run is cut, and a resume needs a "
            "complete one before it", f"e.g. --set prime_rl.ckpt_keep_last={MIN_KEEP_LAST}")
    if keep_every is not None and keep_every < 1:
        raise PlanError(f"prime_rl.ckpt_keep_every must be at least 1, got {keep_every}",
                        "or leave it out to keep only the newest checkpoints")
    if not interval:
        return None, []
    warnings = []
    if keep_every is not None and dialect == "2025-10":
        warnings.append("prime_rl.ckpt_keep_every is ignored: the 2025-10 launcher keeps only "
                        "the newest checkpoints ([ckpt] keep)")
        keep_every = None
    elif keep_every is not None and keep_every % interval:
        warnings.append(f"prime_rl.ckpt_keep_every {keep_every} is not a multiple of "
                        f"ckpt_interval {interval}: only checkpoints at multiples of "
                        f"{math.lcm(interval, keep_every)} steps are kept for good")
    return Retention(keep_last, keep_every, _held(interval, keep_last, keep_every, max_steps)
                     ), warnings


def _held(interval: int, keep_last: int, keep_every: int | None,
          max_steps: int | None) -> int | None:
    """The newest ``keep_last`` checkpoints plus the permanent ones before them (prime-rl
    keeps a step when it is a multiple of ``keep_every``)."""
    written = None if max_steps is None else max_steps // interval
    newest = keep_last if written is None else min(written, keep_last)
    if keep_every is None:
        return newest
    if written is None:
        return None
    older = max(0, written - keep_last) * interval
    return newest + older // math.lcm(interval, keep_every)


def retention_from_json(data: Mapping[str, Any] | None) -> Retention | None:
    """A plan's retention; plans written before retention, or without checkpoints, have
    none."""
    if not isinstance(data, Mapping):
        return None
    return Retention(data["keep_last"], data.get("keep_every"), data.get("checkpoints"))


def max_steps_in(overrides: Mapping[str, Any]) -> int | None:
    """The run's max steps when ``[overrides]`` set them (shared, or on the orchestrator);
    a value only the prime-rl config file holds is not known here."""
    for dotted in ("max_steps", "orchestrator.max_steps", "trainer.max_steps"):
        value: Any = overrides
        for part in dotted.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None
