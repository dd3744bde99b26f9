"""Will the model fit the GPUs? An estimate made before anything is paid for.

Per trainer GPU (FSDP shards the weights, their gradients and the optimizer states over the
trainer GPUs): states x P / T, plus two layers' weights gathered in bf16 at a time, plus a
flat allowance for the CUDA context, NCCL buffers and activations. prime-rl's defaults at
the pinned ref: the trainer loads the model in ``optimization_dtype`` float32 (master weights
and gradients 4 bytes each) with AdamW (two states of 4 bytes), so 16 bytes a parameter;
FSDP computes in bf16. Per inference GPU: the weights / TP, one sequence of the context
length in the KV cache, and vLLM's own peak; vLLM may use ``gpu_memory_utilization`` (0.9)
of the GPU and gives what is left to the KV cache. docs/fit.md states it with its limits.

It warns and suggests a GPU type or split that would fit; only weights that cannot fit at
all (a certain out-of-memory at load) refuse a launch, and ``--force`` overrides that.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any

from primerl_modal.core import models
from primerl_modal.core.gpu_plan import GpuPlan
from primerl_modal.core.gpus import Catalogue, GpuType
from primerl_modal.core.models import ModelSpec
from primerl_modal.errors import PlanError

TRAINER_OVERHEAD_GB = 4.0  # CUDA context, NCCL buffers and an allowance for activations
INFERENCE_OVERHEAD_GB = 2.0  # vLLM's activation peak and CUDA graphs, outside its KV cache
GPU_MEMORY_UTILIZATION = 0.9  # prime-rl's default for vLLM's --gpu-memory-utilization
KV_BYTES = 2  # a bf16 KV cache (vLLM's kv_cache_dtype "auto" on a bf16 model)
DTYPE_BYTES = {"float32": 4, "bfloat16": 2}
OPTIMIZER_STATES = {"adamw": 2, "sgd": 1, "muon": 1}  # per parameter, in the weights' dtype
VERDICT_WORDS = {"fits": "fits", "may_not_fit": "may not fit", "cannot_fit": "cannot fit",
                 "unknown": "unknown"}

# Where a run's prime-rl config may name its model and what bounds the memory, as dotted
# keys (the current dialect's shared `[model] name` first, then each component's own).
_NAME_KEYS = (("model", "name"), ("trainer", "model", "name"), ("inference", "model", "name"))
_MAX_LEN_KEYS = (("inference", "model", "max_model_len"), ("inference", "vllm", "max_model_len"),
                 ("max_model_len",))
_UTILIZATION_KEYS = (("inference", "gpu_memory_utilization"),
                     ("inference", "vllm", "gpu_memory_utilization"))
_DTYPE_KEYS = (("trainer", "model", "optimization_dtype"),)
_OPTIMIZER_KEYS = (("trainer", "optim", "type"),)


@dataclass(frozen=True)
class Model:
    """Which model a run trains and how prm knows its size."""

    name: str | None = None
    named_by: str | None = None  # e.g. "model.name from --set"
    spec: ModelSpec | None = None
    source: str = "unknown"  # built-in table, hub, name or unknown: where the size came from


@dataclass(frozen=True)
class Assumptions:
    """The trainer's precision and optimizer and vLLM's share: prime-rl's defaults unless
    the run's overrides or uploaded config say otherwise."""

    optimization_dtype: str = "float32"
    optimizer: str = "adamw"
    gpu_memory_utilization: float = GPU_MEMORY_UTILIZATION
    max_model_len: int | None = None

    @property
    def weight_bytes(self) -> int:
        return DTYPE_BYTES.get(self.optimization_dtype, 4)

    @property
    def bytes_per_param(self) -> int:
        """Weights, gradients and optimizer states, per parameter, on the trainer."""
        return self.weight_bytes * (2 + OPTIMIZER_STATES.get(self.optimizer, 2))


@dataclass(frozen=True)
class Need:
    """One role's memory per GPU, in GB (10^9 bytes)."""

    need_gb: float
    have_gb: float
    weights_gb: float
    budget: float = 1.0  # the share of the GPU the role may use

    @property
    def share(self) -> float:
        return self.need_gb / self.have_gb

    @property
    def fits(self) -> bool:
        return self.need_gb <= self.budget * self.have_gb

    def to_json(self) -> dict[str, Any]:
        return {"need_gb": self.need_gb, "have_gb": self.have_gb,
                "share": round(self.share, 3), "weights_gb": self.weights_gb,
                "budget": self.budget}


@dataclass(frozen=True)
class Suggestion:
    """A node that would fit: a GPU type, a count and its split."""

    gpu_type: str
    count: int
    trainer: int
    inference: int
    tp: int
    usd_per_hour: float

    @property
    def flags(self) -> str:
        # T/N to four digits rounds back to exactly T trainer GPUs for any N <= 8
        return (f"--gpu {self.gpu_type}:{self.count} --trainer-ratio "
                f"{self.trainer / self.count:.4g} --tp {self.tp}")

    @property
    def label(self) -> str:
        return (f"{self.trainer} trainer + {self.inference} inference GPUs, "
                f"${self.usd_per_hour:,.2f}/h")

    def to_json(self) -> dict[str, Any]:
        return {"gpu": f"{self.gpu_type}:{self.count}", "trainer": self.trainer,
                "inference": self.inference, "tp": self.tp,
                "usd_per_hour": self.usd_per_hour, "flags": self.flags}


@dataclass(frozen=True)
class Fit:
    model: Model = field(default_factory=Model)
    assumptions: Assumptions = field(default_factory=Assumptions)
    gpu_type: str = ""
    memory_gb: int = 0
    trainer: Need | None = None
    inference: Need | None = None
    kv_cache_gb: float | None = None  # per inference GPU, what vLLM has left for its KV cache
    suggestions: tuple[Suggestion, ...] = ()

    @property
    def verdict(self) -> str:
        """fits, may_not_fit (the estimate is over), cannot_fit (the weights alone are
        over: a launch is refused without --force) or unknown (no size)."""
        t, i = self.trainer, self.inference
        if t is None or i is None:
            return "unknown"
        if t.weights_gb > t.have_gb or i.weights_gb > i.have_gb:
            return "cannot_fit"
        return "fits" if t.fits and i.fits else "may_not_fit"

    def summary(self) -> str:
        """The plan's memory line: the verdict with each role's share, then the model."""
        t, i, m = self.trainer, self.inference, self.model
        if not self.gpu_type:
            return "not estimated: planned before prm estimated memory"
        if t is None or i is None:
            return (f"unknown: {m.name} states no size and prm's table does not know it "
                    "(the Hugging Face Hub tells, when reachable)" if m.name else
                    "unknown: no model name found; --set model.name=ORG/NAME estimates it")
        head = (f"{VERDICT_WORDS[self.verdict]}: trainer {t.share:.0%} / inference "
                f"{i.share:.0%} of {self.memory_gb} GB")
        assert m.spec is not None  # a Need exists only for a model of known size
        active = f" ({m.spec.active_b:g}B active)" if m.spec.active_b else ""
        kv = (f"; {self.kv_cache_gb:.0f} GB per inference GPU left for the KV cache"
              if self.kv_cache_gb is not None and self.kv_cache_gb > 0 else "")
        return (f"{head}\n{m.name}: {m.spec.params_b:g}B params{active} ({m.source}; "
                f"{m.named_by}){kv}")

    def warning(self) -> str | None:
        """What to say when it may not fit, with the nodes that would."""
        verdict = self.verdict
        if verdict in ("fits", "unknown"):
            return None
        return f"{self._problem()}; {self._remedy(verdict == 'cannot_fit')}"

    def refusal(self) -> PlanError | None:
        """The error a launch raises without --force: only weights that cannot fit."""
        if self.verdict != "cannot_fit":
            return None
        return PlanError(self._problem(), f"{self._remedy(False)}; or add --force to launch "
                                          "anyway")

    def _problem(self) -> str:
        t, i = self.trainer, self.inference
        assert t is not None and i is not None
        if self.verdict == "cannot_fit":
            role, weights = (("trainer", t.weights_gb) if t.weights_gb > t.have_gb
                             else ("inference", i.weights_gb))
            return (f"{self.model.name}: its weights alone need {weights:.0f} GB per {role} "
                    f"GPU, more than the {self.memory_gb} GB of one {self.gpu_type}")
        return (f"{self.model.name} may not fit {self.gpu_type} ({self.memory_gb} GB): "
                f"trainer ~{t.need_gb:.0f} GB per GPU, inference ~{i.need_gb:.0f} GB of the "
                f"{i.budget:.0%} vLLM may use")

    def _remedy(self, refused: bool) -> str:
        shown = "; or ".join(f"{s.flags} ({s.label})" for s in self.suggestions)
        remedy = (f"would fit: {shown}" if shown else
                  "no single node of the GPU catalogue fits it by this estimate")
        return remedy + ("; a launch is refused unless --force" if refused else "")

    def to_json(self) -> dict[str, Any]:
        m, a, spec = self.model, self.assumptions, self.model.spec
        return {
            "model": m.name, "model_from": m.named_by, "source": m.source,
            "params_b": spec.params_b if spec else None,
            "active_b": spec.active_b if spec else None,
            "spec": None if spec is None else {
                "layers": spec.layers, "kv_heads": spec.kv_heads, "head_dim": spec.head_dim,
                "context": spec.context, "weight_bytes": spec.weight_bytes},
            "assumptions": {"optimization_dtype": a.optimization_dtype,
                            "optimizer": a.optimizer, "bytes_per_param": a.bytes_per_param,
                            "gpu_memory_utilization": a.gpu_memory_utilization,
                            "max_model_len": a.max_model_len},
            "gpu": {"type": self.gpu_type, "memory_gb": self.memory_gb},
            "trainer": self.trainer.to_json() if self.trainer else None,
            "inference": ((self.inference.to_json()
                           | {"kv_cache_gb": self.kv_cache_gb})
                          if self.inference else None),
            "verdict": self.verdict,
            "suggestions": [s.to_json() for s in self.suggestions],
            "warning": self.warning(),
        }


def fit_from_json(data: Mapping[str, Any] | None) -> Fit:
    """A plan's fit back from ``Fit.to_json``; plans written before fits have none."""
    if not isinstance(data, Mapping):
        return Fit()
    shape = data.get("spec")
    spec = None if data.get("params_b") is None else ModelSpec(
        data["params_b"], data.get("active_b"), **(shape or {}))
    a = data["assumptions"]
    inference = data.get("inference")
    return Fit(
        model=Model(data.get("model"), data.get("model_from"), spec, data["source"]),
        assumptions=Assumptions(a["optimization_dtype"], a["optimizer"],
                                a["gpu_memory_utilization"], a["max_model_len"]),
        gpu_type=data["gpu"]["type"], memory_gb=data["gpu"]["memory_gb"],
        trainer=_need(data.get("trainer")), inference=_need(inference),
        kv_cache_gb=inference["kv_cache_gb"] if inference else None,
        suggestions=tuple(
            Suggestion(s["gpu"].rpartition(":")[0], int(s["gpu"].rpartition(":")[2]),
                       s["trainer"], s["inference"], s["tp"], s["usd_per_hour"])
            for s in data.get("suggestions", ())),
    )


def _need(data: Mapping[str, Any] | None) -> Need | None:
    return None if data is None else Need(data["need_gb"], data["have_gb"],
                                          data["weights_gb"], data["budget"])


def plan_fit(overrides: Mapping[str, Any], sources: Mapping[str, str],
             inputs: Sequence[tuple[str, str, str]], configs: Mapping[str, str],
             gpus: GpuPlan, catalogue: Catalogue) -> Fit:
    """The fit of a run: its model from the overrides, then an uploaded config
    (``inputs``: role, local source, TOML text), then prime-rl's own config named in
    ``configs`` (the built-in table); its size from the table, else from the name."""
    trees = _trees(overrides, inputs)
    model = _model(trees, sources, configs)
    return estimate(model, _assumptions(trees), gpus, catalogue.types)


def with_spec(fit: Fit, spec: ModelSpec, source: str, gpus: GpuPlan,
              catalogue: Catalogue) -> Fit:
    """``fit`` estimated again with a size learnt elsewhere (the Hub)."""
    return estimate(replace(fit.model, spec=spec, source=source), fit.assumptions, gpus,
                    catalogue.types)


def estimate(model: Model, assumptions: Assumptions, gpus: GpuPlan,
             types: tuple[GpuType, ...]) -> Fit:
    """Each role's memory per GPU on ``gpus``, and the nodes of the catalogue's ``types``
    that would fit when it does not."""
    fit = _estimate(model, assumptions, gpus)
    if model.spec is None or fit.verdict == "fits":
        return fit
    return replace(fit, suggestions=_suggest(model.spec, assumptions, gpus, types))


@lru_cache(maxsize=256)  # a sweep plans thousands of trials of one model on the same GPUs
def _estimate(model: Model, assumptions: Assumptions, gpus: GpuPlan) -> Fit:
    spec = model.spec
    if spec is None:
        return Fit(model, assumptions, gpus.type, gpus.memory_gb)
    inference, kv_cache = _inference(spec, assumptions, gpus.tp, gpus.memory_gb)
    return Fit(model, assumptions, gpus.type, gpus.memory_gb,
               _trainer(spec, assumptions, gpus.trainer, gpus.memory_gb), inference, kv_cache)


def _trainer(spec: ModelSpec, a: Assumptions, gpus: int, memory_gb: int) -> Need:
    p = spec.params_b  # billions of parameters x bytes each = GB
    # FSDP gathers a layer's full bf16 weights to run it and prefetches the next
    gathered = 2 * 2 * p / spec.layers if spec.layers else 0.0
    need = a.bytes_per_param * p / gpus + gathered + TRAINER_OVERHEAD_GB
    return Need(round(need, 2), memory_gb, round(a.weight_bytes * p / gpus, 2))


def _inference(spec: ModelSpec, a: Assumptions, tp: int, memory_gb: int) -> tuple[Need, float]:
    weights = spec.weight_bytes * spec.params_b / tp
    need = weights + _kv_one_sequence_gb(spec, a, tp) + INFERENCE_OVERHEAD_GB
    budget = a.gpu_memory_utilization
    kv_cache = budget * memory_gb - weights - INFERENCE_OVERHEAD_GB
    # rounded once, here: a plan read back from JSON then holds the very same figures
    return Need(round(need, 2), memory_gb, round(weights, 2), budget), round(kv_cache, 2)


def _kv_one_sequence_gb(spec: ModelSpec, a: Assumptions, tp: int) -> float:
    """vLLM refuses to start unless its KV cache holds one sequence of max_model_len; TP
    splits the KV heads (a head is replicated when there are fewer heads than ranks)."""
    tokens = a.max_model_len or spec.context
    if not (tokens and spec.layers and spec.kv_heads and spec.head_dim):
        return 0.0
    per_token = 2 * spec.layers * math.ceil(spec.kv_heads / tp) * spec.head_dim * KV_BYTES
    return per_token * tokens / 1e9


def _fits(spec: ModelSpec, a: Assumptions, trainer: int, tp: int, memory_gb: int) -> bool:
    return (_trainer(spec, a, trainer, memory_gb).fits
            and _inference(spec, a, tp, memory_gb)[0].fits)


@lru_cache(maxsize=64)
def _suggest(spec: ModelSpec, a: Assumptions, current: GpuPlan,
             types: tuple[GpuType, ...]) -> tuple[Suggestion, ...]:
    """The cheapest node that fits on the current GPU type (another split or more GPUs),
    and the cheapest on another type; ties go to fewer GPUs, then the split nearest the
    current one."""
    options = []
    for kind in types:
        for count in range(2, kind.max_per_container + 1):
            for trainer in range(1, count):
                inference = count - trainer
                options += [Suggestion(kind.name, count, trainer, inference, tp,
                                       round(count * kind.usd_per_hour, 4))
                            for tp in range(1, inference + 1)
                            if inference % tp == 0
                            and _fits(spec, a, trainer, tp, kind.memory_gb)]
    ratio = current.trainer / current.count

    def rank(s: Suggestion) -> tuple[float, int, float, int]:
        return (s.usd_per_hour, s.count, abs(s.trainer / s.count - ratio), s.tp)

    same = min((s for s in options if s.gpu_type == current.type), key=rank, default=None)
    other = min((s for s in options if s.gpu_type != current.type), key=rank, default=None)
    return tuple(s for s in (same, other) if s is not None)


_Tree = tuple[Mapping[str, Any], str]  # a config tree and who set it
_DEFAULTS = Assumptions()


def _trees(overrides: Mapping[str, Any],
           inputs: Sequence[tuple[str, str, str]]) -> list[_Tree]:
    """Where settings are looked up, first wins: the overrides (prime-rl reads them after
    its config files; labelled later, from the profile's sources), then each uploaded
    config, under its component in the 2025-10 dialect (a trainer file's `[model]` is the
    trainer's)."""
    trees: list[_Tree] = [(overrides, "")]
    for role, source, text in inputs:
        data = _parsed(text)
        trees.append((data if role == "config" else {role: data}, f"config {source}"))
    return trees


@lru_cache(maxsize=32)
def _parsed(text: str) -> Mapping[str, Any]:
    # a config prime-rl cannot read is its preflight's to report, not the estimate's
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return {}


def _lookup(trees: list[_Tree], keys: Sequence[tuple[str, ...]],
            kind: type | tuple[type, ...]) -> tuple[Any, str, str] | None:
    """The first value of ``kind`` under one of ``keys``: the value, its dotted key and
    the label of the tree it is in."""
    for tree, label in trees:
        for parts in keys:
            node: Any = tree
            for part in parts:
                node = node.get(part) if isinstance(node, dict) else None
                if node is None:
                    break
            if isinstance(node, kind) and not isinstance(node, bool):
                return node, ".".join(parts), label
    return None


def _model(trees: list[_Tree], sources: Mapping[str, str], configs: Mapping[str, str]) -> Model:
    found = _lookup(trees, _NAME_KEYS, str)
    if found:
        name, key, label = found
        return _sized(name, f"{key} from {label or sources.get(f'overrides.{key}', 'overrides')}")
    path = next((p for p in configs.values() if models.config_model(p)), None)
    if path is None:
        return Model()
    return _sized(models.config_model(path) or "", f"named by prime-rl's {path}")


@lru_cache(maxsize=64)
def _sized(name: str, named_by: str) -> Model:
    entry = models.known(name)
    if entry:
        return Model(name, named_by, entry[1], "built-in table")
    spec = models.from_name(name)
    return Model(name, named_by, spec, "name" if spec else "unknown")


def _assumptions(trees: list[_Tree]) -> Assumptions:
    dtype = _lookup(trees, _DTYPE_KEYS, str)
    optimizer = _lookup(trees, _OPTIMIZER_KEYS, str)
    utilization = _lookup(trees, _UTILIZATION_KEYS, (int, float))
    max_len = _lookup(trees, _MAX_LEN_KEYS, int)
    if not (dtype or optimizer or utilization or max_len):
        return _DEFAULTS
    return Assumptions(
        dtype[0] if dtype and dtype[0] in DTYPE_BYTES else "float32",
        optimizer[0] if optimizer and optimizer[0] in OPTIMIZER_STATES else "adamw",
        float(utilization[0]) if utilization and 0 < utilization[0] <= 1
        else GPU_MEMORY_UTILIZATION,
        max_len[0] if max_len and max_len[0] > 0 else None,
    )
