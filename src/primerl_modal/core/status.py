"""Run statuses (DESIGN.md "Runs") and how a run's status file is read."""

from __future__ import annotations

PENDING = "PENDING"
RUNNING = "RUNNING"
RECOVERING = "RECOVERING"  # a retry after preemption or a crash is coming
SUCCEEDED = "SUCCEEDED"
FAILED = "FAILED"
STOPPED = "STOPPED"
LOST = "LOST"  # the runner is gone and never wrote a final status

ALL = (PENDING, RUNNING, RECOVERING, SUCCEEDED, FAILED, STOPPED, LOST)
FINAL = frozenset({SUCCEEDED, FAILED, STOPPED, LOST})
RESUMABLE = frozenset({FAILED, STOPPED, LOST})


def is_final(status: str) -> bool:
    return status in FINAL
