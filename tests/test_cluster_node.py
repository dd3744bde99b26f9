"""One node of a cluster (issue 14, items 2 and 4): the command lines each rank runs, as
prime-rl's multi-node template does, and the node supervisor that starts them and ends the
node as that template's `wait -n` does."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from primerl_modal.core.cluster import host, rank_processes
from primerl_modal.core.cmdline import wandb_run_id
from primerl_modal.core.gpu_plan import node_roles, plan_nodes
from primerl_modal.core.gpus import catalogue

HOSTS = ["10.0.0.1", "10.0.0.2", "10.0.0.3"]


def _roles() -> list[dict]:
    return node_roles(plan_nodes(catalogue(), "H100", 8, 3, 0.67, 4))  # 2 trainer + 1 inference


def test_rank_zero_trains_and_orchestrates_against_the_router():
    trainer, orchestrator = rank_processes(_roles()[0], HOSTS, "/outputs/r", "/bin", "r", True)
    assert trainer.component == "trainer"
    assert trainer.argv == [
        "/bin/torchrun", "--role=trainer", "--nnodes=2", "--nproc-per-node=8", "--node-rank=0",
        "--rdzv-endpoint=10.0.0.1:29500", "--rdzv-id=r",
        "--log-dir=/outputs/r/logs/trainer/torchrun", "--tee=3", "--redirects=3", "-m",
        "prime_rl.trainer.rl.train", "@", "/outputs/r/configs/trainer.toml"]
    assert trainer.env == {"WANDB_SHARED_MODE": "1", "WANDB_SHARED_RUN_ID": wandb_run_id("r"),
                           "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",
                           "WANDB_SHARED_LABEL": "trainer"}
    assert orchestrator.argv == [
        "/bin/orchestrator", "@", "/outputs/r/configs/orchestrator.toml",
        "--student.client.base-url", "http://10.0.0.3:8000/v1",
        "--student.client.admin-base-url", "http://10.0.0.3:8100/v1",
        "--weight_broadcast.host", "10.0.0.1"]


def test_other_ranks_join_the_rendezvous_or_serve_behind_the_router():
    (trainer,) = rank_processes(_roles()[1], HOSTS, "/o/r", "/bin", "r", False)
    assert "--node-rank=1" in trainer.argv and "--rdzv-endpoint=10.0.0.1:29500" in trainer.argv
    router, server = rank_processes(_roles()[2], HOSTS, "/o/r", "/bin", "r", False)
    assert router.argv == [
        "/bin/vllm-router", "--policy", "consistent_hash", "--worker-urls", "http://10.0.0.3:8100",
        "--host", "0.0.0.0", "--port", "8000", "--intra-node-data-parallel-size", "2",
        "--worker-startup-timeout-secs", "4200"]
    assert server.argv == ["/bin/inference", "@", "/o/r/configs/inference.toml",
                           "--server.host", "0.0.0.0", "--server.port", "8100"]
    assert server.env["VLLM_WORKER_MULTIPROC_METHOD"] == "spawn"


def test_no_weight_broadcast_host_without_nccl_and_ipv6_in_brackets():
    v6 = ["fd00::1", "fd00::2", "fd00::3"]
    trainer, orchestrator = rank_processes(_roles()[0], v6, "/o/r", "/bin", "r", False)
    assert "--weight_broadcast.host" not in orchestrator.argv
    assert "--rdzv-endpoint=[fd00::1]:29500" in trainer.argv
    assert "http://[fd00::3]:8000/v1" in orchestrator.argv
    assert host("10.1.2.3") == "10.1.2.3" and host("node-a") == "node-a"


def _node(tmp_path: Path, spec: list[dict]) -> subprocess.Popen[str]:
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    return subprocess.Popen([sys.executable, "-m", "primerl_modal.runner.node", str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


SERVE = "import time, os\nprint('serving', os.getpid(), flush=True)\nwhile True: time.sleep(0.1)"


def _gone(pid: int) -> bool:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split()[2] == "Z":
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


def test_a_node_ends_when_its_finite_processes_finish_and_stops_its_servers(tmp_path):
    proc = _node(tmp_path, [
        {"component": "trainer", "argv": _py("import time; time.sleep(0.5); print('step 1')")},
        {"component": "orchestrator", "argv": _py("print('done')")},
        {"component": "inference", "argv": _py(SERVE), "env": {"X": "1"}},
    ])
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    lines = out.splitlines()
    assert "[trainer] step 1" in lines and "[orchestrator] done" in lines
    assert "[node] orchestrator, trainer finished: stopping the node" in lines
    server = next(int(line.split()[-1]) for line in lines if line.startswith("[inference] serving"))
    assert _gone(server)


def test_the_first_failure_ends_the_node_with_its_code(tmp_path):
    proc = _node(tmp_path, [
        {"component": "trainer", "argv": _py(SERVE)},
        {"component": "router", "argv": _py("import sys; print('no workers'); sys.exit(3)")},
    ])
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 3, out
    assert "[node] router exited with code 3: stopping the node" in out.splitlines()


def test_a_server_that_exits_by_itself_is_a_failure(tmp_path):
    proc = _node(tmp_path, [{"component": "inference", "argv": _py("print('bye')")}])
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "[node] inference exited: stopping the node" in out


def test_a_signal_stops_every_process(tmp_path):
    proc = _node(tmp_path, [{"component": "inference", "argv": _py(SERVE)},
                            {"component": "router", "argv": _py(SERVE)}])
    assert proc.stdout is not None
    pids = []
    while len(pids) < 2:
        line = proc.stdout.readline()
        assert line, "the node ended before its servers started"
        if "serving" in line:
            pids.append(int(line.split()[-1]))
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM
    assert all(_gone(pid) for pid in pids)


def test_node_prefixes_parse_and_filter():
    from primerl_modal.core.logs import LogFilter, merged, parse_attempt_log

    node1 = list(parse_attempt_log("2.0 [node1/trainer] step 2\n1.0 [node1/runner] up\n", 1))
    node0 = list(parse_attempt_log("1.5 [node0/trainer] step 1\n", 1))
    assert (node1[0].node, node1[0].component, node1[0].text) == (1, "trainer", "step 2")
    assert node1[0].render() == "[node1/trainer] step 2"
    assert node1[0].to_json()["node"] == 1
    assert [line.text for line in merged([node0, node1])] == ["up", "step 1", "step 2"]
    keep = LogFilter(frozenset({"trainer"}), node=1)
    assert [line.text for line in keep.apply(merged([node0, node1]))] == ["step 2"]
    (single,) = parse_attempt_log("1.0 [trainer] step 1\n", 1)
    assert single.node is None and "node" not in single.to_json()


def test_a_clusters_checkpoint_is_complete_only_with_every_trainer_ranks_shard(tmp_path):
    from primerl_modal.runner.checkpoints import resume_from

    for step, shards in ((2, range(4)), (4, range(2))):  # step 4: node 1's shards missing
        trainer = tmp_path / "checkpoints" / f"step_{step}" / "trainer"
        trainer.mkdir(parents=True)
        (trainer / ".metadata").write_text("m")
        for r in shards:
            (trainer / f"__{r}_0.distcp").write_text("s")
    assert resume_from("current", tmp_path).step == 4  # one node: .metadata is enough
    resume = resume_from("current", tmp_path, shards=4)
    assert (resume.args, resume.skipped) == (("--resume.step", "2"), (4,))


def test_rank_zero_guards_the_whole_cluster_and_each_node_samples_its_own_gpus():
    from primerl_modal.runner.cluster import node_plan

    plan = {"run_id": "r", "roles": _roles(), "guard": {"max_usd": 5.0, "stall": 600},
            "gpu": {"count": 8, "nodes": 3, "trainer_gpu_ids": list(range(16)),
                    "inference_gpu_ids": list(range(16, 24))},
            "cost": {"per_hour_usd": 99.0}}
    zero, two = node_plan(plan, 0), node_plan(plan, 2)
    assert zero["guard"] == plan["guard"] and two["guard"] == {}  # budget: all nodes' cost
    assert zero["cost"]["per_hour_usd"] == 99.0
    assert (zero["gpu"]["trainer_gpu_ids"], zero["gpu"]["inference_gpu_ids"]) == (
        list(range(8)), [])
    assert (two["gpu"]["trainer_gpu_ids"], two["gpu"]["inference_gpu_ids"]) == (
        [], list(range(8)))


def _shared(tmp_path: Path):
    from primerl_modal.runner.cluster import Shared

    def read(path: str) -> bytes | None:
        return (tmp_path / path).read_bytes() if (tmp_path / path).is_file() else None

    def listdir(path: str) -> list[str]:
        folder = tmp_path / path
        return [f"{path}/{p.name}" for p in folder.iterdir()] if folder.is_dir() else []

    return Shared(tmp_path, read, listdir, lambda: None, lambda: None)


def test_only_rank_zeros_finish_ends_the_cluster_and_echoes_are_ignored(tmp_path):
    from primerl_modal.runner.cluster import Node

    plan = {"run_id": "r", "roles": _roles()}
    node = Node(plan, 0, HOSTS, "cu-1", _shared(tmp_path), "/bin", poll_s=0.05)
    publish = node.shared.publish
    publish(f"{node.dir}/end-1.json", {"status": "SUCCEEDED", "note": "launcher exited 0"})
    publish(f"{node.dir}/end-2.json", {"status": "FAILED", "note": "x", "caused_by_peer": True})
    assert node.peer_end() is None  # trainer node 1 finished its last step first; an echo
    publish(f"{node.dir}/end-2.json", {"status": "RECOVERING", "note": "node2: inference "
                                       "failed, exit code 1", "preempted": False})
    peer = node.peer_end()
    assert peer is not None and (peer.rank, peer.status) == (2, "RECOVERING")
    other = Node(plan, 1, HOSTS, "cu-1", node.shared, "/bin", poll_s=0.05)
    publish(f"{node.dir}/end-0.json", {"status": "SUCCEEDED", "note": "launcher exited 0"})
    assert other.peer_end() == node.peer_end().__class__(0, "SUCCEEDED", "launcher exited 0")


def test_a_node_that_never_hears_from_rank_zero_gives_up_and_says_so(tmp_path):
    from primerl_modal.runner.cluster import Node

    node = Node({"run_id": "r", "roles": _roles()}, 2, HOSTS, "cu-1", _shared(tmp_path), "/bin",
                poll_s=0.05)
    said: list[str] = []
    assert node.wait_ready(0.3, said.append) is None
    assert said[-1] == "node2: node0 did not publish its sub-configs within 0.3s"
    end = json.loads((tmp_path / node.dir / "end-2.json").read_text())
    assert end["status"] == "FAILED" and "did not publish" in end["note"]
