"""Modal's own prices as prm's price table, and the small file that keeps them for a day.

``modal.Workspace.from_context().billing.rates()`` is a mapping of resource name to a Decimal.
The modal client names no keys and no units; `modal billing rates --json`, as published by
its users, shows USD per hour: ``gpu_hour_cost_<gpu>`` per GPU-hour (``gpu_hour_cost_h100``,
``gpu_hour_cost_a100_80gb``, ``gpu_hour_cost_a10g``), ``cpu_hour_cost`` per physical core-hour
and ``mem_gib_hour_cost`` per GiB-hour, beside rates prm does not use (the ``_sandbox``
variants, volume storage, egress). A key prm does not know is skipped and the built-in price
stays, so a renamed key costs accuracy, never a plan.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from primerl_modal.core.gpus import GpuType

GPU_KEY = "gpu_hour_cost_"
CPU_KEY = "cpu_hour_cost"
MEMORY_KEY = "mem_gib_hour_cost"
MAX_AGE = timedelta(days=1)


def rate_keys(gpu: GpuType) -> list[str]:
    """The keys Modal may price ``gpu`` under: its name and aliases as Modal spells rate keys
    (``A100-80GB`` -> ``gpu_hour_cost_a100_80gb``, ``A10`` or ``A10G`` -> ``..._a10g``)."""
    return [GPU_KEY + name.lower().replace("-", "_") for name in (gpu.name, *gpu.aliases)]


def prices_from_rates(rates: Mapping[str, Any], gpus: Iterable[GpuType]) -> dict[str, float]:
    """Modal's rates as price overrides (GPU name -> USD per GPU-hour, ``CPU``, ``memory``),
    only for what prm prices and only values that are non-negative numbers."""
    wanted = {key: gpu.name for gpu in gpus for key in rate_keys(gpu)}
    wanted |= {CPU_KEY: "CPU", MEMORY_KEY: "memory"}
    out: dict[str, float] = {}
    for key, value in rates.items():
        name = wanted.get(key)
        price = _number(value)
        if name and price is not None:
            out[name] = price
    return out


def _number(value: Any) -> float | None:
    try:
        number = Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None
    return float(number) if number.is_finite() and number >= 0 else None


@dataclass(frozen=True)
class CachedRates:
    """Modal's rates as fetched on ``fetched_at`` (UTC)."""

    fetched_at: datetime
    rates: Mapping[str, str]

    @property
    def source(self) -> str:
        return f"modal rates {self.fetched_at:%Y-%m-%d}"

    def fresh(self, now: datetime) -> bool:
        return timedelta(0) <= now - self.fetched_at < MAX_AGE

    def to_json(self) -> str:
        return json.dumps({"fetched_at": self.fetched_at.isoformat(), "rates": dict(self.rates)},
                          indent=1, sort_keys=True) + "\n"


def cached_rates(text: str) -> CachedRates | None:
    """The cache file's contents, or None when it is not what ``CachedRates.to_json`` wrote
    (a damaged cache is fetched again, never an error)."""
    try:
        data = json.loads(text)
        fetched = datetime.fromisoformat(data["fetched_at"])
        rates = data["rates"]
    except (ValueError, KeyError, TypeError):
        return None
    if fetched.tzinfo is None or not isinstance(rates, dict):
        return None
    return CachedRates(fetched.astimezone(UTC), {str(k): str(v) for k, v in rates.items()})
