"""Tests for the fake prime-rl launcher in tests/fake_prime_rl/rl.py (driven via subprocess)."""

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from fake_prime_rl import FAKE_RL, launcher_argv

CUDA_ERROR = "RuntimeError: CUDA error: an illegal memory access was encountered"

RL_TOML = """\
max_steps = 4

[model]
name = "PrimeIntellect/Qwen3-0.6B-Reverse-Text-SFT"

[[orchestrator.env]]
id = "reverse-text"

[trainer.optim]
lr = 1e-6

[inference.vllm]
tensor_parallel_size = 1
"""


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAKE_RL_")}
    env["FAKE_RL_STEP_SECONDS"] = "0.005"
    env.update(extra)
    return env


def run_rl(
    args: list[str], cwd: Path, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*launcher_argv(), *args],
        cwd=cwd,
        env=dict(env) if env is not None else clean_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )


def current_args(tmp_path: Path, *extra: str, run_name: str = "run-1") -> list[str]:
    config = tmp_path / "rl.toml"
    config.write_text(RL_TOML)
    return [
        "@", str(config),
        "--deployment.num-train-gpus", "2",
        "--deployment.num-infer-gpus", "6",
        "--inference.vllm.tensor-parallel-size", "1",
        "--inference.vllm.data-parallel-size", "6",
        "--output-dir", str(tmp_path / "outputs"),
        "--run.name", run_name,
        "--monitors.wandb.project", "proj",
        "--monitors.wandb.name", run_name,
        *extra,
    ]  # fmt: skip


def metrics_steps(run_dir: Path) -> list[int]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["step"] for line in lines]


def step_dirs(parent: Path) -> list[str]:
    return sorted((p.name for p in parent.iterdir()), key=lambda n: int(n.split("_")[1]))


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in a process group, from /proc."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def test_helper_points_at_executable_script() -> None:
    assert FAKE_RL.name == "rl.py"
    assert os.access(FAKE_RL, os.X_OK)
    assert FAKE_RL.read_text().startswith("#!/usr/bin/env python3\n")


def test_current_run_to_completion(tmp_path: Path) -> None:
    args = current_args(tmp_path, "--max-steps", "7", "--ckpt.interval", "3",
                        "--trainer.optim.lr", "3e-6")  # fmt: skip
    result = run_rl(args, tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout.splitlines()
    assert out[-1] == "Training finished"
    assert [line for line in out if line.startswith("Starting step")] == [
        f"Starting step {n}" for n in range(1, 8)
    ]
    assert "Inference GPU ids: 0,1,2,3,4,5 (tp=1, dp=6)" in out
    assert "Trainer GPU ids: 6,7" in out

    run = tmp_path / "outputs" / "run-1"
    rl = json.loads((run / "configs" / "rl.json").read_text())
    assert rl["max_steps"] == 7
    assert rl["trainer"]["optim"]["lr"] == 3e-6
    assert rl["deployment"] == {"num_train_gpus": 2, "num_infer_gpus": 6, "gpus_per_node": 8}
    assert rl["inference"]["vllm"]["data_parallel_size"] == 6
    for name in ("trainer", "orchestrator", "inference"):
        assert (run / "configs" / f"{name}.json").is_file()

    assert os.readlink(run / "logs" / "latest") == "attempt_1"
    attempt = run / "logs" / "attempt_1"
    for name in ("trainer", "orchestrator", "inference"):
        text = (attempt / f"{name}.log").read_text()
        assert "step 7" in text, name
    assert (attempt / "trainer" / "torchrun" / "0" / "stdout.log").read_text()
    assert (attempt / "trainer" / "torchrun" / "1" / "stdout.log").is_file()

    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == list(range(1, 8))
    assert all({"time", "reward/mean", "loss"} <= row.keys() for row in rows)
    assert step_dirs(run / "checkpoints") == ["step_3", "step_6"]
    for ckpt in (run / "checkpoints").iterdir():
        assert any((ckpt / "trainer").iterdir()) and any((ckpt / "orchestrator").iterdir())
    assert step_dirs(run / "rollouts") == [f"step_{n}" for n in range(1, 8)]
    assert (run / "rollouts" / "step_7" / "rollouts.jsonl").read_text()


def test_no_checkpoints_without_interval_and_auto_run_name(tmp_path: Path) -> None:
    config = tmp_path / "rl.toml"
    config.write_text(RL_TOML)
    result = run_rl(["@", str(config), "--output-dir", "out"], tmp_path)
    assert result.returncode == 0, result.stderr
    (run,) = (tmp_path / "out").iterdir()
    assert run.name.startswith("reverse-text--qwen3-0.6b-reverse-text-sft--")
    assert len(run.name.rsplit("--", 1)[1]) == 8
    assert metrics_steps(run) == [1, 2, 3, 4]  # max_steps from the file
    assert not (run / "checkpoints").exists()


def test_refuses_to_reuse_run_dir_without_resume(tmp_path: Path) -> None:
    args = current_args(tmp_path, "--max-steps", "2")
    assert run_rl(args, tmp_path).returncode == 0
    again = run_rl(args, tmp_path)
    assert again.returncode == 1
    assert "--resume" in again.stderr and "--clean" in again.stderr
    run = tmp_path / "outputs" / "run-1"
    assert not (run / "logs" / "attempt_2").exists()
    assert metrics_steps(run) == [1, 2]

    cleaned = run_rl([*args, "--clean"], tmp_path)
    assert cleaned.returncode == 0, cleaned.stderr
    assert sorted(p.name for p in (run / "logs").iterdir()) == ["attempt_1", "latest"]
    assert metrics_steps(run) == [1, 2]


def test_unknown_file_counts_as_artifact(tmp_path: Path) -> None:
    run = tmp_path / "outputs" / "run-1"
    run.mkdir(parents=True)
    (run / "notes.txt").write_text("mine")
    result = run_rl(current_args(tmp_path), tmp_path)
    assert result.returncode == 1
    assert "notes.txt" in result.stderr
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]


def test_resume_continues_steps_in_new_attempt(tmp_path: Path) -> None:
    first = run_rl(current_args(tmp_path, "--ckpt.interval", "2", "--max-steps", "5"), tmp_path)
    assert first.returncode == 0, first.stderr
    run = tmp_path / "outputs" / "run-1"

    args = current_args(tmp_path, "--ckpt.interval", "2", "--max-steps", "8", "--resume")
    second = run_rl(args, tmp_path)
    assert second.returncode == 0, second.stderr
    assert "Resuming from checkpoint step 4" in second.stdout.splitlines()
    assert "Starting step 5" in second.stdout and "Starting step 4" not in second.stdout
    # step 5 ran twice: once before the crash-free end of attempt 1, once after resume
    assert metrics_steps(run) == [1, 2, 3, 4, 5, 5, 6, 7, 8]
    assert step_dirs(run / "checkpoints") == ["step_2", "step_4", "step_6", "step_8"]
    assert os.readlink(run / "logs" / "latest") == "attempt_2"
    attempt_1 = (run / "logs" / "attempt_1" / "trainer.log").read_text()
    attempt_2 = (run / "logs" / "attempt_2" / "trainer.log").read_text()
    assert "[trainer] step 1 " in attempt_1 and "[trainer] step 5 " in attempt_1
    assert "[trainer] step 1 " not in attempt_2 and "[trainer] step 8 " in attempt_2

    explicit = run_rl([*args, "--resume.step", "2", "--max-steps", "3"], tmp_path)
    assert explicit.returncode == 0, explicit.stderr
    assert "Resuming from checkpoint step 2" in explicit.stdout
    assert metrics_steps(run)[-1] == 3
    assert os.readlink(run / "logs" / "latest") == "attempt_3"

    missing = run_rl([*args, "--resume.step", "3"], tmp_path)
    assert missing.returncode == 1
    assert "step 3" in missing.stderr
    assert not (run / "logs" / "attempt_4").exists()


def test_resume_without_checkpoint_starts_at_step_one(tmp_path: Path) -> None:
    result = run_rl(current_args(tmp_path, "--resume", "--max-steps", "2"), tmp_path)
    assert result.returncode == 0, result.stderr
    assert "no checkpoint" in result.stderr.lower()
    assert metrics_steps(tmp_path / "outputs" / "run-1") == [1, 2]


def test_dialect_2025_10(tmp_path: Path) -> None:
    (tmp_path / "train.toml").write_text("max_steps = 5\n[optim]\nlr = 2e-6\n")
    (tmp_path / "orch.toml").write_text("max_steps = 3\n")
    (tmp_path / "infer.toml").write_text('[model]\nname = "m"\n')
    run = tmp_path / "outputs" / "run-x"
    args = [
        "--trainer", "@", "train.toml",
        "--orchestrator", "@", "orch.toml",
        "--inference", "@", "infer.toml",
        "--trainer-gpu-ids", "0,1",
        "--inference-gpu-ids", "2,3,4,5,6,7",
        "--inference.parallel.dp", "6",
        "--inference.parallel.tp", "1",
        "--output-dir", str(run),
        "--wandb.project", "proj",
        "--wandb.name", "run-x",
        "--ckpt.interval", "2",
    ]  # fmt: skip
    result = run_rl(args, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "dialect 2025-10" in result.stdout
    assert "Inference GPU ids: 2,3,4,5,6,7 (tp=1, dp=6)" in result.stdout
    assert "Trainer GPU ids: 0,1" in result.stdout
    assert metrics_steps(run) == [1, 2, 3]  # orchestrator's max_steps wins
    assert step_dirs(run / "checkpoints") == ["step_2"]
    assert sorted(p.name for p in (run / "logs").iterdir()) == [
        "inference.log", "orchestrator.log", "trainer.log",
    ]  # fmt: skip
    inference = json.loads((run / "configs" / "inference.json").read_text())
    assert inference["parallel"] == {"dp": 6, "tp": 1}
    assert inference["model"] == {"name": "m"}
    trainer = json.loads((run / "configs" / "trainer.json").read_text())
    assert trainer["optim"]["lr"] == 2e-6

    again = run_rl(args, tmp_path)
    assert again.returncode == 1
    resumed = run_rl([*args, "--resume", "--max-steps", "4"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert metrics_steps(run) == [1, 2, 3, 3, 4]

    bad = run_rl([*args, "--inference.parallel.dp", "3", "--output-dir", "other"], tmp_path)
    assert bad.returncode == 2
    assert "dp * inference.parallel.tp" in bad.stderr
    assert not (tmp_path / "other").exists()


def test_validation_errors_exit_2_before_writing(tmp_path: Path) -> None:
    cases: list[tuple[list[str], str]] = [
        (
            ["--deployment.num-infer-gpus", "6", "--inference.vllm.tensor-parallel-size", "4"],
            "Number of inference GPUs must be divisible by the tensor parallel size",
        ),
        (
            ["--deployment.num-infer-gpus", "6", "--deployment.num-train-gpus", "3"],
            "exceeds the number of GPUs per node",
        ),
        (["--resume", "--clean"], "mutually exclusive"),
        (["--output-dir", "a", "b"], "output_dir must be a single path"),
    ]
    config = tmp_path / "rl.toml"
    config.write_text(RL_TOML)
    for extra, message in cases:
        result = run_rl(["@", str(config), "--output-dir", "out", *extra], tmp_path)
        assert result.returncode == 2, extra
        assert message in result.stderr, extra
    stray = run_rl(["@", str(config), "stray", "--output-dir", "out"], tmp_path)
    assert stray.returncode == 2 and "unrecognized arguments: stray" in stray.stderr
    missing = run_rl(["@", "nope.toml", "--output-dir", "out"], tmp_path)
    assert missing.returncode == 2 and "nope.toml" in missing.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rl.toml"]


def test_dry_run_writes_only_configs(tmp_path: Path) -> None:
    result = run_rl(current_args(tmp_path, "--dry-run"), tmp_path)
    assert result.returncode == 0, result.stderr
    run = tmp_path / "outputs" / "run-1"
    assert [p.name for p in run.iterdir()] == ["configs"]
    # configs/ alone does not block a real run
    assert run_rl(current_args(tmp_path, "--max-steps", "1"), tmp_path).returncode == 0


def test_config_files_merge_and_flag_values(tmp_path: Path) -> None:
    (tmp_path / "base.toml").write_text(RL_TOML)
    (tmp_path / "extra.toml").write_text("[trainer.optim]\nweight_decay = 0.1\n")
    args = [
        "@", "base.toml", "@", "extra.toml",
        "--output-dir", "out", "--run.name", "r", "--dry-run",
        "--trainer.optim.lr", "3e-6",
        "--orchestrator.seq-len", "128",
        "--orchestrator.temperatures", "0.5", "1",
        "--orchestrator.tags", '["a","b"]',
        "--trainer.compile",
        "--no-trainer.activation-checkpointing",
        "--model.revision", "main",
    ]  # fmt: skip
    result = run_rl(args, tmp_path)
    assert result.returncode == 0, result.stderr
    rl = json.loads((tmp_path / "out" / "r" / "configs" / "rl.json").read_text())
    assert rl["trainer"]["optim"] == {"lr": 3e-6, "weight_decay": 0.1}
    assert rl["trainer"]["compile"] is True
    assert rl["trainer"]["activation_checkpointing"] is False
    assert rl["orchestrator"]["seq_len"] == 128
    assert rl["orchestrator"]["temperatures"] == [0.5, 1]
    assert rl["orchestrator"]["tags"] == ["a", "b"]
    assert rl["orchestrator"]["env"] == [{"id": "reverse-text"}]
    assert rl["model"] == {"name": "PrimeIntellect/Qwen3-0.6B-Reverse-Text-SFT", "revision": "main"}
    orchestrator = json.loads(
        (tmp_path / "out" / "r" / "configs" / "orchestrator.json").read_text()
    )
    assert orchestrator["seq_len"] == 128 and orchestrator["model"]["revision"] == "main"


def test_fail_at_step(tmp_path: Path) -> None:
    result = run_rl(current_args(tmp_path), tmp_path, clean_env(FAKE_RL_FAIL_AT_STEP="3"))
    assert result.returncode == 1
    assert "trainer" in result.stderr and "Training finished" not in result.stdout
    run = tmp_path / "outputs" / "run-1"
    trainer_log = (run / "logs" / "attempt_1" / "trainer.log").read_text().splitlines()
    assert "Traceback (most recent call last):" in trainer_log
    assert trainer_log[-1] == CUDA_ERROR
    assert metrics_steps(run) == [1, 2]


def start_hanging(tmp_path: Path, **extra: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [*launcher_argv(), *current_args(tmp_path)],
        cwd=tmp_path,
        env=clean_env(FAKE_RL_HANG="1", **extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,  # only one pipe, so communicate() keeps read-ahead data
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:  # ends at EOF if the launcher exits early
        if line == "All components started\n":
            break
    assert proc.poll() is None
    # launcher + inference, orchestrator, trainer children
    assert len(group_members(proc.pid)) == 4, group_members(proc.pid)
    return proc


def stop(proc: subprocess.Popen[str], sig: int, whole_group: bool) -> tuple[str, float]:
    start = time.monotonic()
    if whole_group:
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    out, _ = proc.communicate(timeout=5)
    return out, time.monotonic() - start


def test_sigterm_to_launcher_stops_whole_group(tmp_path: Path) -> None:
    proc = start_hanging(tmp_path)
    out, elapsed = stop(proc, signal.SIGTERM, whole_group=False)
    assert proc.returncode == 143
    assert elapsed < 1.5
    assert out.splitlines()[-1] == "received SIGTERM, shutting down"
    attempt = tmp_path / "outputs" / "run-1" / "logs" / "attempt_1"
    for name in ("trainer", "orchestrator", "inference"):
        assert "received SIGTERM, shutting down" in (attempt / f"{name}.log").read_text()
    assert wait_for(lambda: not group_members(proc.pid), timeout=2), group_members(proc.pid)


def test_sigint_to_group_exits_130(tmp_path: Path) -> None:
    proc = start_hanging(tmp_path)
    out, _ = stop(proc, signal.SIGINT, whole_group=True)
    assert proc.returncode == 130
    assert "received SIGINT, shutting down" in out
    assert wait_for(lambda: not group_members(proc.pid), timeout=2)


def test_ignore_sigterm_needs_sigkill(tmp_path: Path) -> None:
    proc = start_hanging(tmp_path, FAKE_RL_IGNORE_SIGTERM="1")
    os.killpg(proc.pid, signal.SIGTERM)
    time.sleep(0.3)
    assert proc.poll() is None
    assert len(group_members(proc.pid)) == 4
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=5)
    assert proc.returncode == -signal.SIGKILL
    assert wait_for(lambda: not group_members(proc.pid), timeout=2)


def test_hang_at_step_then_sigterm(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [*launcher_argv(), *current_args(tmp_path)],
        cwd=tmp_path,
        env=clean_env(FAKE_RL_HANG_AT_STEP="3"),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    metrics = tmp_path / "outputs" / "run-1" / "metrics.jsonl"
    assert wait_for(lambda: metrics.exists() and len(metrics.read_text().splitlines()) == 2)
    time.sleep(0.1)
    assert proc.poll() is None and len(metrics.read_text().splitlines()) == 2
    out, _ = stop(proc, signal.SIGTERM, whole_group=True)
    assert proc.returncode == 143
    assert "Starting step 3" in out


def test_fast_lines_exact_count() -> None:
    count = 300_000
    result = subprocess.run(
        launcher_argv(),
        env=clean_env(FAKE_RL_FAST_LINES=str(count)),
        capture_output=True,
        timeout=30,
    )
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert len(lines) == count
    assert lines[0].startswith(b"line 000001 ")
    assert lines[-1].startswith(b"line 300000 ")


def test_record_argv_and_env_names(tmp_path: Path) -> None:
    record = tmp_path / "record.jsonl"
    env = clean_env(FAKE_RL_RECORD=str(record), WANDB_API_KEY="very-secret-value")
    first = current_args(tmp_path, "--max-steps", "1", "--ckpt.interval", "1")
    second = [*first, "--resume", "--max-steps", "2"]
    assert run_rl(first, tmp_path, env).returncode == 0
    assert run_rl(second, tmp_path, env).returncode == 0
    entries: list[dict[str, Any]] = [json.loads(line) for line in record.read_text().splitlines()]
    assert [e["argv"] for e in entries] == [first, second]
    assert "--clean" not in entries[1]["argv"] and "--resume" in entries[1]["argv"]
    assert "WANDB_API_KEY" in entries[0]["env"]
    assert "very-secret-value" not in record.read_text()
