"""What each rank of a Modal cluster runs: the command lines of its `roles` entry, filled in
with the cluster's addresses once they are known (in the container). Pure: the runner
starts these; docs/multi-node.md says how they follow prime-rl's multi-node template.

prime-rl's rank-0 dry run (the plan's argv) writes the resolved sub-configs to
``<run_dir>/configs/{trainer,orchestrator,inference}.toml``; every process here reads its
own. Flags and environment as prime-rl's `multi_node_rl.sbatch.j2` passes them (read at
stored commit 01496f7f; the pinned ref is not in the reference store).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from primerl_modal.core.cmdline import wandb_run_id

# Per component, the environment prime-rl's template sets for it.
_ENV: dict[str, dict[str, str]] = {
    "trainer": {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",
                "WANDB_SHARED_LABEL": "trainer"},
    "orchestrator": {"WANDB_SHARED_LABEL": "orchestrator"},
    "inference": {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:False",
                  "VLLM_WORKER_MULTIPROC_METHOD": "spawn"},
    "router": {},
}
# Processes that finish (a node is done when they all exited 0); the others serve until the
# cluster ends.
FINITE = frozenset({"trainer", "orchestrator"})
# prime-rl's template gives the router this long to see every worker start.
WORKER_STARTUP_S = 4200


@dataclass(frozen=True)
class Process:
    component: str  # what its lines are prefixed with: trainer, orchestrator, inference...
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"component": self.component, "argv": self.argv, "env": self.env}


def host(address: str) -> str:
    """An address as it goes into a URL or a host:port endpoint (IPv6 in brackets)."""
    try:
        return f"[{address}]" if ipaddress.ip_address(address).version == 6 else address
    except ValueError:  # a host name
        return address


def rank_processes(role: dict[str, Any], hosts: list[str], run_dir: str, bin_dir: str,
                   run_id: str, nccl_broadcast: bool) -> list[Process]:
    """The processes of one rank, from its ``roles`` entry; ``hosts[r]`` is rank r's
    address, ``bin_dir`` the folder of prime-rl's entry points, ``nccl_broadcast`` whether
    the resolved orchestrator config broadcasts weights over NCCL (then it is told where)."""
    configs = f"{run_dir}/configs"
    # trainer and orchestrator of every node log to one W&B run, as prime-rl's template has it
    shared = {"WANDB_SHARED_MODE": "1", "WANDB_SHARED_RUN_ID": wandb_run_id(run_id)}
    out = []
    for start in role["starts"]:
        name = start["process"]
        if name == "torchrun":
            rdzv = start["rdzv"]
            argv = [f"{bin_dir}/torchrun", "--role=trainer", f"--nnodes={start['nnodes']}",
                    f"--nproc-per-node={start['nproc_per_node']}",
                    f"--node-rank={start['node_rank']}",
                    f"--rdzv-endpoint={host(hosts[rdzv['rank']])}:{rdzv['port']}",
                    f"--rdzv-id={run_id}", f"--log-dir={run_dir}/logs/trainer/torchrun",
                    "--tee=3", "--redirects=3", "-m", "prime_rl.trainer.rl.train",
                    "@", f"{configs}/trainer.toml"]
            out.append(Process("trainer", argv, {**shared, **_ENV["trainer"]}))
        elif name == "orchestrator":
            router = start["router"]
            argv = [f"{bin_dir}/orchestrator", "@", f"{configs}/orchestrator.toml",
                    "--student.client.base-url",
                    f"http://{host(hosts[router['rank']])}:{router['port']}/v1",
                    "--student.client.admin-base-url",
                    *(f"http://{host(hosts[a['rank']])}:{a['port']}/v1" for a in start["admin"])]
            if nccl_broadcast:
                argv += ["--weight_broadcast.host", hosts[start["weight_broadcast"]["rank"]]]
            out.append(Process("orchestrator", argv, {**shared, **_ENV["orchestrator"]}))
        elif name == "router":
            argv = [f"{bin_dir}/vllm-router", "--policy", "consistent_hash", "--worker-urls",
                    *(f"http://{host(hosts[w['rank']])}:{w['port']}" for w in start["workers"]),
                    "--host", "0.0.0.0", "--port", str(start["port"]),
                    "--intra-node-data-parallel-size", str(start["engines_per_worker"]),
                    "--worker-startup-timeout-secs", str(WORKER_STARTUP_S)]
            out.append(Process("router", argv, {**shared, **_ENV["router"]}))
        elif name == "inference":
            argv = [f"{bin_dir}/inference", "@", f"{configs}/inference.toml",
                    "--server.host", "0.0.0.0", "--server.port", str(start["port"])]
            out.append(Process("inference", argv, {**shared, **_ENV["inference"]}))
        else:
            raise ValueError(f"unknown process {name!r} in a cluster role")
    return out
