"""Run statuses (DESIGN.md "Runs") and how a run's status file is read."""

from __future__ import annotations

import json
from typing import Any, TypedDict

from primerl_modal.core.shapes import WRONG, clean, summary

PENDING = "PENDING"
RUNNING = "RUNNING"
RECOVERING = "RECOVERING"  # a retry after preemption or a crash is coming
SUCCEEDED = "SUCCEEDED"
FAILED = "FAILED"
STOPPED = "STOPPED"
LOST = "LOST"  # the runner is gone and never wrote a final status
# status.json cannot be read as a status. Not final: the next refresh reads the file again
# (the runner rewrites it whole), and a local run whose runner is gone becomes LOST.
UNKNOWN = "UNKNOWN"

ALL = (PENDING, RUNNING, RECOVERING, SUCCEEDED, FAILED, STOPPED, LOST, UNKNOWN)
FINAL = frozenset({SUCCEEDED, FAILED, STOPPED, LOST})
RESUMABLE = frozenset({FAILED, STOPPED, LOST})

# What status.json keeps of a failing component's output: enough to see why, never so
# much that reading or showing it is slow (one 10 MB line made `prm show` take 27 s).
FAILURE_LINES = 50
LINE_CHARS = 2048


def is_final(status: str) -> bool:
    return status in FINAL


def bounded(lines: list[str]) -> list[str]:
    """The last FAILURE_LINES lines, each cut to LINE_CHARS characters."""
    return [line if len(line) <= LINE_CHARS else line[:LINE_CHARS] + " [cut]"
            for line in lines[-FAILURE_LINES:]]


# The parts of status.json (runner/state.py writes it) that prm reads back, with their
# types. Keys not named here are kept as they are.

class Progress(TypedDict, total=False):
    metric: str
    step: int
    max_steps: int
    value: float
    ckpt_step: int
    size_bytes: int  # the run's files on its outputs, when last measured


class Event(TypedDict, total=False):  # a line of history
    status: str
    at: float
    attempt: int
    note: str


class Attempt(TypedDict, total=False):
    n: int
    started_at: float
    ended_at: float
    outcome: str
    exit_code: int
    resumed_from: int
    signal: str


class Failure(TypedDict, total=False):
    component: str
    exit_code: int
    lines: list[str]


class Runner(TypedDict, total=False):
    pid: int


class GpuRole(TypedDict, total=False):  # one role's GPUs, from nvidia-smi
    util_pct: float
    mem_gib: float
    peak_mem_gib: float
    total_gib: float


class Gpus(TypedDict, total=False):
    at: float
    roles: dict[str, GpuRole]


class Stall(TypedDict, total=False):  # what the guard saw when it ended a hung run
    at: float
    reason: str
    lines: dict[str, list[str]]


class StatusFile(TypedDict, total=False):
    run_id: str
    status: str
    attempt: int
    started_at: float
    ended_at: float
    exit_code: int
    launcher_pid: int
    progress: Progress
    runner: Runner
    failure: Failure
    history: list[Event]
    attempts: list[Attempt]
    gpus: Gpus
    stall: Stall


def checked_status(raw: Any, at: float) -> dict[str, Any]:
    """A status.json's content as prm can use it, whatever ``raw`` is: parts of the wrong
    type dropped, failure lines bounded. When something was wrong, or the status is not one
    prm knows, the status is UNKNOWN, with a line of history (at ``at``) saying why."""
    found: list[str] = []
    data = clean(raw, StatusFile, "", found)
    if data is WRONG:
        data = {}
    elif "status" not in data:
        if "status" not in raw:  # else its wrong type is in ``found`` already
            found.insert(0, "no status")
    elif data["status"] not in ALL:
        found.insert(0, f"unknown status {str(data['status'])[:40]!r}")
    failure = data.get("failure")
    if failure and failure.get("lines"):
        data["failure"] = {**failure, "lines": bounded(failure["lines"])}
    return _unknown(data, found, at) if found else data


def status_from_json(text: bytes | str, at: float) -> dict[str, Any]:
    """checked_status of a status.json's text; UNKNOWN when the text is not JSON."""
    try:
        raw = json.loads(text)
    except ValueError:
        return _unknown({}, ["not JSON"], at)
    return checked_status(raw, at)


def _unknown(data: dict[str, Any], found: list[str], at: float) -> dict[str, Any]:
    note = "status.json unreadable: " + summary(found)
    history = [*data.get("history", []),
               {"status": UNKNOWN, "at": at, "attempt": data.get("attempt", 0), "note": note}]
    return {**data, "status": UNKNOWN, "history": history}
