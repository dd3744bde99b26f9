"""A run's guard ([guard] in a profile): what stops a run that burns money unseen. The
runner enforces it; the plan carries it as pure data."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from primerl_modal.core.durations import parse_duration
from primerl_modal.errors import PlanError


@dataclass(frozen=True)
class Guard:
    stall_timeout_s: int = 30 * 60  # no new step for this long after the first: hung
    startup_timeout_s: int = 60 * 60  # no first step this long after the launch: hung
    startup_retries: int = 1  # retries of a failure before the first step
    max_usd: float | None = None  # the run's budget, all attempts at the plan's rates

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def guard_from(get: Callable[[str], Any]) -> Guard:
    """The guard of a resolved profile (``get("guard.KEY")``).

    Raises PlanError for values that cannot guard anything."""
    stall = parse_duration(get("guard.stall_timeout"), what="[guard] stall_timeout")
    startup = parse_duration(get("guard.startup_timeout"), what="[guard] startup_timeout")
    retries = int(get("guard.startup_retries"))
    budget = get("guard.max_usd")
    if stall <= 0 or startup <= 0:
        raise PlanError("[guard] stall_timeout and startup_timeout must be more than 0",
                        "e.g. --set guard.stall_timeout=30m")
    if retries < 0:
        raise PlanError(f"[guard] startup_retries must be 0 or more, got {retries}")
    if budget is not None and float(budget) <= 0:
        raise PlanError(f"[guard] max_usd must be more than 0, got {budget}",
                        "leave it out for no budget")
    return Guard(stall, startup, retries, None if budget is None else float(budget))


def guard_from_json(data: Mapping[str, Any] | None) -> Guard:
    """A plan's guard; plans written before guards have none (the defaults)."""
    return Guard(**data) if isinstance(data, Mapping) else Guard()
