"""Sweeps: expansion, planning, launching with a parallelism limit held by a controller on
(fake) Modal or in a detached local process, stop and resume."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import launched, local_trials_succeed, wait_for  # noqa: F401

from primerl_modal.core.sweep import SweepSpec, expand, load_sweep_text
from primerl_modal.errors import PrmError
from primerl_modal.run_index import open_index
from primerl_modal.sweeps import plan_sweep

GRID = """
name = "lr"
profile = "reverse-text"
max_parallel = 2
[parameters]
"trainer.optim.lr" = [1e-6, 3e-6, 1e-5]
orchestrator.batch_size = [64, 128]
"""


def test_grid_3x2_gives_6_trials_with_the_overrides_in_each_argv():
    plan = plan_sweep(load_sweep_text(GRID, "lr.toml", "lr"))
    assert len(plan.trials) == 6
    seen = set()
    for t in plan.trials:
        argv = list(t.plan.argv)
        lr = argv[argv.index("--trainer.optim.lr") + 1]
        batch = argv[argv.index("--orchestrator.batch-size") + 1]
        seen.add((lr, batch))
        assert t.plan.run_id == f"{plan.sweep_id}-{t.index}" and t.plan.sweep_id == plan.sweep_id
        assert argv[argv.index("--run.name") + 1] == t.plan.run_id
    assert seen == {(lr, b) for lr in ("1e-06", "3e-06", "1e-05") for b in ("64", "128")}


def test_random_with_a_seed_gives_the_same_trials_twice():
    text = """profile = "reverse-text"
method = "random"
samples = 5
seed = 7
[parameters]
"trainer.optim.lr" = { distribution = "log_uniform", min = 1e-7, max = 1e-4 }
"orchestrator.temperature" = { distribution = "uniform", min = 0.5, max = 1.2 }
"orchestrator.rollouts_per_example" = { distribution = "int_uniform", min = 4, max = 16 }
"gpu.tp" = { distribution = "choice", values = [1] }
"""
    a, b = (expand(load_sweep_text(text, "r.toml", "r")) for _ in range(2))
    assert a == b and len(a) == 5
    assert all(1e-7 <= t["trainer.optim.lr"] <= 1e-4 for t in a)
    assert all(isinstance(t["orchestrator.rollouts_per_example"], int) for t in a)
    assert len({t["trainer.optim.lr"] for t in a}) == 5
    other = expand(load_sweep_text(text.replace("seed = 7", "seed = 8"), "r.toml", "r"))
    assert other != a


def test_list_gives_exactly_its_trials():
    text = """profile = "reverse-text"
method = "list"
[[trials]]
"trainer.optim.lr" = 1e-6
[[trials]]
"trainer.optim.lr" = 2e-6
max_steps = 9
"""
    assert expand(load_sweep_text(text, "l.toml", "l")) == [
        {"trainer.optim.lr": 1e-6}, {"trainer.optim.lr": 2e-6, "max_steps": 9}]


def test_a_grid_over_gpu_count_changes_each_trials_gpu_request():
    spec = SweepSpec(name="g", profile="hendrycks-sanity",
                     parameters={"gpu.count": (4, 8), "gpu.type": ("H100", "H200")})
    plans = [t.plan for t in plan_sweep(spec).trials]
    assert [p.gpu.modal_gpu for p in plans] == ["H100:4", "H200:4", "H100:8", "H200:8"]
    assert [(p.gpu.trainer, p.gpu.inference) for p in plans] == [(2, 2), (2, 2), (4, 4), (4, 4)]


def test_one_invalid_trial_stops_the_whole_sweep_with_its_index(prm):
    r = prm("sweep", "reverse-text", "--grid", "gpu.count=2,9", "--dry-run")
    assert r.code == 1
    assert "trial 1 (gpu.count=9)" in r.err and "at most 8" in r.err


def test_dry_run_table_and_json_totals(prm):
    r = prm("sweep", "reverse-text", "--grid", "trainer.optim.lr=1e-6,3e-6,1e-5", "--dry-run")
    assert r.code == 0, r.err
    assert "trainer.optim.lr" in r.out and "total:" in r.out and r.out.count("A100-40GBx2") == 3
    d = prm("sweep", "reverse-text", "--grid", "trainer.optim.lr=1e-6,3e-6", "--dry-run",
            "--json").json()
    assert d["total"]["trials"] == 2
    assert d["total"]["max_usd"] == pytest.approx(sum(t["max_usd"] for t in d["trials"]))


def test_more_than_max_trials_needs_yes(prm):
    r = prm("sweep", "reverse-text", "--grid", "max_steps=" + ",".join(map(str, range(1, 71))))
    assert r.code == 2 and "70 trials, more than --max-trials 64" in r.err and "--yes" in r.err
    assert open_index().list() == []


@pytest.mark.parametrize(("text", "needle"), [
    ('profile = "x"\nmethod = "bayes"', "method 'bayes'"),
    ('method = "grid"', "no base profile"),
    ('profile = "x"\nmethod = "random"', "needs samples"),
    ('profile = "x"\n[parameters]\nlr = { distribution = "normal", min = 1, max = 2 }',
     "unknown distribution 'normal'"),
    ('profile = "x"\nmax_paralel = 3', "unknown key 'max_paralel'"),
])
def test_bad_sweep_files(text, needle):
    with pytest.raises(PrmError, match=needle):
        load_sweep_text(text, "s.toml", "s")


def _trial_intervals(fake, app_id: str) -> list[tuple[float, float]]:
    out = []
    for call in fake.calls.values():
        fn = fake.functions[call["function_id"]]
        if fn["app_id"] == app_id and fn["function_name"].startswith("trial-"):
            for a in call["attempts"]:
                out.append((a["started"], a["ended"]))
    return out


def _max_overlap(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    best = now = 0
    for _, step in events:
        now += step
        best = max(best, now)
    return best


def test_modal_sweep_holds_max_parallel_and_ranks_by_metric(prm, modal_env, tmp_path):
    modal_env.extra_env["PRM_SWEEP_TICK"] = "0.2"
    sweep = tmp_path / "s.toml"
    sweep.write_text("""name = "rank"
profile = "reverse-text"
method = "list"
max_parallel = 2
""" + "".join(f"[[trials]]\nmax_steps = {n}\n" for n in (3, 7, 5, 4, 8, 6)))
    r = prm("sweep", str(sweep))
    assert r.code == 0, r.err
    (sw,) = open_index().sweeps()
    assert sw.max_parallel == 2 and sw.trials == 6
    modal_env.wait_call(sw.call_id, timeout=120)
    intervals = _trial_intervals(modal_env, sw.app_id)
    assert len(intervals) == 6
    assert _max_overlap(intervals) == 2  # never more than 2 trials at once
    rows = prm("sweep", "show", sw.sweep_id, "--json").json()
    assert [r["status"] for r in rows] == ["SUCCEEDED"] * 6
    assert [r["step"][0] for r in rows] == [8, 7, 6, 5, 4, 3]  # the metric grows with steps
    assert [r["metric_value"] for r in rows] == sorted((r["metric_value"] for r in rows),
                                                       reverse=True)
    table = prm("sweep", "ls", "--json").json()
    assert table[0]["statuses"] == {"SUCCEEDED": 6}


def test_a_failing_trial_leaves_the_others_running_to_the_end(prm, modal_env, tmp_path):
    modal_env.extra_env["PRM_SWEEP_TICK"] = "0.2"
    sweep = tmp_path / "f.toml"
    sweep.write_text('name = "ff"\nprofile = "reverse-text"\nmethod = "list"\nmax_parallel = 2\n'
                     + "[[trials]]\nmax_steps = 4\n" * 2
                     + '[[trials]]\nmax_steps = 4\n"env.FAKE_RL_FAIL_AT_STEP" = "2"\n'
                     + "[[trials]]\nmax_steps = 4\n" * 3)
    assert prm("sweep", str(sweep), "--set", "modal.retries=0").code == 0
    (sw,) = open_index().sweeps()
    modal_env.wait_call(sw.call_id, timeout=120)
    rows = {r["run_id"]: r["status"] for r in prm("ls", "--sweep", sw.sweep_id, "--json").json()}
    assert rows[f"{sw.sweep_id}-2"] == "FAILED"
    assert sorted(rows.values()) == ["FAILED"] + ["SUCCEEDED"] * 5


def test_stop_sweep_then_resume_relaunches_only_those(prm, modal_env, tmp_path):
    modal_env.extra_env.update(PRM_SWEEP_TICK="0.2", FAKE_RL_STEP_SECONDS="0.1")
    sweep = tmp_path / "st.toml"
    sweep.write_text('name = "st"\nprofile = "reverse-text"\nmethod = "list"\nmax_parallel = 2\n'
                     + "[[trials]]\nmax_steps = 2\n" * 2 + "[[trials]]\nmax_steps = 300\n" * 4)
    assert prm("sweep", str(sweep)).code == 0
    (sw,) = open_index().sweeps()

    def statuses() -> dict[str, str]:
        return {r["run_id"]: r["status"]
                for r in prm("ls", "--sweep", sw.sweep_id, "--json").json()}

    wait_for(lambda: list(statuses().values()).count("RUNNING") == 2
             and list(statuses().values()).count("SUCCEEDED") == 2, timeout=60,
             what="two trials done and two running")
    r = prm("stop", "--sweep", sw.sweep_id[:10])
    assert r.code == 0, r.err
    after = statuses()
    assert sorted(after.values()) == ["STOPPED"] * 4 + ["SUCCEEDED"] * 2
    meta = modal_env.volume_path("prime-rl-outputs") / "_prm"

    def stored(run_id: str) -> dict:
        return json.loads((meta / run_id / "status.json").read_text())

    before = {run_id: stored(run_id) for run_id in after}
    modal_env.extra_env["FAKE_RL_STEP_SECONDS"] = "0.002"
    r = prm("sweep", "--resume", sw.sweep_id, "--json")
    assert r.code == 0, r.err
    resumed = r.json()
    assert sorted(resumed) == sorted(k for k, v in after.items() if v == "STOPPED")
    sw = open_index().sweeps()[0]
    modal_env.wait_call(sw.call_id, timeout=120)
    final = statuses()
    assert set(final.values()) == {"SUCCEEDED"}
    for run_id, old in before.items():
        status = stored(run_id)
        if run_id not in resumed:  # a trial that had succeeded is left alone
            assert status == old
            continue
        # Every resumed trial, not one of them: it went on from where its stop left it
        # (its earlier attempts kept, the new one resuming from its checkpoint, if any) and
        # ran to its last step.
        assert [h["status"] for h in status["history"]][:len(old["history"])] == [
            h["status"] for h in old["history"]]
        assert status["history"][-1]["status"] == "SUCCEEDED"
        assert status["progress"]["step"] == 300
        assert status["attempts"][:-1] == old["attempts"]
        last = status["attempts"][-1]
        assert last["outcome"] == "SUCCEEDED"
        ckpt = (old.get("progress") or {}).get("ckpt_step")
        assert last["resumed_from"] == ckpt, (run_id, last, ckpt)


def test_local_sweep_with_max_parallel_1_runs_trials_one_after_another(prm, local_profile,
                                                                       fast_fake, tmp_path):
    sweep = tmp_path / "loc.toml"
    sweep.write_text(f'name = "loc"\nprofile = "{local_profile}"\nmax_parallel = 1\n'
                     '[parameters]\nmax_steps = [3, 4, 5]\n')
    r = prm("sweep", str(sweep))
    assert r.code == 0, r.err
    (sw,) = open_index().sweeps()
    assert sw.backend == "local" and sw.pid
    wait_for(lambda: all(r["status"] == "SUCCEEDED" for r in
                         prm("ls", "--sweep", sw.sweep_id, "--json").json()),
             timeout=60, what="the three trials")
    spans = []
    for rec in open_index().list(sweep_id=sw.sweep_id):
        status = json.loads((Path(rec.meta_dir) / "status.json").read_text())
        (attempt,) = status["attempts"]
        spans.append((attempt["started_at"], attempt["ended_at"]))
    spans.sort()
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False))


def test_the_sweeps_metric_is_what_every_trial_tracks():
    text = GRID.replace('max_parallel = 2', 'max_parallel = 2\nmetric = "reward/max"')
    spec = load_sweep_text(text, "lr.toml", "lr")
    assert spec.metric == "reward/max"
    assert all(t.plan.metric == spec.metric for t in plan_sweep(spec).trials)


def test_local_trials_at_once_must_not_share_gpus(prm, local_profile):
    r = prm("sweep", str(local_profile), "--grid", "max_steps=3,4", "--max-parallel", "2")
    assert r.code == 1 and "would share GPUs" in r.err and "--max-parallel 1" in r.err
    assert open_index().list() == []


def test_resume_refuses_options_it_would_ignore(prm):
    r = prm("sweep", "--resume", "x", "--dry-run")
    assert r.code == 2 and "--resume SWEEP takes no" in r.err


def test_max_trials_is_checked_before_any_trial_is_planned(prm, monkeypatch):
    """A big grid is refused at once: it is counted, not planned."""
    import primerl_modal.sweeps

    def planned(*args: object, **kwargs: object) -> None:
        raise AssertionError("a trial was planned before --max-trials was checked")

    monkeypatch.setattr(primerl_modal.sweeps, "_plan_trial", planned)
    values = ", ".join(map(str, range(1, 11)))
    Path("huge.toml").write_text('profile = "reverse-text"\n[parameters]\n'
                                 f"max_steps = [{values}]\nseed = [{values}]\n"
                                 f"async_level = [{values}]\n")
    r = prm("sweep", "huge.toml")
    assert r.code == 2, r.err
    assert "the sweep has 1000 trials, more than --max-trials 64" in r.err
    r = prm("sweep", "reverse-text", "--grid", "max_steps=1", "--max-trials", "0")
    assert r.code == 2 and "the sweep has 1 trial, more than --max-trials 0" in r.err


def test_a_big_dry_run_prints_its_first_and_last_trials_and_the_totals(prm):
    steps = ",".join(map(str, range(1, 121)))
    r = prm("sweep", "reverse-text", "--grid", f"max_steps={steps}", "--dry-run")
    assert r.code == 0, r.err
    shown = [int(m) for m in re.findall(r"^\S\s+(\d+) \S", r.out, re.M)]
    assert shown == [*range(25), *range(95, 120)]
    assert "70 more (--json lists them all)" in r.out
    assert "(grid, 120 trials, at most 4 at once)" in r.out
    assert re.search(r"^total: 120 trials, \$[\d,.]+/h if all ran at once", r.out, re.M)
    assert len(r.out.splitlines()) < 60
    plan = prm("sweep", "reverse-text", "--grid", f"max_steps={steps}", "--dry-run",
               "--json").json()
    assert [t["index"] for t in plan["trials"]] == list(range(120))
    one = prm("sweep", "reverse-text", "--grid", "max_steps=5", "--dry-run")
    assert "(grid, 1 trial, at most 4 at once)" in one.out and "total: 1 trial," in one.out


def test_sweep_show_has_a_column_for_each_swept_value(prm, local_profile, fast_fake):
    r = prm("sweep", str(local_profile), "--grid", "max_steps=3,2", "--grid",
            "env.PRM_SWEPT=a,b", "--max-parallel", "1")
    assert r.code == 0, r.err
    (sw,) = open_index().sweeps()
    local_trials_succeed(sw, 4)
    rows = prm("sweep", "show", sw.sweep_id, "--json").json()
    assert sorted((r["run_id"], r["max_steps"], r["env.PRM_SWEPT"]) for r in rows) == [
        (f"{sw.sweep_id}-0", 3, "a"), (f"{sw.sweep_id}-1", 3, "b"),
        (f"{sw.sweep_id}-2", 2, "a"), (f"{sw.sweep_id}-3", 2, "b")]
    table = prm("sweep", "show", sw.sweep_id).out.splitlines()
    assert table[0].split()[:3] == ["run", "max_steps", "env.PRM_SWEPT"]
    assert sorted(line.split()[1:3] for line in table[1:]) == [
        ["2", "'a'"], ["2", "'b'"], ["3", "'a'"], ["3", "'b'"]]

