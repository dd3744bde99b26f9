"""What a plan costs: per hour (GPUs, reserved CPU and memory), and at worst (every attempt
runs to its timeout)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from primerl_modal.core.gpu_plan import GpuPlan
from primerl_modal.core.gpus import Catalogue


@dataclass(frozen=True)
class Cost:
    per_hour_usd: float
    max_usd: float
    gpu_per_hour_usd: float = 0.0
    cpu_per_hour_usd: float = 0.0
    memory_per_hour_usd: float = 0.0
    source: str = ""  # where the prices came from, e.g. "modal rates 2026-11-30" ("": unknown)

    def to_json(self) -> dict[str, Any]:
        return {
            "per_hour_usd": self.per_hour_usd,
            "max_usd": self.max_usd,
            "per_hour_breakdown_usd": {"gpu": self.gpu_per_hour_usd,
                                       "cpu": self.cpu_per_hour_usd,
                                       "memory": self.memory_per_hour_usd},
            "source": self.source,
        }


def cost_from_json(data: Mapping[str, Any]) -> Cost:
    """A Cost back from ``Cost.to_json``, or from a plan written before the breakdown existed
    (its per-hour price was the GPUs' alone), or before prices named their source."""
    parts = data.get("per_hour_breakdown_usd") or {"gpu": data["per_hour_usd"]}
    return Cost(data["per_hour_usd"], data["max_usd"], parts.get("gpu", 0.0),
                parts.get("cpu", 0.0), parts.get("memory", 0.0), data.get("source") or "")


def estimate(gpus: GpuPlan, timeout_s: int, retries: int, catalogue: Catalogue,
             cpu: float | None = None, memory_mb: int | None = None) -> Cost:
    """Modal bills the greater of reservation and use; this prices the reservation."""
    gpu = gpus.usd_per_gpu_hour * gpus.count
    cores = (cpu or 0.0) * catalogue.usd_per_core_hour
    memory = (memory_mb or 0) / 1024 * catalogue.usd_per_gib_hour
    per_hour = gpu + cores + memory
    worst = per_hour * timeout_s / 3600 * (retries + 1)
    priced = [gpus.type] + ["CPU"] * bool(cpu) + ["memory"] * bool(memory_mb)
    return Cost(round(per_hour, 4), round(worst, 2), round(gpu, 4), round(cores, 4),
                round(memory, 4), catalogue.source_of(*priced))


def format_usd(value: float) -> str:
    """Dollars as people read them: cents, or four places below a dollar (a test budget)."""
    return f"${value:,.2f}" if abs(value) >= 1 else f"${value:.4f}"
