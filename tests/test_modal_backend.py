"""`prm run` on Modal, end to end: the real modal client against the fake Modal server in
tests/fake_modal, the runner executing the fake prime-rl launcher inside the fake's
"container" subprocess, writing onto the fake outputs volume."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from conftest import SENTINEL, finished, launched, only_function, wait_for

from primerl_modal.run_index import open_index


def argvs(record: Path) -> list[list[str]]:
    """The launcher's command lines, its preflight dry runs aside."""
    launches = [json.loads(x)["argv"] for x in record.read_text().splitlines()]
    return [argv for argv in launches if "--dry-run" not in argv]


@pytest.fixture
def runner_commits_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Modal (and the fake) commit a container's volumes when its function returns; without
    that, the volume holds only what the runner's own commits published, so a runner whose
    commit did nothing leaves none of its files there."""
    from fake_modal.volumes import ContainerVolumes

    monkeypatch.setattr(ContainerVolumes, "commit_all", lambda self: None)


def committed(modal_env, run_id: str) -> tuple[Path, dict]:
    """The run's prime-rl folder and its status.json, as committed on the outputs volume."""
    volume = modal_env.volume_path("prime-rl-outputs")
    status = json.loads((volume / "_prm" / run_id / "status.json").read_text())
    return volume / run_id, status


def test_detached_launch_asks_modal_for_the_plan(prm, modal_env, runner_commits_only):
    run_id = launched(prm, "reverse-text")
    (app,) = modal_env.apps.values()
    assert app["tags"] == {"prm-run": run_id}
    fn = only_function(modal_env)
    assert fn["gpu"] == "A100-40GB:2"
    assert fn["timeout_s"] == 2 * 3600
    assert fn["retries"] == 3
    assert fn["volumes"] == {"/outputs": "prime-rl-outputs", "/cache": "prime-rl-cache"}
    assert sorted(fn["secrets"]) == ["huggingface", "wandb"]
    rec = open_index().get(run_id)
    assert rec.app_id in modal_env.apps and rec.call_id in modal_env.calls
    rec = finished(modal_env, run_id)
    assert rec.status == "SUCCEEDED" and rec.step == 8
    # What the runner committed, not what the container happened to write.
    run_dir, status = committed(modal_env, run_id)
    assert status["status"] == "SUCCEEDED" and status["progress"]["step"] == 8
    assert status["attempts"][0]["outcome"] == "SUCCEEDED"
    steps = [json.loads(x)["step"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))
    log = (run_dir.parent / "_prm" / run_id / "logs" / "attempt_1.log").read_text()
    assert "[trainer]" in log and "Training finished" in log


def test_gpu_flags_change_the_request_and_the_split(prm, modal_env, fast_fake):
    run_id = launched(prm, "reverse-text", "--gpu", "H100:8", "--trainer-ratio", "0.25")
    assert only_function(modal_env)["gpu"] == "H100:8"
    finished(modal_env, run_id)
    (argv,) = argvs(fast_fake)
    assert argv[argv.index("--deployment.num-train-gpus") + 1] == "2"
    assert argv[argv.index("--deployment.num-infer-gpus") + 1] == "6"


def test_same_profile_same_build_steps_and_local_code_adds_none(prm, modal_env, tmp_path):
    launched(prm, "reverse-text")
    launched(prm, "reverse-text")
    code = tmp_path / "my-prime-rl"
    (code / "src" / "prime_rl").mkdir(parents=True)
    (code / "src" / "prime_rl" / "patched.py").write_text("X = 1\n")
    (code / "configs").mkdir()
    launched(prm, "reverse-text", "--local-code", str(code))
    first, second, third = (modal_env.image_commands(f["image_id"])
                            for f in modal_env.functions.values()
                            if f["function_name"] == "run_remote")
    assert first == second
    assert third == first  # the overlay is attached at start, not built in
    mounted = json.dumps(modal_env.mounts)
    assert "patched.py" in mounted


def test_no_secret_value_is_written_anywhere(prm, modal_env, prm_home, fast_fake):
    run_id = launched(prm, "reverse-text")
    finished(modal_env, run_id)
    places = [json.dumps(modal_env.image_requests), json.dumps(modal_env.functions, default=str),
              fast_fake.read_text()]
    volume = modal_env.volume_path("prime-rl-outputs")
    places += [p.read_text(errors="replace") for p in volume.rglob("*") if p.is_file()]
    db = sqlite3.connect(prm_home / "index.sqlite3")
    places += [json.dumps(row) for row in db.execute("SELECT * FROM runs")]
    assert all(SENTINEL not in text for text in places)
    assert any("WANDB_API_KEY" in text for text in places)  # names may be recorded


def test_attached_run_prints_the_runners_lines_and_exits_with_the_result(prm, modal_env):
    r = prm("run", "reverse-text")
    assert r.code == 0, r.err
    for prefix in ("[runner]", "[launcher]", "[trainer]", "[orchestrator]", "[inference]"):
        assert prefix in r.out
    modal_env.extra_env["FAKE_RL_FAIL_AT_STEP"] = "2"
    r = prm("run", "reverse-text", "--retries", "0")
    assert r.code == 1
    assert "FAILED" in r.err and "trainer failed" in r.err


def test_a_preempted_attempt_is_retried_and_resumes(prm, modal_env, fast_fake):
    modal_env.extra_env["FAKE_RL_STEP_SECONDS"] = "0.2"
    modal_env.preempt_after(seconds=1.5, times=1)  # the next call: the run's, no preflight
    run_id = launched(prm, "reverse-text", "--set", "max_steps=12", "--no-preflight")
    rec = finished(modal_env, run_id)
    assert rec.status == "SUCCEEDED" and rec.attempts == 2
    first, second = argvs(fast_fake)
    assert "--resume" not in first and "--resume" in second
    status = json.loads((modal_env.volume_path("prime-rl-outputs") / "_prm" / run_id
                         / "status.json").read_text())
    assert [h["status"] for h in status["history"]][1:] == [
        "RUNNING", "RECOVERING", "RUNNING", "SUCCEEDED"]


def test_stop_ends_the_run_stopped_with_files_committed(prm, modal_env, runner_commits_only):
    modal_env.extra_env["FAKE_RL_STEP_SECONDS"] = "0.2"
    run_id = launched(prm, "reverse-text", "--set", "max_steps=200")
    volume = modal_env.volume_path("prime-rl-outputs")
    wait_for(lambda: (volume / run_id / "checkpoints").exists(), what="a checkpoint")
    r = prm("stop", run_id)
    assert r.code == 0, r.err
    rec = open_index().get(run_id)
    assert rec.status == "STOPPED"
    # The stop, and what the run wrote up to it, were committed by the runner.
    run_dir, status = committed(modal_env, run_id)
    assert status["status"] == "STOPPED" and status["history"][-1]["status"] == "STOPPED"
    assert status["attempts"][0]["outcome"] == "STOPPED"
    step = status["progress"]["step"]
    assert step and len((run_dir / "metrics.jsonl").read_text().splitlines()) >= step
    assert (run_dir / "checkpoints" / f"step_{status['progress']['ckpt_step']}").is_dir()
    assert "already STOPPED" in prm("stop", run_id).err
    modal_env.extra_env["FAKE_RL_STEP_SECONDS"] = "0.01"
    r = prm("run", "--resume", run_id)
    assert r.code == 0, r.err
    assert open_index().get(run_id).status == "SUCCEEDED"


def test_missing_secret_names_the_command_that_creates_it(prm, modal_env):
    del modal_env.secrets["huggingface"]
    r = prm("run", "reverse-text", "--detach")
    assert r.code == 1
    assert "modal secret create huggingface HF_TOKEN=" in r.err
    assert open_index().list() == []


def test_env_flag_sends_a_value_for_this_run_only(prm, modal_env, monkeypatch):
    monkeypatch.setenv("MY_PRIVATE_TOKEN", "tok-sentinel-123")
    run_id = launched(prm, "reverse-text", "--env", "MY_PRIVATE_TOKEN")
    assert "MY_PRIVATE_TOKEN" in json.dumps(only_function(modal_env)["secrets"])
    finished(modal_env, run_id)
    volume = modal_env.volume_path("prime-rl-outputs")
    assert all("tok-sentinel-123" not in p.read_text(errors="replace")
               for p in volume.rglob("*") if p.is_file())


def test_a_failed_launch_leaves_nothing_on_the_volume(prm, modal_env):
    del modal_env.secrets["wandb"]
    assert prm("run", "reverse-text", "--detach").code == 1
    meta = modal_env.volume_path("prime-rl-outputs") / "_prm"
    assert not meta.exists() or not any(meta.iterdir())
    assert prm("ls", "--all", "--json").json() == []


def test_local_code_without_src_is_refused_before_anything_is_sent(prm, modal_env, tmp_path):
    r = prm("run", "reverse-text", "--local-code", str(tmp_path / "nowhere"), "--detach")
    assert r.code == 1 and "has no src/ folder" in r.err and "Traceback" not in r.err
    assert modal_env.apps == {}
