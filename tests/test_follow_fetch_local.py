"""`prm ls`, `prm logs`, `prm show`, `prm pull` on the local backend, as a user types them."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from conftest import wait_for

from primerl_modal.run_index import open_index

PRM = [sys.executable, "-m", "primerl_modal"]


def launch(prm, profile: Path, *args: str, attached: bool = True, fails: bool = False) -> str:
    """Run the profile and return the run id. Attached, the run must succeed (exit 0) unless
    the test means it to fail (exit 1); detached, the launch must succeed."""
    r = prm("run", str(profile), *args, *(() if attached else ("--detach",)))
    assert r.code == (1 if fails else 0), r.err
    return open_index().list()[0].run_id


def test_ls_shows_statuses_steps_metrics_costs_and_filters(prm, local_profile, fast_fake,
                                                           monkeypatch):
    ok = launch(prm, local_profile)
    monkeypatch.setenv("FAKE_RL_FAIL_AT_STEP", "3")
    bad = launch(prm, local_profile, fails=True)
    rows = prm("ls", "--json").json()
    assert [r["run_id"] for r in rows] == [bad, ok]  # newest first
    by_id = {r["run_id"]: r for r in rows}
    assert by_id[ok]["status"] == "SUCCEEDED" and by_id[ok]["step"] == [8, 8]
    assert by_id[bad]["status"] == "FAILED" and by_id[bad]["step"][0] == 2
    assert isinstance(by_id[ok]["metric_value"], float)
    assert by_id[ok]["gpu"] == "H100x2 1T/1I"
    assert by_id[ok]["cost_usd"] >= 0 and by_id[ok]["duration_s"] > 0
    assert [r["run_id"] for r in prm("ls", "--status", "failed", "--json").json()] == [bad]
    assert [r["run_id"] for r in prm("ls", "-n", "1", "--json").json()] == [bad]
    assert prm("ls", "--since", "1h", "--json").json()
    unknown = prm("ls", "--sweep", "x", "--json")
    assert unknown.code == 1 and "no sweep 'x'" in unknown.err
    table = prm("ls")
    assert ok in table.out and "SUCCEEDED" in table.out and "H100x2 1T/1I" in table.out
    assert "8/8" in table.out
    assert prm("ls", "--status", "DONE").code == 2


def test_ls_all_finds_a_run_this_machine_never_launched(prm, local_profile, fast_fake,
                                                        tmp_path, monkeypatch):
    run_id = launch(prm, local_profile)
    theirs = Path(open_index().get(run_id).outputs)
    mine = tmp_path / "teammate-home"
    monkeypatch.setenv("PRM_HOME", str(mine))
    shutil.copytree(theirs, mine / "outputs")
    assert prm("ls", "--json").json() == []
    rows = prm("ls", "--all", "--json").json()
    assert [(r["run_id"], r["status"], r["step"]) for r in rows] == [(run_id, "SUCCEEDED", [8, 8])]
    assert open_index().get(run_id) is not None  # added to the index


def test_logs_of_a_finished_run_with_filters(prm, local_profile, fast_fake):
    run_id = launch(prm, local_profile)
    everything = prm("logs", run_id, "--tail", "0").out.splitlines()
    components = {line.split("]")[0] + "]" for line in everything}
    assert components == {"[runner]", "[launcher]", "[trainer]", "[orchestrator]",
                          "[inference]"}
    trainer = prm("logs", run_id, "-c", "trainer", "--tail", "0").out.splitlines()
    assert trainer and all(x.startswith("[trainer] ") for x in trainer)
    assert len(prm("logs", run_id, "--tail", "5").out.splitlines()) == 5
    assert prm("logs", run_id, "--tail", "5").out.splitlines() == everything[-5:]
    grep = prm("logs", run_id, "--grep", "Training finished", "--tail", "0").out.splitlines()
    assert grep == ["[launcher] Training finished"]
    rows = [json.loads(x) for x in prm("logs", run_id, "-c", "runner", "--json").out.splitlines()]
    assert rows and {r["component"] for r in rows} == {"runner"} and rows[0]["attempt"] == 1


def test_logs_since_and_attempt(prm, local_profile, fast_fake, monkeypatch):
    monkeypatch.setenv("FAKE_RL_FAIL_AT_STEP", "3")
    run_id = launch(prm, local_profile, fails=True)
    monkeypatch.delenv("FAKE_RL_FAIL_AT_STEP")
    assert prm("run", "--resume", run_id).code == 0
    first = prm("logs", run_id, "--attempt", "1", "--json", "--tail", "0").out.splitlines()
    second = prm("logs", run_id, "--attempt", "2", "--tail", "0").out
    assert first and all(json.loads(x)["attempt"] == 1 for x in first)
    assert "Resuming from checkpoint" in second and "CUDA error" not in second
    log = Path(open_index().get(run_id).meta_dir) / "logs" / "attempt_1.log"
    old = time.time() - 7200  # pretend attempt 1 ran two hours ago
    log.write_text("".join(f"{old:.3f} {line.split(' ', 1)[1]}\n"
                           for line in log.read_text().splitlines()))
    recent = prm("logs", run_id, "--since", "1h", "--json", "--tail", "0").out.splitlines()
    assert recent and {json.loads(x)["attempt"] for x in recent} == {2}


def test_logs_follow_prints_lines_as_they_come_and_returns_at_the_end(prm, local_profile,
                                                                      fast_fake, monkeypatch):
    monkeypatch.setenv("FAKE_RL_STEP_SECONDS", "0.25")
    run_id = launch(prm, local_profile, "--set", "max_steps=10", attached=False)
    proc = subprocess.Popen([*PRM, "logs", run_id, "-f", "-c", "trainer,runner"],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    first = proc.stdout.readline()
    assert first.startswith(("[trainer]", "[runner]"))
    status_then = json.loads((Path(open_index().get(run_id).meta_dir) / "status.json")
                             .read_text())["status"]
    rest = proc.stdout.read()
    proc.wait(timeout=30)
    assert status_then in ("PENDING", "RUNNING")  # the first line came while it ran
    assert proc.returncode == 0
    assert "SUCCEEDED" in rest.splitlines()[-1]
    assert all(x.startswith(("[trainer]", "[runner]")) for x in rest.splitlines())


def test_show_has_plan_history_attempts_cost_paths_and_next_steps(prm, local_profile,
                                                                  fast_fake):
    run_id = launch(prm, local_profile)
    r = prm("show", run_id[:10])
    assert r.code == 0, r.err
    for needle in (run_id, "SUCCEEDED", "on this machine", "--run.name", "attempts",
                   "status history", "reward/mean", "prm pull", "run dir", "W&B", "cost"):
        assert needle in r.out
    d = prm("show", run_id, "--json").json()
    assert d["run"]["status"] == "SUCCEEDED"
    assert [a["n"] for a in d["status"]["attempts"]] == [1]
    assert d["plan"]["gpu"]["trainer"] == 1 and d["cost"]["max_usd"] == 0  # nothing billed
    assert d["paths"]["run_dir"].endswith(run_id)


def test_pull_everything_byte_for_byte_then_only_the_latest_checkpoint(prm, local_profile,
                                                                       fast_fake, tmp_path):
    run_id = launch(prm, local_profile, "--set", "max_steps=6")  # checkpoints 2, 4, 6
    rec = open_index().get(run_id)
    dest = tmp_path / "pulled"
    r = prm("pull", run_id, str(dest), "--json")
    assert r.code == 0, r.err
    manifest = r.json()
    assert manifest and {m["status"] for m in manifest} == {"downloaded"}
    run_dir, meta = Path(rec.run_dir), Path(rec.meta_dir)
    expected = {p.relative_to(run_dir).as_posix(): p for p in run_dir.rglob("*")
                if p.is_file() and not p.is_symlink()}
    expected |= {"_prm/" + p.relative_to(meta).as_posix(): p for p in meta.rglob("*")
                 if p.is_file()}
    got = {p.relative_to(dest).as_posix(): p for p in dest.rglob("*") if p.is_file()}
    assert ".prm-pull.json" not in {m["path"] for m in manifest}  # prm's record of the pull
    assert set(got) == set(expected) | {".prm-pull.json"}
    del got[".prm-pull.json"]
    assert all(got[k].read_bytes() == expected[k].read_bytes() for k in got)
    assert {k.split("/")[1] for k in got if k.startswith("checkpoints/")} == {
        "step_2", "step_4", "step_6"}
    again = prm("pull", run_id, str(dest), "--json").json()
    assert {m["status"] for m in again} == {"present"}  # a rerun fetches nothing
    latest = tmp_path / "latest"
    assert prm("pull", run_id, str(latest), "--only", "checkpoints", "--step", "latest") \
        .code == 0
    assert {p.relative_to(latest).parts[1] for p in latest.rglob("*")
            if p.is_file() and p.name != ".prm-pull.json"} == {"step_6"}


def test_pull_default_dest_and_unknown_run(prm, local_profile, fast_fake):
    run_id = launch(prm, local_profile)
    assert prm("pull", run_id, "--only", "metrics").code == 0
    assert (Path.cwd() / "outputs" / run_id / "metrics.jsonl").exists()
    r = prm("pull", "nope")
    assert r.code == 1 and "no run 'nope'" in r.err


def test_a_running_run_can_be_pulled(prm, local_profile, fast_fake, monkeypatch, tmp_path):
    """A snapshot of what the run wrote so far, taken while it runs (it is still running once
    the pull is over, so it ran throughout), and the run goes on unharmed."""
    monkeypatch.setenv("FAKE_RL_STEP_SECONDS", "0.2")
    run_id = launch(prm, local_profile, "--set", "max_steps=100000", attached=False)
    meta = Path(open_index().get(run_id).meta_dir)

    def status() -> dict:
        return json.loads((meta / "status.json").read_text()) if (meta / "status.json") \
            .exists() else {}

    wait_for(lambda: status().get("progress", {}).get("step"), timeout=60, what="a step")
    snap = tmp_path / "snap"
    r = prm("pull", run_id, str(snap), "--only", "metrics,logs")
    assert status()["status"] == "RUNNING"  # the pull ran while the run did
    assert r.code == 0, r.err
    pulled = json.loads((snap / "_prm" / "status.json").read_text())
    assert pulled["status"] == "RUNNING" and pulled["progress"]["step"] >= 1
    steps = (snap / "metrics.jsonl").read_text().splitlines()
    assert 1 <= len(steps) < 100000
    wait_for(lambda: status()["progress"]["step"] > pulled["progress"]["step"], timeout=60,
             what="the run to go on after the pull")
    assert prm("stop", run_id).code == 0
    wait_for(lambda: status()["status"] == "STOPPED", timeout=60, what="the stop")


def test_ls_of_final_runs_never_imports_modal(prm, local_profile, fast_fake):
    launch(prm, local_profile)
    code = ("import sys; from primerl_modal.cli import run_cli; rc = run_cli(['ls', '--json']);"
            "print('MODAL' if 'modal' in sys.modules else 'NO-MODAL', rc, file=sys.stderr)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert r.stderr.strip().endswith("NO-MODAL 0"), r.stderr
    assert json.loads(r.stdout)[0]["status"] == "SUCCEEDED"
