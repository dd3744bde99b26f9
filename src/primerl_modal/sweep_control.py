"""The sweep controller's loop: start trials while fewer than max_parallel run, until all
have ended, the sweep is stopped, or (with fail-fast) one fails. The same loop runs in a
CPU function on Modal (so the limit holds with the laptop closed) and in a detached local
process; each side supplies how to start, poll and stop a trial."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from primerl_modal.core import status as st

QUEUED, RUNNING, ENDED = "queued", "running", "ended"


@dataclass
class TrialState:
    index: int
    run_id: str
    state: str = QUEUED
    handle: str | None = None  # a Modal call id, or a local runner pid
    status: str | None = None  # the run's final status, once ended

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "run_id": self.run_id, "state": self.state,
                "handle": self.handle, "status": self.status}


@dataclass
class Hooks:
    start: Callable[[TrialState], str]  # returns the handle
    poll: Callable[[TrialState], str | None]  # the final status once ended, else None
    stop: Callable[[TrialState], None]  # stop a running trial (it records STOPPED itself)
    mark_stopped: Callable[[TrialState], None]  # record STOPPED for a trial never started
    stop_requested: Callable[[], bool]
    save: Callable[[list[TrialState]], None]  # persist the controller's state
    log: Callable[[str], None] = print
    tick: float = 2.0
    sleep: Callable[[float], None] = field(default=time.sleep)


def control(trials: list[TrialState], max_parallel: int, fail_fast: bool, hooks: Hooks) -> None:
    """Run ``trials`` (some may already be running or ended: a restarted controller picks
    up where the last one was) with at most ``max_parallel`` at once."""
    stopping = False
    while True:
        changed = False
        for t in trials:
            if t.state == RUNNING:
                final = hooks.poll(t)
                if final is not None:
                    t.state, t.status, changed = ENDED, final, True
                    hooks.log(f"trial {t.index} ({t.run_id}) ended {final}")
                    if fail_fast and final != st.SUCCEEDED and not stopping:
                        hooks.log(f"--fail-fast: trial {t.index} did not succeed; stopping")
                        stopping = True
        if not stopping and hooks.stop_requested():
            hooks.log("sweep stop requested")
            stopping = True
        if stopping:
            for t in trials:
                if t.state == QUEUED:
                    hooks.mark_stopped(t)
                    t.state, t.status, changed = ENDED, st.STOPPED, True
                elif t.state == RUNNING and t.handle and t.status != "stopping":
                    hooks.stop(t)
                    t.status, changed = "stopping", True
        running = sum(1 for t in trials if t.state == RUNNING)
        for t in trials:
            if stopping or running >= max_parallel:
                break
            if t.state == QUEUED:
                t.handle = hooks.start(t)
                t.state, changed = RUNNING, True
                running += 1
                hooks.log(f"trial {t.index} ({t.run_id}) started")
        if changed:
            hooks.save(trials)
        if all(t.state == ENDED for t in trials):
            return
        hooks.sleep(hooks.tick)
