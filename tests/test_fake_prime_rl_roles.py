"""The fake prime-rl's multi-node side (tests/fake_prime_rl/roles.py and bin/): rank 0's
multi-node dry run, and every node's processes wired over real sockets on loopback
addresses of their own, each "node" a set of processes with its FAKE_MODAL_CONTAINER_IP."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fake_prime_rl import BIN

RL_TOML = """\
max_steps = 4

[model]
name = "PrimeIntellect/Qwen3-0.6B-Reverse-Text-SFT"

[[orchestrator.env]]
id = "reverse-text"

[trainer.optim]
lr = 2e-6
"""
NCCL = '\n[weight_broadcast]\ntype = "nccl"\n'
WAIT_S = 60  # generous: two shared cores, each process a Python start


def role_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A clean environment whose python3 is this interpreter (the wrappers' shebang)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FAKE_RL_", "PRL_"))
           and k not in ("FAKE_MODAL_CONTAINER_IP", "INFER_NODE_RANK", "OUTPUT_DIR")}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.update(FAKE_RL_STEP_SECONDS="0.02", FAKE_RL_CONNECT_TIMEOUT_SECONDS="30",
               FAKE_RL_RECORD_DIR=str(tmp_path / "records"))
    env.update(extra)
    return env


def loopback_net() -> str:
    """127.R.S: distinct from 127.0.0.x and, at random, from other test runs'."""
    return f"127.{random.randint(1, 254)}.{random.randint(0, 255)}"


def dry_run(tmp_path: Path, *extra: str, toml: str = RL_TOML, trainers: int = 1,
            inference: int = 1, gpus: int = 2) -> subprocess.CompletedProcess[str]:
    """Rank 0's command: prime-rl's rl with the multi-node deployment and --dry-run."""
    config = tmp_path / "rl.toml"
    config.write_text(toml)
    argv = [str(BIN / "rl"), "@", str(config), "--deployment.type", "multi_node",
            "--deployment.num-train-nodes", str(trainers),
            "--deployment.num-infer-nodes", str(inference),
            "--deployment.gpus-per-node", str(gpus),
            "--inference.vllm.tensor-parallel-size", "1",
            "--output-dir", str(tmp_path / "outputs"), "--run.name", "run-1",
            "--slurm.job-name", "run-1", "--monitors.wandb.project", "p",
            "--ckpt.interval", "2", *extra, "--dry-run"]
    return subprocess.run(argv, env=role_env(tmp_path), capture_output=True, text=True,
                          timeout=WAIT_S)


def records(tmp_path: Path, role: str) -> list[dict[str, Any]]:
    found = [json.loads(p.read_text()) for p in (tmp_path / "records").glob(f"{role}-*.json")]
    return sorted(found, key=lambda r: (r["node_rank"] is None, r["node_rank"] or 0))


@dataclass
class Cluster:
    """N "nodes" on this machine: trainer nodes are ranks 0..T-1, inference nodes T..N-1,
    node n at address ``<net>.<n+1>``; every process started as prm's runner starts it."""

    tmp: Path
    trainers: int
    inference: int
    gpus: int = 2
    env: dict[str, str] = field(default_factory=dict)  # for every process
    net: str = field(default_factory=loopback_net)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def run_dir(self) -> Path:
        return self.tmp / "outputs" / "run-1"

    def ip(self, node: int) -> str:
        return f"{self.net}.{node + 1}"

    def start(self, name: str, node: int, argv: list[str], **env: str) -> None:
        out = (self.tmp / "procs").joinpath(name)
        out.parent.mkdir(exist_ok=True)
        self.procs[name] = subprocess.Popen(
            argv, env=role_env(self.tmp, FAKE_MODAL_CONTAINER_IP=self.ip(node), **self.env,
                               **env),
            stdout=out.with_suffix(".out").open("wb"), stderr=out.with_suffix(".err").open("wb"),
            start_new_session=True)

    def trainer(self, rank: int, rdzv: str | None = None) -> None:
        configs = self.run_dir / "configs"
        self.start(f"trainer{rank}", rank, [
            str(BIN / "torchrun"), "--role=trainer", f"--nnodes={self.trainers}",
            f"--nproc-per-node={self.gpus}", f"--node-rank={rank}",
            f"--rdzv-endpoint={rdzv or self.ip(0)}:29500", "--rdzv-id=run-1",
            f"--log-dir={self.run_dir}/logs/trainer/torchrun", "--tee=3", "--redirects=3",
            "-m", "prime_rl.trainer.rl.train", "@", f"{configs}/trainer.toml"])

    def orchestrator(self, broadcast_host: str | None) -> None:
        infer = range(self.trainers, self.trainers + self.inference)
        argv = [str(BIN / "orchestrator"), "@", f"{self.run_dir}/configs/orchestrator.toml",
                "--student.client.base-url", f"http://{self.ip(self.trainers)}:8000/v1",
                "--student.client.admin-base-url", *(f"http://{self.ip(n)}:8100/v1" for n in infer)]
        if broadcast_host:
            argv += ["--weight_broadcast.host", broadcast_host]
        self.start("orchestrator", 0, argv)

    def inference_node(self, k: int) -> None:
        node = self.trainers + k
        self.start(f"inference{k}", node, [
            str(BIN / "inference"), "@", f"{self.run_dir}/configs/inference.toml",
            "--server.host", "0.0.0.0", "--server.port", "8100"], INFER_NODE_RANK=str(k))
        if k == 0:
            workers = [f"http://{self.ip(self.trainers + j)}:8100" for j in range(self.inference)]
            self.start("router", node, [
                str(BIN / "vllm-router"), "--policy", "consistent_hash", "--worker-urls",
                *workers, "--host", "0.0.0.0", "--port", "8000",
                "--intra-node-data-parallel-size", str(self.gpus),
                "--worker-startup-timeout-secs", "4200"], OUTPUT_DIR=str(self.run_dir))

    def wait(self, name: str) -> int:
        return self.procs[name].wait(timeout=WAIT_S)

    def stop(self, name: str) -> int:
        self.procs[name].send_signal(signal.SIGTERM)
        return self.wait(name)

    def err(self, name: str) -> str:
        return (self.tmp / "procs" / f"{name}.err").read_text()

    def kill_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=WAIT_S)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Any]:
    made: list[Cluster] = []

    def make(trainers: int, inference: int, **env: str) -> Cluster:
        made.append(Cluster(tmp_path, trainers, inference, env=env))
        return made[-1]

    yield make
    for c in made:
        c.kill_all()


def complete_steps(run_dir: Path, shards: int) -> list[int]:
    """Checkpoint steps holding .metadata and every shard."""
    steps = []
    for step in sorted((run_dir / "checkpoints").iterdir(), key=lambda p: int(p.name[5:])):
        names = {p.name for p in (step / "trainer").iterdir()}
        if names == {".metadata", *(f"__{r}_0.distcp" for r in range(shards))}:
            steps.append(int(step.name[5:]))
    return steps


def wait_for(predicate: Callable[[], bool], timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def metrics_steps(run_dir: Path) -> list[int]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["step"] for line in lines]


def test_dry_run_writes_sub_configs_and_job_script(tmp_path: Path) -> None:
    result = dry_run(tmp_path, toml=RL_TOML + NCCL, trainers=2)
    assert result.returncode == 0, result.stderr
    run = tmp_path / "outputs" / "run-1"
    script = run / "rl.sbatch"
    assert f"  sbatch {script}" in result.stdout.splitlines()
    assert "Dry run complete. To submit manually:" in result.stdout
    assert sorted(p.name for p in run.iterdir()) == ["configs", "rl.sbatch"]  # nothing started
    configs = {p.stem: tomllib.loads(p.read_text()) for p in (run / "configs").iterdir()}
    assert sorted(configs) == ["inference", "orchestrator", "trainer"]
    trainer, orchestrator = configs["trainer"], configs["orchestrator"]
    assert trainer["output_dir"] == orchestrator["output_dir"] == str(run)
    assert trainer["max_steps"] == orchestrator["max_steps"] == 4
    assert trainer["ckpt"] == {"interval": 2} and trainer["optim"] == {"lr": 2e-6}
    assert orchestrator["weight_broadcast"] == {"type": "nccl"}
    assert orchestrator["env"] == [{"id": "reverse-text"}]
    assert configs["inference"]["model"]["name"].endswith("Reverse-Text-SFT")
    text = script.read_text()
    assert "#SBATCH --job-name=run-1" in text and "#SBATCH --nodes=3" in text
    assert "export NUM_TRAIN_NODES=2" in text and "export USE_NCCL_BROADCAST=1" in text

    # the resume step is resolved here, as the single-node launcher resolves it
    for step in (2, 4):
        (run / "checkpoints" / f"step_{step}" / "trainer").mkdir(parents=True)
    for extra, expected in ((["--resume"], 4), (["--resume", "--resume.step", "2"], 2)):
        again = dry_run(tmp_path, *extra)
        assert again.returncode == 0, again.stderr
        assert f"Resuming from checkpoint step {expected}" in again.stdout
        resolved = tomllib.loads((run / "configs" / "trainer.toml").read_text())
        assert resolved["ckpt"] == {"interval": 2, "resume_step": expected}


def test_multi_node_needs_slurm_and_no_single_node_keys(tmp_path: Path) -> None:
    config = tmp_path / "rl.toml"
    config.write_text(RL_TOML)
    base = [str(BIN / "rl"), "@", str(config), "--deployment.type", "multi_node",
            "--deployment.num-train-nodes", "1", "--deployment.num-infer-nodes", "1",
            "--output-dir", str(tmp_path / "out"), "--dry-run"]
    env = role_env(tmp_path)
    no_slurm = subprocess.run(base, env=env, capture_output=True, text=True, timeout=WAIT_S)
    assert no_slurm.returncode == 2
    assert "Must use SLURM for multi-node deployment" in no_slurm.stderr
    gpus = subprocess.run([*base, "--slurm.job-name", "x", "--deployment.num-train-gpus", "2"],
                          env=env, capture_output=True, text=True, timeout=WAIT_S)
    assert gpus.returncode == 1
    assert "--deployment.num-train-gpus" in gpus.stderr
    assert "Extra inputs are not permitted" in gpus.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("trainers", "broadcast"), [(1, False), (2, True)],
                         ids=["2-nodes", "3-nodes-nccl"])
def test_every_node_reaches_its_peers(tmp_path: Path, cluster: Any, trainers: int,
                                     broadcast: bool) -> None:
    assert dry_run(tmp_path, toml=RL_TOML + (NCCL if broadcast else ""),
                   trainers=trainers).returncode == 0
    c: Cluster = cluster(trainers, 1)
    c.inference_node(0)
    for rank in range(trainers):
        c.trainer(rank)
    c.orchestrator(c.ip(0) if broadcast else None)
    for name in [f"trainer{r}" for r in range(trainers)] + ["orchestrator"]:
        assert c.wait(name) == 0, c.err(name)
    assert c.stop("router") == 143 and c.stop("inference0") == 143

    infer_ip = c.ip(trainers)
    trainer_records = records(tmp_path, "torchrun")
    assert [r["node_rank"] for r in trainer_records] == list(range(trainers))
    assert trainer_records[0]["bound"] == f"{c.ip(0)}:29500"
    assert trainer_records[0]["peers"] == [
        {"node_rank": r, "address": c.ip(r)} for r in range(1, trainers)]
    for r in trainer_records[1:]:
        assert r["peers"] == [{"node_rank": 0, "endpoint": f"{c.ip(0)}:29500"}]
    (orchestrator,) = records(tmp_path, "orchestrator")
    assert orchestrator["peers"] == [
        {"url": f"http://{infer_ip}:8000/v1/models", "status": 200},
        {"url": f"http://{infer_ip}:8100/health", "status": 200}]
    assert orchestrator["weight_broadcast"] == (
        {"type": "nccl", "host": c.ip(0)} if broadcast else {"type": "filesystem", "host": None})
    (router,) = records(tmp_path, "vllm-router")
    assert router["bound"] == f"{infer_ip}:8000"
    assert router["peers"] == [{"url": f"http://{infer_ip}:8100/health", "status": 200}]
    (server,) = records(tmp_path, "inference")
    assert server["bound"] == f"{infer_ip}:8100" and server["node_rank"] == 0
    assert {c.ip(0), infer_ip} <= set(server["clients"])  # the orchestrator and the router

    run = c.run_dir
    assert metrics_steps(run) == [1, 2, 3, 4]
    assert complete_steps(run, trainers * c.gpus) == [2, 4]
    logs = run / "logs"
    assert "1 workers ready" in (logs / "inference" / "router_0.log").read_text()
    for rank in range(trainers):
        assert "training finished" in (logs / "trainer" / f"node_{rank}.log").read_text()
    assert "step 4:" in (logs / "orchestrator.log").read_text()
    assert "serving" in (logs / "inference" / "node_0.log").read_text()


def test_wrong_rendezvous_fails_naming_it(tmp_path: Path, cluster: Any) -> None:
    assert dry_run(tmp_path, trainers=2).returncode == 0
    c: Cluster = cluster(2, 1, FAKE_RL_CONNECT_TIMEOUT_SECONDS="1.5")
    wrong = c.ip(7)  # no node there
    c.trainer(0)
    c.trainer(1, rdzv=wrong)
    assert c.wait("trainer1") == 1
    assert f"the rendezvous at {wrong}:29500" in c.err("trainer1")
    assert c.wait("trainer0") == 1
    assert "1 of 2 nodes joined, node(s) 1 never came" in c.err("trainer0")


def test_resume_loads_a_step_only_when_every_shard_is_there(tmp_path: Path,
                                                            cluster: Any) -> None:
    assert dry_run(tmp_path, trainers=2).returncode == 0

    def train() -> list[int]:
        c: Cluster = cluster(2, 1)
        for rank in range(2):
            c.trainer(rank)
        return [c.wait(f"trainer{r}") for r in range(2)]

    assert train() == [0, 0]
    run = tmp_path / "outputs" / "run-1"
    assert complete_steps(run, 4) == [2, 4]

    # a shard node 1 wrote is missing: every node fails the load, naming it
    shard = run / "checkpoints" / "step_2" / "trainer" / "__3_0.distcp"
    kept = shard.read_bytes()
    shard.unlink()
    assert dry_run(tmp_path, "--resume", "--resume.step", "2", "--max-steps", "5").returncode == 0
    assert train() == [1, 1]
    for name in ("trainer0", "trainer1"):
        err = (tmp_path / "procs" / f"{name}.err").read_text()
        assert f"No such file or directory: '{shard}'" in err
        assert "while loading checkpoint step 2: __3_0.distcp is missing" in err

    shard.write_bytes(kept)
    assert train() == [0, 0]
    assert metrics_steps(run) == [1, 2, 3, 4, 3, 4, 5]

    # bare --resume takes the newest step folder; without its .metadata the load fails
    (run / "checkpoints" / "step_4" / "trainer" / ".metadata").unlink()
    assert dry_run(tmp_path, "--resume", "--max-steps", "6").returncode == 0
    assert train() == [1, 1]
    metadata = run / "checkpoints" / "step_4" / "trainer" / ".metadata"
    assert f"FileNotFoundError: [Errno 2] No such file or directory: '{metadata}'" in (
        (tmp_path / "procs" / "trainer0.err").read_text())


def test_flags_are_strict(tmp_path: Path) -> None:
    assert dry_run(tmp_path, toml=RL_TOML + NCCL).returncode == 0
    configs = tmp_path / "outputs" / "run-1" / "configs"
    url = "http://127.0.0.1:8000/v1"
    cases = [
        ([BIN / "torchrun", "--nnodes=1", "--nproc-per-node=1", "--node-rank=0",
          "--rdzv-endpoint=h:29500", "--rdzv-id=x", "--bogus=1", "-m",
          "prime_rl.trainer.rl.train", "@", configs / "trainer.toml"], "--bogus"),
        ([BIN / "torchrun", "--nnodes=2", "--nproc-per-node=1", "--node-rank=1",
          "--rdzv-endpoint=no-port", "--rdzv-id=x", "-m", "prime_rl.trainer.rl.train", "@",
          configs / "trainer.toml"], "expected HOST:PORT"),
        ([BIN / "orchestrator", "@", configs / "orchestrator.toml", "--student.client.base-url",
          url, "--student.client.admin-base-url", url], "--weight_broadcast.host is required"),
        ([BIN / "orchestrator", "@", configs / "orchestrator.toml", "--student.client.base-url",
          "http://h/v1", "--student.client.admin-base-url", url], "expected http://HOST:PORT/v1"),
        ([BIN / "inference", "@", configs / "inference.toml", "--server.port", "x"],
         "invalid int value"),
        ([BIN / "vllm-router", "--worker-urls", "h:8100", "--host", "0.0.0.0", "--port", "8000"],
         "expected http://HOST:PORT"),
    ]
    for argv, message in cases:
        result = subprocess.run([str(a) for a in argv], env=role_env(tmp_path),
                                capture_output=True, text=True, timeout=WAIT_S)
        assert result.returncode == 2, (argv, result.stderr)
        assert result.stderr.startswith("usage: ") and message in result.stderr, result.stderr


def test_wrappers_run_with_any_python3_on_path(tmp_path: Path) -> None:
    names = sorted(p.name for p in BIN.iterdir())
    assert names == ["inference", "orchestrator", "rl", "torchrun", "vllm-router"]
    for name in names:
        assert os.access(BIN / name, os.X_OK)
        assert (BIN / name).read_text().startswith("#!/usr/bin/env python3\n")
    # the wrappers need no venv: the base interpreter behind this one (the same Python, no
    # packages of the venv) as the only python3 on PATH
    bare = tmp_path / "bare-bin"
    bare.mkdir()
    (bare / "python3").symlink_to(Path(getattr(sys, "_base_executable", sys.executable)))
    for name in ("rl", "torchrun"):
        result = subprocess.run([str(BIN / name), "--help"],
                                env={"PATH": f"{bare}:/usr/bin:/bin"},
                                capture_output=True, text=True, timeout=WAIT_S)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(f"usage: {name}")


def test_a_failing_node_fails_the_others_and_signals_stop_them(tmp_path: Path,
                                                               cluster: Any) -> None:
    assert dry_run(tmp_path, "--max-steps", "6", trainers=2).returncode == 0
    c: Cluster = cluster(2, 1, FAKE_RL_FAIL_NODE_RANK="1", FAKE_RL_FAIL_AT_STEP="3")
    c.trainer(0)
    c.trainer(1)
    assert c.wait("trainer1") == 1
    err = c.err("trainer1")
    assert "RuntimeError: CUDA error: an illegal memory access was encountered" in err
    assert "trainer node 1 failed with exit code 1 at step 3" in err
    assert c.wait("trainer0") == 1
    assert "node 1 left the process group at step 3" in c.err("trainer0")
    assert metrics_steps(c.run_dir) == [1, 2]

    shutil.rmtree(c.run_dir / "logs")  # what follows waits on a line of its own
    held: Cluster = cluster(2, 1, FAKE_RL_HANG="1", FAKE_RL_SHUTDOWN_SECONDS="0.3")
    held.trainer(0)
    held.trainer(1)
    log = held.run_dir / "logs" / "trainer" / "node_0.log"
    wait_for(lambda: log.is_file() and "rendezvous complete" in log.read_text())
    assert held.stop("trainer0") == 143 and held.stop("trainer1") == 143
    assert "received SIGTERM, shutting down" in log.read_text()
    assert "shutdown complete" in log.read_text()
