"""prm's metadata folder for one run: plan.json, status.json, events.jsonl, logs/, inputs/.

It sits at ``<outputs>/_prm/<run-id>/``, beside prime-rl's run directory and never inside
it (prime-rl refuses to reuse a directory holding files it does not know).
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from primerl_modal.core import status as st
from primerl_modal.processes import identity

STOP_MARKER = "stop-requested"


def now() -> float:
    return round(time.time(), 3)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write to a temporary name, then rename: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)


def json_object(data: bytes | str | None) -> dict[str, Any] | None:
    """A JSON object from ``data``; None for nothing, bad JSON or another JSON type."""
    if not data:
        return None
    try:
        value = json.loads(data)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json_object(path.read_bytes())
    except OSError:
        return None


class RunState:
    """status.json of one run, kept in memory and written whole on every change."""

    def __init__(self, meta_dir: Path, data: dict[str, Any]) -> None:
        self.meta_dir = meta_dir
        self.data = data

    @classmethod
    def create(cls, meta_dir: Path, run_id: str) -> RunState:
        """A fresh PENDING status for a run about to launch."""
        state = cls(meta_dir, {"run_id": run_id, "status": st.PENDING, "attempt": 0,
                               "attempts": [], "history": [], "progress": {}})
        state.set_status(st.PENDING, "launched")
        return state

    @classmethod
    def load(cls, meta_dir: Path, run_id: str) -> RunState:
        data = read_json(meta_dir / "status.json")
        return cls(meta_dir, data) if data else cls.create(meta_dir, run_id)

    @property
    def status(self) -> str:
        return str(self.data["status"])

    @property
    def attempt(self) -> int:
        return int(self.data.get("attempt", 0))

    def save(self) -> None:
        self.data["updated_at"] = now()
        write_json_atomic(self.meta_dir / "status.json", self.data)

    def event(self, kind: str, **fields: Any) -> None:
        self.meta_dir.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"t": now(), "event": kind, "attempt": self.attempt, **fields})
        with open(self.meta_dir / "events.jsonl", "a") as f:
            f.write(line + "\n")

    def set_status(self, status: str, note: str = "", **fields: Any) -> None:
        record_status(self.data, status, note, **fields)
        self.save()
        self.event("status", status=status, note=note)

    def begin_attempt(self, argv: list[str], resumed_from: int | None, resumed: bool,
                      call_id: str | None = None) -> int:
        """Record a new attempt. An earlier attempt that never recorded its end (its
        container or runner was killed) is closed first, with what can be known of it."""
        self.close_unended()
        n = self.attempt + 1
        self.data["attempt"] = n
        self.data["attempts"].append({
            "n": n, "started_at": now(), "resumed": resumed, "resumed_from": resumed_from,
            "host": socket.gethostname(), "argv": argv, **({"call_id": call_id} if call_id else {}),
        })
        self.data.setdefault("started_at", now())
        # what proves later that a pid is still this runner (see processes.py)
        self.data["runner"] = {**identity(os.getpid()), "host": socket.gethostname(),
                               "heartbeat_at": now()}
        self.event("attempt_started", argv=argv, resumed=resumed, resumed_from=resumed_from)
        return n

    def current_attempt(self) -> dict[str, Any]:
        return self.data["attempts"][-1]

    def end_attempt(self, outcome: str, exit_code: int | None, **fields: Any) -> None:
        current = self.current_attempt()
        current.update({"ended_at": now(), "outcome": outcome, "exit_code": exit_code, **fields})
        self.event("attempt_ended", outcome=outcome, exit_code=exit_code)

    def close_unended(self) -> None:
        """An attempt without an end was killed before it could write one: after a platform
        signal (a preemption past its grace) or without any (a crash, an out-of-memory
        kill). Only the second kind spends the failure budget."""
        for a in self.data.get("attempts", []):
            if isinstance(a, dict) and "ended_at" not in a:
                a.update({"ended_at": None, "outcome": "KILLED", "exit_code": None,
                          "failure": not a.get("signal")})

    def startup_failures(self, call_id: str | None) -> int:
        """Failed attempts of one call that never made a training step."""
        return sum(1 for a in self.data.get("attempts", [])
                   if isinstance(a, dict) and a.get("call_id") == call_id and a.get("failure")
                   and a.get("progressed") is False)

    def failures(self, call_id: str | None) -> int:
        """Failed attempts of one platform call (Modal's retry budget is per call; a
        `prm run --resume` is a new call with a fresh budget). Preemptions and stops are not
        failures; an attempt killed without a platform signal is (see close_unended). An
        attempt still in progress is not counted."""
        return sum(1 for a in self.data.get("attempts", [])
                   if isinstance(a, dict) and a.get("call_id") == call_id and a.get("failure"))


def close_attempt(data: dict[str, Any], outcome: str) -> None:
    """End a run's last attempt from outside its runner (which is gone: LOST, or a stop
    written for it), when the runner could not record the end itself."""
    attempts = data.get("attempts")
    last = attempts[-1] if isinstance(attempts, list) and attempts else None
    if isinstance(last, dict) and "outcome" not in last:
        last.update({"ended_at": now(), "outcome": outcome, "exit_code": None,
                     "failure": False})


def record_status(data: dict[str, Any], status: str, note: str, **fields: Any) -> None:
    """Set a status.json's status, with its line of history (a final one ends the run)."""
    data["status"] = status
    data.update(fields)
    data.setdefault("history", []).append(
        {"status": status, "at": now(), "attempt": int(data.get("attempt", 0)), "note": note})
    if st.is_final(status):
        data.setdefault("ended_at", now())


def stop_requested(meta_dir: Path) -> bool:
    return (meta_dir / STOP_MARKER).exists()


def request_stop(meta_dir: Path) -> None:
    (meta_dir / STOP_MARKER).write_text(str(now()))


def runner_pid(status: Mapping[str, Any], fallback: int | None = None) -> int | None:
    """The pid of the runner a status.json names (or ``fallback``)."""
    runner = status.get("runner")
    pid = runner.get("pid") if isinstance(runner, Mapping) else None
    return int(pid) if pid else fallback
