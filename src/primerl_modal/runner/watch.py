"""The run's guard, enforced: a run that stops making training steps, or reaches its
budget, is ended by the runner rather than left to burn GPU hours.

Progress is prime-rl's own `metrics.jsonl`: a new row is a training step. A run that made
no new row for `stall_timeout` after its first, or none within `startup_timeout` of the
attempt's start (image pull, model download and compile happen there), is hung: a hang
repeats, so it ends FAILED and is not retried. A run whose cost so far (every attempt, at
the plan's rates) reaches `max_usd` ends STOPPED. Both are final statuses, never
preemptions."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from primerl_modal.core import status as st
from primerl_modal.core.cost import format_usd
from primerl_modal.core.durations import format_duration


@dataclass(frozen=True)
class Verdict:
    outcome: str  # the final status it ends the run with
    note: str  # the reason, as `prm ls` and `prm show` say it


def spent_usd(attempts: Sequence[Mapping[str, Any]], per_hour_usd: float,
              now: float | None = None) -> float:
    """What a run's attempts cost so far at the plan's rates. An attempt that never
    recorded its end is counted to the start of the next one."""
    now = time.time() if now is None else now
    seconds = 0.0
    for i, a in enumerate(attempts):
        start = a.get("started_at")
        if not isinstance(start, int | float):
            continue
        end = a.get("ended_at")
        if not isinstance(end, int | float):
            later = attempts[i + 1].get("started_at") if i + 1 < len(attempts) else None
            end = later if isinstance(later, int | float) else now
        seconds += max(0.0, end - start)
    return seconds * per_hour_usd / 3600


class Watch:
    """Steps seen, time, and money, for one attempt of a run."""

    def __init__(self, guard: Mapping[str, Any], per_hour_usd: float, spent_before: float,
                 rows_at_start: int, started: float) -> None:
        self.stall_s = float(guard.get("stall_timeout_s") or 30 * 60)
        self.startup_s = float(guard.get("startup_timeout_s") or 60 * 60)
        budget = guard.get("max_usd")
        self.max_usd = float(budget) if isinstance(budget, int | float) else None
        self.per_hour_usd = per_hour_usd
        self.spent_before = spent_before
        self.started = started
        self.rows = rows_at_start
        self.last_row_at: float | None = None  # monotonic time of this attempt's last step

    @property
    def progressed(self) -> bool:
        """Whether this attempt made a training step."""
        return self.last_row_at is not None

    def observe(self, rows: int, now: float) -> None:
        if rows > self.rows:
            self.rows, self.last_row_at = rows, now

    def spent(self, now: float) -> float:
        return self.spent_before + (now - self.started) * self.per_hour_usd / 3600

    def check(self, now: float, last_step: int | None, gpus: str | None) -> Verdict | None:
        """Why this attempt must end now, if it must."""
        busy = f"; {gpus}" if gpus else ""
        if self.last_row_at is None and now - self.started > self.startup_s:
            return Verdict(st.FAILED, f"stalled: no first step within "
                                      f"{format_duration(self.startup_s)} of the start{busy}")
        if self.last_row_at is not None and now - self.last_row_at > self.stall_s:
            return Verdict(st.FAILED, f"stalled: no step for {format_duration(self.stall_s)} "
                                      f"(last step {last_step}){busy}")
        if self.max_usd is not None and self.spent(now) >= self.max_usd:
            return Verdict(st.STOPPED, f"budget: {format_usd(self.spent(now))} of "
                                       f"{format_usd(self.max_usd)}")
        return None
