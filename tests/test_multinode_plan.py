"""Multi-node planning (issue 14, items 1, 2's command line, 5, 6): whole nodes per role,
one `roles` entry per rank, rank 0's `rl --dry-run` command, a cluster's cost, and one line
for each input that cannot make a cluster."""

from __future__ import annotations

from pathlib import Path

import pytest

from primerl_modal.core.gpu_plan import plan_nodes
from primerl_modal.core.gpus import catalogue

ROOT = Path(__file__).resolve().parents[1]


def _plan(prm, *args: str) -> dict:
    r = prm("run", *args, "--dry-run", "--json")
    assert r.code == 0, r.err
    return r.json()


def test_qwen3_30b_math_is_two_inference_and_two_trainer_nodes(prm):
    plan = _plan(prm, "qwen3-30b-math")
    g = plan["gpu"]
    assert (g["nodes"], g["inference_nodes"], g["trainer_nodes"]) == (4, 2, 2)
    assert (g["count"], g["modal"], g["trainer"], g["inference"], g["tp"], g["dp"]) == (
        8, "H100:8", 16, 16, 8, 2)
    assert g["trainer_gpu_ids"] == list(range(16))  # rank 0 is the first trainer node
    assert [(r["rank"], r["role"], r["node_rank"]) for r in plan["roles"]] == [
        (0, "trainer", 0), (1, "trainer", 1), (2, "inference", 0), (3, "inference", 1)]
    # cost: every node's GPUs, CPU and memory (32 H100s)
    cost, price = plan["cost"]["per_hour_breakdown_usd"], g["usd_per_gpu_hour"]
    assert cost["gpu"] == pytest.approx(32 * price)
    one = _plan(prm, "qwen3-30b-math", "--nodes", "2")["cost"]["per_hour_breakdown_usd"]
    assert cost["cpu"] == pytest.approx(2 * one["cpu"])
    assert cost["memory"] == pytest.approx(2 * one["memory"])


def test_rank_zero_runs_prime_rls_own_rl_dry_run_with_the_multi_node_deployment(prm):
    plan = _plan(prm, "qwen3-30b-math")
    run_id = plan["run_id"]
    assert plan["argv"] == [
        "/opt/prime-rl/.venv/bin/rl", "@", "examples/advanced/qwen3-30b-a3b/math.toml",
        "--deployment.type", "multi_node", "--deployment.num-train-nodes", "2",
        "--deployment.num-infer-nodes", "2", "--deployment.gpus-per-node", "8",
        "--inference.vllm.tensor-parallel-size", "8", "--output-dir", "/outputs",
        "--run.name", run_id, "--slurm.job-name", run_id,
        "--monitors.wandb.project", "prime-rl", "--monitors.wandb.name", run_id,
        "--ckpt.interval", "100", "--ckpt.keep-last", "3", "--dry-run"]


def test_roles_follow_prime_rls_template():
    """Trainer nodes first: torchrun on each, meeting at rank 0, which runs the orchestrator
    too; then the inference nodes, one server each (count / tp engines), the first also
    the router in front of all of them."""
    from primerl_modal.core.gpu_plan import node_roles

    roles = node_roles(plan_nodes(catalogue(), "H100", 8, 3, 0.34, 4))
    assert [r["role"] for r in roles] == ["trainer", "inference", "inference"]
    assert roles[0]["starts"] == [
        {"process": "torchrun", "nnodes": 1, "node_rank": 0, "nproc_per_node": 8,
         "rdzv": {"rank": 0, "port": 29500}},
        {"process": "orchestrator", "router": {"rank": 1, "port": 8000},
         "admin": [{"rank": 1, "port": 8100}, {"rank": 2, "port": 8100}],
         "weight_broadcast": {"rank": 0}}]
    router, server = roles[1]["starts"]
    assert router == {"process": "router", "port": 8000, "engines_per_worker": 2,
                      "workers": [{"rank": 1, "port": 8100}, {"rank": 2, "port": 8100}]}
    assert server == {"process": "inference", "port": 8100, "tp": 4, "engines": 2,
                      "dp_ranks": [0, 1]}
    assert roles[2]["starts"] == [{"process": "inference", "port": 8100, "tp": 4,
                                   "engines": 2, "dp_ranks": [2, 3]}]


def test_nodes_and_ratio_on_the_command_line(prm):
    plan = _plan(prm, "qwen3-30b-math", "--nodes", "3", "--trainer-ratio", "0.67")
    g = plan["gpu"]
    assert (g["nodes"], g["inference_nodes"], g["trainer_nodes"]) == (3, 1, 2)
    assert [r["role"] for r in plan["roles"]] == ["trainer", "trainer", "inference"]
    assert plan["sources"]["gpu.nodes"] == "--nodes"


def test_the_picture_draws_every_node(prm):
    r = prm("run", "qwen3-30b-math", "--dry-run")
    assert r.code == 0, r.err
    for line in ("node0  T", "router (2 servers), vLLM dp0 x tp8", "node3  I", "torchrun 2/2",
                 "trainer 2 nodes = 16 GPUs", "GPUs 32 x $"):
        assert line in r.out


def test_a_single_node_plan_gains_only_the_node_keys(prm):
    plan = _plan(prm, "hendrycks-sanity")
    g = plan["gpu"]
    assert (g["nodes"], g["trainer_nodes"], g["inference_nodes"]) == (1, 1, 1)
    assert plan["roles"] == [{"rank": 0, "role": "trainer+inference", "node_rank": 0,
                              "starts": [{"process": "rl"}]}]
    assert "--dry-run" not in plan["argv"] and "--deployment.num-train-gpus" in plan["argv"]


def _uploaded(tmp_path: Path, deployment: str) -> Path:
    (tmp_path / "rl.toml").write_text(f"[deployment]\n{deployment}\n")
    path = tmp_path / "p.toml"
    path.write_text('extends = "{}"\n[prime_rl]\nconfig = "./rl.toml"\n[gpu]\ncount = 8\n'
                    "tp = 8\n".format(ROOT / "src/primerl_modal/profiles/base.toml"))
    return path


@pytest.mark.parametrize(("args", "says"), [
    (("qwen3-30b-math", "--nodes", "40"),
     "40 nodes x 8 GPUs is more than a Modal cluster allows (32 nodes, 256 GPUs); "
     "use --nodes 32 or fewer"),
    (("qwen3-30b-math", "--tp", "3"),
     "inference tensor parallel 3 does not divide a node's 8 GPUs; valid --tp values: "
     "1, 2, 4, 8"),
    (("qwen3-30b-math", "--nodes", "1"),
     "examples/advanced/qwen3-30b-a3b/math.toml is a multi-node prime-rl config "
     "([deployment] type = \"multi_node\"); set [gpu] nodes (or --nodes) to its node count, "
     "e.g. --nodes 4"),
    (("hendrycks-sanity", "--nodes", "2"),
     "configs/basic/hendrycks-sanity/rl.toml is a single-node prime-rl config: prime-rl "
     "refuses its num_train_gpus under a multi-node deployment; use --nodes 1, or a "
     "multi-node config such as prime-rl's examples/advanced/qwen3-30b-a3b/math.toml "
     "(profile qwen3-30b-math)"),
    (("qwen3-30b-math", "--set", "gpu.trainer=4", "--set", "gpu.inference=4"),
     "[gpu] trainer and inference split one node, not a cluster; drop them and set [gpu] "
     "trainer_ratio: nodes are split whole"),
])
def test_bad_cluster_input_is_one_line(prm, args, says):
    r = prm("run", *args, "--dry-run")
    assert r.code in (1, 2)
    assert r.err.strip().splitlines() == [f"prm: error: {says}"]


def test_a_cluster_on_the_local_backend_is_one_line(prm, local_profile):
    r = prm("run", str(local_profile), "--set", "gpu.nodes=2", "--set",
            "prime_rl.config=examples/advanced/qwen3-30b-a3b/math.toml", "--dry-run")
    assert r.code == 1
    assert r.err.strip().splitlines() == [
        "prm: error: 2 nodes need a Modal cluster: the local backend runs on this machine "
        "alone; use --nodes 1, or --backend modal"]


def test_an_uploaded_configs_deployment_decides(prm, tmp_path):
    single = prm("run", str(_uploaded(tmp_path, 'type = "single_node"')), "--nodes", "2",
                 "--dry-run")
    assert single.code == 1 and f"{tmp_path / 'rl.toml'} is a single-node" in single.err
    multi = _uploaded(tmp_path, 'type = "multi_node"\nnum_train_nodes = 1\nnum_infer_nodes = 1')
    r = prm("run", str(multi), "--dry-run")
    assert r.code == 1 and f"{tmp_path / 'rl.toml'} is a multi-node" in r.err
    assert _plan(prm, str(multi), "--nodes", "2")["gpu"]["nodes"] == 2
