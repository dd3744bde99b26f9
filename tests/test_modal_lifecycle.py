"""A run's life on Modal as Modal lives it (the fake server delivers SIGINT on preemption
and restarts the input without spending a retry, retries failures with the real policy,
keeps each container's volume writes to itself until it commits, delivers cancellation as
InputCancellation and kills every process of a container that goes)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from conftest import launched, wait_for

from primerl_modal.run_index import open_index


def records(path: Path) -> list[dict[str, Any]]:
    """The launcher's invocations, its preflight dry runs aside."""
    found = [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
    return [r for r in found if "--dry-run" not in r["argv"]]


def committed_status(fake: Any, run_id: str) -> dict[str, Any]:
    path = fake.volume_path("prime-rl-outputs") / "_prm" / run_id / "status.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def call_of(run_id: str) -> str:
    call_id = open_index().get(run_id).call_id
    assert call_id
    return call_id


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def final(prm: Any, run_id: str, fake: Any, timeout: float = 120) -> dict[str, Any]:
    fake.wait_call(call_of(run_id), timeout=timeout)
    r = prm("show", run_id, "--json")
    assert r.code == 0, r.err
    return committed_status(fake, run_id)


def test_preempted_three_times_resumes_each_time_and_succeeds(prm, modal_env, fast_fake):
    modal_env.extra_env["FAKE_RL_STEP_SECONDS"] = "0.2"
    run_id = launched(prm, "reverse-text", "--retries", "1", "--set", "max_steps=40",
                      "--set", "prime_rl.ckpt_interval=2")
    last = 0
    for n in (1, 2, 3):
        # each attempt gets as far as a checkpoint of its own, then its worker is preempted
        def new_checkpoint(n: int = n, last: int = last) -> int:
            status = committed_status(modal_env, run_id)
            step = (status.get("progress") or {}).get("ckpt_step") or 0
            return step if status.get("attempt") == n and step > last else 0

        last = wait_for(new_checkpoint, timeout=60, what=f"a checkpoint in attempt {n}")
        modal_env.preempt(call_of(run_id))
    status = final(prm, run_id, modal_env)
    assert status["status"] == "SUCCEEDED", status["history"]
    attempts = status["attempts"]
    assert len(attempts) == 4
    assert [a["outcome"] for a in attempts[:3]] == ["RECOVERING"] * 3
    assert all(a["preempted"] and not a["failure"] for a in attempts[:3])
    assert all(a["signal"] == "SIGINT" for a in attempts[:3])
    assert all(a["resumed_from"] for a in attempts[1:])  # each went on from a checkpoint
    call = modal_env.calls[call_of(run_id)]
    assert [a["retry_count"] for a in call["attempts"]] == [0, 0, 0, 0]  # no retry spent
    plan = json.loads((modal_env.volume_path("prime-rl-outputs") / "_prm" / run_id /
                       "plan.json").read_text())
    seen = [r["prl_run_id"] for r in records(fast_fake)]
    assert seen == [plan["env"]["PRL_RUN_ID"]] * 4  # one W&B run across every attempt


def test_crashing_twice_with_one_retry_fails_after_two_attempts(prm, modal_env):
    modal_env.extra_env["FAKE_RL_FAIL_AFTER_STEPS"] = "2"
    run_id = launched(prm, "reverse-text", "--retries", "1")
    status = final(prm, run_id, modal_env)
    assert status["status"] == "FAILED"
    assert [a["outcome"] for a in status["attempts"]] == ["RECOVERING", "FAILED"]
    assert "no retries left" in status["history"][-1]["note"]
    call = modal_env.calls[call_of(run_id)]
    assert [a["retry_count"] for a in call["attempts"]] == [0, 1]


def test_stop_ends_stopped_with_no_further_attempt_and_nothing_left(prm, modal_env):
    modal_env.extra_env["FAKE_RL_STEP_SECONDS"] = "0.2"
    run_id = launched(prm, "reverse-text", "--retries", "2", "--set", "max_steps=200")
    wait_for(lambda: (committed_status(modal_env, run_id).get("progress") or {}).get("step"),
             timeout=60, what="a committed step")
    status = wait_for(lambda: committed_status(modal_env, run_id).get("launcher_pid")
                      and committed_status(modal_env, run_id), what="the launcher's pid")
    r = prm("stop", run_id)
    assert r.code == 0, r.err
    assert f"{run_id} STOPPED" in r.err
    status = final(prm, run_id, modal_env)
    assert status["status"] == "STOPPED"
    assert len(status["attempts"]) == 1 and status["attempts"][0]["outcome"] == "STOPPED"
    assert len(modal_env.calls[call_of(run_id)]["attempts"]) == 1
    assert not alive(status["launcher_pid"])
    assert open_index().get(run_id).status == "STOPPED"


def test_a_torn_newest_checkpoint_is_not_resumed_from(prm, modal_env, fast_fake):
    modal_env.extra_env["FAKE_RL_DIE_IN_CHECKPOINT_AT_STEP"] = "6"
    run_id = launched(prm, "reverse-text", "--retries", "1", "--set", "max_steps=10",
                      "--set", "prime_rl.ckpt_interval=2")
    status = final(prm, run_id, modal_env)
    second = status["attempts"][1]
    assert second["resumed_from"] == 4  # step_6 has no trainer/.metadata
    argv = records(fast_fake)[1]["argv"]
    assert argv[-2:] == ["--resume.step", "4"]
    volume = modal_env.volume_path("prime-rl-outputs") / run_id / "checkpoints"
    assert not (volume / "step_6" / "trainer" / ".metadata").exists()


def test_a_status_never_committed_is_not_seen_and_the_accounting_holds(prm, modal_env):
    """The launcher outlives the fake's grace after a preemption: the container is killed
    before the runner records the end. The next attempt sees only what was committed (the
    attempt and its preemption signal) and does not count it as a failure."""
    modal_env.grace_s = 1.0
    modal_env.extra_env["FAKE_RL_SHUTDOWN_SECONDS"] = "30"
    modal_env.extra_env["FAKE_RL_STEP_SECONDS"] = "0.1"
    run_id = launched(prm, "reverse-text", "--retries", "0", "--set", "max_steps=12",
                      "--set", "prime_rl.ckpt_interval=2")
    wait_for(lambda: (committed_status(modal_env, run_id).get("progress") or {})
             .get("ckpt_step"), timeout=60, what="a committed checkpoint")
    modal_env.extra_env["FAKE_RL_SHUTDOWN_SECONDS"] = ""  # the restart shuts down normally
    modal_env.preempt(call_of(run_id))
    wait_for(lambda: committed_status(modal_env, run_id).get("attempt") == 2, timeout=60,
             what="the restarted attempt")
    status = final(prm, run_id, modal_env)
    first = status["attempts"][0]
    assert first["outcome"] == "KILLED" and first["failure"] is False
    assert first["signal"] == "SIGINT"  # committed the moment the signal came
    assert status["status"] == "SUCCEEDED"  # with retries = 0: a preemption spends none
