"""A container: what it is given (environment, volume copies, image files), its main process,
and every process it ever started.

Every process of a container carries ``FAKE_MODAL_TASK_ID=<task id>`` in its environment,
inherited by all its descendants, even those that leave the process group
(``start_new_session=True``). Killing the container SIGKILLs every process on the machine
whose ``/proc/<pid>/environ`` carries the marker (Linux only), as the end of a real container
takes all its processes with it. A descendant started with a scrubbed environment escapes.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .rpc import TASK_HEADER
from .volumes import ContainerVolumes

if TYPE_CHECKING:
    from .fake import FakeModal

TASK_MARKER = "FAKE_MODAL_TASK_ID"
KILL_DEADLINE_S = 10.0


def marked_pids(*task_ids: str) -> list[int]:
    """Live processes whose environment carries the marker of one of ``task_ids``."""
    markers = {f"{TASK_MARKER}={task_id}".encode() for task_id in task_ids}
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                environ = f.read()  # empty for a zombie: it is dead already
        except OSError:  # gone, or another user's
            continue
        if not markers.isdisjoint(environ.split(b"\0")):
            pids.append(int(name))
    return pids


async def kill_marked(task_id: str) -> None:
    """SIGKILL every process of the container until none is left (one may fork meanwhile)."""
    deadline = time.monotonic() + KILL_DEADLINE_S
    while (pids := marked_pids(task_id)) and time.monotonic() < deadline:
        for pid in pids:
            _kill(pid, signal.SIGKILL)
        await asyncio.sleep(0.01)


def _kill(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class _Protocol(asyncio.subprocess.SubprocessStreamProtocol):
    """Tells when the main process exits. asyncio's ``Process.wait`` only returns once its
    output pipes are closed too, which a process it started may hold open long after."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(limit=2**16, loop=loop)
        self.exited = asyncio.Event()

    def process_exited(self) -> None:
        super().process_exited()
        self.exited.set()


@dataclass
class Container:
    task_id: str
    process: asyncio.subprocess.Process
    exited: asyncio.Event  # the main process has exited (its returncode is known)
    volumes: ContainerVolumes

    @classmethod
    async def start(
        cls, task_id: str, volumes: ContainerVolumes, *argv: str, **popen: Any
    ) -> Container:
        """Start the main process (``argv``, with asyncio's subprocess keyword arguments)."""
        loop = asyncio.get_running_loop()
        protocol = _Protocol(loop)
        transport, _ = await loop.subprocess_exec(lambda: protocol, *argv, **popen)
        process = asyncio.subprocess.Process(transport, protocol, loop)
        return cls(task_id, process, protocol.exited, volumes)

    def signal_main(self, sig: signal.Signals) -> None:
        """What Modal's worker does: signal the container's main process (its children are
        its business)."""
        if not self.exited.is_set():
            _kill(self.process.pid, sig)

    async def wait_exit(self, timeout: float, give_up: asyncio.Event) -> bool:
        """Whether the main process exited within ``timeout`` (and before ``give_up``)."""
        waits = {asyncio.ensure_future(self.exited.wait()), asyncio.ensure_future(give_up.wait())}
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        for waiting in waits:
            waiting.cancel()
        return self.exited.is_set()

    async def kill(self) -> None:
        """End the container: SIGKILL its process group and every process with its marker."""
        signal_group(self.process.pid, signal.SIGKILL)
        await kill_marked(self.task_id)
        await self.exited.wait()


def volume_copies(fake: FakeModal, function_id: str, task_id: str) -> ContainerVolumes:
    """The (not yet seeded) copies of the volumes a container of the function mounts."""
    mounts = {}
    for m in fake.function_defs(function_id).volume_mounts:
        volume = fake.volume_by_id(m.volume_id)
        if volume is not None:
            mounts[m.mount_path] = volume["name"]
    scratch = fake.root / "_fake_modal"
    return ContainerVolumes(
        scratch / "tasks" / task_id, mounts, fake.volume_path, scratch / "staging"
    )


def container_env(
    fake: FakeModal, function_id: str, task_id: str, call_id: str, mounts: dict[str, str]
) -> dict[str, str]:
    """Environment of a function body: ours, the image's ENV, secrets, then test extras.
    ``mounts`` maps each mount path to the container's local copy of the volume."""
    definition = fake.function_defs(function_id)
    env = dict(os.environ)
    env.update(fake.env())
    env.update(fake.image_env(definition.image_id))
    for secret_id in definition.secret_ids:
        secret = fake._secret_objects[secret_id]
        env.update(fake.secrets.get(secret["name"], {}) if secret["name"] else secret["env"])
    env.update(fake.extra_env)
    env.update({var: mounts[path] for var, path in fake.mount_env.items() if path in mounts})
    container_root = _materialize_mounts(fake, function_id)
    python_path = [str(container_root / "root")] + [p for p in [env.get("PYTHONPATH")] if p]
    env.update(
        {
            "FAKE_MODAL_MOUNTS": json.dumps(mounts),
            "FAKE_MODAL_ROOT": str(container_root),
            TASK_MARKER: task_id,  # inherited by every process of the container
            # Its modal client sends this header with every request: the server knows
            # which container a VolumeCommit or VolumeReload comes from.
            "MODAL_OVERRIDE_HEADERS": f"{TASK_HEADER}:{task_id}",
            "MODAL_IS_REMOTE": "1",
            "MODAL_CLOUD_PROVIDER": _cloud_provider(definition.cloud_provider_str),
            "MODAL_TASK_ID": task_id,
            "MODAL_IMAGE_ID": definition.image_id,
            "MODAL_FUNCTION_CALL_ID": call_id,
            "PYTHONPATH": os.pathsep.join(python_path),
            "PYTHONUNBUFFERED": "1",
        }
    )
    # Containers authenticate without user tokens; keeping them would make modal warn.
    env.pop("MODAL_TOKEN_ID", None)
    env.pop("MODAL_TOKEN_SECRET", None)
    return env


def _cloud_provider(cloud: str) -> str:
    """``MODAL_CLOUD_PROVIDER``, set in every Modal container (``CLOUD_PROVIDER_AWS``, ...):
    the cloud asked for, or AWS when Modal picks."""
    known = cloud.upper() in ("AWS", "GCP", "OCI")
    return f"CLOUD_PROVIDER_{cloud.upper() if known else 'AWS'}"


def _materialize_mounts(fake: FakeModal, function_id: str) -> Path:
    """Write the function's mounts (local dirs, python sources) under one container root."""
    container_root = fake.root / "_fake_modal" / "containers" / function_id
    if container_root.exists():
        return container_root
    for mount_id in fake.functions[function_id]["mount_ids"]:
        mount = fake.mounts.get(mount_id, {"files": {}})  # e.g. a named mount from before reset
        for filename, sha256_hex in mount["files"].items():
            data = fake.store.get_content(sha256_hex)
            if data is None:
                continue
            target = container_root / filename.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
    (container_root / "root").mkdir(parents=True, exist_ok=True)
    return container_root
