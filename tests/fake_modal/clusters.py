"""Clustered functions (``@modal.clustered(size=N)``): the identity of each cluster and its RPCs.

Every attempt of a clustered call runs as N containers started together (see attempt.py), one
cluster with an id of its own. Each container's modal client calls ``TaskClusterHello`` at start
(the fake's ``_runner.py`` runs the real ``modal._cluster._initialize_clustered_function``, as
Modal's container entrypoint does), and learns its rank and every container's addresses:

- IPv6 (``container_ips``): a made-up i6pn address per rank, which the container resolves
  ``i6pn.modal.local`` to; not an address of this machine, so nothing can listen on it.
- IPv4 (``container_ipv4_ips``): ``127.R1.R2.(rank + 1)`` with R1/R2 picked at random per
  cluster, a loopback address every process of the machine can bind and reach: the fake's
  stand-in for each container having a network namespace of its own. The container also finds
  it in ``FAKE_MODAL_CONTAINER_IP``. R1 is never 0, so a cluster never takes 127.0.0.x; no
  two clusters of a fake share R1/R2, and other test runs on the machine pick theirs at random
  too.

``ClusterGet`` answers ``Cluster.container_ids()`` (the task ids by rank).
"""

from __future__ import annotations

import random
import time
from typing import Any

from grpclib import GRPCError, Status
from modal_proto import api_pb2

from .rpc import ServicerBase, not_found, unary

IP_ENV = "FAKE_MODAL_CONTAINER_IP"


def cluster_record(
    cluster_id: str, call: dict[str, Any], task_ids: list[str], taken: set[str]
) -> dict[str, Any]:
    """The public record of a new cluster (``FakeModal.clusters[cluster_id]``): its tasks and
    their addresses by rank, in a 127.R1.R2 range not among the ``taken`` ones."""
    prefix = _free_prefix(taken)
    r1, r2 = (int(part) for part in prefix.split(".")[1:3])
    return {
        "cluster_id": cluster_id,
        "call_id": call["call_id"],
        "app_id": call["app_id"],
        "attempt": len(call["attempts"]) + 1,
        "task_ids": task_ids,
        "ipv4": [f"{prefix}.{rank + 1}" for rank in range(len(task_ids))],
        "ipv6": [f"fdaa:{r1:x}:{r2:x}::{rank + 1:x}" for rank in range(len(task_ids))],
        "started_at": time.time(),
        # rank -> the i6pn address the container resolved and said hello with
        "hellos": {},
    }


def _free_prefix(taken: set[str]) -> str:
    while True:
        prefix = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}"
        if prefix not in taken:
            return prefix


def prefix_of(ipv4: str) -> str:
    return ipv4.rpartition(".")[0]


class ClusterRpcs(ServicerBase):
    def _cluster_of_task(self, task_id: str) -> tuple[dict[str, Any], int]:
        for cluster in self.fake.clusters.values():
            if task_id in cluster["task_ids"]:
                return cluster, cluster["task_ids"].index(task_id)
        raise GRPCError(
            Status.FAILED_PRECONDITION, f"Task '{task_id}' is not a container of a cluster"
        )

    @unary
    async def TaskClusterHello(
        self, request: api_pb2.TaskClusterHelloRequest
    ) -> api_pb2.TaskClusterHelloResponse:
        cluster, rank = self._cluster_of_task(request.task_id)
        cluster["hellos"][rank] = request.container_ip
        return api_pb2.TaskClusterHelloResponse(
            cluster_id=cluster["cluster_id"],
            cluster_rank=rank,
            container_ips=cluster["ipv6"],
            container_ipv4_ips=cluster["ipv4"],
        )

    @unary
    async def ClusterGet(self, request: api_pb2.ClusterGetRequest) -> api_pb2.ClusterGetResponse:
        cluster = self.fake.clusters.get(request.cluster_id)
        if cluster is None:
            raise not_found(f"Cluster '{request.cluster_id}' not found")
        return api_pb2.ClusterGetResponse(
            cluster=api_pb2.ClusterStats(
                app_id=cluster["app_id"],
                task_ids=cluster["task_ids"],
                cluster_id=cluster["cluster_id"],
                started_at=cluster["started_at"],
            )
        )
