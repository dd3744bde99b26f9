"""A sweep's budget (`max_usd`): the controller's rule, pure and on a simulated clock; the
sweep file key and `--max-usd`; the dry run's cap beside the worst case; and a sweep on the
fake Modal server that never runs two trials whose worst cases together cross it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import local_trials_succeed

from primerl_modal.core import status as st
from primerl_modal.core.sweep import load_sweep_text
from primerl_modal.errors import PrmError
from primerl_modal.run_index import open_index
from primerl_modal.sweep_control import (
    Budget,
    Hooks,
    TrialState,
    control,
    sweep_budget,
    trial_spent,
)


@dataclass
class Sim:
    """Trials that cost ``per_hour`` while they run and end after ``seconds``, on a clock
    that moves only when the controller sleeps."""

    seconds: dict[int, float]
    now: float = 0.0
    started: dict[int, float] = field(default_factory=dict)
    stopped: dict[int, float] = field(default_factory=dict)
    marked: dict[int, str] = field(default_factory=dict)
    most_at_once: int = 0

    def end(self, t: TrialState) -> float | None:
        if t.index in self.stopped:
            return self.stopped[t.index]
        done = self.started[t.index] + self.seconds[t.index]
        return done if self.now >= done else None

    def start(self, t: TrialState) -> str:
        self.started[t.index] = self.now
        running = sum(1 for i in self.started if self.end(TrialState(i, "")) is None)
        self.most_at_once = max(self.most_at_once, running)
        return f"call-{t.index}"

    def poll(self, t: TrialState) -> str | None:
        if self.end(t) is None:
            return None
        return st.STOPPED if t.index in self.stopped else st.SUCCEEDED

    def spent(self, t: TrialState) -> float | None:
        if t.index not in self.started:
            return None
        end = self.end(t)
        return ((end if end is not None else self.now) - self.started[t.index]) \
            * t.per_hour_usd / 3600

    def hooks(self, saves: list[Any] | None = None) -> Hooks:
        kept = [] if saves is None else saves

        def sleep(dt: float) -> None:
            self.now += dt

        return Hooks(
            start=self.start, poll=self.poll,
            stop=lambda t: self.stopped.setdefault(t.index, self.now),
            mark_stopped=lambda t, note: self.marked.__setitem__(t.index, note),
            stop_requested=lambda: False,
            save=lambda items: kept.append([x.to_json() for x in items]),
            spent=self.spent, log=lambda _text: None, tick=1.0, budget_every=5.0,
            sleep=sleep, clock=lambda: self.now)


def _trials(n: int, per_hour: float, worst: float) -> list[TrialState]:
    return [TrialState(i, f"s-{i}", per_hour_usd=per_hour, max_usd=worst) for i in range(n)]


def test_no_trial_starts_whose_worst_case_could_cross_the_budget():
    sim = Sim({0: 60, 1: 60, 2: 60})
    trials = _trials(3, per_hour=36.0, worst=40.0)  # $0.60 a run, $40 at worst
    control(trials, 3, False, sim.hooks(), Budget(100.0))
    assert sim.most_at_once == 2  # 40 + 40 fits in 100, a third 40 does not
    assert [t.status for t in trials] == [st.SUCCEEDED] * 3
    assert sim.started[2] >= 60  # it waited for one to end (and cost $0.60, not $40)
    assert sum(t.spent_usd for t in trials) == pytest.approx(1.8)


def test_running_trials_stop_when_the_total_reaches_the_budget():
    # worst cases that understate (a preemption restarts a trial without spending a retry)
    sim = Sim({0: 1000, 1: 1000, 2: 1000})
    trials = _trials(3, per_hour=3600.0, worst=4.0)  # $1 a second
    control(trials, 2, False, sim.hooks(), Budget(10.0))
    assert [t.status for t in trials] == [st.STOPPED] * 3
    # two ran; stopped within one cost read (5 s here) of the total reaching $10
    assert set(sim.stopped) == {0, 1} and 5 <= sim.stopped[0] <= 10
    assert sim.marked[0] == sim.marked[1] == trials[0].note
    assert sim.marked[0].startswith("budget: $10.00 of $10.00")
    assert sim.marked[2].startswith("budget: ") and 2 not in sim.started


def test_a_trial_that_cannot_fit_even_alone_is_stopped_once_nothing_runs():
    sim = Sim({0: 30, 1: 30, 2: 30})
    trials = _trials(3, per_hour=36.0, worst=40.0)
    trials[1].max_usd = 70.0  # 40 + 70 > 100: it waits; alone (0.30 + 70) it fits
    trials[2].max_usd = 150.0  # never fits
    control(trials, 3, False, sim.hooks(), Budget(100.0))
    assert [t.status for t in trials] == [st.SUCCEEDED, st.SUCCEEDED, st.STOPPED]
    assert sim.started[1] >= 30
    assert 2 not in sim.started
    assert sim.marked[2].startswith("budget: not started, its worst case $150.00 does not fit")


def test_what_resumed_and_untouched_trials_cost_already_counts():
    status = {"s-0": {"attempts": [{"started_at": 0.0, "ended_at": 3600.0}]},
              "s-1": {"attempts": [{"started_at": 0.0, "ended_at": 1800.0},
                                   {"started_at": 2000.0, "ended_at": 2900.0}]}}
    assert trial_spent(status["s-1"], 10.0) == pytest.approx(7.5)
    assert trial_spent(None, 10.0) is None
    sweep = {"max_usd": 50, "trials": [{"run_id": "s-0", "per_hour_usd": 10.0},
                                       {"run_id": "s-1", "per_hour_usd": 10.0}]}
    mine = [TrialState(1, "s-1", per_hour_usd=10.0, max_usd=40.0)]
    budget = sweep_budget(sweep, mine, status.get)
    assert budget is not None and budget.spent_elsewhere_usd == pytest.approx(10.0)
    # s-1 (resumed) cost 7.50 before: 10 + 7.50 + 40 > 50, so it never starts
    sim = Sim({1: 10})
    sim.spent = lambda t: trial_spent(status.get(t.run_id), t.per_hour_usd)  # type: ignore
    control(mine, 1, False, sim.hooks(), budget)
    assert mine[0].status == st.STOPPED and 1 not in sim.started
    assert sweep_budget({"trials": []}, mine, status.get) is None


def test_the_controllers_state_carries_the_costs():
    saves: list[Any] = []
    sim = Sim({0: 10})
    control(_trials(1, 36.0, 5.0), 1, False, sim.hooks(saves), Budget(10.0))
    last = saves[-1][0]
    assert last["state"] == "ended" and last["max_usd"] == 5.0
    assert last["spent_usd"] == pytest.approx(0.1)
    assert TrialState(**last).spent_usd == last["spent_usd"]  # a restarted controller reads it


SWEEP = """name = "b"
profile = "reverse-text"
method = "list"
max_parallel = 2
max_usd = 50
[[trials]]
max_steps = 3
[[trials]]
max_steps = 4
"""


def test_the_sweep_file_key_and_its_checks():
    assert load_sweep_text(SWEEP, "b.toml", "b").max_usd == 50.0
    for bad in ("0", "-1", '"lots"', "true"):
        with pytest.raises(PrmError, match="max_usd must be a number of dollars above 0"):
            load_sweep_text(SWEEP.replace("max_usd = 50", f"max_usd = {bad}"), "b.toml", "b")


def _worst(prm: Any) -> float:
    """reverse-text's worst case at this machine's prices ($38.66 at the built-in ones)."""
    return float(prm("run", "reverse-text", "--dry-run", "--json").json()["cost"]["max_usd"])


def test_the_dry_run_shows_the_cap_beside_the_worst_case(prm, tmp_path):
    path = tmp_path / "b.toml"
    path.write_text(SWEEP)
    total = f"${2 * _worst(prm):,.2f}"
    assert 50 < 2 * _worst(prm) < 100
    r = prm("sweep", str(path), "--dry-run")
    assert r.code == 0, r.err
    assert f"at most {total} if every attempt" in r.out
    assert f"budget: $50.00, below the worst case of {total}: a trial starts only while" in r.out
    data = prm("sweep", str(path), "--dry-run", "--json").json()
    assert data["max_usd"] == 50.0 and data["total"]["max_usd"] == pytest.approx(2 * _worst(prm))
    # --max-usd wins over the file
    data = prm("sweep", str(path), "--dry-run", "--json", "--max-usd", "100").json()
    assert data["max_usd"] == 100.0
    r = prm("sweep", str(path), "--dry-run", "--max-usd", "100")
    assert f"budget: $100.00, above the worst case of {total}: every trial can start" in r.out


def test_a_budget_no_trial_fits_is_refused(prm, tmp_path):
    path = tmp_path / "b.toml"
    path.write_text(SWEEP)
    r = prm("sweep", str(path), "--max-usd", "20")
    assert r.code == 1
    assert "no trial fits the sweep's budget of $20.00: the cheapest, trial 0, could cost " \
        f"${_worst(prm):,.2f} at worst" in r.err
    assert open_index().list() == []
    r = prm("sweep", str(path), "--max-usd", "0")
    assert r.code == 2 and "--max-usd must be more than 0" in r.err
    r = prm("sweep", "--resume", "x", "--max-usd", "5")
    assert r.code == 2 and "--max-usd" in r.err


def _attempts(fake: Any, app_id: str) -> list[tuple[float, float]]:
    out = []
    for call in fake.calls.values():
        fn = fake.functions[call["function_id"]]
        if fn["app_id"] == app_id and fn["function_name"].startswith("trial-"):
            out += [(a["started"], a["ended"]) for a in call["attempts"]]
    return sorted(out)


def test_modal_sweep_never_runs_trials_that_could_overrun_together(prm, modal_env, tmp_path):
    modal_env.extra_env["PRM_SWEEP_TICK"] = "0.2"
    path = tmp_path / "b.toml"
    # $38.66 at worst each: two at once could cost $77.32, over the $50 budget; the
    # H100:8 trial ($1,638 at worst) never fits and is never started
    path.write_text(SWEEP + '[[trials]]\nmax_steps = 3\n"gpu.type" = "H100"\n'
                            '"gpu.count" = 8\n"modal.timeout" = "12h"\n')
    r = prm("sweep", str(path))
    assert r.code == 0, r.err
    assert "within $50.00" in r.err
    (sw,) = open_index().sweeps()
    modal_env.wait_call(sw.call_id, timeout=120)
    spans = _attempts(modal_env, sw.app_id)
    assert len(spans) == 2
    assert spans[0][1] <= spans[1][0]  # one after the other, not at once
    rows = {r["run_id"]: r for r in prm("ls", "--sweep", sw.sweep_id, "--json").json()}
    assert [rows[f"{sw.sweep_id}-{i}"]["status"] for i in range(3)] == [
        "SUCCEEDED", "SUCCEEDED", "STOPPED"]
    meta = modal_env.volume_path("prime-rl-outputs") / "_prm"
    planned = json.loads((meta / "sweeps" / sw.sweep_id / "sweep.json").read_text())
    worst = [t["max_usd"] for t in planned["trials"]]
    assert worst[0] == worst[1] and 25 < worst[0] <= 50 < 2 * worst[0] and worst[2] > 50
    assert rows[f"{sw.sweep_id}-2"]["note"].startswith(
        f"budget: not started, its worst case ${worst[2]:,.2f} does not fit")
    state = json.loads((meta / "sweeps" / sw.sweep_id / "state.json").read_text())
    assert [t["max_usd"] for t in state["trials"]] == worst
    assert all(t["spent_usd"] > 0 for t in state["trials"][:2])


def test_local_sweep_with_a_budget_runs_its_trials(prm, local_profile, fast_fake, tmp_path):
    r = prm("sweep", str(local_profile), "--grid", "max_steps=3,2", "--max-parallel", "1",
            "--max-usd", "5", "--dry-run")
    assert "moot: nothing is billed" in r.out
    r = prm("sweep", str(local_profile), "--grid", "max_steps=3,2", "--max-parallel", "1",
            "--max-usd", "5")
    assert r.code == 0, r.err
    (sw,) = open_index().sweeps()
    local_trials_succeed(sw, 2)
    sweep = json.loads((Path(sw.outputs) / "_prm" / "sweeps" / sw.sweep_id / "sweep.json")
                       .read_text())
    assert sweep["max_usd"] == 5.0
