"""Split one node's GPUs between the prime-rl trainer and vLLM inference, or a cluster's
nodes between them (docs/multi-node.md)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from primerl_modal.core.gpus import Catalogue
from primerl_modal.errors import PlanError


@dataclass(frozen=True)
class GpuPlan:
    type: str
    count: int
    trainer: int
    inference: int
    tp: int
    dp: int
    trainer_gpu_ids: tuple[int, ...]
    inference_gpu_ids: tuple[int, ...]
    memory_gb: int
    usd_per_gpu_hour: float
    # A cluster of `nodes` containers of `count` GPUs each (then trainer, inference, dp and
    # the GPU ids count the whole cluster, inference nodes first); one node shares both roles.
    nodes: int = 1
    trainer_nodes: int = 1
    inference_nodes: int = 1

    @property
    def modal_gpu(self) -> str:
        return f"{self.type}:{self.count}"

    @property
    def short(self) -> str:
        if self.nodes > 1:
            return (f"{self.nodes}x{self.type}x{self.count} "
                    f"{self.trainer_nodes}T/{self.inference_nodes}I nodes")
        return f"{self.type}x{self.count} {self.trainer}T/{self.inference}I"


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def split(count: int, ratio: float) -> tuple[int, int]:
    """Trainer and inference GPU counts: round(count*ratio), half up, kept in [1, count-1].

    (The original script truncated with int() and could overcommit; this never does.)
    """
    trainer = min(max(math.floor(count * ratio + 0.5), 1), count - 1)
    return trainer, count - trainer


def plan_gpus(
    catalogue: Catalogue,
    gpu_type: str,
    count: int | None,
    trainer_ratio: float,
    tp: int,
    trainer: int | None = None,
    inference: int | None = None,
    trainer_first: bool = False,
) -> GpuPlan:
    """The GPU plan of one node. ``trainer_first`` gives the trainer the low GPU ids
    (dialect 2025-10); otherwise inference takes the low ids (dialect current).

    Raises PlanError for an unknown type, a count out of range, a ratio outside (0, 1),
    explicit counts that disagree, or a TP that does not divide the inference GPUs.
    """
    kind = catalogue.get(gpu_type)
    if trainer is not None or inference is not None:
        if trainer is None or inference is None:
            raise PlanError(
                "set both [gpu] trainer and inference, or neither",
                "or use trainer_ratio with count",
            )
        if trainer < 1 or inference < 1:
            raise PlanError(
                f"trainer and inference need at least 1 GPU each, got {trainer} and {inference}"
            )
        if count is not None and count != trainer + inference:
            raise PlanError(
                f"gpu count {count} does not equal trainer {trainer} + inference {inference}",
                "drop one of them or make them agree",
            )
        count = trainer + inference
    if count is None:
        raise PlanError("no GPU count", "set [gpu] count or pass --gpus N")
    if count < 2:
        raise PlanError(
            f"a run needs at least 2 GPUs (1 trainer + 1 inference), got {count}",
            "use --gpus 2 or more",
        )
    if count > kind.max_per_container:
        raise PlanError(
            f"{count} x {kind.name} do not fit on one node: at most {kind.max_per_container}",
            f"use --gpus {kind.max_per_container} or fewer",
        )
    if trainer is None or inference is None:
        if not 0 < trainer_ratio < 1:
            raise PlanError(
                f"trainer ratio must be between 0 and 1 (exclusive), got {trainer_ratio}",
                "e.g. --trainer-ratio 0.25 gives a quarter of the GPUs to the trainer",
            )
        trainer, inference = split(count, trainer_ratio)
    if tp < 1 or inference % tp:
        valid = ", ".join(str(d) for d in _divisors(inference))
        raise PlanError(
            f"inference tensor parallel {tp} does not divide the {inference} inference GPUs",
            f"valid --tp values: {valid}",
        )
    ids = list(range(count))
    if trainer_first:
        trainer_ids, inference_ids = ids[:trainer], ids[trainer:]
    else:
        inference_ids, trainer_ids = ids[:inference], ids[inference:]
    return GpuPlan(
        type=kind.name,
        count=count,
        trainer=trainer,
        inference=inference,
        tp=tp,
        dp=inference // tp,
        trainer_gpu_ids=tuple(trainer_ids),
        inference_gpu_ids=tuple(inference_ids),
        memory_gb=kind.memory_gb,
        usd_per_gpu_hour=kind.usd_per_hour,
    )


# Modal's multi-node guide: a cluster holds at most 32 nodes and 256 GPUs.
MAX_NODES = 32
MAX_CLUSTER_GPUS = 256
# The ports prime-rl's multi-node template uses: the router, each inference node's server
# (its backend port), torchrun's rendezvous.
ROUTER_PORT = 8000
BACKEND_PORT = 8100
RDZV_PORT = 29500


def plan_nodes(
    catalogue: Catalogue, gpu_type: str, count: int | None, nodes: int, trainer_ratio: float,
    tp: int, trainer: int | None = None, inference: int | None = None,
) -> GpuPlan:
    """The GPU plan of a cluster of ``nodes`` nodes of ``count`` GPUs each: whole nodes
    for the trainer (round(nodes*ratio), half up, kept in [1, nodes-1]), the rest for
    inference, whose engines of ``tp`` GPUs each tile every inference node.

    Raises PlanError for explicit GPU counts, a cluster over Modal's limits, a count that
    does not fit a node, or a TP that does not divide a node's GPUs.
    """
    kind = catalogue.get(gpu_type)
    if trainer is not None or inference is not None:
        raise PlanError("[gpu] trainer and inference split one node, not a cluster",
                        "drop them and set [gpu] trainer_ratio: nodes are split whole")
    if count is None or not 1 <= count <= kind.max_per_container:
        raise PlanError(f"a node takes 1 to {kind.max_per_container} x {kind.name}, "
                        f"got {count}", f"use --gpus {kind.max_per_container}")
    if nodes > MAX_NODES or nodes * count > MAX_CLUSTER_GPUS:
        raise PlanError(
            f"{nodes} nodes x {count} GPUs is more than a Modal cluster allows "
            f"({MAX_NODES} nodes, {MAX_CLUSTER_GPUS} GPUs)",
            f"use --nodes {min(MAX_NODES, MAX_CLUSTER_GPUS // count)} or fewer")
    if not 0 < trainer_ratio < 1:
        raise PlanError(
            f"trainer ratio must be between 0 and 1 (exclusive), got {trainer_ratio}",
            "e.g. --trainer-ratio 0.5 gives half of the nodes to the trainer")
    if tp < 1 or count % tp:
        valid = ", ".join(str(d) for d in _divisors(count))
        raise PlanError(f"inference tensor parallel {tp} does not divide a node's {count} GPUs",
                        f"valid --tp values: {valid}")
    trainer_nodes, inference_nodes = split(nodes, trainer_ratio)
    # the trainer nodes come first: rank 0 is the first trainer node (docs/multi-node.md)
    split_at = trainer_nodes * count
    return GpuPlan(
        type=kind.name, count=count, trainer=split_at,
        inference=inference_nodes * count, tp=tp, dp=inference_nodes * count // tp,
        trainer_gpu_ids=tuple(range(split_at)),
        inference_gpu_ids=tuple(range(split_at, nodes * count)),
        memory_gb=kind.memory_gb, usd_per_gpu_hour=kind.usd_per_hour,
        nodes=nodes, trainer_nodes=trainer_nodes, inference_nodes=inference_nodes,
    )


def node_roles(g: GpuPlan) -> list[dict[str, Any]]:
    """One entry per rank of the cluster: its role and the processes it starts, as prime-rl's
    multi-node template places them, with the trainer nodes first (a single node: rank 0
    runs prime-rl's `rl`, which starts everything)."""
    if g.nodes == 1:
        return [{"rank": 0, "role": "trainer+inference", "node_rank": 0,
                 "starts": [{"process": "rl"}]}]
    return ([_trainer_role(g, r) for r in range(g.trainer_nodes)]
            + [_inference_role(g, r) for r in range(g.inference_nodes)])


def _inference_role(g: GpuPlan, node_rank: int) -> dict[str, Any]:
    first = g.trainer_nodes  # the first inference node: the router
    engines = g.count // g.tp
    starts: list[dict[str, Any]] = []
    if node_rank == 0:
        # the router fronts every inference node's server; the orchestrator uses it
        starts.append({"process": "router", "port": ROUTER_PORT, "engines_per_worker": engines,
                       "workers": [{"rank": first + r, "port": BACKEND_PORT}
                                   for r in range(g.inference_nodes)]})
    # one server per node, running count / tp engines of tp GPUs each (DP within the node)
    starts.append({"process": "inference", "port": BACKEND_PORT, "tp": g.tp, "engines": engines,
                   "dp_ranks": list(range(node_rank * engines, (node_rank + 1) * engines))})
    return {"rank": first + node_rank, "role": "inference", "node_rank": node_rank,
            "starts": starts}


def _trainer_role(g: GpuPlan, node_rank: int) -> dict[str, Any]:
    starts: list[dict[str, Any]] = [{
        "process": "torchrun", "nnodes": g.trainer_nodes, "node_rank": node_rank,
        "nproc_per_node": g.count, "rdzv": {"rank": 0, "port": RDZV_PORT}}]
    if node_rank == 0:
        # the orchestrator starts its environment servers itself, beside it
        first = g.trainer_nodes
        starts.append({"process": "orchestrator", "router": {"rank": first, "port": ROUTER_PORT},
                       "admin": [{"rank": first + r, "port": BACKEND_PORT}
                                 for r in range(g.inference_nodes)],
                       "weight_broadcast": {"rank": 0}})
    return {"rank": node_rank, "role": "trainer", "node_rank": node_rank, "starts": starts}
