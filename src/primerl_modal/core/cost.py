"""What a plan costs: per hour, and at worst (every attempt runs to its timeout)."""

from __future__ import annotations

from dataclasses import dataclass

from primerl_modal.core.gpu_plan import GpuPlan


@dataclass(frozen=True)
class Cost:
    per_hour_usd: float
    max_usd: float


def estimate(gpus: GpuPlan, timeout_s: int, retries: int) -> Cost:
    per_hour = gpus.usd_per_gpu_hour * gpus.count
    worst = per_hour * timeout_s / 3600 * (retries + 1)
    return Cost(round(per_hour, 4), round(worst, 2))

