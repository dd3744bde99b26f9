"""`prm run --backend local`, `prm stop`, `prm run --resume` through the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import wait_for

from primerl_modal.backends.local import LocalBackend
from primerl_modal.run_index import open_index

PRM = [sys.executable, "-m", "primerl_modal"]


def record(run_id: str):
    return open_index().get(run_id)


def status_file(run_id: str) -> dict:
    return json.loads((Path(record(run_id).meta_dir) / "status.json").read_text())


def detach(prm, profile: Path, *args: str) -> str:
    r = prm("run", str(profile), "--detach", *args)
    assert r.code == 0, r.err
    return r.out.strip()


def test_attached_run_succeeds_and_index_agrees_with_metadata(prm, local_profile, fast_fake):
    r = prm("run", str(local_profile))
    assert r.code == 0, r.err
    for prefix in ("[runner]", "[launcher]", "[trainer]", "[orchestrator]", "[inference]"):
        assert prefix in r.out
    (rec,) = open_index().list()
    assert rec.status == "SUCCEEDED" and rec.backend == "local"
    assert (rec.step, rec.max_steps, rec.attempts) == (8, 8, 1)
    status = status_file(rec.run_id)
    assert status["status"] == rec.status and status["progress"]["step"] == rec.step
    assert rec.metric_value == status["progress"]["value"]
    run_dir = Path(rec.run_dir)
    assert run_dir == local_profile.parent / "outputs" / rec.run_id
    assert (run_dir / "metrics.jsonl").exists()
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        "step_2", "step_4", "step_6", "step_8"]
    assert "SUCCEEDED" in r.err


def test_failing_launcher_exits_1_with_the_failing_lines(prm, local_profile, fast_fake,
                                                          monkeypatch):
    monkeypatch.setenv("FAKE_RL_FAIL_AT_STEP", "3")
    r = prm("run", str(local_profile))
    assert r.code == 1
    (rec,) = open_index().list()
    assert rec.status == "FAILED" and rec.exit_code == 1
    assert "trainer failed" in r.err
    assert any("CUDA error" in x for x in status_file(rec.run_id)["failure"]["lines"])
    assert f"prm run --resume {rec.run_id}" in r.err


def test_stop_then_resume_continues_from_the_checkpoint(prm, local_profile, fast_fake,
                                                        monkeypatch):
    monkeypatch.setenv("FAKE_RL_STEP_SECONDS", "0.15")
    run_id = detach(prm, local_profile, "--set", "max_steps=14")
    wait_for(lambda: status_file(run_id).get("progress", {}).get("ckpt_step"), what="checkpoint")
    launcher = status_file(run_id)["launcher_pid"]
    r = prm("stop", run_id[:12])  # a unique prefix is enough
    assert r.code == 0, r.err
    assert record(run_id).status == "STOPPED"
    with pytest.raises(ProcessLookupError):
        os.killpg(launcher, 0)
    again = prm("stop", run_id)
    assert again.code == 0 and "already STOPPED; nothing to stop" in again.err
    ckpt = status_file(run_id)["progress"]["ckpt_step"]

    monkeypatch.setenv("FAKE_RL_STEP_SECONDS", "0.01")
    r = prm("run", "--resume", run_id)
    assert r.code == 0, r.err
    assert f"Resuming from checkpoint step {ckpt}" in r.out
    rec = record(run_id)
    assert rec.status == "SUCCEEDED" and rec.attempts == 2 and rec.step == 14
    argvs = [argv for x in fast_fake.read_text().splitlines()
             if "--dry-run" not in (argv := json.loads(x)["argv"])]  # the preflight's aside
    assert "--resume" not in argvs[0] and "--resume.step" in argvs[1]
    assert not any("--clean" in a for a in argvs)
    logs = Path(rec.meta_dir) / "logs"
    assert (logs / "attempt_1.log").stat().st_size > 0
    history = [h["status"] for h in status_file(run_id)["history"]]
    assert history == ["PENDING", "RUNNING", "STOPPED", "PENDING", "RUNNING", "SUCCEEDED"]


def test_resume_refuses_a_succeeded_run(prm, local_profile, fast_fake):
    assert prm("run", str(local_profile)).code == 0
    (rec,) = open_index().list()
    r = prm("run", "--resume", rec.run_id)
    assert r.code == 1 and "only FAILED, STOPPED or LOST runs resume" in r.err


def test_killed_runner_is_reported_lost_and_leaves_no_launcher(prm, local_profile, fast_fake,
                                                              monkeypatch):
    monkeypatch.setenv("FAKE_RL_STEP_SECONDS", "0.2")
    run_id = detach(prm, local_profile, "--set", "max_steps=50")
    wait_for(lambda: status_file(run_id).get("launcher_pid"), what="launcher start")
    status = status_file(run_id)
    os.kill(status["runner"]["pid"], signal.SIGKILL)
    wait_for(lambda: not Path(f"/proc/{status['runner']['pid']}/cmdline").exists()
             or not Path(f"/proc/{status['runner']['pid']}/cmdline").read_bytes(),
             what="runner gone")
    (rec,) = LocalBackend(open_index()).refresh([record(run_id)])
    assert rec.status == "LOST"
    assert record(run_id).status == "LOST" and status_file(run_id)["status"] == "LOST"
    # its parent-death signal stops the launcher, which stops its components first: gone
    # soon, not at once (a CI flake when asserted at once on a loaded machine)
    wait_for(lambda: not _group_alive(status["launcher_pid"]), timeout=60,
             what="the launcher's process group to end")
    r = prm("stop", run_id)
    assert "already LOST" in r.err


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_eight_concurrent_detached_launches_all_land_in_the_index(local_profile, fast_fake,
                                                                  prm_home):
    procs = [subprocess.Popen([*PRM, "run", str(local_profile), "--detach"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(8)]
    ids = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        ids.append(out.strip())
    assert len(set(ids)) == 8
    assert {r.run_id for r in open_index().list()} == set(ids)
    backend = LocalBackend(open_index())
    wait_for(lambda: all(r.status == "SUCCEEDED" for r in backend.refresh(open_index().list())),
             timeout=60, what="all eight runs to finish")


def test_ctrl_c_stops_following_and_the_run_goes_on(local_profile, fast_fake, monkeypatch):
    monkeypatch.setenv("FAKE_RL_STEP_SECONDS", "0.1")
    proc = subprocess.Popen([*PRM, "run", str(local_profile), "--set", "max_steps=20"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("[trainer]"):
            break
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 130
    assert "keeps running" in err and "Traceback" not in err
    (rec,) = open_index().list()
    backend = LocalBackend(open_index())
    wait_for(lambda: backend.refresh([record(rec.run_id)])[0].status == "SUCCEEDED",
             timeout=30, what="the run to finish without its follower")


def test_plan_needing_more_gpus_than_the_machine_has_launches_nothing(
        prm, local_profile, tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-1)'\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    r = prm("run", str(local_profile))
    assert r.code == 1
    assert "the plan needs 2 GPUs but this machine has 1" in r.err
    assert open_index().list() == []


def test_local_backend_without_a_checkout_is_a_clean_error(prm):
    r = prm("run", "--backend", "local", "--dry-run")
    assert r.code == 1 and "needs a prime-rl checkout" in r.err


def test_unknown_run_and_ambiguous_prefix(prm, local_profile, fast_fake):
    assert prm("stop", "nope").err.startswith("prm: error: no run 'nope' in the index")
    detach(prm, local_profile)
    detach(prm, local_profile)
    r = prm("stop", "lrt-")
    assert r.code == 1 and "matches several runs" in r.err


def test_corrupt_index_is_a_one_line_error(prm, prm_home, local_profile):
    (prm_home / "index.sqlite3").write_bytes(b"not sqlite at all" * 64)
    r = prm("run", str(local_profile), "--detach")
    assert r.code == 1
    assert "is unreadable" in r.err and "mv " in r.err and "Traceback" not in r.err
