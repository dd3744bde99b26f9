"""The GPU catalogue: what Modal offers, how many fit in one container, what they cost."""

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


@dataclass(frozen=True)
class Catalogue:
    types: tuple[GpuType, ...]
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


def catalogue(price_overrides: Mapping[str, float] | None = None) -> Catalogue:
    """The built-in catalogue with prices replaced from ``price_overrides`` (GPU name -> USD/h).

    Raises PrmError for an unknown GPU name or a price that is not a positive number.
    """
    base = Catalogue(_BUILTIN)
    if not price_overrides:
        return base
    prices = {}
    for name, price in price_overrides.items():
        gpu = base.get(name)
        if isinstance(price, bool) or not isinstance(price, int | float) or price < 0:
            raise PrmError(
                f"prices.toml: price for {name} must be a non-negative number, got {price!r}"
            )
        prices[gpu.name] = float(price)
    return Catalogue(
        tuple(replace(t, usd_per_hour=prices.get(t.name, t.usd_per_hour)) for t in base.types)
    )
