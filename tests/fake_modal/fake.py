"""`FakeModal`: the public face of the fake server, and the state every part of it shares.

All state is mutated on the server's event loop thread. Tests read the recorded dicts from their
own thread (plain reads of dicts and lists are safe under the GIL) and use `wait_call` /
`wait_until` to synchronise with work that is still in progress.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets as _secrets
import shlex
import string
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import grpclib.server

from .billing_rpcs import DEFAULT_RATES
from .blobs import BlobServer, ContentStore
from .containers import marked_pids
from .executor import FINAL_STATUSES, Executor

T = TypeVar("T")

_ALPHANUM = string.ascii_letters + string.digits


def new_id(prefix: str) -> str:
    """An object id shaped like Modal's (``ap-`` + 22 alphanumerics)."""
    return f"{prefix}-" + "".join(_secrets.choice(_ALPHANUM) for _ in range(22))


def stable_id(prefix: str, name: str) -> str:
    """The id of a named object (volume, secret, mount): the same for the same name, always.

    The client keeps ``Volume.from_name`` / ``Secret.from_name`` objects hydrated across app runs,
    so their ids must stay valid after `FakeModal.reset`, as they would on Modal.
    """
    return f"{prefix}-" + hashlib.sha256(f"{prefix}:{name}".encode()).hexdigest()[:22]


@dataclass(frozen=True)
class LogEntry:
    """One chunk of container output (normally one line, newline included)."""

    entry_id: int
    timestamp: float
    fd: str  # "stdout", "stderr" or "system"
    data: str
    function_id: str = ""
    function_call_id: str = ""
    task_id: str = ""
    input_id: str = ""


class FakeModal:
    """An in-process fake of Modal's control plane for the real ``modal`` client.

    ``root`` holds everything the fake writes: ``root/volumes/<volume name>/`` is each volume's
    committed state, ``root/_fake_modal/`` the fake's scratch space (materialised mounts, call
    inputs, the containers' volume copies under ``tasks/<task id>/``).
    """

    def __init__(
        self,
        root: Path | str,
        *,
        grace_s: float = 5.0,
        image_builder_version: str = "2026.10",
    ) -> None:
        self.root = Path(root)
        self.default_grace_s = grace_s
        self.image_builder_version = image_builder_version
        self.store = ContentStore()
        self.blob_server = BlobServer(self.store)
        self.executor = Executor(self)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._grpc_server: grpclib.server.Server | None = None
        self._port: int | None = None
        self._closing = False
        # Named objects outlive `reset` (see `stable_id`); inline secrets too, being app-owned.
        self._secret_objects: dict[str, dict[str, Any]] = {}
        self._known_volumes: dict[str, str] = {}  # volume id -> name
        self._clear_state()

    # ------------------------------------------------------------------ state

    def _clear_state(self) -> None:
        # Configuration set by tests.
        self.grace_s: float = self.default_grace_s
        self.retry_delay_scale: float = 1.0  # every retry delay of a policy is multiplied by it
        self.secrets: dict[str, dict[str, str]] = {}
        self.billing_rates: dict[str, str] = dict(DEFAULT_RATES)  # see billing_rpcs.py
        self.extra_env: dict[str, str] = {}
        # env var name -> mount path: each container gets the var set to its local copy of
        # that mount (for code that reads where a volume is mounted from the environment).
        self.mount_env: dict[str, str] = {}
        # volume name -> {listed path: real path in the volume}: lets a test make the fake
        # list (and serve) an entry under a hostile name such as "run/../../evil".
        self.listing_aliases: dict[str, dict[str, str]] = {}
        # Recorded requests, as plain data.
        self.apps: dict[str, dict[str, Any]] = {}
        self.functions: dict[str, dict[str, Any]] = {}
        self.images: dict[str, dict[str, Any]] = {}
        self.image_requests: list[dict[str, Any]] = []
        # An image not built before takes this long to build, streaming a log line per
        # Dockerfile command as Modal's builder does (0: every image is ready at once).
        self.build_seconds: float = 0.0
        self.built_images: set[str] = set()
        self.mounts: dict[str, dict[str, Any]] = {}
        self.volumes: dict[str, dict[str, Any]] = {}
        self.calls: dict[str, dict[str, Any]] = {}
        self.clusters: dict[str, dict[str, Any]] = {}  # by cluster id, see clusters.py
        self.commits: list[tuple[str, float]] = []  # every VolumeCommit: (volume, time)
        self.logs: dict[str, list[LogEntry]] = {}
        self.max_concurrent_calls = 0
        self.max_concurrent_by_function: dict[str, int] = {}
        self.requests: list[str] = []  # every RPC method name, in arrival order
        self.unimplemented: list[str] = []  # RPCs the client asked for that the fake lacks
        self.errors: list[str] = []  # bugs inside the fake (tracebacks)
        # Internal state.
        self._function_defs: dict[str, Any] = {}  # function id -> api_pb2.Function
        self._function_meta: dict[str, Any] = {}  # function id -> api_pb2.FunctionHandleMetadata
        self._bound_variants: dict[tuple[str, bytes], str] = {}
        self._pending_preemptions: list[float] = []
        if hasattr(self, "_changed"):
            self._changed.set()  # release anything still waiting on the old state
        self._changed: asyncio.Event = asyncio.Event()
        self.store.clear()

    def end_calls(self) -> None:
        """Kill every container at once, ending every call (their records stay)."""
        if self._loop is not None:
            self._run(self.executor.shutdown())

    def reset(self, root: Path | str | None = None) -> None:
        """Stop everything still running and forget all recorded state (keeps the server up)."""

        async def reset_on_loop() -> None:
            await self.executor.shutdown()
            self._clear_state()

        if root is not None:
            self.root = Path(root)
        if self._loop is None:
            self._clear_state()
        else:
            self._run(reset_on_loop())

    # -------------------------------------------------------------- lifecycle

    @property
    def url(self) -> str:
        assert self._port is not None, "FakeModal is not started"
        return f"http://127.0.0.1:{self._port}"

    def env(self) -> dict[str, str]:
        """Environment variables that point the modal client at this fake and nowhere else."""
        return {
            "MODAL_SERVER_URL": self.url,
            "MODAL_TOKEN_ID": "ak-test",
            "MODAL_TOKEN_SECRET": "as-test",
            "MODAL_CONFIG_PATH": str(self.root / "_fake_modal" / "no-such-modal.toml"),
            "MODAL_DISABLE_API_PROXY": "1",
        }

    def start(self) -> FakeModal:
        if self._thread is not None:
            return self
        from .server import make_servicer

        self.blob_server.start()
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="fake-modal", daemon=True)
        self._thread.start()

        async def start_grpc() -> grpclib.server.Server:
            server = grpclib.server.Server([make_servicer(self)])
            await server.start("127.0.0.1", 0)
            return server

        self._grpc_server = self._run(start_grpc())
        listener = cast(asyncio.Server, self._grpc_server._server)
        self._port = int(listener.sockets[0].getsockname()[1])
        return self

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        server = self._grpc_server

        async def shutdown() -> None:
            self._closing = True
            await self.executor.shutdown()
            self.pulse()  # open log streams and output polls notice `_closing` and return
            if server is not None:
                server.close()
                try:
                    await asyncio.wait_for(server.wait_closed(), timeout=5)
                except TimeoutError:
                    pass

        try:
            self._run(shutdown())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
            self._loop.close()
            self._loop = None
            self._thread = None
            self._grpc_server = None
            self._port = None
            self._closing = False
            self.blob_server.stop()

    def __enter__(self) -> FakeModal:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    # ---------------------------------------------------------- configuration

    def preempt_after(self, seconds: float = 1.0, times: int = 1) -> None:
        """Preempt the next spawned call `times` times, each attempt after `seconds` of running.

        A preempted attempt's main process gets SIGINT; its container is killed after `grace_s`
        unless it has exited, and the call restarts with the same input (and the same retry
        count) in a new container, as Modal does after a worker preemption.
        """
        self._pending_preemptions = [seconds] * times

    def preempt(self, call_id: str, rank: int = 0) -> None:
        """Preempt the running attempt of `call_id` now, as `preempt_after` would. For a
        clustered function, preempting the container of any rank preempts the whole cluster:
        every container gets SIGINT, and the input restarts as a new cluster."""

        async def preempt_on_loop() -> None:
            self.executor.preempt(call_id, rank)

        self._run(preempt_on_loop())

    def kill_container(self, call_id: str, rank: int = 0) -> None:
        """Kill the container of `rank` of the running attempt of `call_id` (SIGKILL to all its
        processes), as a crash or a lost node would: the attempt fails (its other containers are
        ended) and is retried per the retry policy."""
        self._run(self.executor.kill_container(call_id, rank))

    # -------------------------------------------------------------- waiting

    def wait_until(self, predicate: Callable[[], bool], timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError(f"condition not met within {timeout}s")
            time.sleep(0.02)

    def wait_call(self, call_id: str, timeout: float = 30) -> dict[str, Any]:
        """Block until the call has finished (its process is gone); return its record."""
        try:
            self.wait_until(lambda: self.calls[call_id]["status"] in FINAL_STATUSES, timeout)
        except TimeoutError:
            status = self.calls[call_id]["status"]
            raise TimeoutError(f"call {call_id} still {status!r} after {timeout}s") from None
        return self.calls[call_id]

    def wait_app_stopped(self, app_id: str, timeout: float = 30) -> dict[str, Any]:
        self.wait_until(lambda: self.apps[app_id]["state"] == "stopped", timeout)
        return self.apps[app_id]

    # ----------------------------------------------------- helpers for tests

    def live_containers(self, call_id: str) -> list[dict[str, Any]]:
        """The running containers of a call by rank: rank, task_id, pid (of its main process),
        ipv4 (its cluster address, None unless clustered), started (of its attempt)."""

        async def on_loop() -> list[dict[str, Any]]:
            return self.executor.live_containers(call_id=call_id)

        return self._run(on_loop())

    def leftover_pids(self, call_id: str) -> list[int]:
        """Processes still alive of any container any attempt of the call ever had."""
        tasks = [task for attempt in self.calls[call_id]["attempts"] for task in attempt["tasks"]]
        return marked_pids(*tasks)

    def volume_path(self, name: str) -> Path:
        """Local directory holding the committed state of volume `name` (containers work on
        copies of it, see volumes.py)."""
        return self.root / "volumes" / name

    def fault_block_reads(self, volume: str, path: str, *kinds: str) -> None:
        """Make the next block reads of a file in a volume fail, one kind per read:
        "503" answers with an error, "corrupt" flips a byte so the digest check fails,
        "slow" answers only after a minute (to catch a pull in the middle)."""
        unknown = set(kinds) - {"503", "corrupt", "slow"}
        if unknown:
            raise ValueError(f"unknown block-read faults: {sorted(unknown)}")
        self.store.add_faults(str((self.volume_path(volume) / path).resolve()), kinds)

    def block_reads(self, volume: str, path: str) -> list[tuple[int, int]]:
        """The block reads of a file of a volume served so far: (start offset, bytes sent)."""
        return self.store.served(str((self.volume_path(volume) / path).resolve()))

    def image_commands(self, image_id: str) -> list[str]:
        """All Dockerfile commands of an image, from its root base image down to itself."""
        image = self.images[image_id]
        commands: list[str] = []
        for base_id in image["base_image_ids"]:
            commands += self.image_commands(base_id)
        return commands + list(image["dockerfile_commands"])

    def image_env(self, image_id: str) -> dict[str, str]:
        """``ENV`` values baked into an image chain (values referencing ``$VARS`` are skipped)."""
        env: dict[str, str] = {}
        for command in self.image_commands(image_id) if image_id in self.images else []:
            if not command.startswith("ENV "):
                continue
            for word in shlex.split(command[4:]):
                key, sep, value = word.partition("=")
                if sep and "$" not in value:
                    env[key] = value
        return env

    def log_text(self, app_id: str, fd: str | None = None) -> str:
        """The concatenated output of an app (optionally one of "stdout"/"stderr"/"system")."""
        return "".join(e.data for e in self.logs.get(app_id, []) if fd is None or e.fd == fd)

    # ------------------------------------------------- internal (loop thread)

    def pulse(self) -> None:
        """Wake every coroutine waiting in `wait_change` (logs, outputs, app state changed)."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_change(self, timeout: float) -> None:
        event = self._changed
        try:
            await asyncio.wait_for(event.wait(), timeout=max(timeout, 0))
        except TimeoutError:
            pass

    def append_log(self, app_id: str, fd: str, data: str, **ids: str) -> None:
        entries = self.logs.setdefault(app_id, [])
        entries.append(LogEntry(len(entries) + 1, time.time(), fd, data, **ids))
        self.pulse()

    def record_error(self, text: str) -> None:
        self.errors.append(text)

    def put_blob(self, data: bytes) -> str:
        blob_id = new_id("bl")
        self.store.put_blob(blob_id, data)
        return blob_id

    def function_defs(self, function_id: str) -> Any:
        """The effective ``api_pb2.Function`` definition (variants have their options applied)."""
        return self._function_defs[function_id]

    def function_max_containers(self, function_id: str) -> int | None:
        limit = self.functions[function_id]["max_containers"]
        return int(limit) if limit else None

    def set_app_state(self, app_id: str, state: str) -> None:
        app = self.apps[app_id]
        app["state"] = state
        if state == "stopped" and app["stopped_at"] is None:
            app["stopped_at"] = time.time()
        self.pulse()

    async def stop_app(self, app_id: str) -> None:
        """Terminate every call of the app (SIGTERM, grace, SIGKILL), then mark it stopped."""
        if self.apps[app_id]["state"] == "stopped":
            return
        self.set_app_state(app_id, "stopping")
        await self.executor.stop_app_calls(app_id, "terminated")
        self.set_app_state(app_id, "stopped")

    def on_call_finished(self, app_id: str) -> None:
        """A detached app whose client has left stops once its last call is done."""
        app = self.apps[app_id]
        if app["state"] == "detached_disconnected" and not self.executor.active_calls(app_id):
            self.set_app_state(app_id, "stopped")

    def volume_by_id(self, volume_id: str) -> dict[str, Any] | None:
        """The volume record for an id; a volume known before a `reset` is re-registered."""
        name = self._known_volumes.get(volume_id)
        if name is None:
            return None
        if name not in self.volumes:
            self.register_volume(name, 0)
        return self.volumes[name]

    def register_volume(self, name: str, version: int) -> dict[str, Any]:
        """Create the record and directory of volume `name` if needed (version 0: v2)."""
        from modal_proto import api_pb2

        if name not in self.volumes:
            volume_id = stable_id("vo", name)
            self._known_volumes[volume_id] = name
            self.volumes[name] = {
                "volume_id": volume_id,
                "name": name,
                # Modal picks the default for unspecified versions; the fake always uses v2.
                "version": version or api_pb2.VOLUME_FS_VERSION_V2,
                "created_at": time.time(),
            }
        self.volume_path(name).mkdir(parents=True, exist_ok=True)
        return self.volumes[name]
