#!/usr/bin/env python3
"""The processes prime-rl's multi-node template starts on each node, faked (stdlib only, no
GPUs) but wired over real sockets. Run them through the wrappers in ``bin/`` (``torchrun``,
``orchestrator``, ``inference``, ``vllm-router``), after ``bin/rl ... --dry-run`` with a
multi-node deployment wrote ``<run_dir>/configs/{trainer,orchestrator,inference}.toml``.

Every mode parses its flags strictly (an unknown flag or a value of the wrong shape: a
usage line and ``<mode>: error: ...`` on stderr, exit 2), logs its lines to stdout and,
as the template tees them, to a file under ``<run_dir>/logs/``, stops on SIGTERM/SIGINT
like the single-node launcher (``received SIGTERM, shutting down``, exit 143 / 130) and
fails with ``ERROR: ...`` on stdout and stderr, exit 1.

Addresses: a server told to bind ``0.0.0.0`` binds ``FAKE_MODAL_CONTAINER_IP`` when set
(the fake Modal's stand-in for a container's own network namespace), and every client
connection leaves from that address too, so the other end sees which node called.

``torchrun --role=trainer --nnodes=T --nproc-per-node=C --node-rank=R
--rdzv-endpoint=HOST:PORT --rdzv-id=ID --log-dir=DIR [--tee=N] [--redirects=N]
[--local-ranks-filter=...] -m prime_rl.trainer.rl.train @ trainer.toml``
    Node rank 0 listens on the endpoint's port (at its own address) and waits until the
    other T-1 nodes joined, each announcing its node rank, T and the rendezvous id (a
    mismatch is refused, and that node fails saying why); the others connect to the
    endpoint, retrying. Either side gives up after the connect timeout, exit 1, naming the
    endpoint and who is missing. Then steps ``resume_step+1 .. max_steps`` of
    ``FAKE_RL_STEP_SECONDS`` each, every node in lockstep (a node that leaves fails the
    others at their next step, as NCCL would). Node 0 writes the trainer's output:
    ``logs/trainer/node_0.log`` (node R: ``node_R.log``), ``metrics.jsonl``. Every
    ``ckpt.interval`` steps every node writes its shards
    ``checkpoints/step_N/trainer/__<global rank>_0.distcp`` (global ranks R*C .. R*C+C-1),
    node 0 also ``checkpoints/step_N/orchestrator/progress.pt`` and, once every node wrote
    its shards and ``FAKE_RL_CKPT_SECONDS`` later, ``trainer/.metadata`` (atomically).
    Resuming (``ckpt.resume_step`` in trainer.toml): every node fails like a torch DCP load
    (a traceback ending in ``FileNotFoundError: ... '<path>'``, exit 1) when the step's
    ``.metadata`` or any of its T*C shards is missing. Exit 0 at max_steps.
``orchestrator @ orchestrator.toml --student.client.base-url URL [URL ...]
--student.client.admin-base-url URL [URL ...] [--weight_broadcast.host HOST]``
    URLs are ``http://HOST:PORT/v1``. ``--weight_broadcast.host`` is required when the
    config's ``[weight_broadcast] type`` is ``nccl`` and refused otherwise (exit 2). It
    reaches ``<base-url>/models`` (through the router) and every admin server's
    ``/health``, retrying until the connect timeout (then exit 1 naming the URL); then
    steps to ``max_steps`` (after ``ckpt.resume_step``), asking the router for its models
    each step and writing ``rollouts/step_N/`` (as rl.py does), and exits 0. Log:
    ``logs/orchestrator.log``.
``inference @ inference.toml --server.host HOST --server.port PORT``
    Serves ``GET /health`` (200) and ``GET /v1/models`` (the config's ``model.name``) until
    signalled. Log: ``logs/inference/node_<k>.log`` with k from ``INFER_NODE_RANK`` (the
    template's name for it; unset: stdout only).
``vllm-router --policy P --worker-urls URL [URL ...] --host HOST --port PORT
[--intra-node-data-parallel-size N] [--worker-startup-timeout-secs S]``
    Waits until every worker (``http://HOST:PORT``) answers ``/health`` (within S, capped by
    the connect timeout; else exit 1 naming the worker), logs ``N workers ready``, then
    serves ``/health`` and forwards ``GET /v1/models`` to the workers in turn until
    signalled. Log: ``$OUTPUT_DIR/logs/inference/router_0.log`` (the template's variable;
    unset: stdout only).

Environment (beside the single-node launcher's, see rl.py):

``FAKE_RL_CONNECT_TIMEOUT_SECONDS=s``
    How long a process waits for its peers: the rendezvous, each step's lockstep, the
    router and inference servers (default 120).
``FAKE_RL_FAIL_NODE_RANK=r``
    The trainer node that ``FAKE_RL_FAIL_AT_STEP``, ``FAKE_RL_FAIL_AFTER_STEPS``,
    ``FAKE_RL_HANG_AT_STEP`` and ``FAKE_RL_DIE_IN_CHECKPOINT_AT_STEP`` apply to (default 0).
    ``FAKE_RL_HANG`` holds every trainer node and the orchestrator after startup;
    ``FAKE_RL_FAIL_BEFORE_STEP`` fails the orchestrator; ``FAKE_RL_SHUTDOWN_SECONDS`` and
    ``FAKE_RL_IGNORE_SIGTERM`` apply to every process.
``FAKE_RL_RECORD_DIR=dir``
    Each process keeps ``dir/<mode>-<pid>.json`` up to date: ``role``, ``node_rank``,
    ``pid``, ``argv``, ``container_ip``, ``bound`` (``host:port`` it listens on, or null),
    ``peers`` (what it reached: trainer node 0 ``{"node_rank", "address"}`` per node that
    joined, as seen on the socket; other nodes ``{"node_rank": 0, "endpoint"}``; the
    orchestrator and router ``{"url", "status"}``), and for inference servers ``clients``
    (the addresses that called them). The orchestrator adds ``weight_broadcast``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import count
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import rl

T = TypeVar("T")
DEFAULT_CONNECT_TIMEOUT = 120.0
RETRY_SECONDS = 0.1
# How long node 0 gives a connected node to say who it is: a stray connection (a port
# scanner, a node of another run) must not hold up the rendezvous.
HELLO_SECONDS = 5.0
TRAINER_MODULE = "prime_rl.trainer.rl.train"
ROUTER_POLICIES = ("random", "round_robin", "cache_aware", "power_of_two", "consistent_hash")


class RoleFailed(Exception):
    """The process fails: its message (and traceback) on stderr and in its log, exit 1."""

    def __init__(self, message: str, traceback: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.traceback = list(traceback)


class PeerLost(Exception):
    """The other end closed the connection."""


class NotReady(Exception):
    """A server answered, but not with 200."""


@dataclass(frozen=True)
class Deadline:
    seconds: float
    at: float

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        return cls(seconds, time.monotonic() + seconds)

    def passed(self) -> bool:
        return time.monotonic() >= self.at


@dataclass(frozen=True)
class RoleSettings:
    base: rl.Settings
    connect_timeout: float
    fail_node_rank: int


def read_role_settings() -> RoleSettings:
    return RoleSettings(
        base=rl.read_settings(),
        connect_timeout=rl.env_seconds("FAKE_RL_CONNECT_TIMEOUT_SECONDS", DEFAULT_CONNECT_TIMEOUT),
        fail_node_rank=rl.env_int("FAKE_RL_FAIL_NODE_RANK") or 0,
    )


# --------------------------------------------------------------------------- addresses


def own_address() -> str | None:
    return os.environ.get("FAKE_MODAL_CONTAINER_IP") or None


def bind_host(host: str) -> str:
    """Where a server told to bind ``host`` listens: a wildcard is this container's address."""
    if host in ("0.0.0.0", "::"):
        return own_address() or host
    return host


def endpoint(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def source() -> tuple[str, int] | None:
    """Where client connections leave from: this container's address, so peers see it."""
    address = own_address()
    return (address, 0) if address else None


def listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family)
    except OSError as exc:
        raise cannot_listen(host, port, exc) from None


def cannot_listen(host: str, port: int, exc: OSError) -> RoleFailed:
    return RoleFailed(f"cannot listen on {endpoint(host, port)}: {exc.strerror or exc}")


def split_endpoint(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPV6]:PORT``; ValueError otherwise."""
    parts = urlsplit("//" + text)
    port = parts.port  # raises ValueError for a port out of range
    if not parts.hostname or port is None or parts.path or parts.query:
        raise ValueError(text)
    return parts.hostname, port


def split_url(text: str, path: str) -> tuple[str, int]:
    """An ``http://HOST:PORT<path>`` URL's host and port; ValueError otherwise."""
    parts = urlsplit(text)
    port = parts.port
    if parts.scheme != "http" or not parts.hostname or port is None:
        raise ValueError(text)
    if parts.path.rstrip("/") != path or parts.query:
        raise ValueError(text)
    return parts.hostname, port


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(
        parts.hostname or "", parts.port, timeout=timeout, source_address=source()
    )
    try:
        conn.request("GET", parts.path or "/")
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def get_ok(url: str) -> bytes:
    status, body = http_get(url)
    if status != 200:
        raise NotReady(f"HTTP {status}")
    return body


def retry(attempt: Callable[[], T], what: str, deadline: Deadline, stop: rl.StopFlag) -> T:
    """``attempt()`` until it succeeds; RoleFailed naming ``what`` once the deadline passed."""
    while True:
        try:
            return attempt()
        except (OSError, NotReady, http.client.HTTPException) as exc:
            last = exc
        if deadline.passed():
            reason = getattr(last, "strerror", None) or str(last) or type(last).__name__
            raise RoleFailed(f"could not reach {what} within {deadline.seconds:g}s ({reason})")
        stop.sleep(RETRY_SECONDS)


# --------------------------------------------------------------------------- output


class RoleLog:
    """A process's lines: on stdout (prm forwards them) and, as prime-rl's template tees
    them, appended to its log file."""

    def __init__(self, tag: str, path: Path | None) -> None:
        self.tag = tag
        self.file = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.file = open(path, "a", buffering=1, encoding="utf-8")

    def info(self, message: str) -> None:
        # a process's own lines carry no component tag: the node supervisor adds it
        rl.say(message)
        self._file(f"[{self.tag}] {message}")

    def error(self, message: str, traceback: Sequence[str] = ()) -> None:
        for line in traceback:
            rl.warn(line)
            self._file(line, stamp=False)
        rl.warn(f"ERROR: {message}")  # once: stdout and stderr reach one pipe
        self._file(f"ERROR: [{self.tag}] {message}")

    def close(self) -> None:
        if self.file is not None:
            self.file.close()

    def _file(self, line: str, stamp: bool = True) -> None:
        if self.file is not None:
            self.file.write((time.strftime("%H:%M:%S ") if stamp else "") + line + "\n")


class Record:
    """``FAKE_RL_RECORD_DIR/<mode>-<pid>.json``, rewritten whole (atomically) on a change."""

    def __init__(self, mode: str, node_rank: int | None, argv: Sequence[str]) -> None:
        target = os.environ.get("FAKE_RL_RECORD_DIR")
        self.path = Path(target) / f"{mode}-{os.getpid()}.json" if target else None
        self.lock = threading.Lock()
        self.data: dict[str, Any] = {
            "role": mode, "node_rank": node_rank, "pid": os.getpid(), "argv": list(argv),
            "container_ip": own_address(), "bound": None, "peers": [],
        }
        self._save()

    def update(self, **fields: Any) -> None:
        with self.lock:
            self.data.update(fields)
            self._save()

    def add_peer(self, peer: dict[str, Any]) -> None:
        with self.lock:
            self.data["peers"].append(peer)
            self._save()

    def _save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps(self.data, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, self.path)


# --------------------------------------------------------------------------- flags


class Parser(argparse.ArgumentParser):
    """Strict like the real entry points: no abbreviations; errors exit 2 with the usage."""

    def __init__(self, prog: str, usage: str) -> None:
        super().__init__(prog=prog, usage=usage, allow_abbrev=False)

    def add_config(self) -> None:
        self.add_argument("at", choices=["@"], metavar="@")
        self.add_argument("config", type=Path, metavar="CONFIG.toml")

    def load(self, path: Path) -> dict[str, Any]:
        try:
            return rl.load_toml(path)
        except rl.UsageError as exc:
            self.error(str(exc))


def check_urls(parser: Parser, flag: str, urls: Sequence[str], path: str) -> None:
    for url in urls:
        try:
            split_url(url, path)
        except ValueError:
            parser.error(f"{flag}: expected http://HOST:PORT{path}, got {url!r}")


def run_dir_of(config: Path, cfg: dict[str, Any]) -> Path:
    """The run directory: the config's ``output_dir``, else the folder above ``configs/``
    (prime-rl writes the sub-configs to ``<output_dir>/configs``)."""
    output_dir = cfg.get("output_dir")
    return Path(output_dir) if isinstance(output_dir, str) else config.resolve().parent.parent


def max_steps(cfg: dict[str, Any]) -> int:
    steps = cfg.get("max_steps")
    return steps if isinstance(steps, int) and steps >= 0 else rl.DEFAULT_MAX_STEPS


def resume_step(cfg: dict[str, Any]) -> int:
    step = rl.get_nested(cfg, "ckpt.resume_step") or 0
    return step if isinstance(step, int) and step > 0 else 0


# --------------------------------------------------------------------------- roles


class Role:
    """One process: ``run()`` does its work; ``main()`` turns how it ended into an exit code."""

    def __init__(self, stop: rl.StopFlag, settings: RoleSettings, log: RoleLog,
                 record: Record) -> None:
        self.stop = stop
        self.settings = settings
        self.log = log
        self.record = record

    def run(self) -> int:
        raise NotImplementedError

    def close(self) -> None:
        """Release sockets and servers (every way out)."""

    def main(self) -> int:
        try:
            return self.run()
        except rl.Stopped:
            return self.shutdown()
        except RoleFailed as exc:
            self.log.error(str(exc), exc.traceback)
            return 1
        finally:
            self.close()
            self.log.close()

    def shutdown(self) -> int:
        signum = self.stop.signum or signal.SIGTERM
        self.log.info(f"received {signal.Signals(signum).name}, shutting down")
        seconds = self.settings.base.shutdown_seconds
        if seconds > 0:
            deadline = time.monotonic() + seconds
            while (remaining := deadline - time.monotonic()) > 0:
                self.log.info(f"waiting for components to shut down ({remaining:.2f}s left)")
                time.sleep(min(rl.SHUTDOWN_LOG_SECONDS, remaining))
            self.log.info("shutdown complete")
        return 128 + signum


# ---- trainer


class Channel:
    """JSON lines over a socket, read in small waits so a signal is never held up."""

    def __init__(self, sock: socket.socket) -> None:
        sock.settimeout(rl.POLL_SECONDS)
        self.sock = sock
        self.buffer = b""

    def send(self, message: dict[str, Any]) -> None:
        try:
            self.sock.sendall(json.dumps(message).encode() + b"\n")
        except OSError as exc:
            raise PeerLost(str(exc)) from None

    def recv(self, stop: rl.StopFlag, deadline: Deadline) -> dict[str, Any]:
        while b"\n" not in self.buffer:
            stop.check()
            if deadline.passed():
                raise TimeoutError
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError as exc:
                raise PeerLost(str(exc)) from None
            if not chunk:
                raise PeerLost("connection closed")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        try:
            message = json.loads(line)
        except ValueError:
            message = None
        if not isinstance(message, dict):
            raise PeerLost(f"not a message: {line[:80]!r}")
        return message

    def close(self) -> None:
        self.sock.close()


@dataclass
class Group:
    """The trainer nodes after the rendezvous: node 0 holds a channel to every other node,
    the others one to node 0; a barrier is their stand-in for a step's collectives."""

    node_rank: int
    stop: rl.StopFlag
    timeout: float
    channels: dict[int, Channel] = field(default_factory=dict)

    def barrier(self, tag: str, then: Callable[[], None] | None = None) -> None:
        """Every node reaches ``tag``; node 0 runs ``then`` while the others wait."""
        deadline = Deadline.after(self.timeout)
        if self.node_rank == 0:
            for rank in sorted(self.channels):
                self._expect(rank, tag, deadline)
            if then is not None:
                then()
            for rank in sorted(self.channels):
                self.send(rank, tag)
        else:
            self.send(0, tag)
            self._expect(0, tag, deadline)

    def close(self) -> None:
        for channel in self.channels.values():
            channel.close()

    def send(self, rank: int, tag: str) -> None:
        try:
            self.channels[rank].send({"tag": tag})
        except PeerLost:
            raise RoleFailed(f"node {rank} left the process group at {tag}") from None

    def _expect(self, rank: int, tag: str, deadline: Deadline) -> None:
        try:
            message = self.channels[rank].recv(self.stop, deadline)
        except PeerLost:
            raise RoleFailed(f"node {rank} left the process group at {tag}") from None
        except TimeoutError:
            raise RoleFailed(f"timed out after {deadline.seconds:g}s waiting for node {rank} "
                             f"at {tag} (a collective that never completed)") from None
        if message.get("tag") != tag:
            raise RoleFailed(f"node {rank} is at {message.get('tag')!r}, not at {tag}")


class Trainer(Role):
    def __init__(self, args: argparse.Namespace, cfg: dict[str, Any], run_dir: Path,
                 stop: rl.StopFlag, settings: RoleSettings, record: Record) -> None:
        self.args = args
        self.rank: int = args.node_rank
        log_path = run_dir / "logs" / "trainer" / f"node_{self.rank}.log"
        super().__init__(stop, settings, RoleLog("trainer", log_path), record)
        self.run_dir = run_dir
        self.host, self.port = split_endpoint(args.rdzv_endpoint)
        self.nodes: int = args.nnodes
        self.per_node: int = args.nproc_per_node
        self.max_steps = max_steps(cfg)
        interval = rl.get_nested(cfg, "ckpt.interval")
        self.interval = interval if isinstance(interval, int) and interval > 0 else None
        self.resume_from = resume_step(cfg)
        lr = rl.get_nested(cfg, "optim.lr", 1e-6)
        self.lr = float(lr) if isinstance(lr, int | float) else 1e-6
        self.fails = self.rank == settings.fail_node_rank
        self.group: Group | None = None

    def run(self) -> int:
        self.log.info(f"node {self.rank} of {self.nodes}: {self.per_node} processes, "
                      f"rendezvous {self.args.rdzv_endpoint} (id {self.args.rdzv_id})")
        self.group = self._host() if self.rank == 0 else self._join()
        if self.resume_from:
            self._load(self.resume_from)
        if self.settings.base.hang:
            self.stop.hang()
        fail_at = self._fail_step()
        for step in range(self.resume_from + 1, self.max_steps + 1):
            self._step(step, fail_at)
        self.log.info("training finished")
        return 0

    def close(self) -> None:
        if self.group is not None:
            self.group.close()

    # ---- rendezvous

    def _host(self) -> Group:
        """Node 0: listen at this node's own address, admit every other node once."""
        address = bind_host("0.0.0.0")
        server = listen(address, self.port)
        server.settimeout(rl.POLL_SECONDS)
        self.record.update(bound=endpoint(address, self.port))
        group = Group(0, self.stop, self.settings.connect_timeout)
        deadline = Deadline.after(self.settings.connect_timeout)
        try:
            while len(group.channels) < self.nodes - 1:
                self.stop.check()
                if deadline.passed():
                    missing = sorted(set(range(1, self.nodes)) - set(group.channels))
                    raise RoleFailed(
                        f"rendezvous at {endpoint(address, self.port)} timed out after "
                        f"{deadline.seconds:g}s: {len(group.channels) + 1} of {self.nodes} "
                        f"nodes joined, node(s) {', '.join(map(str, missing))} never came")
                try:
                    conn, peer = server.accept()
                except TimeoutError:
                    continue
                self._admit(Channel(conn), peer[0], group)
        finally:
            server.close()
        for rank in sorted(group.channels):
            group.send(rank, "rendezvous")
        self.log.info(f"rendezvous complete: {self.nodes} node(s)")
        return group

    def _admit(self, channel: Channel, address: str, group: Group) -> None:
        try:
            hello = channel.recv(self.stop, Deadline.after(HELLO_SECONDS))
        except (TimeoutError, PeerLost):
            channel.close()
            return
        rank = hello.get("node_rank")
        problem = None
        if hello.get("rdzv_id") != self.args.rdzv_id:
            problem = f"rendezvous id {hello.get('rdzv_id')!r} is not {self.args.rdzv_id!r}"
        elif hello.get("nnodes") != self.nodes:
            problem = f"--nnodes={hello.get('nnodes')} there, {self.nodes} here"
        elif not isinstance(rank, int) or not 0 < rank < self.nodes or rank in group.channels:
            problem = f"node rank {rank!r} is not free"
        if problem is not None:
            self.log.info(f"refused a node from {address}: {problem}")
            try:
                channel.send({"error": problem})
            except PeerLost:
                pass
            channel.close()
            return
        assert isinstance(rank, int)
        group.channels[rank] = channel
        self.record.add_peer({"node_rank": rank, "address": address})
        self.log.info(f"node {rank} joined from {address}")

    def _join(self) -> Group:
        """Node R > 0: connect to the endpoint until node 0 answers, say who this is."""
        where = endpoint(self.host, self.port)
        deadline = Deadline.after(self.settings.connect_timeout)
        try:
            sock = retry(lambda: socket.create_connection((self.host, self.port), timeout=1.0,
                                                          source_address=source()),
                         f"the rendezvous at {where}", deadline, self.stop)
        except RoleFailed as exc:
            raise RoleFailed(f"torch.distributed.DistNetworkError: {exc}") from None
        channel = Channel(sock)
        group = Group(self.rank, self.stop, self.settings.connect_timeout, {0: channel})
        try:
            channel.send({"node_rank": self.rank, "nnodes": self.nodes,
                          "rdzv_id": self.args.rdzv_id})
            reply = channel.recv(self.stop, deadline)
        except (PeerLost, TimeoutError):
            raise RoleFailed(f"the rendezvous at {where} did not complete within "
                             f"{deadline.seconds:g}s") from None
        if reply.get("tag") != "rendezvous":
            raise RoleFailed(f"the rendezvous at {where} refused node {self.rank}: "
                             f"{reply.get('error')}")
        self.record.add_peer({"node_rank": 0, "endpoint": where})
        self.log.info(f"joined the rendezvous at {where}")
        return group

    # ---- steps and checkpoints

    def _fail_step(self) -> int | None:
        if not self.fails:
            return None
        base = self.settings.base
        candidates = [base.fail_at]
        if base.fail_after is not None:
            candidates.append(self.resume_from + base.fail_after + 1)
        return min((s for s in candidates if s is not None), default=None)

    def _step(self, step: int, fail_at: int | None) -> None:
        assert self.group is not None
        if self.fails and self.settings.base.hang_at == step:
            self.log.info(f"step {step}: hanging")
            self.stop.hang()
        self.stop.sleep(self.settings.base.step_seconds)
        if step == fail_at:
            raise RoleFailed(f"trainer node {self.rank} failed with exit code 1 at step {step}",
                             rl.cuda_traceback())
        save = bool(self.interval) and step % (self.interval or 1) == 0
        self.group.barrier(f"step {step}", then=(lambda: self._clear(step)) if save else None)
        m = rl.StepMetrics.for_step(step)
        self.log.info(f"step {step}: loss={m.loss:.4f} grad_norm={m.grad_norm:.4f} lr={self.lr:g}")
        if self.rank == 0:
            rl.append_metrics(self.run_dir, m, self.lr)
        if save:
            self._checkpoint(step)

    def _step_dir(self, step: int) -> Path:
        return self.run_dir / "checkpoints" / f"step_{step}"

    def _clear(self, step: int) -> None:
        """Node 0, while every node waits: a step folder being rewritten starts empty."""
        shutil.rmtree(self._step_dir(step), ignore_errors=True)

    def _checkpoint(self, step: int) -> None:
        assert self.group is not None
        trainer = self._step_dir(step) / "trainer"
        trainer.mkdir(parents=True, exist_ok=True)
        if self.rank == 0:
            orchestrator = trainer.parent / "orchestrator"
            orchestrator.mkdir(exist_ok=True)
            (orchestrator / "progress.pt").write_bytes(f"fake progress step={step}\n".encode())
        for rank in self._global_ranks():
            shard = f"fake DCP shard rank={rank} step={step} lr={self.lr}\n"
            (trainer / f"__{rank}_0.distcp").write_bytes(shard.encode())
        self.log.info(f"saved shards of step {step}")
        if self.fails and self.settings.base.die_in_ckpt_at == step:
            hard_kill()
        self.group.barrier(f"checkpoint {step}", then=lambda: self._metadata(step))

    def _metadata(self, step: int) -> None:
        """Node 0, once every node wrote its shards: DCP's coordinator writes .metadata last."""
        self.stop.sleep(self.settings.base.ckpt_seconds)
        trainer = self._step_dir(step) / "trainer"
        tmp = trainer / f"{rl.DCP_METADATA}.tmp"
        tmp.write_text(json.dumps({"step": step, "ranks": self.nodes * self.per_node}) + "\n")
        os.replace(tmp, trainer / rl.DCP_METADATA)
        self.log.info(f"saved checkpoint for step {step}")

    def _global_ranks(self) -> range:
        return range(self.rank * self.per_node, (self.rank + 1) * self.per_node)

    def _load(self, step: int) -> None:
        """A DCP load: every rank reads .metadata, then the shards of every rank."""
        trainer = (self._step_dir(step) / "trainer").resolve()
        self.log.info(f"loading checkpoint for step {step}")
        wanted = [trainer / rl.DCP_METADATA]
        wanted += [trainer / f"__{r}_0.distcp" for r in range(self.nodes * self.per_node)]
        for path in wanted:
            if not path.is_file():
                raise RoleFailed(
                    f"trainer node {self.rank} failed with exit code 1 while loading checkpoint "
                    f"step {step}: {path.name} is missing",
                    rl.dcp_load_traceback(path, self._global_ranks()[0]))
        self.log.info(f"resuming from checkpoint step {step}")


def hard_kill() -> None:
    """SIGKILL this process (and its group when it leads one), as a node loss would."""
    if os.getpgrp() == os.getpid():
        os.killpg(0, signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


def trainer_role(argv: Sequence[str], stop: rl.StopFlag, settings: RoleSettings) -> Role:
    parser = Parser("torchrun", "torchrun --role=trainer --nnodes=T --nproc-per-node=C "
                    "--node-rank=R --rdzv-endpoint=HOST:PORT --rdzv-id=ID --log-dir=DIR "
                    "[--tee=N] [--redirects=N] -m prime_rl.trainer.rl.train @ trainer.toml")
    parser.add_argument("--role", default="default")
    parser.add_argument("--nnodes", type=int, required=True)
    parser.add_argument("--nproc-per-node", "--nproc_per_node", type=int, required=True)
    parser.add_argument("--node-rank", "--node_rank", type=int, required=True)
    parser.add_argument("--rdzv-endpoint", "--rdzv_endpoint", required=True)
    parser.add_argument("--rdzv-id", "--rdzv_id", required=True)
    parser.add_argument("--log-dir", "--log_dir")
    parser.add_argument("--tee", type=int)
    parser.add_argument("--redirects", type=int)
    parser.add_argument("--local-ranks-filter", "--local_ranks_filter")
    parser.add_argument("-m", "--module", action="store_true")
    parser.add_argument("training_script")
    parser.add_argument("training_script_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if not args.module or args.training_script != TRAINER_MODULE:
        parser.error(f"the fake torchrun runs only -m {TRAINER_MODULE}")
    if args.nnodes < 1 or args.nproc_per_node < 1 or not 0 <= args.node_rank < args.nnodes:
        parser.error("--nnodes and --nproc-per-node must be >= 1 and --node-rank in "
                     f"[0, {args.nnodes})")
    try:
        split_endpoint(args.rdzv_endpoint)
    except ValueError:
        parser.error(f"--rdzv-endpoint: expected HOST:PORT, got {args.rdzv_endpoint!r}")
    script_args = args.training_script_args
    if len(script_args) != 2 or script_args[0] != "@":
        parser.error(f"{TRAINER_MODULE} takes @ trainer.toml, got {' '.join(script_args)!r}")
    config = Path(script_args[1])
    cfg = parser.load(config)
    record = Record("torchrun", args.node_rank, argv)
    return Trainer(args, cfg, run_dir_of(config, cfg), stop, settings, record)


# ---- orchestrator


class Orchestrator(Role):
    def __init__(self, args: argparse.Namespace, cfg: dict[str, Any], run_dir: Path,
                 stop: rl.StopFlag, settings: RoleSettings, record: Record) -> None:
        log = RoleLog("orchestrator", run_dir / "logs" / "orchestrator.log")
        super().__init__(stop, settings, log, record)
        self.args = args
        self.cfg = cfg
        self.run_dir = run_dir
        self.max_steps = max_steps(cfg)
        self.resume_from = resume_step(cfg)

    def run(self) -> int:
        deadline = Deadline.after(self.settings.connect_timeout)
        for base in self.args.base_urls:
            self._reach(f"{base.rstrip('/')}/models", deadline)
        for admin in self.args.admin_urls:
            host, port = split_url(admin, "/v1")
            self._reach(f"http://{endpoint(host, port)}/health", deadline)
        broadcast = {"type": self.args.broadcast_type, "host": self.args.broadcast_host}
        self.record.update(weight_broadcast=broadcast)
        self.log.info(f"reached {len(self.args.base_urls)} router(s) and "
                      f"{len(self.args.admin_urls)} inference server(s); weight broadcast: "
                      + (f"nccl from {broadcast['host']}" if broadcast["host"] else
                         broadcast["type"]))
        if self.settings.base.fail_before:
            raise RoleFailed("orchestrator failed with exit code 1 before step "
                             f"{self.resume_from + 1}", rl.missing_env_traceback(self.cfg))
        if self.settings.base.hang:
            self.stop.hang()
        for step in range(self.resume_from + 1, self.max_steps + 1):
            self._step(step)
        self.log.info("orchestrator finished")
        return 0

    def _reach(self, url: str, deadline: Deadline) -> None:
        retry(lambda: get_ok(url), url, deadline, self.stop)
        self.record.add_peer({"url": url, "status": 200})
        self.log.info(f"reached {url}")

    def _step(self, step: int) -> None:
        self.stop.sleep(self.settings.base.step_seconds)
        url = f"{self.args.base_urls[0].rstrip('/')}/models"
        try:
            get_ok(url)
        except (OSError, NotReady, http.client.HTTPException) as exc:
            raise RoleFailed(f"lost the inference server at {url} at step {step}: {exc}") from None
        m = rl.StepMetrics.for_step(step)
        rl.write_rollouts(self.run_dir, step, m.reward, rl.env_ids(self.cfg))
        self.log.info(f"step {step}: generated {m.requests} rollouts, reward/mean={m.reward:.4f}")


def orchestrator_role(argv: Sequence[str], stop: rl.StopFlag, settings: RoleSettings) -> Role:
    parser = Parser("orchestrator", "orchestrator @ orchestrator.toml --student.client.base-url "
                    "URL [URL ...] --student.client.admin-base-url URL [URL ...] "
                    "[--weight_broadcast.host HOST]")
    parser.add_config()
    parser.add_argument("--student.client.base-url", dest="base_urls", nargs="+", required=True)
    parser.add_argument("--student.client.admin-base-url", dest="admin_urls", nargs="+",
                        required=True)
    parser.add_argument("--weight_broadcast.host", "--weight-broadcast.host",
                        dest="broadcast_host")
    args = parser.parse_args(argv)
    check_urls(parser, "--student.client.base-url", args.base_urls, "/v1")
    check_urls(parser, "--student.client.admin-base-url", args.admin_urls, "/v1")
    cfg = parser.load(args.config)
    args.broadcast_type = rl.get_nested(cfg, "weight_broadcast.type", "filesystem")
    if args.broadcast_type == "nccl" and not args.broadcast_host:
        parser.error("weight_broadcast.type is nccl: --weight_broadcast.host is required "
                     "(where the trainer's first node broadcasts from)")
    if args.broadcast_type != "nccl" and args.broadcast_host:
        parser.error(f"--weight_broadcast.host is for an nccl broadcast; this config's "
                     f"weight_broadcast.type is {args.broadcast_type}")
    record = Record("orchestrator", None, argv)
    return Orchestrator(args, cfg, run_dir_of(args.config, cfg), stop, settings, record)


# ---- inference and router


class Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks the host name up (getfqdn): a DNS query per start
        socketserver.TCPServer.server_bind(self)
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])


class Server6(Server):
    address_family = socket.AF_INET6


Routes = Callable[[str], tuple[int, bytes]]


def serve(host: str, port: int, routes: Routes, on_client: Callable[[str], None]) -> Server:
    """An HTTP server answering GETs from ``routes(path) -> (status, JSON body)``."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            on_client(self.client_address[0])
            status, body = routes(self.path)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # a line per request would drown the role's own log

    cls = Server6 if ":" in host else Server
    try:
        server = cls((host, port), Handler)
    except OSError as exc:
        raise cannot_listen(host, port, exc) from None
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": rl.POLL_SECONDS},
                     daemon=True).start()
    return server


NOT_FOUND = (404, b'{"error": "not found"}')


class HttpRole(Role):
    """A server that runs until signalled."""

    server: Server | None = None

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


class Inference(HttpRole):
    def __init__(self, args: argparse.Namespace, cfg: dict[str, Any], run_dir: Path,
                 stop: rl.StopFlag, settings: RoleSettings, record: Record,
                 node: int | None) -> None:
        path = None if node is None else run_dir / "logs" / "inference" / f"node_{node}.log"
        super().__init__(stop, settings, RoleLog("inference", path), record)
        self.args = args
        self.model = str(rl.get_nested(cfg, "model.name", "fake-model"))
        self.clients: set[str] = set()

    def run(self) -> int:
        host = bind_host(self.args.host)
        self.server = serve(host, self.args.port, self._route, self._client)
        self.record.update(bound=endpoint(host, self.args.port), clients=[])
        self.log.info(f"serving {self.model} on http://{endpoint(host, self.args.port)}")
        self.stop.hang()
        return 0  # never reached: hang() ends by a signal

    def _route(self, path: str) -> tuple[int, bytes]:
        if path == "/health":
            return 200, b""
        if path == "/v1/models":
            model = {"id": self.model, "object": "model", "owned_by": "vllm"}
            return 200, json.dumps({"object": "list", "data": [model]}).encode()
        return NOT_FOUND

    def _client(self, address: str) -> None:
        if address not in self.clients:
            self.clients.add(address)
            self.record.update(clients=sorted(self.clients))


def inference_role(argv: Sequence[str], stop: rl.StopFlag, settings: RoleSettings) -> Role:
    parser = Parser("inference", "inference @ inference.toml --server.host HOST "
                    "--server.port PORT")
    parser.add_config()
    parser.add_argument("--server.host", dest="host", default="0.0.0.0")
    parser.add_argument("--server.port", dest="port", type=int, default=8000)
    args = parser.parse_args(argv)
    cfg = parser.load(args.config)
    node = rl.env_int("INFER_NODE_RANK")
    record = Record("inference", node, argv)
    return Inference(args, cfg, run_dir_of(args.config, {}), stop, settings, record, node)


class Router(HttpRole):
    def __init__(self, args: argparse.Namespace, stop: rl.StopFlag, settings: RoleSettings,
                 record: Record) -> None:
        output_dir = os.environ.get("OUTPUT_DIR")
        path = Path(output_dir) / "logs" / "inference" / "router_0.log" if output_dir else None
        super().__init__(stop, settings, RoleLog("router", path), record)
        self.args = args
        self.turn = count()

    def run(self) -> int:
        workers = [w.rstrip("/") for w in self.args.worker_urls]
        timeout = min(float(self.args.worker_startup_timeout_secs), self.settings.connect_timeout)
        deadline = Deadline.after(timeout)
        for worker in workers:
            retry(partial(get_ok, f"{worker}/health"), f"worker {worker}", deadline, self.stop)
            self.record.add_peer({"url": f"{worker}/health", "status": 200})
        self.log.info(f"{len(workers)} workers ready")
        host = bind_host(self.args.host)
        self.server = serve(host, self.args.port, self._route, lambda address: None)
        self.record.update(bound=endpoint(host, self.args.port))
        self.log.info(f"routing ({self.args.policy}) on http://{endpoint(host, self.args.port)}")
        self.stop.hang()
        return 0  # never reached: hang() ends by a signal

    def _route(self, path: str) -> tuple[int, bytes]:
        if path == "/health":
            return 200, b""
        if path != "/v1/models":
            return NOT_FOUND
        workers = self.args.worker_urls
        worker = workers[next(self.turn) % len(workers)].rstrip("/")
        try:
            return http_get(f"{worker}{path}")
        except (OSError, http.client.HTTPException) as exc:
            return 502, json.dumps({"error": f"worker {worker}: {exc}"}).encode()


def router_role(argv: Sequence[str], stop: rl.StopFlag, settings: RoleSettings) -> Role:
    parser = Parser("vllm-router", "vllm-router --policy POLICY --worker-urls URL [URL ...] "
                    "--host HOST --port PORT [--intra-node-data-parallel-size N] "
                    "[--worker-startup-timeout-secs S]")
    parser.add_argument("--policy", choices=ROUTER_POLICIES, default="consistent_hash")
    parser.add_argument("--worker-urls", nargs="+", required=True)
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--intra-node-data-parallel-size", type=int, default=1)
    parser.add_argument("--worker-startup-timeout-secs", type=int, default=600)
    args = parser.parse_args(argv)
    check_urls(parser, "--worker-urls", args.worker_urls, "")
    if args.intra_node_data_parallel_size < 1:
        parser.error("--intra-node-data-parallel-size must be >= 1")
    return Router(args, stop, settings, Record("vllm-router", None, argv))


# --------------------------------------------------------------------------- main

MODES: dict[str, Callable[[Sequence[str], rl.StopFlag, RoleSettings], Role]] = {
    "torchrun": trainer_role,
    "orchestrator": orchestrator_role,
    "inference": inference_role,
    "vllm-router": router_role,
}


def main(mode: str, argv: Sequence[str]) -> int:
    stop = rl.StopFlag(rl.env_flag("FAKE_RL_IGNORE_SIGTERM"))
    try:
        settings = read_role_settings()
    except rl.UsageError as exc:
        rl.warn(f"{mode}: error: {exc}")
        return 2
    return MODES[mode](argv, stop, settings).main()


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in MODES:
        sys.exit(f"usage: roles.py {{{','.join(MODES)}}} ARGS...")
    sys.exit(main(sys.argv[1], sys.argv[2:]))
