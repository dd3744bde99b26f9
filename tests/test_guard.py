"""The guard, enforced by the runner on both backends: stalls end FAILED and are not
retried, failures before the first step get startup_retries, a budget ends STOPPED, and
the GPUs' own figures (a fake nvidia-smi) are recorded per role."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from conftest import launched, wait_for

from primerl_modal.run_index import open_index

FAKE_SMI = Path(__file__).parent / "fake_nvidia_smi"


def status_file(run_id: str) -> dict[str, Any]:
    return json.loads((Path(open_index().get(run_id).meta_dir) / "status.json").read_text())


def run_local(prm: Any, profile: Path, *args: str) -> tuple[str, Any]:
    r = prm("run", str(profile), *args)
    (rec,) = [x for x in open_index().list()]
    return rec.run_id, r


def committed(fake: Any, run_id: str) -> dict[str, Any]:
    path = fake.volume_path("prime-rl-outputs") / "_prm" / run_id / "status.json"
    return json.loads(path.read_text()) if path.exists() else {}


def modal_final(prm: Any, fake: Any, run_id: str, timeout: float = 120) -> dict[str, Any]:
    fake.wait_call(open_index().get(run_id).call_id, timeout=timeout)
    assert prm("ls").code == 0
    return committed(fake, run_id)


# ------------------------------------------------------------------------- local backend


def test_a_run_that_stops_stepping_ends_failed_stalled(prm, local_profile, fast_fake,
                                                       monkeypatch):
    monkeypatch.setenv("FAKE_RL_HANG_AT_STEP", "3")
    run_id, r = run_local(prm, local_profile, "--set", "guard.stall_timeout=2s")
    assert r.code == 1
    status = status_file(run_id)
    assert status["status"] == "FAILED" and len(status["attempts"]) == 1
    note = status["history"][-1]["note"]
    assert note.startswith("stalled: no step for 2s (last step 2)"), note
    assert set(status["stall"]["lines"]) >= {"trainer", "orchestrator", "inference"}
    rows = prm("ls", "--json").json()
    assert rows[0]["note"] == note  # `prm ls` says why
    shown = prm("show", run_id)
    assert "stalled" in shown.out and "[trainer]" in shown.out


def test_a_run_that_never_makes_a_first_step_ends_failed(prm, local_profile, fast_fake,
                                                         monkeypatch):
    monkeypatch.setenv("FAKE_RL_HANG", "1")
    run_id, r = run_local(prm, local_profile, "--set", "guard.startup_timeout=2s")
    assert r.code == 1
    status = status_file(run_id)
    assert status["status"] == "FAILED"
    assert status["history"][-1]["note"].startswith("stalled: no first step within 2s")


def test_gpu_figures_per_role_while_it_runs(prm, local_profile, fast_fake, monkeypatch):
    monkeypatch.setenv("PATH", f"{FAKE_SMI}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_NVIDIA_SMI", "3,1000;87,30000")  # GPU 0 inference, 1 trainer
    monkeypatch.setenv("PRM_GPU_SAMPLE_S", "0.2")
    monkeypatch.setenv("FAKE_RL_STEP_SECONDS", "0.2")
    r = prm("run", str(local_profile), "--detach", "--set", "max_steps=200")
    assert r.code == 0, r.err
    run_id = r.out.strip()
    roles = wait_for(lambda: (status_file(run_id).get("gpus") or {}).get("roles"),
                     what="a GPU sample")
    assert roles["trainer"]["util_pct"] == 87.0 and roles["inference"]["util_pct"] == 3.0
    assert roles["trainer"]["peak_mem_gib"] == pytest.approx(30000 / 1024, abs=0.01)
    shown = prm("show", run_id)
    assert "trainer: 87.0% busy" in shown.out and "peak 29.3" in shown.out
    (row,) = prm("ls", "--json").json()
    assert row["gpu_util"] == 45.0  # the mean of the run's GPUs
    assert prm("stop", run_id).code == 0


def test_a_stall_reason_says_the_gpus_were_idle(prm, local_profile, fast_fake, monkeypatch):
    monkeypatch.setenv("PATH", f"{FAKE_SMI}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_NVIDIA_SMI", "0,1000;0,30000")
    monkeypatch.setenv("PRM_GPU_SAMPLE_S", "0.2")
    monkeypatch.setenv("FAKE_RL_HANG_AT_STEP", "3")
    run_id, r = run_local(prm, local_profile, "--set", "guard.stall_timeout=2s")
    assert "GPUs: trainer 0%, inference 0% busy" in status_file(run_id)["history"][-1]["note"]


# ------------------------------------------------------------------------------- Modal


def test_a_stall_on_modal_is_one_attempt_not_retried(prm, modal_env):
    modal_env.extra_env["FAKE_RL_HANG_AT_STEP"] = "3"
    run_id = launched(prm, "reverse-text", "--retries", "3",
                      "--set", "guard.stall_timeout=2s")
    status = modal_final(prm, modal_env, run_id)
    assert status["status"] == "FAILED" and len(status["attempts"]) == 1
    assert status["history"][-1]["note"].startswith("stalled: no step for 2s")
    assert len(modal_env.calls[open_index().get(run_id).call_id]["attempts"]) == 1


def test_a_run_that_never_steps_on_modal_ends_after_the_startup_timeout(prm, modal_env):
    modal_env.extra_env["FAKE_RL_HANG"] = "1"
    run_id = launched(prm, "reverse-text", "--retries", "3",
                      "--set", "guard.startup_timeout=2s")
    status = modal_final(prm, modal_env, run_id)
    assert status["status"] == "FAILED" and len(status["attempts"]) == 1
    assert "no first step" in status["history"][-1]["note"]


def test_a_failure_before_the_first_step_is_tried_twice(prm, modal_env):
    modal_env.extra_env["FAKE_RL_FAIL_BEFORE_STEP"] = "1"
    run_id = launched(prm, "reverse-text", "--retries", "3")
    status = modal_final(prm, modal_env, run_id)
    assert status["status"] == "FAILED"
    assert [a["outcome"] for a in status["attempts"]] == ["RECOVERING", "FAILED"]
    assert "before its first step" in status["history"][-1]["note"]


def test_a_failure_after_progress_gets_every_retry(prm, modal_env):
    modal_env.extra_env["FAKE_RL_FAIL_AFTER_STEPS"] = "2"
    run_id = launched(prm, "reverse-text", "--retries", "3", "--set", "max_steps=40")
    status = modal_final(prm, modal_env, run_id, timeout=180)
    assert status["status"] == "FAILED"
    assert len(status["attempts"]) == 4 and all(a["progressed"] for a in status["attempts"])


def test_a_budget_stops_the_run_within_a_progress_interval(prm, modal_env):
    modal_env.extra_env["FAKE_RL_STEP_SECONDS"] = "0.2"
    run_id = launched(prm, "reverse-text", "--set", "max_steps=400",
                      "--set", "guard.max_usd=0.003")  # about 2 s of this node
    status = modal_final(prm, modal_env, run_id)
    assert status["status"] == "STOPPED", status["history"]
    note = status["history"][-1]["note"]
    assert note.startswith("budget: $") and note.endswith("of $0.0030")
    spent = float(note.split("$")[1].split()[0])
    assert 0.003 <= spent < 0.003 + 4.9 / 3600 * 2  # at most ~2 s past the cap
    assert len(status["attempts"]) == 1
