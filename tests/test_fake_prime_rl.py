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
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("FAKE_RL_") and k not in ("PRL_RUN_ID", "PRL_RUN_NAME")
    }
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


def legacy_args(tmp_path: Path, *extra: str, train_toml: str = "max_steps = 5\n") -> list[str]:
    (tmp_path / "train.toml").write_text(train_toml + "[optim]\nlr = 2e-6\n")
    (tmp_path / "orch.toml").write_text('max_steps = 3\n[environment]\nid = "hendrycks-math"\n')
    (tmp_path / "infer.toml").write_text('[model]\nname = "m"\n')
    return [
        "--trainer", "@", "train.toml",
        "--orchestrator", "@", "orch.toml",
        "--inference", "@", "infer.toml",
        "--trainer-gpu-ids", "0,1",
        "--inference-gpu-ids", "2,3,4,5,6,7",
        "--inference.parallel.dp", "6",
        "--inference.parallel.tp", "1",
        "--output-dir", str(tmp_path / "outputs" / "run-x"),
        "--wandb.project", "proj",
        "--wandb.name", "run-x",
        *extra,
    ]  # fmt: skip


def metrics_steps(run_dir: Path) -> list[int]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["step"] for line in lines]


def step_dirs(parent: Path) -> list[str]:
    return sorted((p.name for p in parent.iterdir()), key=lambda n: int(n.split("_")[1]))


def complete_steps(run_dir: Path) -> list[str]:
    """Checkpoint step folders whose trainer DCP checkpoint has its .metadata."""
    ckpts = run_dir / "checkpoints"
    return [n for n in step_dirs(ckpts) if (ckpts / n / "trainer" / ".metadata").is_file()]


def last_line(path: Path) -> str:
    return path.read_text().splitlines()[-1]


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
    for subset in ("all", "effective"):
        assert (run / "rollouts" / "step_7" / "train" / subset / "traces.jsonl").read_text()


# verifiers 0.4.0 records, as prime-rl writes them (the last one a failed episode)
SAMPLES = Path(__file__).parent / "samples" / "traces.jsonl"


def key_order(value: Any, path: str = "") -> list[tuple[str, list[str]]]:
    """Every object's keys, in order, by where it sits (list items as [i])."""
    if isinstance(value, dict):
        return [(path, list(value))] + [
            kv for k, v in value.items() for kv in key_order(v, f"{path}/{k}")]
    if isinstance(value, list):
        return [kv for i, v in enumerate(value) for kv in key_order(v, f"{path}[{i}]")]
    return []


def traces(run: Path, step: int, subset: str) -> list[dict[str, Any]]:
    path = run / "rollouts" / f"step_{step}" / "train" / subset / "traces.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def reward(episode: dict[str, Any]) -> float:
    rewards = episode["traces"][0]["rewards"].values()
    return sum(r["score"] * r["weight"] for r in rewards)


def task_of(episode: dict[str, Any]) -> tuple[str, int]:
    return episode["env"]["id"], episode["task"]["data"]["idx"]


def test_rollouts_are_verifiers_episode_records_like_the_samples(tmp_path: Path) -> None:
    config = tmp_path / "rl.toml"
    config.write_text(RL_TOML + '[[orchestrator.env]]\nid = "wordle"\n')
    for name in ("a", "b"):
        args = ["@", str(config), "--output-dir", "outputs", "--run.name", name,
                "--max-steps", "2"]
        assert run_rl(args, tmp_path).returncode == 0
    run = tmp_path / "outputs" / "a"
    sample = [json.loads(line) for line in SAMPLES.read_text().splitlines()]
    for step in (1, 2):
        every = traces(run, step, "all")
        assert sorted({e["env"]["id"] for e in every}) == ["reverse-text", "wordle"]
        assert len(every) == 12
        failed = [e for e in every if not e["ok"]]
        assert len(failed) == 2  # one per env
        for e in failed:
            assert e["is_timeout"] == (step == 1) and e["traces"][0]["nodes"] == []
            (error,) = e["errors"]
            assert error["type"] == ("TimeoutError" if step == 1 else "ProviderError")
            # the sample's failed episode, plus the one error it records
            assert key_order({**e, "errors": []}) == key_order(sample[-1])
        for e in every:
            if e["ok"]:
                assert key_order(e) == key_order(sample[0])
                roles = [(n["message"]["role"], n["sampled"]) for n in e["traces"][0]["nodes"]]
                assert roles == [("system", False), ("user", False), ("assistant", True)]
                user, reply = (n["message"]["content"] for n in e["traces"][0]["nodes"][1:])
                assert reward(e) == 1.0 or reply != user[::-1]
        # effective: the episodes that train, a reward off their task group's mean
        groups: dict[tuple[str, int], list[float]] = {}
        for e in every:
            if e["ok"]:
                groups.setdefault(task_of(e), []).append(reward(e))
        means = {k: sum(v) / len(v) for k, v in groups.items()}
        assert traces(run, step, "effective") == [
            e for e in every if e["ok"] and reward(e) != means[task_of(e)]]
        prompts = {e["traces"][0]["nodes"][1]["message"]["content"] for e in every if e["ok"]}
        assert len(prompts) > 2  # a prompt varies per task
    # deterministic per (env, step, episode): another run writes the same bytes
    for step in (1, 2):
        for subset in ("all", "effective"):
            rel = Path("rollouts", f"step_{step}", "train", subset, "traces.jsonl")
            assert (run / rel).read_bytes() == (tmp_path / "outputs" / "b" / rel).read_bytes()


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

    # a step that was never saved fails in the trainer, like a torch DCP load of it
    missing = run_rl([*args, "--resume.step", "3"], tmp_path)
    assert missing.returncode == 1
    assert "trainer process failed with exit code 1 while loading checkpoint step 3" in (
        missing.stderr
    )
    metadata = (run / "checkpoints" / "step_3" / "trainer" / ".metadata").resolve()
    assert last_line(run / "logs" / "attempt_4" / "trainer.log") == (
        f"FileNotFoundError: [Errno 2] No such file or directory: '{metadata}'"
    )
    assert metrics_steps(run)[-1] == 3


def test_resume_without_checkpoint_starts_at_step_one(tmp_path: Path) -> None:
    result = run_rl(current_args(tmp_path, "--resume", "--max-steps", "2"), tmp_path)
    assert result.returncode == 0, result.stderr
    assert "no checkpoint" in result.stderr.lower()
    assert metrics_steps(tmp_path / "outputs" / "run-1") == [1, 2]


def test_dialect_2025_10(tmp_path: Path) -> None:
    run = tmp_path / "outputs" / "run-x"
    args = legacy_args(tmp_path, "--ckpt.interval", "2")
    result = run_rl(args, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "dialect 2025-10" in result.stdout
    assert "Inference GPU ids: 2,3,4,5,6,7 (tp=1, dp=6)" in result.stdout
    assert "Trainer GPU ids: 0,1" in result.stdout
    assert metrics_steps(run) == [1, 2, 3]  # orchestrator's max_steps wins
    assert step_dirs(run / "checkpoints") == ["step_2"]
    assert sorted(p.name for p in (run / "logs").iterdir()) == [
        "inference.stdout", "orchestrator.stdout", "trainer.stdout",
    ]  # fmt: skip
    inference = json.loads((run / "configs" / "inference.json").read_text())
    assert inference["parallel"] == {"dp": 6, "tp": 1}
    assert inference["model"] == {"name": "m"}
    trainer = json.loads((run / "configs" / "trainer.json").read_text())
    assert trainer["optim"]["lr"] == 2e-6
    assert trainer["ckpt"]["interval"] == 2

    bad = run_rl([*args, "--inference.parallel.dp", "3", "--output-dir", "other"], tmp_path)
    assert bad.returncode == 2
    assert "dp * inference.parallel.tp" in bad.stderr
    assert not (tmp_path / "other").exists()


def test_2025_10_cleans_by_default_instead_of_refusing(tmp_path: Path) -> None:
    run = tmp_path / "outputs" / "run-x"
    args = legacy_args(tmp_path, "--ckpt.interval", "2")
    assert run_rl(args, tmp_path).returncode == 0
    (run / "logs" / "trainer.stdout").write_text("old attempt\n")

    again = run_rl([*args, "--max-steps", "1"], tmp_path)
    assert again.returncode == 0, again.stderr
    assert f"Cleaning {run / 'checkpoints'}" in again.stdout
    assert "old attempt" not in (run / "logs" / "trainer.stdout").read_text()
    assert not (run / "checkpoints").exists()  # wiped, and step 1 saves none
    assert sorted(p.name for p in (run / "rollouts").iterdir()) == ["step_1"]
    assert metrics_steps(run) == [1, 2, 3, 1]

    kept = run_rl([*args, "--no-clean", "--max-steps", "2"], tmp_path)
    assert kept.returncode == 0, kept.stderr
    assert "Cleaning" not in kept.stdout
    assert (run / "rollouts" / "step_1").is_dir() and step_dirs(run / "checkpoints") == ["step_2"]


def test_2025_10_resume_step_and_interval_reset(tmp_path: Path) -> None:
    run = tmp_path / "outputs" / "run-x"
    train_toml = "max_steps = 5\n[ckpt]\ninterval = 2\n"
    first = run_rl(legacy_args(tmp_path, "--max-steps", "4", train_toml=train_toml), tmp_path)
    assert first.returncode == 0, first.stderr
    assert "checkpoint interval: 2" in first.stdout  # from the trainer file
    assert complete_steps(run) == ["step_2", "step_4"]

    # --ckpt.resume-step alone creates the shared [ckpt] table: interval 50 replaces the file's
    args = legacy_args(tmp_path, "--max-steps", "8", "--ckpt.resume-step", "2",
                       train_toml=train_toml)  # fmt: skip
    resumed = run_rl(args, tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "Resuming from checkpoint step 2" in resumed.stdout
    assert "checkpoint interval: 50" in resumed.stdout
    assert "Starting step 3" in resumed.stdout and "Starting step 2" not in resumed.stdout
    assert metrics_steps(run) == [1, 2, 3, 4, 3, 4, 5, 6, 7, 8]
    assert complete_steps(run) == ["step_2", "step_4"]  # kept (resuming), none new
    trainer = json.loads((run / "configs" / "trainer.json").read_text())
    assert trainer["ckpt"] == {"interval": 50, "resume_step": 2}

    with_interval = run_rl([*args, "--ckpt.interval", "3", "--max-steps", "6"], tmp_path)
    assert with_interval.returncode == 0, with_interval.stderr
    assert "checkpoint interval: 3" in with_interval.stdout
    assert complete_steps(run) == ["step_2", "step_3", "step_4", "step_6"]

    # an incomplete or missing step fails the trainer's load, exit 1
    (run / "checkpoints" / "step_6" / "trainer" / ".metadata").unlink()
    broken = run_rl(legacy_args(tmp_path, "--ckpt.resume-step", "6"), tmp_path)
    assert broken.returncode == 1
    assert "while loading checkpoint step 6" in broken.stdout
    assert last_line(run / "logs" / "trainer.stdout").startswith("FileNotFoundError: [Errno 2] ")
    assert last_line(run / "logs" / "trainer.stdout").endswith("/step_6/trainer/.metadata'")

    # 0 means no resume: a fresh start, which (clean by default) wipes the checkpoints
    fresh = run_rl(legacy_args(tmp_path, "--ckpt.resume-step", "0", "--max-steps", "1"),
                   tmp_path)  # fmt: skip
    assert fresh.returncode == 0, fresh.stderr
    assert "Resuming" not in fresh.stdout and "Starting step 1" in fresh.stdout
    assert not (run / "checkpoints").exists()


def test_2025_10_rejects_flags_it_does_not_know(tmp_path: Path) -> None:
    for extra, flag in [
        (["--resume"], "--resume"),
        (["--resume.step", "2"], "--resume"),
        (["--wandb.entity", "team"], "--wandb.entity"),
        (["--wandb.id", "abc"], "--wandb.id"),
        (["--ckpt.every", "2"], "--ckpt.every"),
        (["--dry-run"], "--dry-run"),
    ]:
        result = run_rl(legacy_args(tmp_path, *extra), tmp_path)
        assert result.returncode == 2, extra
        assert f"unrecognized arguments: {flag}" in result.stderr, extra
    assert not (tmp_path / "outputs").exists()
    ok = run_rl(legacy_args(tmp_path, "--wandb.offline", "--trainer.wandb.id", "t1",
                            "--ckpt.keep", "2", "--max-steps", "1"), tmp_path)  # fmt: skip
    assert ok.returncode == 0, ok.stderr


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


def test_unknown_keys_are_refused_as_pydantic_config_refuses_them(tmp_path: Path) -> None:
    (tmp_path / "extra.toml").write_text("[trainer.model]\nanything = 1\n[ckpt]\nkeep = 2\n")
    for extra in (["--trainer.optim.lrr", "1e-6"], ["--dry-run", "--trainer.optim.lrr", "1e-6"]):
        result = run_rl(current_args(tmp_path, "@", "extra.toml", *extra), tmp_path)
        assert result.returncode == 1
        lines = [line.strip("│ ") for line in result.stderr.splitlines()]
        assert lines[0].startswith("╭─ Config file error ─") and lines[-1].startswith("╰")
        assert lines[1:-1] == ["Failed to validate config:", "─" * 76,
                               "2 validation errors for RLConfig",
                               "--trainer.optim.lrr", "Extra inputs are not permitted (got 1e-06)",
                               "--ckpt.keep", "Extra inputs are not permitted (got 2)"]
        assert sorted(p.name for p in tmp_path.iterdir()) == ["extra.toml", "rl.toml"]
    # tables the fake does not model take any key; known ones take theirs
    ok = run_rl(current_args(tmp_path, "--trainer.model.anything", "1", "--ckpt.keep-last", "2",
                             "--trainer.optim.weight-decay", "0.1", "--dry-run"), tmp_path)
    assert ok.returncode == 0, ok.stderr


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
        "--trainer.enable-router-replay",
        "--no-trainer.model.reshard-after-forward",
        "--model.revision", "main",
    ]  # fmt: skip
    result = run_rl(args, tmp_path)
    assert result.returncode == 0, result.stderr
    rl = json.loads((tmp_path / "out" / "r" / "configs" / "rl.json").read_text())
    assert rl["trainer"]["optim"] == {"lr": 3e-6, "weight_decay": 0.1}
    assert rl["trainer"]["enable_router_replay"] is True
    assert rl["trainer"]["model"]["reshard_after_forward"] is False
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


def start_rl(args: list[str], cwd: Path, env: Mapping[str, str]) -> subprocess.Popen[str]:
    """The launcher in its own process group, stdout piped, as a runner starts it."""
    return subprocess.Popen(
        [*launcher_argv(), *args],
        cwd=cwd,
        env=dict(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )


def test_checkpoint_is_shards_then_metadata_and_a_signal_leaves_it_incomplete(
    tmp_path: Path,
) -> None:
    args = current_args(tmp_path, "--ckpt.interval", "2", "--max-steps", "4")
    done = run_rl(args, tmp_path, clean_env(FAKE_RL_STEP_SECONDS="0.01"))
    assert done.returncode == 0, done.stderr
    run = tmp_path / "outputs" / "run-1"
    for name in ("step_2", "step_4"):
        step = run / "checkpoints" / name
        assert sorted(p.name for p in (step / "trainer").iterdir()) == [
            ".metadata", "__0_0.distcp", "__1_0.distcp",  # one shard per trainer rank
        ]  # fmt: skip
        assert [p.name for p in (step / "orchestrator").iterdir()] == ["progress.pt"]

    # A long checkpoint write: the shards are there, the .metadata not yet; SIGTERM then
    # leaves the step folder incomplete.
    env = clean_env(FAKE_RL_STEP_SECONDS="0.01", FAKE_RL_CKPT_SECONDS="60")
    proc = start_rl(current_args(tmp_path, "--ckpt.interval", "2", run_name="run-2"),
                    tmp_path, env)  # fmt: skip
    trainer = tmp_path / "outputs" / "run-2" / "checkpoints" / "step_2" / "trainer"
    assert wait_for(lambda: (trainer / "__1_0.distcp").exists(), timeout=20)
    assert not (trainer / ".metadata").exists()
    os.killpg(proc.pid, signal.SIGTERM)
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 143, out
    assert sorted(p.name for p in trainer.iterdir()) == ["__0_0.distcp", "__1_0.distcp"]
    assert (trainer.parent / "orchestrator" / "progress.pt").is_file()


def test_die_in_checkpoint_then_bare_resume_fails_like_a_dcp_load(tmp_path: Path) -> None:
    args = current_args(tmp_path, "--ckpt.interval", "2", "--max-steps", "6")
    env = clean_env(FAKE_RL_STEP_SECONDS="0.01", FAKE_RL_DIE_IN_CHECKPOINT_AT_STEP="4")
    proc = start_rl(args, tmp_path, env)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL, out
    assert wait_for(lambda: not group_members(proc.pid), timeout=10), group_members(proc.pid)
    run = tmp_path / "outputs" / "run-1"
    assert metrics_steps(run) == [1, 2, 3, 4]
    step_4 = run / "checkpoints" / "step_4"
    assert sorted(p.name for p in (step_4 / "trainer").iterdir()) == [
        "__0_0.distcp", "__1_0.distcp",
    ]  # fmt: skip
    assert complete_steps(run) == ["step_2"]

    # bare --resume takes the highest step folder without checking it, as prime-rl does
    env = clean_env(FAKE_RL_STEP_SECONDS="0.01")
    resumed = run_rl([*args, "--resume"], tmp_path, env)
    assert resumed.returncode == 1
    assert "Resuming from checkpoint step 4" in resumed.stdout
    assert "Starting step" not in resumed.stdout
    message = "trainer process failed with exit code 1 while loading checkpoint step 4"
    assert message in resumed.stdout and message in resumed.stderr
    trainer_log = (run / "logs" / "attempt_2" / "trainer.log").read_text().splitlines()
    assert "torch.distributed.checkpoint.api.CheckpointException: " \
        "CheckpointException ranks:dict_keys([0])" in trainer_log
    assert trainer_log[-1] == (
        "FileNotFoundError: [Errno 2] No such file or directory: "
        f"'{(step_4 / 'trainer' / '.metadata').resolve()}'"
    )
    rank_1 = run / "logs" / "attempt_2" / "trainer" / "torchrun" / "1" / "stderr.log"
    assert "FileNotFoundError" in rank_1.read_text()

    # naming the last complete step works and rewrites the incomplete one
    explicit = run_rl([*args, "--resume", "--resume.step", "2"], tmp_path, env)
    assert explicit.returncode == 0, explicit.stderr
    assert metrics_steps(run) == [1, 2, 3, 4, 3, 4, 5, 6]
    assert complete_steps(run) == ["step_2", "step_4", "step_6"]


def test_fail_after_steps_fails_every_attempt(tmp_path: Path) -> None:
    env = clean_env(FAKE_RL_STEP_SECONDS="0.01", FAKE_RL_FAIL_AFTER_STEPS="3")
    args = current_args(tmp_path, "--ckpt.interval", "2", "--max-steps", "20")
    run = tmp_path / "outputs" / "run-1"
    first = run_rl(args, tmp_path, env)
    assert first.returncode == 1
    assert "trainer process failed with exit code 1 at step 4" in first.stderr
    assert last_line(run / "logs" / "attempt_1" / "trainer.log") == CUDA_ERROR
    assert metrics_steps(run) == [1, 2, 3]

    second = run_rl([*args, "--resume"], tmp_path, env)  # from step 2: fails at 2 + 3 + 1
    assert second.returncode == 1
    assert "trainer process failed with exit code 1 at step 6" in second.stderr
    assert metrics_steps(run) == [1, 2, 3, 3, 4, 5]
    assert complete_steps(run) == ["step_2", "step_4"]


def test_fail_before_step_one(tmp_path: Path) -> None:
    env = clean_env(FAKE_RL_FAIL_BEFORE_STEP="1")
    result = run_rl(current_args(tmp_path), tmp_path, env)
    assert result.returncode == 1
    assert "Starting step" not in result.stdout
    message = "orchestrator process failed with exit code 1 before step 1"
    assert message in result.stdout and message in result.stderr
    run = tmp_path / "outputs" / "run-1"
    orchestrator_log = (run / "logs" / "attempt_1" / "orchestrator.log").read_text()
    assert "Traceback (most recent call last):" in orchestrator_log
    last = orchestrator_log.splitlines()[-1]
    assert last == "ModuleNotFoundError: No module named 'reverse_text'"
    assert not (run / "metrics.jsonl").exists()


def test_progress_bars_redraw_with_carriage_returns(tmp_path: Path) -> None:
    result = subprocess.run(
        [*launcher_argv(), *current_args(tmp_path, "--max-steps", "1")],
        cwd=tmp_path, env=clean_env(), capture_output=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = result.stdout
    label = b"Loading safetensors checkpoint shards:"
    assert out.count(b"\r" + label) == 5  # 0/4 .. 4/4, each redrawn over the last
    assert b"\r" + label + b"   0% Completed | 0/4 [" in out
    last_redraw = out.rindex(b"\r" + label)
    bar_end = out.index(b"\n", last_redraw)
    assert b"100% Completed | 4/4 [" in out[last_redraw:bar_end]
    assert b"\r" not in out[bar_end:]
    assert bar_end < out.index(b"All components started\n")
    inference = tmp_path / "outputs" / "run-1" / "logs" / "attempt_1" / "inference.log"
    text = inference.read_bytes()
    assert text.count(b"\r" + label) == 5 and b"100% Completed | 4/4" in text


def test_slow_shutdown_keeps_the_group_alive_and_logging(tmp_path: Path) -> None:
    seconds = 2.0
    proc = start_hanging(tmp_path, FAKE_RL_SHUTDOWN_SECONDS=str(seconds))
    start = time.monotonic()
    os.killpg(proc.pid, signal.SIGTERM)
    time.sleep(0.2)
    # Nobody exits before the shutdown time is up, however slow this machine is.
    members = group_members(proc.pid)
    if time.monotonic() - start < seconds:
        assert len(members) == 4, members
    out, _ = proc.communicate(timeout=30)
    elapsed = time.monotonic() - start
    assert proc.returncode == 143
    assert elapsed >= seconds
    lines = out.splitlines()
    assert lines[-1] == "shutdown complete"
    waiting = [line for line in lines if line.startswith("waiting for components to shut down")]
    assert len(waiting) >= 2
    assert lines.index("received SIGTERM, shutting down") < lines.index(waiting[0])
    trainer_log = tmp_path / "outputs" / "run-1" / "logs" / "attempt_1" / "trainer.log"
    assert "waiting for components to shut down" in trainer_log.read_text()
    assert wait_for(lambda: not group_members(proc.pid), timeout=10), group_members(proc.pid)


def test_slow_shutdown_on_sigint_to_launcher_alone(tmp_path: Path) -> None:
    seconds = 1.0
    proc = start_hanging(tmp_path, FAKE_RL_SHUTDOWN_SECONDS=str(seconds))
    start = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert time.monotonic() - start >= seconds
    assert "received SIGINT, shutting down" in out and out.endswith("shutdown complete\n")
    assert wait_for(lambda: not group_members(proc.pid), timeout=10), group_members(proc.pid)


def child_environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    pairs = (item.decode().split("=", 1) for item in raw if b"=" in item)
    return dict(pairs)


def test_record_run_identity(tmp_path: Path) -> None:
    record = tmp_path / "record.jsonl"
    env = clean_env(FAKE_RL_RECORD=str(record))

    def entries() -> list[dict[str, Any]]:
        return [json.loads(line) for line in record.read_text().splitlines()]

    for name in ("a", "b"):
        assert run_rl(current_args(tmp_path, "--max-steps", "1", run_name=name), tmp_path,
                      env).returncode == 0  # fmt: skip
    fresh = entries()
    ids = [e["prl_run_id"] for e in fresh]
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids) and ids[0] != ids[1]
    assert all("PRL_RUN_ID" not in e["env"] and e["wandb_ids"] is None for e in fresh)

    stable = {**env, "PRL_RUN_ID": "stable-id"}
    args = current_args(tmp_path, "--max-steps", "1", run_name="c")
    assert run_rl(args, tmp_path, stable).returncode == 0
    assert entries()[-1]["prl_run_id"] == "stable-id" and "PRL_RUN_ID" in entries()[-1]["env"]

    legacy = legacy_args(tmp_path, "--max-steps", "1", "--trainer.wandb.id", "t-1",
                         "--orchestrator.wandb.id", "o-1")  # fmt: skip
    assert run_rl(legacy, tmp_path, env).returncode == 0
    assert run_rl(legacy_args(tmp_path, "--max-steps", "1", "--trainer.wandb.id", "t-2"),
                  tmp_path, stable).returncode == 0  # fmt: skip
    assert run_rl(["--trainer", "@"], tmp_path, env).returncode == 2
    last = entries()[-3:]
    assert [(e["prl_run_id"], e["wandb_ids"]) for e in last] == [
        (None, {"trainer": "t-1", "orchestrator": "o-1"}),  # 2025-10 sets no PRL_RUN_ID
        ("stable-id", {"trainer": "t-2", "orchestrator": None}),
        (None, None),  # argv that cannot be parsed
    ]
    assert "stable-id" not in json.dumps([e["env"] for e in entries()])


def test_components_inherit_run_identity(tmp_path: Path) -> None:
    record = tmp_path / "record.jsonl"
    proc = start_hanging(tmp_path, FAKE_RL_RECORD=str(record))
    try:
        (entry,) = [json.loads(line) for line in record.read_text().splitlines()]
        children = [pid for pid in group_members(proc.pid) if pid != proc.pid]
        assert len(children) == 3
        for pid in children:
            environ = child_environ(pid)
            assert environ["PRL_RUN_ID"] == entry["prl_run_id"]
            assert environ["PRL_RUN_NAME"] == "run-1"
    finally:
        stop(proc, signal.SIGTERM, whole_group=True)
