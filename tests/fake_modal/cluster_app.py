"""Clustered sample functions (``@modal.clustered``) the fake runs in tests (see
test_fake_cluster.py): an app of their own, so that hydrating its objects on one test module's
fake server leaves sample_app.py's alone.

Every rank reports what the real modal client says of its cluster, and the ranks connect to
each other over TCP on their IPv4 addresses, as processes in containers of their own would.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

import modal

app = modal.App("fake-modal-cluster")
volume = modal.Volume.from_name("cluster-data", create_if_missing=True, version=2)
image = modal.Image.from_registry("ubuntu:22.04", add_python="3.11").add_local_python_source(
    "fake_modal"
)


def data_dir(run: str) -> Path:
    """``/data/<run>`` of the container, mapped to a local directory by the fake."""
    path = Path(json.loads(os.environ["FAKE_MODAL_MOUNTS"])["/data"]) / run
    path.mkdir(parents=True, exist_ok=True)
    return path


def wait_for(path: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not Path(path).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.02)


def _serve_peers(server: socket.socket, count: int, heard: dict[int, str]) -> None:
    for _ in range(count):
        conn, (host, _port) = server.accept()
        with conn:
            heard[int(conn.recv(16))] = host
            conn.sendall(b"ok")


def _mesh(rendezvous: Path, rank: int, ipv4s: list[str]) -> dict[int, str]:
    """Listen on this container's address and connect to every other rank's from it; return
    the address each other rank connected here from."""
    server = socket.create_server((ipv4s[rank], 0))
    (rendezvous / f"port-{rank}.tmp").write_text(str(server.getsockname()[1]))
    (rendezvous / f"port-{rank}.tmp").rename(rendezvous / f"port-{rank}")
    heard: dict[int, str] = {}
    serving = threading.Thread(target=_serve_peers, args=(server, len(ipv4s) - 1, heard))
    serving.start()
    for peer, address in enumerate(ipv4s):
        if peer != rank:
            wait_for(str(rendezvous / f"port-{peer}"))
            port = int((rendezvous / f"port-{peer}").read_text())
            with socket.create_connection(
                (address, port), timeout=30, source_address=(ipv4s[rank], 0)
            ) as conn:
                conn.sendall(str(rank).encode())
                assert conn.recv(16) == b"ok"
    serving.join(60)
    server.close()
    return heard


def cluster_member(
    shared: str, run: str, hold: bool = False, fail_rank: int = -1, release: str = ""
) -> dict[str, Any]:
    """The body of both clustered functions, run by every rank of a cluster.

    Files go under ``<shared>/<cluster id>/`` (a directory all containers see, standing in for
    what real ones would learn over the network). In the first cluster of a call only: with
    `hold`, every rank then sleeps (with a grandchild process in a session of its own) until
    signalled; rank `fail_rank` raises. Rank 0 returns its report once every rank is done,
    after `release` exists if given. Each rank writes ``rank-<rank>.txt`` into the volume.
    """
    cluster = modal.Cluster.from_context()
    rank = cluster.container_rank()
    ipv4s = cluster.container_ips("ipv4")
    rendezvous = Path(shared) / cluster.object_id
    rendezvous.mkdir(parents=True, exist_ok=True)
    first = [p.name for p in Path(shared).glob("cu-*")] == [cluster.object_id]

    def on_signal(signum: int, frame: FrameType | None) -> None:
        (rendezvous / f"{signal.Signals(signum).name.lower()}-{rank}").write_text("signalled\n")
        sys.exit(128 + signum)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    print(f"rank {rank} of {len(ipv4s)} at {ipv4s[rank]}", flush=True)
    (data_dir(run) / f"rank-{rank}.txt").write_text(f"{cluster.object_id}\n")
    report = {
        "rank": rank,
        "cluster_id": cluster.object_id,
        "ipv4": ipv4s,
        "ipv6": cluster.container_ips("ipv6"),
        "container_ids": cluster.container_ids(),
        "task_id": os.environ["MODAL_TASK_ID"],
        "env_ip": os.environ["FAKE_MODAL_CONTAINER_IP"],
        "cloud": os.environ["MODAL_CLOUD_PROVIDER"],
        "heard": _mesh(rendezvous, rank, ipv4s),
    }
    (rendezvous / f"report-{rank}.json").write_text(json.dumps(report))
    if first and rank == fail_rank:
        raise RuntimeError(f"rank {rank} fails")
    if first and hold:
        child = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True
        )
        (rendezvous / f"child-{rank}").write_text(f"{child.pid}\n")
        print("holding", flush=True)
        time.sleep(120)
    (rendezvous / f"done-{rank}").write_text("done\n")
    if rank == 0:
        for peer in range(len(ipv4s)):
            wait_for(str(rendezvous / f"done-{peer}"))
        if release:
            wait_for(release)
    return report


# Clustered: every container takes a whole (pretend) 8-GPU node, and gets the same arguments.
@app.function(image=image, volumes={"/data": volume}, gpu="H100:8", timeout=120)
@modal.clustered(size=2)
def cluster_pair(
    shared: str, run: str, hold: bool = False, fail_rank: int = -1, release: str = ""
) -> dict[str, Any]:
    return cluster_member(shared, run, hold, fail_rank, release)


@app.function(image=image, volumes={"/data": volume}, gpu="H100:8", timeout=120)
@modal.clustered(size=3)
def cluster_trio(shared: str, run: str, release: str = "") -> dict[str, Any]:
    return cluster_member(shared, run, release=release)
