"""The GPU catalogue: what Modal offers, how many fit in one container, what they cost, and
the CPU and memory a node reserves beside its GPUs."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from primerl_modal.errors import PrmError


@dataclass(frozen=True)
class GpuType:
    name: str  # Modal's spelling, e.g. "A100-40GB"
    memory_gb: int
    max_per_container: int
    usd_per_hour: float  # on-demand list price per GPU-hour
    aliases: tuple[str, ...] = ()


# On-demand list prices per GPU-hour, mid-2026 (MODAL.md). Override in $PRM_HOME/prices.toml.
_BUILTIN = (
    GpuType("T4", 16, 8, 0.59),
    GpuType("L4", 24, 8, 0.80),
    GpuType("A10", 24, 4, 1.10, ("A10G",)),
    GpuType("L40S", 48, 8, 1.95),
    GpuType("A100-40GB", 40, 8, 2.10, ("A100",)),
    GpuType("A100-80GB", 80, 8, 2.50),
    GpuType("H100", 80, 8, 3.95),
    GpuType("H200", 141, 8, 4.54),
    GpuType("B200", 180, 8, 6.25),
)


# Modal's per-second rates for CPU (per physical core) and memory (per GiB), as per hour
# (modal.com/pricing: $0.0000131/core/s, $0.00000222/GiB/s). Override as CPU = ... and
# memory = ... in $PRM_HOME/prices.toml.
USD_PER_CORE_HOUR = 0.04716
USD_PER_GIB_HOUR = 0.007992

# What a Modal run reserves per GPU unless [modal] cpu / memory say otherwise. Modal's own
# default (0.125 core, 128 MiB per container) starves a node running vLLM engines, torchrun
# ranks, the orchestrator and env servers. Modal publishes no per-GPU maximum (requests over
# it fail at function creation), so these stay well inside the smallest hosts a 2..8 GPU
# container lands on (e.g. 8 x A100 hosts with 48 physical cores): usage above the
# reservation is still allowed and billed, the reservation only guarantees it.
CPU_CORES_PER_GPU = 4.0
MEMORY_GIB_PER_GPU = 16
_RESOURCE_PRICES = {"CPU": "CPU", "MEMORY": "memory"}  # their names, in any case
BUILT_IN, PRICES_TOML = "built-in", "prices.toml"  # where a price came from


def default_resources(gpu_count: int) -> tuple[float, int]:
    """CPU cores and memory (MiB) a node of ``gpu_count`` GPUs reserves by default."""
    return CPU_CORES_PER_GPU * gpu_count, MEMORY_GIB_PER_GPU * 1024 * gpu_count


@dataclass(frozen=True)
class Catalogue:
    types: tuple[GpuType, ...]
    usd_per_core_hour: float = USD_PER_CORE_HOUR
    usd_per_gib_hour: float = USD_PER_GIB_HOUR
    # where each price came from, by GPU name, "CPU" and "memory"; absent: the built-in table
    sources: Mapping[str, str] = field(default_factory=dict)
    _by_name: dict[str, GpuType] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_name = {a.upper(): t for t in self.types for a in (t.name, *t.aliases)}
        object.__setattr__(self, "_by_name", by_name)

    def names(self) -> list[str]:
        return [t.name for t in self.types]

    def get(self, name: str) -> GpuType:
        """The GPU type called ``name`` (case-insensitive, aliases allowed).

        Raises PrmError naming the known types when there is none.
        """
        wanted = name.strip().upper()
        found = self._by_name.get(wanted)
        if found is not None:
            return found
        close = difflib.get_close_matches(wanted, [t.name.upper() for t in self.types], n=1)
        guess = f"did you mean {self._spelled(close[0])}? " if close else ""
        raise PrmError(
            f"unknown GPU type {name!r}",
            f"{guess}known types: {', '.join(self.names())}",
        )

    def _spelled(self, upper: str) -> str:
        return next(t.name for t in self.types if t.name.upper() == upper)

    def source_of(self, *prices: str) -> str:
        """Where the named prices (GPU names, ``CPU``, ``memory``) came from, each source once:
        ``modal rates 2026-11-30``, ``built-in``, or a mix such as
        ``prices.toml + modal rates 2026-11-30``."""
        seen = dict.fromkeys(self.sources.get(p, BUILT_IN) for p in prices)
        return " + ".join(seen) or BUILT_IN


def catalogue(price_overrides: Mapping[str, float] | None = None, *,
              rates: Mapping[str, float] | None = None, rates_source: str = "") -> Catalogue:
    """The built-in catalogue, its prices replaced first from ``rates`` (Modal's, labelled
    ``rates_source``), then from ``price_overrides`` (prices.toml, which wins: it is what the
    user wrote down). Both map a GPU name to USD per GPU-hour, ``CPU`` to USD per core-hour
    and ``memory`` to USD per GiB-hour.

    Raises PrmError for an unknown GPU name or a price that is not a non-negative number.
    """
    base = Catalogue(_BUILTIN)
    layers = [(rates or {}, rates_source), (price_overrides or {}, PRICES_TOML)]
    prices: dict[str, float] = {}
    sources: dict[str, str] = {}
    for layer, label in layers:
        for name, price in layer.items():
            if isinstance(price, bool) or not isinstance(price, int | float) or price < 0:
                raise PrmError(f"{label}: price for {name} must be a non-negative number, "
                               f"got {price!r}")
            key = _RESOURCE_PRICES.get(name.strip().upper()) or base.get(name).name
            prices[key], sources[key] = float(price), label
    if not prices:
        return base
    types = tuple(replace(t, usd_per_hour=prices.get(t.name, t.usd_per_hour))
                  for t in base.types)
    return Catalogue(types, prices.get("CPU", USD_PER_CORE_HOUR),
                     prices.get("memory", USD_PER_GIB_HOUR), sources)
