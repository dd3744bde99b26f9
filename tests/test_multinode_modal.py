"""Multi-node runs end to end (issue 14): `prm run` of a cluster against the fake Modal
server, whose clustered functions start every rank's container together (each with its own
loopback address), and the fake prime-rl's role processes, which really listen and connect.
What each process reached is read back from its record (FAKE_RL_RECORD_DIR)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import finished, launched
from fake_prime_rl import BIN

from primerl_modal.run_index import open_index

PACKAGED = Path(__file__).resolve().parents[1] / "src/primerl_modal/profiles"


@pytest.fixture
def cluster_env(modal_env: Any, tmp_path: Path) -> Any:
    modal_env.extra_env.update({
        "PRM_LAUNCHER": json.dumps([str(BIN / "rl")]),
        "PRM_PRIME_RL_BIN": str(BIN),
        "PRM_CLUSTER_POLL_S": "0.3",
        "PRM_CLUSTER_TIMEOUT": "120",
        "FAKE_RL_RECORD_DIR": str(tmp_path / "records"),
        "FAKE_RL_STEP_SECONDS": "0.1",
        "FAKE_RL_CONNECT_TIMEOUT_SECONDS": "60",
    })
    return modal_env


def _profile(tmp_path: Path, nodes: int, ratio: float, max_steps: int = 6) -> Path:
    (tmp_path / "rl.toml").write_text(
        f"max_steps = {max_steps}\n[deployment]\ntype = \"multi_node\"\n"
        "[slurm]\njob_name = \"prm-test\"\n[weight_broadcast]\ntype = \"nccl\"\n"
        "[model]\nname = \"PrimeIntellect/Qwen3-0.6B-Reverse-Text-SFT\"\n")
    path = tmp_path / "cluster.toml"
    path.write_text(
        f'extends = "{PACKAGED / "base.toml"}"\n[experiment]\nname = "mn"\n'
        '[prime_rl]\nconfig = "./rl.toml"\nckpt_interval = 2\n'
        f'[gpu]\ntype = "H100"\ncount = 2\nnodes = {nodes}\ntrainer_ratio = {ratio}\ntp = 1\n'
        "[modal]\nretries = 2\n")
    return path


def _records(tmp_path: Path) -> dict[tuple[str, int], dict[str, Any]]:
    """Each fake prime-rl process's last record, by (role, node rank): the latest attempt's."""
    out: dict[tuple[str, int], dict[str, Any]] = {}
    for path in sorted((tmp_path / "records").glob("*.json"), key=lambda p: p.stat().st_mtime):
        record = json.loads(path.read_text())
        out[(record["role"], record.get("node_rank") or 0)] = record
    return out


def _call_id(run_id: str) -> str:
    rec = open_index().get(run_id)
    assert rec is not None and rec.call_id
    return rec.call_id


def _cluster(fake: Any, call_id: str, attempt: int = -1) -> dict[str, Any]:
    return fake.clusters[fake.calls[call_id]["attempts"][attempt]["cluster_id"]]


def test_a_two_node_run_meets_over_the_network_and_succeeds(prm, cluster_env, tmp_path):
    run_id = launched(prm, str(_profile(tmp_path, nodes=2, ratio=0.5)))
    call_id = _call_id(run_id)
    (function,) = [f for f in cluster_env.functions.values()
                   if f["function_name"] == "run_remote"]
    definition = cluster_env.function_defs(function["function_id"])
    assert definition._experimental_group_size == 2
    cluster_env.wait_until(lambda: len(cluster_env.live_containers(call_id)) == 2, timeout=60)
    rec = finished(cluster_env, run_id)
    assert rec.status == "SUCCEEDED", rec.note

    ips = _cluster(cluster_env, call_id)["ipv4"]
    records = _records(tmp_path)
    trainer, orchestrator = records[("torchrun", 0)], records[("orchestrator", 0)]
    server, router = records[("inference", 0)], records[("vllm-router", 0)]
    # rank 0 (trainer node): the rendezvous and the orchestrator; rank 1: the router in
    # front of its own server; the orchestrator reached both across the network
    assert trainer["bound"] == f"{ips[0]}:29500" and orchestrator["container_ip"] == ips[0]
    assert server["bound"] == f"{ips[1]}:8100" and router["bound"] == f"{ips[1]}:8000"
    assert router["peers"] == [{"url": f"http://{ips[1]}:8100/health", "status": 200}]
    assert orchestrator["peers"] == [
        {"url": f"http://{ips[1]}:8000/v1/models", "status": 200},
        {"url": f"http://{ips[1]}:8100/health", "status": 200}]
    assert orchestrator["weight_broadcast"] == {"type": "nccl", "host": ips[0]}
    assert ips[0] in server["clients"]

    # one run, two nodes: logs per node, ls and show say so
    r = prm("logs", run_id, "--node", "1", "-c", "inference", "--tail", "0")
    assert r.code == 0, r.err
    lines = r.out.splitlines()
    assert lines and all(line.startswith("[node1/inference] ") for line in lines)
    r = prm("logs", run_id, "--node", "5")
    assert r.code == 1 and "has no node 5; its nodes: 0, 1" in r.err
    r = prm("ls")
    assert "2xH100x2 1T/1I nodes" in r.out
    r = prm("show", run_id, "--json")
    nodes = r.json()["nodes"]
    assert [(n["rank"], n["role"], n["status"]) for n in nodes] == [
        (0, "trainer", "SUCCEEDED"), (1, "inference", "SUCCEEDED")]
    assert cluster_env.leftover_pids(call_id) == []


def test_a_three_node_run_preempted_on_one_node_restarts_whole_and_resumes(
        prm, cluster_env, tmp_path):
    cluster_env.extra_env["FAKE_RL_STEP_SECONDS"] = "0.25"
    run_id = launched(prm, str(_profile(tmp_path, nodes=3, ratio=0.67, max_steps=12)))
    call_id = _call_id(run_id)
    cluster_env.wait_until(lambda: len(cluster_env.live_containers(call_id)) == 3, timeout=60)
    # preempt the second trainer node once a checkpoint is on the volume (every shard)
    ckpt = cluster_env.volume_path("prime-rl-outputs") / run_id / "checkpoints"

    def complete_checkpoint() -> bool:
        return any((step / "trainer" / ".metadata").exists() and
                   len(list((step / "trainer").glob("__*_0.distcp"))) == 4
                   for step in ckpt.glob("step_*"))

    cluster_env.wait_until(complete_checkpoint, timeout=90)
    first = _records(tmp_path)
    ips = _cluster(cluster_env, call_id)["ipv4"]
    # node 1 joined the rendezvous at node 0: seen on node 0's socket
    assert {(p["node_rank"], p["address"]) for p in first[("torchrun", 0)]["peers"]} == {
        (1, ips[1])}
    assert first[("torchrun", 1)]["peers"][0]["endpoint"] == f"{ips[0]}:29500"
    assert first[("vllm-router", 0)]["bound"] == f"{ips[2]}:8000"
    cluster_env.preempt(call_id, rank=1)
    rec = finished(cluster_env, run_id)
    assert rec.status == "SUCCEEDED", rec.note
    attempts = cluster_env.calls[call_id]["attempts"]
    assert len(attempts) == 2 and attempts[0]["preempted"]
    assert len(attempts[1]["tasks"]) == 3 and attempts[0]["cluster_id"] != attempts[1][
        "cluster_id"]
    status = json.loads(prm("show", run_id, "--json").out)["status"]
    second = status["attempts"][-1]
    assert second["resumed_from"] and second["resumed_from"] >= 2

    r = prm("logs", run_id, "--node", "1", "-c", "trainer", "--tail", "0")
    assert r.code == 0, r.err
    lines = r.out.splitlines()
    assert lines and all(line.startswith("[node1/trainer] ") for line in lines)
    assert cluster_env.leftover_pids(call_id) == []


def test_prm_stop_stops_every_node(prm, cluster_env, tmp_path):
    cluster_env.extra_env["FAKE_RL_STEP_SECONDS"] = "0.5"
    run_id = launched(prm, str(_profile(tmp_path, nodes=2, ratio=0.5, max_steps=200)))
    call_id = _call_id(run_id)
    cluster_env.wait_until(lambda: ("inference", 0) in _records(tmp_path) and
                           ("torchrun", 0) in _records(tmp_path), timeout=90)
    r = prm("stop", run_id)
    assert r.code == 0, r.err
    cluster_env.wait_call(call_id, timeout=90)
    deadline = time.monotonic() + 30
    while cluster_env.leftover_pids(call_id) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert cluster_env.live_containers(call_id) == []
    assert cluster_env.leftover_pids(call_id) == []
    rec = finished(cluster_env, run_id)
    assert rec.status == "STOPPED", rec.note


def test_a_failing_node_ends_the_whole_cluster_and_the_retry_resumes(prm, cluster_env,
                                                                     tmp_path):
    """The second trainer node fails at step 5 on every attempt: each time every node
    ends (no half-cluster left), the retry starts a new cluster from the checkpoint of
    step 4, and once the retries are spent the run is FAILED, saying which node failed."""
    cluster_env.extra_env.update({"FAKE_RL_FAIL_AT_STEP": "5", "FAKE_RL_FAIL_NODE_RANK": "1",
                                  "FAKE_RL_CONNECT_TIMEOUT_SECONDS": "20"})
    profile = _profile(tmp_path, nodes=3, ratio=0.67, max_steps=8)
    profile.write_text(profile.read_text().replace("retries = 2", "retries = 1"))
    run_id = launched(prm, str(profile))
    call_id = _call_id(run_id)
    rec = finished(cluster_env, run_id)
    assert rec.status == "FAILED"
    # node 0's trainer failed with it (its peer left the collective): the note names both
    assert rec.note and "node1: trainer failed, exit code 1" in rec.note, rec.note
    attempts = cluster_env.calls[call_id]["attempts"]
    assert len(attempts) == 2 and len({a["cluster_id"] for a in attempts}) == 2
    status = prm("show", run_id, "--json").json()["status"]
    assert [a.get("resumed_from") for a in status["attempts"]] == [None, 4]
    assert cluster_env.live_containers(call_id) == []
    assert cluster_env.leftover_pids(call_id) == []


def test_a_sweep_of_clusters_runs_every_trial_as_a_cluster(prm, cluster_env, tmp_path):
    cluster_env.extra_env["PRM_SWEEP_TICK"] = "0.2"
    profile = _profile(tmp_path, nodes=2, ratio=0.5)
    sweep = tmp_path / "s.toml"
    sweep.write_text(f'name = "mns"\nprofile = "{profile}"\nmethod = "list"\nmax_parallel = 2\n'
                     + "".join(f"[[trials]]\nmax_steps = {n}\n" for n in (4, 6)))
    r = prm("sweep", str(sweep))
    assert r.code == 0, r.err
    (sw,) = open_index().sweeps()
    cluster_env.wait_call(sw.call_id, timeout=120)
    rows = prm("sweep", "show", sw.sweep_id, "--json").json()
    assert [r["status"] for r in rows] == ["SUCCEEDED"] * 2
    (trial_fn,) = [f for f in cluster_env.functions.values() if f["function_name"] == "trial-0"]
    definition = cluster_env.function_defs(trial_fn["function_id"])
    # a cluster is that many containers: Modal counts (and limits) containers
    assert definition._experimental_group_size == 2
    assert cluster_env.function_max_containers(trial_fn["function_id"]) == 4
    trial_calls = [c for c in cluster_env.calls.values()
                   if c["function_id"] == trial_fn["function_id"]]
    assert len(trial_calls) == 2
    assert all(len(c["attempts"][-1]["tasks"]) == 2 for c in trial_calls)
