"""The sweep controller's loop: start trials while fewer than max_parallel run, until all
have ended, the sweep is stopped, or (with fail-fast) one fails. The same loop runs in a
CPU function on Modal (so the limit holds with the laptop closed) and in a detached local
process; each side supplies how to start, poll and stop a trial.

A sweep with a budget (`max_usd`) also never starts a trial whose worst case could cross
it, given what the trials started so far could cost at worst (an ended trial: what it
cost; a running one: its worst case), and stops every running trial when what they all
cost so far, at their plans' rates, reaches it (a preemption restarts a trial without
spending a retry, so a worst case is not a bound)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from primerl_modal.core import status as st
from primerl_modal.core.cost import format_usd
from primerl_modal.runner.watch import spent_usd

QUEUED, RUNNING, ENDED = "queued", "running", "ended"
BUDGET_EVERY_S = 30.0  # how often running trials' costs are read (a file read each)


@dataclass
class TrialState:
    index: int
    run_id: str
    state: str = QUEUED
    handle: str | None = None  # a Modal call id, or a local runner pid
    status: str | None = None  # the run's final status, once ended
    per_hour_usd: float = 0.0  # the trial plan's rate
    max_usd: float = 0.0  # the trial plan's worst case
    spent_usd: float = 0.0  # its cost so far, when last read
    spent_before_usd: float = 0.0  # what earlier attempts (a resumed trial) had cost at its start
    note: str | None = None  # why the controller stopped it

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "run_id": self.run_id, "state": self.state,
                "handle": self.handle, "status": self.status,
                "per_hour_usd": self.per_hour_usd, "max_usd": self.max_usd,
                "spent_usd": self.spent_usd, "spent_before_usd": self.spent_before_usd,
                "note": self.note}


def trial_spent(status: Mapping[str, Any] | None, per_hour_usd: float) -> float | None:
    """A trial's cost so far from its status.json (every attempt at its plan's rate); None
    when there is no status to read."""
    if not status:
        return None
    attempts = status.get("attempts")
    return spent_usd([a for a in attempts if isinstance(a, Mapping)]
                     if isinstance(attempts, list) else [], per_hour_usd)


@dataclass
class Budget:
    """The sweep's `max_usd`, and what trials outside this controller's list (the ones a
    resume left alone) have cost already."""

    max_usd: float
    spent_elsewhere_usd: float = 0.0

    def spent(self, trials: Sequence[TrialState]) -> float:
        return self.spent_elsewhere_usd + sum(t.spent_usd for t in trials)

    def committed(self, trials: Sequence[TrialState]) -> float:
        """What the trials started so far could cost at worst."""
        total = self.spent_elsewhere_usd
        for t in trials:
            if t.state == RUNNING:
                total += max(t.spent_before_usd + t.max_usd, t.spent_usd)
            elif t.state == ENDED:
                total += t.spent_usd
        return total

    def fits(self, trial: TrialState, trials: Sequence[TrialState]) -> bool:
        """Whether ``trial`` (queued) could run to its worst case within the budget."""
        worst = trial.spent_usd + trial.max_usd
        return self.committed(trials) + worst <= self.max_usd + 1e-9

    def note(self, trials: Sequence[TrialState]) -> str:
        return f"budget: {format_usd(self.spent(trials))} of {format_usd(self.max_usd)}"


def with_rates(trials: list[TrialState], sweep: Mapping[str, Any]) -> list[TrialState]:
    """``trials`` with their plans' rate and worst case, from the sweep's sweep.json."""
    listed = {t.get("run_id"): t for t in sweep.get("trials") or [] if isinstance(t, Mapping)}
    for t in trials:
        plan = listed.get(t.run_id) or {}
        t.per_hour_usd = float(plan.get("per_hour_usd") or 0.0)
        t.max_usd = float(plan.get("max_usd") or 0.0)
    return trials


def sweep_budget(sweep: Mapping[str, Any], trials: Sequence[TrialState],
                 status_of: Callable[[str], Mapping[str, Any] | None]) -> Budget | None:
    """The budget in the sweep's sweep.json (None without one), with what the sweep's other
    trials, those a resume left alone, have cost already (``status_of(run_id)``)."""
    cap = sweep.get("max_usd")
    if isinstance(cap, bool) or not isinstance(cap, int | float):
        return None
    mine = {t.run_id for t in trials}
    elsewhere = 0.0
    for t in sweep.get("trials") or []:
        if isinstance(t, Mapping) and isinstance(t.get("run_id"), str) \
                and t["run_id"] not in mine:
            rate = float(t.get("per_hour_usd") or 0.0)
            elsewhere += trial_spent(status_of(t["run_id"]), rate) or 0.0
    return Budget(float(cap), elsewhere)


@dataclass
class Hooks:
    start: Callable[[TrialState], str]  # returns the handle
    poll: Callable[[TrialState], str | None]  # the final status once ended, else None
    stop: Callable[[TrialState], None]  # stop a running trial (it records STOPPED itself)
    # record STOPPED with this note: for a trial never started, or (after its own STOPPED)
    # for one the budget stopped, so its status says why
    mark_stopped: Callable[[TrialState, str], None]
    stop_requested: Callable[[], bool]
    save: Callable[[list[TrialState]], None]  # persist the controller's state
    spent: Callable[[TrialState], float | None]  # a trial's cost so far, when it can be read
    log: Callable[[str], None] = print
    tick: float = 2.0
    budget_every: float = BUDGET_EVERY_S
    sleep: Callable[[float], None] = field(default=time.sleep)
    clock: Callable[[], float] = field(default=time.monotonic)


def control(trials: list[TrialState], max_parallel: int, fail_fast: bool, hooks: Hooks,
            budget: Budget | None = None) -> None:
    """Run ``trials`` (some may already be running or ended: a restarted controller picks
    up where the last one was) with at most ``max_parallel`` at once, within ``budget``."""
    stopping: str | None = None  # why the sweep stops, once it does
    if budget:
        _read_spent(trials, hooks, every_trial=True)
    costs_read = hooks.clock()
    while True:
        ended = _poll(trials, hooks, budget is not None)
        changed = bool(ended)
        failed = next((t for t in ended if t.status != st.SUCCEEDED), None)
        if not stopping and fail_fast and failed:
            hooks.log(f"--fail-fast: trial {failed.index} did not succeed; stopping")
            stopping = "stopped with its sweep before it started"
        if not stopping and hooks.stop_requested():
            hooks.log("sweep stop requested")
            stopping = "stopped with its sweep before it started"
        if budget and hooks.clock() - costs_read >= hooks.budget_every:
            costs_read = hooks.clock()
            changed = _read_spent(trials, hooks, every_trial=False) or changed
        if budget and not stopping and budget.spent(trials) >= budget.max_usd:
            stopping = budget.note(trials)
            hooks.log(f"{stopping}: stopping every trial")
        if stopping:
            changed = _stop_all(trials, hooks, stopping) or changed
        else:
            changed = _start(trials, max_parallel, hooks, budget) or changed
        if changed:
            hooks.save(trials)
        if all(t.state == ENDED for t in trials):
            return
        hooks.sleep(hooks.tick)


def _poll(trials: list[TrialState], hooks: Hooks, costed: bool) -> list[TrialState]:
    """The running trials that have ended since the last poll, recorded as ended."""
    ended = []
    for t in trials:
        if t.state != RUNNING:
            continue
        final = hooks.poll(t)
        if final is None:
            continue
        t.state, t.status = ENDED, final
        ended.append(t)
        hooks.log(f"trial {t.index} ({t.run_id}) ended {final}")
        if costed:
            spent = hooks.spent(t)
            t.spent_usd = t.spent_usd if spent is None else spent
        if t.note and final == st.STOPPED:
            hooks.mark_stopped(t, t.note)
    return ended


def _read_spent(trials: list[TrialState], hooks: Hooks, every_trial: bool) -> bool:
    """Refresh the cost so far of running trials (of every trial not ended, at the start:
    a resumed one has earlier attempts)."""
    changed = False
    for t in trials:
        if t.state == RUNNING or (every_trial and t.state == QUEUED):
            spent = hooks.spent(t)
            if spent is not None and spent != t.spent_usd:
                t.spent_usd, changed = spent, True
    return changed


def _stop_all(trials: list[TrialState], hooks: Hooks, note: str) -> bool:
    changed = False
    for t in trials:
        if t.state == QUEUED:
            hooks.mark_stopped(t, note)
            t.state, t.status, changed = ENDED, st.STOPPED, True
        elif t.state == RUNNING and t.handle and t.status != "stopping":
            if note.startswith("budget:"):
                t.note = note
            hooks.stop(t)
            t.status, changed = "stopping", True
    return changed


def _start(trials: list[TrialState], max_parallel: int, hooks: Hooks,
           budget: Budget | None) -> bool:
    """Start queued trials while there is room, in order, skipping one that does not fit the
    budget yet; one that cannot fit even with nothing else running never will."""
    changed = False
    running = sum(1 for t in trials if t.state == RUNNING)
    for t in trials:
        if running >= max_parallel:
            break
        if t.state != QUEUED:
            continue
        if budget and not budget.fits(t, trials):
            if running == 0:
                note = (f"budget: not started, its worst case {format_usd(t.max_usd)} does not "
                        f"fit ({budget.note(trials)})")
                hooks.mark_stopped(t, note)
                t.state, t.status, t.note, changed = ENDED, st.STOPPED, note, True
                hooks.log(f"trial {t.index} ({t.run_id}) {note}")
            continue
        t.spent_before_usd = t.spent_usd
        t.handle = hooks.start(t)
        t.state, changed = RUNNING, True
        running += 1
        hooks.log(f"trial {t.index} ({t.run_id}) started")
    return changed
