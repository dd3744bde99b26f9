"""prm never signals a process it cannot prove is the run's, never leaves a launcher training
unsupervised, never loses a stop, and never leaves a phantom run (issue: reliability)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import finished, launched, wait_for

from primerl_modal.run_index import open_index


def record(run_id: str) -> Any:
    return open_index().get(run_id)


def status_file(run_id: str) -> dict[str, Any]:
    return json.loads((Path(record(run_id).meta_dir) / "status.json").read_text())


def write_status(run_id: str, data: dict[str, Any]) -> None:
    (Path(record(run_id).meta_dir) / "status.json").write_text(json.dumps(data))


def detach(prm: Any, profile: Path, *args: str) -> str:
    r = prm("run", str(profile), "--detach", *args)
    assert r.code == 0, r.err
    return r.out.strip()


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def stranger() -> Any:
    """An unrelated process in a group of its own, as a reused pid would be."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"],
                            start_new_session=True)
    yield proc
    proc.kill()
    proc.wait()


def _dead_run(prm: Any, local_profile: Path, monkeypatch: Any) -> str:
    """A local run whose runner and launcher are gone without a final status."""
    monkeypatch.setenv("FAKE_RL_STEP_SECONDS", "0.2")
    run_id = detach(prm, local_profile, "--set", "max_steps=50")
    wait_for(lambda: (status_file(run_id).get("progress") or {}).get("step"), what="a step")
    status = status_file(run_id)
    os.kill(status["runner"]["pid"], signal.SIGKILL)
    wait_for(lambda: not group_alive(status["launcher_pid"]), what="the launcher's end")
    return run_id


def test_a_reused_pid_is_never_signalled(prm, local_profile, fast_fake, monkeypatch,
                                         stranger):
    """The recorded runner and launcher pids now belong to an unrelated process: `prm ls`
    and `prm stop` mark the run LOST and leave that process alone."""
    run_id = _dead_run(prm, local_profile, monkeypatch)
    status = status_file(run_id)
    status["runner"]["pid"] = stranger.pid  # its start time is not the recorded one
    status["launcher_pid"] = stranger.pid  # its group carries no marker of the run
    write_status(run_id, status)
    r = prm("ls", "--json")
    assert r.code == 0, r.err
    assert [row["status"] for row in r.json()] == ["LOST"]
    assert "not provably the run's" in status_file(run_id)["history"][-1]["note"]
    assert prm("stop", run_id).code == 0
    time.sleep(0.5)
    assert stranger.poll() is None  # still running: never signalled


def test_a_runner_recorded_without_a_start_time_needs_its_plan_in_its_command_line(
        prm, local_profile, fast_fake, monkeypatch, tmp_path):
    """An older status (no start time) naming a live pid that is the runner of another run
    is not taken for this run's runner: `prm stop` does not signal it."""
    run_id = _dead_run(prm, local_profile, monkeypatch)
    other = subprocess.Popen(  # looks like a prm runner, of another run
        [sys.executable, "-c", "import time; time.sleep(120)", "-m", "primerl_modal.runner",
         "--plan", str(tmp_path / "_prm" / "another-run" / "plan.json")],
        start_new_session=True)
    try:
        status = status_file(run_id)
        status["runner"] = {"pid": other.pid}
        status["status"] = "RUNNING"
        write_status(run_id, status)
        open_index().update(run_id, status="RUNNING")
        r = prm("stop", run_id)
        assert r.code == 0, r.err
        time.sleep(0.5)
        assert other.poll() is None  # never signalled
        assert status_file(run_id)["status"] == "LOST"
    finally:
        other.kill()
        other.wait()


def test_the_launcher_dies_with_its_runner_and_lost_closes_the_attempt(
        prm, local_profile, fast_fake, monkeypatch):
    """No prm command runs after the kill: the launcher ends by itself (parent-death signal).
    Then the first look records LOST and closes the attempt in the run's own files."""
    run_id = _dead_run(prm, local_profile, monkeypatch)  # waits for the launcher to end
    steps_then = len((Path(record(run_id).run_dir) / "metrics.jsonl").read_text().split())
    time.sleep(1.0)  # a launcher still training would add steps now
    steps_now = len((Path(record(run_id).run_dir) / "metrics.jsonl").read_text().split())
    assert steps_now == steps_then
    assert prm("ls").code == 0
    status = status_file(run_id)
    assert status["status"] == "LOST" and record(run_id).status == "LOST"
    attempt = status["attempts"][-1]
    assert attempt["outcome"] == "LOST" and attempt["ended_at"]


def test_a_stop_while_a_resume_starts_is_never_lost(prm, local_profile, fast_fake,
                                                    monkeypatch):
    monkeypatch.setenv("FAKE_RL_STEP_SECONDS", "0.2")
    run_id = detach(prm, local_profile, "--set", "max_steps=400")
    wait_for(lambda: status_file(run_id).get("launcher_pid"), what="launcher start")
    assert prm("stop", run_id).code == 0
    assert record(run_id).status == "STOPPED"
    r = prm("run", "--resume", run_id, "--detach")
    assert r.code == 0, r.err
    r = prm("stop", run_id)  # at once: the new runner may not even have started
    assert r.code == 0, r.err
    assert f"{run_id} STOPPED" in r.err
    wait_for(lambda: status_file(run_id)["status"] == "STOPPED", what="STOPPED")
    time.sleep(1.5)  # a resume that was not stopped would be RUNNING by now
    status = status_file(run_id)
    assert status["status"] == "STOPPED", status["history"]
    assert record(run_id).status == status["status"]
    assert (status.get("progress") or {}).get("step", 0) < 400


def test_a_failed_launch_leaves_no_run_behind(prm, local_profile, fast_fake, monkeypatch):
    from primerl_modal import run_index
    from primerl_modal.errors import PrmError

    def broken(self: Any, rec: Any) -> None:
        raise PrmError("cannot write the run index (disk I/O error)")

    with monkeypatch.context() as patched:  # only this; $PRM_HOME stays the test's own
        patched.setattr(run_index.RunIndex, "upsert", broken)
        r = prm("run", str(local_profile), "--detach")
    assert r.code == 1 and "disk I/O error" in r.err
    outputs = local_profile.parent / "outputs" / "_prm"
    assert not outputs.exists() or not any(outputs.iterdir())
    assert prm("ls", "--all", "--json").json() == []


def test_lost_on_modal_is_written_to_the_volume(prm, modal_env):
    """The app ends without the runner writing a final status: LOST, with the attempt
    closed, in status.json on the volume, not only in the index."""
    modal_env.extra_env["FAKE_RL_STEP_SECONDS"] = "0.2"
    run_id = launched(prm, "reverse-text", "--set", "max_steps=400")
    path = modal_env.volume_path("prime-rl-outputs") / "_prm" / run_id / "status.json"
    wait_for(lambda: path.exists() and json.loads(path.read_text()).get("status") == "RUNNING",
             timeout=60, what="a committed RUNNING status")
    modal_env.end_calls()  # every container killed at once: no grace, no last word
    rec = finished(modal_env, run_id)
    assert rec.status == "LOST"
    status = json.loads(path.read_text())
    assert status["status"] == "LOST" and status["attempts"][-1]["outcome"] == "LOST"


def test_an_index_that_disagrees_with_the_runs_own_status_is_corrected(prm, local_profile,
                                                                      fast_fake):
    r = prm("run", str(local_profile))
    assert r.code == 0, r.err
    (rec,) = open_index().list()
    open_index().update(rec.run_id, status="LOST")  # what a lost race left behind
    r = prm("show", rec.run_id, "--json")
    assert r.code == 0, r.err
    assert r.json()["run"]["status"] == "SUCCEEDED"
    assert record(rec.run_id).status == "SUCCEEDED"
