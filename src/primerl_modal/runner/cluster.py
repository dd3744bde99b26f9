"""One node of a Modal cluster (docs/multi-node.md): the runner of every rank, with what
makes the ranks one run.

- Rank 0 (the first trainer node) runs prime-rl's `rl ... --dry-run`, which writes the
  resolved sub-configs into the run directory, commits them and publishes ``ready.json``
  (every rank's address; whether weights are broadcast over NCCL). The other ranks wait for
  it (with a time limit), reload the volume to see the sub-configs, then start their own
  processes. Each rank runs its processes under `runner.node`, supervised by the usual
  runner: its lines prefixed ``[node<rank>/<component>]``, its own attempt log.
- Every rank announces how it ended (``end-<rank>.json``) and watches the others'
  announcements: any node's end ends every node, so no half-cluster is left holding GPUs.
- Rank 0 owns the run's status.json (its own runner's), and so its outcome decides what
  Modal does next (only rank 0's result counts); the other ranks keep their own state in
  ``_prm/<run-id>/nodes/<rank>/`` and their attempt logs in ``_prm/<run-id>/logs/node<rank>/``.

The meeting point is the outputs volume itself (``_prm/<run-id>/cluster/<cluster-id>/``):
what a rank publishes is committed, and the others read it through the volume's API, which
sees every commit (a container's mount does not, until a reload).
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from primerl_modal.core import status as st
from primerl_modal.core.cluster import rank_processes
from primerl_modal.core.plan import META_DIR
from primerl_modal.runner.core import PeerEnd, Runner, RunnerOptions, run
from primerl_modal.runner.forward import Sink, pump_pipe
from primerl_modal.runner.state import RunState, json_object, write_json_atomic

T = TypeVar("T")
READY = "ready.json"
_END = re.compile(r"end-(\d+)\.json")
# How long a node waits for rank 0's sub-configs: rank 0 imports prime-rl from a cold image
# first (PRM_CLUSTER_TIMEOUT overrides).
READY_TIMEOUT_S = 1800.0
PEERS_WAIT_S = 30.0  # rank 0, after a final end: for the others to stop and record theirs


@dataclass
class Shared:
    """The outputs volume as every rank sees it: this container's mount (``root``),
    committed with ``commit``; what every rank committed, through ``read``/``listdir``."""

    root: Path
    read: Callable[[str], bytes | None]
    listdir: Callable[[str], list[str]]
    commit: Callable[[], None]
    reload: Callable[[], None]

    def publish(self, path: str, data: dict[str, Any]) -> None:
        write_json_atomic(self.root / path, data)
        self.commit()


class Node:
    """The cluster side of one rank's runner (`runner.core.ClusterHooks`)."""

    def __init__(self, plan: dict[str, Any], rank: int, hosts: list[str], cluster_id: str,
                 shared: Shared, bin_dir: str, poll_s: float = 2.0) -> None:
        self.plan, self.rank, self.hosts, self.shared = plan, rank, hosts, shared
        self.role = plan["roles"][rank]
        self.run_id: str = plan["run_id"]
        self.dir = f"{META_DIR}/{self.run_id}/cluster/{cluster_id}"
        self.bin_dir = bin_dir
        self.poll_s = poll_s
        self.nccl = False
        self.attempt: int | None = None  # rank 0's attempt number, for the other ranks
        self.ended_by: PeerEnd | None = None  # the other node whose end ended this one

    # ------------------------------------------------------------ ClusterHooks

    def log_path(self, attempt: int) -> Path:
        logs = self.shared.root / META_DIR / self.run_id / "logs"
        if self.rank == 0:
            return logs / f"attempt_{attempt}.log"
        return logs / f"node{self.rank}" / f"attempt_{self.attempt or attempt}.log"

    def launch(self, runner: Runner, argv: list[str], sink: Sink) -> list[str] | int:
        run_dir = runner.run_dir
        if self.rank == 0:
            code = self._dry_run(runner, argv, sink)
            if code:
                return code
            self.nccl = _nccl_broadcast(run_dir / "configs" / "orchestrator.toml")
            runner.commit()  # the sub-configs, for the other nodes
            self.shared.publish(f"{self.dir}/{READY}", {
                "hosts": self.hosts, "nccl_broadcast": self.nccl,
                "attempt": runner.state.attempt, "at": time.time()})
        processes = rank_processes(self.role, self.hosts, str(run_dir), self.bin_dir,
                                   self.run_id, self.nccl)
        sink.emit("runner", [f"node{self.rank} ({self.hosts[self.rank]}): {self.role['role']} "
                             f"node {self.role['node_rank']}, starting "
                             + ", ".join(p.component for p in processes)])
        fd, spec = tempfile.mkstemp(prefix=f"prm-node{self.rank}-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump([p.to_json() for p in processes], f)
        return [sys.executable, "-m", "primerl_modal.runner.node", spec]

    def peer_end(self) -> PeerEnd | None:
        """The first other node's own end (not one caused by another node's end). Only rank
        0's finish is the cluster's: another trainer node may finish its last step first."""
        for rank, data in sorted(self._ends().items()):
            finished_early = rank != 0 and data.get("status") == st.SUCCEEDED
            if rank != self.rank and not data.get("caused_by_peer") and not finished_early:
                self.ended_by = PeerEnd(rank, str(data.get("status", st.FAILED)),
                                        str(data.get("note", "")), bool(data.get("preempted")))
                return self.ended_by
        return None

    def peer_failures(self) -> list[PeerEnd]:
        """The other nodes whose own processes failed too (waiting a few polls for their
        announcements): the nodes of a cluster fail together, a lost peer breaking the
        collectives, and which went first is not knowable from here."""
        def failed() -> list[PeerEnd] | None:
            return [PeerEnd(rank, str(data["status"]), str(data.get("note", "")))
                    for rank, data in sorted(self._ends().items())
                    if rank != self.rank and data.get("status") in (st.FAILED, st.RECOVERING)
                    and not (data.get("preempted") or data.get("caused_by_peer"))] or None

        wait = min(max(3 * self.poll_s, 3.0), 6.0)
        return _poll(failed, wait, min(self.poll_s, 0.5)) or []

    # ------------------------------------------------------------ the meeting

    def _ends(self) -> dict[int, dict[str, Any]]:
        ends = {}
        for name in self.shared.listdir(self.dir):
            match = _END.fullmatch(Path(name).name)
            if match:
                ends[int(match.group(1))] = json_object(
                    self.shared.read(f"{self.dir}/{match.group(0)}")) or {}
        return ends

    def wait_ready(self, timeout_s: float, say: Callable[[str], None]) -> dict[str, Any] | None:
        """Rank 0's ready.json (None if the cluster ended first, or on timeout: announced)."""

        def ready_or_ended() -> dict[str, Any] | PeerEnd | None:
            ready = json_object(self.shared.read(f"{self.dir}/{READY}"))
            return ready if ready is not None else self.peer_end()

        say(f"node{self.rank}: waiting for node0's prime-rl sub-configs")
        found = _poll(ready_or_ended, timeout_s, min(self.poll_s, 1.0))
        if isinstance(found, PeerEnd):
            say(f"node{self.rank}: node{found.rank} ended first ({found.status}: {found.note})")
            return None
        if found is not None:
            self.attempt = int(found.get("attempt") or 0) or None
            self.nccl = bool(found.get("nccl_broadcast"))
            return found
        note = f"node0 did not publish its sub-configs within {timeout_s:g}s"
        say(f"node{self.rank}: {note}")
        self.shared.publish(f"{self.dir}/end-{self.rank}.json",
                            {"status": st.FAILED, "note": note, "at": time.time()})
        return None

    def announce_failure(self, status: str, note: str) -> None:
        """This node's processes failed: said before anything else, so that every node ends
        and each can name the others that failed with it (the end is said again, whole,
        once recorded)."""
        self.shared.publish(f"{self.dir}/end-{self.rank}.json", {
            "status": status, "note": note, "preempted": False, "caused_by_peer": False,
            "at": time.time()})

    def announce(self, state: RunState, caused_by_peer: bool) -> None:
        attempt = (state.data.get("attempts") or [{}])[-1]
        self.shared.publish(f"{self.dir}/end-{self.rank}.json", {
            "status": state.status, "note": (state.data.get("history") or [{}])[-1].get("note",
                                                                                          ""),
            "preempted": bool(attempt.get("preempted")), "caused_by_peer": caused_by_peer,
            "at": time.time()})

    def wait_peers(self, timeout_s: float) -> None:
        _poll(lambda: len(self._ends()) >= len(self.hosts) or None, timeout_s, 0.5)

    def _dry_run(self, runner: Runner, argv: list[str], sink: Sink) -> int:
        """prime-rl's `rl --dry-run`: the sub-configs every node reads, in the run dir."""
        proc = runner.start(argv)
        runner.proc = proc  # a stop or preemption meanwhile reaches it
        assert proc.stdout is not None
        reader = pump_pipe(proc.stdout.fileno(), sink)
        code = proc.wait()
        reader.join(timeout=5)
        if runner.signal is not None:
            return 128 + runner.signal
        return 128 - code if code < 0 else code


def _poll(probe: Callable[[], T], timeout_s: float, every: float) -> T:
    """``probe()`` every ``every`` seconds until it answers (anything but None), for at most
    ``timeout_s``; its last answer (None if it never answered)."""
    deadline = time.monotonic() + timeout_s
    while True:
        answer = probe()
        if answer is not None or time.monotonic() >= deadline:
            return answer
        time.sleep(every)


def _nccl_broadcast(orchestrator_toml: Path) -> bool:
    """Whether the resolved orchestrator config broadcasts weights over NCCL (then the
    orchestrator is told where the trainer's broadcast lives, as prime-rl's template does)."""
    try:
        config = tomllib.loads(orchestrator_toml.read_text())
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        return False
    broadcast = config.get("weight_broadcast")
    return isinstance(broadcast, dict) and broadcast.get("type") == "nccl"


def node_plan(plan: dict[str, Any], rank: int) -> dict[str, Any]:
    """``plan`` as one node runs it: its GPUs all serve its role (for the GPU sampler), and
    only rank 0 guards the run (stall, budget) for the whole cluster."""
    gpu = dict(plan.get("gpu") or {})
    local = list(range(int(gpu.get("count") or 0)))
    trainer = plan["roles"][rank]["role"] == "trainer"
    gpu["trainer_gpu_ids"], gpu["inference_gpu_ids"] = (local, []) if trainer else ([], local)
    return {**plan, "gpu": gpu, **({} if rank == 0 else {"guard": {}})}


def run_node(plan: dict[str, Any], commit: Callable[[], None], options: RunnerOptions,
             node: Node, ready_timeout_s: float = READY_TIMEOUT_S) -> int:
    """Run this rank's next attempt as one node of the cluster; the exit code of its
    processes (rank 0: of the run)."""
    root = options.outputs_root
    if node.rank > 0:
        if node.wait_ready(ready_timeout_s, lambda text: print(f"[runner] {text}",
                                                                flush=True)) is None:
            return 1
        node.shared.reload()  # nothing of this container's is open on the volume yet
    meta = None if node.rank == 0 else root / META_DIR / plan["run_id"] / "nodes" / str(
        node.rank)
    options = replace(options, cluster=node, meta_dir=meta)
    state_dir = meta or root / META_DIR / plan["run_id"]
    try:
        return run(node_plan(plan, node.rank), commit, options)
    finally:
        state = RunState.load(state_dir, plan["run_id"])
        node.announce(state, caused_by_peer=node.ended_by is not None)
        if node.rank == 0 and state.status in st.FINAL:
            node.wait_peers(PEERS_WAIT_S)
