"""The runner against the fake prime-rl launcher: forwarding, progress, signals, resume."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_for

from primerl_modal.core.logs import parse_attempt_log
from primerl_modal.core.profile import Setting, parse_set
from primerl_modal.paths import PACKAGED_PROFILES
from primerl_modal.planning import plan_profile
from primerl_modal.runner.core import RunnerOptions, run


def make_plan(profile: Path, *extra: Setting) -> dict[str, Any]:
    plan, _ = plan_profile(str(profile), list(extra))
    return plan.to_json(with_input_texts=True)


def start_runner(plan: dict[str, Any], tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    plan_file = tmp_path / f"plan-{plan['run_id']}.json"
    plan_file.write_text(json.dumps(plan))
    return subprocess.Popen(
        [sys.executable, "-m", "primerl_modal.runner", "--plan", str(plan_file),
         "--outputs-root", plan["outputs_root"], *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def status_of(plan: dict[str, Any]) -> dict[str, Any]:
    path = Path(plan["meta_dir"]) / "status.json"
    return json.loads(path.read_text()) if path.exists() else {}


def calls(record: Path) -> list[list[str]]:
    return [json.loads(line)["argv"] for line in record.read_text().splitlines()]


def test_success_forwards_every_component_and_tracks_progress(local_profile, fast_fake):
    plan = make_plan(local_profile)
    commits: list[int] = []
    out = io.StringIO()
    code = run(plan, lambda: commits.append(1),
               RunnerOptions(Path(plan["outputs_root"]), commit_every=0.1), out)
    assert code == 0
    text = out.getvalue()
    for prefix in ("[runner]", "[launcher]", "[trainer]", "[orchestrator]", "[inference]"):
        assert prefix in text
    assert "[launcher] Training finished" in text
    status = status_of(plan)
    assert status["status"] == "SUCCEEDED"
    assert status["progress"]["step"] == 8 and status["progress"]["max_steps"] == 8
    assert status["progress"]["ckpt_step"] == 8
    assert isinstance(status["progress"]["value"], float)
    run_dir = Path(plan["run_dir"])
    assert (run_dir / "metrics.jsonl").exists() and (run_dir / "checkpoints" / "step_8").is_dir()
    meta = Path(plan["meta_dir"])
    stored = list(parse_attempt_log((meta / "logs" / "attempt_1.log").read_text(), 1))
    assert [line.render() for line in stored] == text.splitlines()
    assert all(isinstance(line.t, float) for line in stored)  # each stored line has its time
    assert not (run_dir / "_prm").exists()  # prm's files never sit in prime-rl's run dir
    assert len(commits) >= 2  # on the cadence, and once at the end
    events = [json.loads(x)["event"] for x in (meta / "events.jsonl").read_text().splitlines()]
    assert "attempt_started" in events and "attempt_ended" in events


def test_lines_are_neither_lost_nor_duplicated(local_profile, fast_fake):
    plan = make_plan(local_profile)
    out = io.StringIO()
    run(plan, lambda: None, RunnerOptions(Path(plan["outputs_root"])), out)
    forwarded = [line for line in out.getvalue().splitlines() if line.startswith("[trainer] ")]
    logs = Path(plan["run_dir"]) / "logs" / "attempt_1"
    written = (logs / "trainer.log").read_text().splitlines()
    nested = [p for p in (logs / "trainer").rglob("*.log")]
    for p in nested:
        written += p.read_text().splitlines()
    assert sorted(line.removeprefix("[trainer] ") for line in forwarded) == sorted(written)


def test_2025_10_dialect_component_logs_are_forwarded(tmp_path, checkout, fast_fake):
    profile = tmp_path / "legacy.toml"
    parent = PACKAGED_PROFILES / "hendrycks-math-1b-2025-10.toml"
    profile.write_text(
        f'extends = "{parent}"\n'
        f'[backend]\nkind = "local"\n[local]\nprime_rl_dir = "{checkout}"\n'
        f'outputs_dir = "{tmp_path / "out"}"\nlauncher = ["{sys.executable}", '
        f'"{Path(__file__).parent / "fake_prime_rl" / "rl.py"}"]\n'
    )
    plan = make_plan(profile)
    out = io.StringIO()
    assert run(plan, lambda: None, RunnerOptions(Path(plan["outputs_root"])), out) == 0
    text = out.getvalue()
    assert "[trainer]" in text and "[orchestrator]" in text and "[inference]" in text
    assert status_of(plan)["progress"]["step"] == 6


def test_failure_records_exit_code_component_and_lines(local_profile, fast_fake, monkeypatch):
    monkeypatch.setenv("FAKE_RL_FAIL_AT_STEP", "3")
    plan = make_plan(local_profile)
    code = run(plan, lambda: None, RunnerOptions(Path(plan["outputs_root"])), io.StringIO())
    assert code == 1
    status = status_of(plan)
    assert status["status"] == "FAILED" and status["exit_code"] == 1
    assert status["failure"]["component"] == "trainer"
    assert any("CUDA error" in line for line in status["failure"]["lines"])


def test_failure_with_a_retry_coming_is_recovering(local_profile, fast_fake, monkeypatch):
    monkeypatch.setenv("FAKE_RL_FAIL_AT_STEP", "3")
    plan = make_plan(local_profile)
    run(plan, lambda: None, RunnerOptions(Path(plan["outputs_root"]), retries=1),
        io.StringIO())
    status = status_of(plan)
    assert status["status"] == "RECOVERING"
    assert status["attempts"][-1]["failure"] is True
    assert "retrying (1 left)" in status["history"][-1]["note"]


def _sigterm_mid_run(plan: dict[str, Any], tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    proc = start_runner(plan, tmp_path, *args)
    wait_for(lambda: (status_of(plan).get("progress") or {}).get("ckpt_step"), what="a checkpoint")
    launcher = status_of(plan)["launcher_pid"]
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)
    with pytest.raises(ProcessLookupError):
        os.killpg(launcher, 0)  # no orphans: the launcher's whole group is gone
    return proc


def test_sigterm_stops_then_a_second_attempt_resumes(local_profile, fast_fake, tmp_path,
                                                     monkeypatch):
    monkeypatch.setenv("FAKE_RL_STEP_SECONDS", "0.15")
    plan = make_plan(local_profile, parse_set("max_steps=12"))
    proc = _sigterm_mid_run(plan, tmp_path)
    assert proc.returncode == 143
    status = status_of(plan)
    assert status["status"] == "STOPPED"
    stopped_at = status["progress"]["ckpt_step"]
    monkeypatch.setenv("FAKE_RL_STEP_SECONDS", "0.01")
    proc = start_runner(plan, tmp_path)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    status = status_of(plan)
    assert status["status"] == "SUCCEEDED" and status["attempt"] == 2
    assert [a["resumed"] for a in status["attempts"]] == [False, True]
    first, second = calls(fast_fake)
    assert not any(a.startswith("--resume") for a in first)
    assert second[-2:] == ["--resume.step", str(stopped_at)]  # the newest complete one
    assert status["attempts"][1]["resumed_from"] == stopped_at
    assert all("--clean" not in argv for argv in calls(fast_fake))
    assert f"Resuming from checkpoint step {stopped_at}" in out
    steps = [json.loads(x)["step"] for x in (Path(plan["run_dir"]) / "metrics.jsonl").open()]
    assert steps[-1] == 12 and max(steps) == 12
    logs = Path(plan["meta_dir"]) / "logs"
    assert (logs / "attempt_1.log").exists() and (logs / "attempt_2.log").exists()
    assert "attempt_1" not in (logs / "attempt_2.log").read_text()  # each attempt, its lines


def test_launcher_ignoring_sigterm_is_killed_after_the_grace(local_profile, fast_fake,
                                                            tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_RL_IGNORE_SIGTERM", "1")
    monkeypatch.setenv("FAKE_RL_STEP_SECONDS", "0.15")
    plan = make_plan(local_profile, parse_set("max_steps=40"))
    proc = _sigterm_mid_run(plan, tmp_path, "--grace", "0.5")
    assert proc.returncode == 128 + signal.SIGKILL
    assert status_of(plan)["status"] == "STOPPED"


def test_a_missing_launcher_fails_cleanly(local_profile, fast_fake):
    plan = make_plan(local_profile)
    code = run(plan, lambda: None,
               RunnerOptions(Path(plan["outputs_root"]), launcher=("/nonexistent/rl",)),
               io.StringIO())
    assert code == 127
    assert status_of(plan)["status"] == "FAILED"


def test_a_second_sigterm_while_recording_the_end_does_not_lose_it(local_profile, fast_fake,
                                                                   tmp_path, monkeypatch):
    """A stop and a cancel (or two preemption notices) send SIGTERM twice: the runner must
    still record how the attempt ended."""
    monkeypatch.setenv("FAKE_RL_STEP_SECONDS", "0.15")
    plan = make_plan(local_profile, parse_set("max_steps=40"))
    proc = start_runner(plan, tmp_path, "--commit-every", "1000")
    launcher = wait_for(lambda: status_of(plan).get("launcher_pid"), what="the launcher")
    wait_for(lambda: (status_of(plan).get("progress") or {}).get("step"), what="a step")
    for _ in range(5):  # a burst of signals, some arriving after the launcher has exited
        proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)
    assert proc.returncode == 143
    status = status_of(plan)
    assert status["status"] == "STOPPED"
    # The attempt's end is on record, once, with the launcher's exit...
    (attempt,) = status["attempts"]
    assert attempt["outcome"] == "STOPPED" and attempt["failure"] is False
    assert attempt["ended_at"] and attempt["exit_code"] is not None
    events = [json.loads(x)["event"]
              for x in (Path(plan["meta_dir"]) / "events.jsonl").read_text().splitlines()]
    assert events.count("attempt_ended") == 1
    # ...the history ends with one STOPPED after the attempt's RUNNING...
    assert [h["status"] for h in status["history"]][-2:] == ["RUNNING", "STOPPED"]
    # ...and no process of the launcher's group is left behind.
    with pytest.raises(ProcessLookupError):
        os.killpg(launcher, 0)


def test_an_exception_inside_the_runner_leaves_no_launcher(local_profile, fast_fake,
                                                           monkeypatch):
    """Whatever breaks the runner (here its progress reader) first ends the launcher's whole
    process group, then records the attempt's end, then propagates."""
    from primerl_modal.runner import core

    monkeypatch.setenv("FAKE_RL_STEP_SECONDS", "0.2")
    plan = make_plan(local_profile, parse_set("max_steps=100"))
    real_poll = core.Progress.poll

    def failing_poll(self: Any) -> bool:
        if (self.summary.get("step") or 0) >= 2:
            raise RuntimeError("progress reader broke")
        return real_poll(self)

    monkeypatch.setattr(core.Progress, "poll", failing_poll)
    with pytest.raises(RuntimeError, match="progress reader broke"):
        run(plan, lambda: None, RunnerOptions(Path(plan["outputs_root"]), grace=5),
            io.StringIO())
    status = status_of(plan)
    with pytest.raises(ProcessLookupError):
        os.killpg(status["launcher_pid"], 0)
    assert status["status"] == "FAILED"
    assert status["attempts"][0]["outcome"] == "FAILED"
    assert "runner error: RuntimeError" in status["history"][-1]["note"]


def test_a_platform_cancellation_is_a_stop(local_profile, fast_fake, tmp_path, monkeypatch):
    """Modal cancels a synchronous function's input with SIGUSR1: the runner stops prime-rl
    and records STOPPED (not a failure, not a preemption)."""
    monkeypatch.setenv("FAKE_RL_STEP_SECONDS", "0.15")
    plan = make_plan(local_profile, parse_set("max_steps=40"))
    proc = start_runner(plan, tmp_path)
    wait_for(lambda: (status_of(plan).get("progress") or {}).get("step"), what="a step")
    launcher = status_of(plan)["launcher_pid"]
    proc.send_signal(signal.SIGUSR1)
    proc.communicate(timeout=30)
    status = status_of(plan)
    assert status["status"] == "STOPPED" and "cancelled" in status["history"][-1]["note"]
    assert status["attempts"][0]["failure"] is False
    with pytest.raises(ProcessLookupError):
        os.killpg(launcher, 0)


def test_a_torn_first_checkpoint_is_set_aside_and_the_run_starts_afresh(
        local_profile, fast_fake, monkeypatch):
    monkeypatch.setenv("FAKE_RL_DIE_IN_CHECKPOINT_AT_STEP", "2")
    plan = make_plan(local_profile)
    options = RunnerOptions(Path(plan["outputs_root"]))
    assert run(plan, lambda: None, options, io.StringIO()) != 0
    run_dir = Path(plan["run_dir"])
    assert not (run_dir / "checkpoints" / "step_2" / "trainer" / ".metadata").exists()
    monkeypatch.delenv("FAKE_RL_DIE_IN_CHECKPOINT_AT_STEP")
    out = io.StringIO()
    assert run(plan, lambda: None, options, out) == 0, out.getvalue()
    assert calls(fast_fake)[1][-1] == "--resume"  # no complete checkpoint: from the start
    assert "moved it to" in out.getvalue()
    assert (run_dir / "incomplete-checkpoints" / "step_2").is_dir()
    assert status_of(plan)["status"] == "SUCCEEDED"
