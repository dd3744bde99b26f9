"""Which local processes are provably a run's own, before prm signals any of them.

A pid in a status file may belong to another process by the time it is read (the run's
process died and the pid was reused, the machine rebooted). prm signals a recorded process
only when it can prove it is the one recorded: the same start time on the same boot, and
the run's own marker (its run id in the environment prm gave it, or its plan in the command
line). What cannot be proven is left alone. Linux only: elsewhere nothing is provable, so
nothing is signalled.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

RUN_ENV = "PRM_RUN_ID"  # set in the launcher's environment, inherited by its children


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (which may hold spaces)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rfind(")") + 2:].split()


def start_ticks(pid: int) -> int | None:
    fields = _stat(pid)
    return int(fields[19]) if fields and len(fields) > 19 else None  # field 22: starttime


def identity(pid: int) -> dict[str, Any]:
    """What proves, later, that a pid is still this process (empty where unknowable)."""
    start = start_ticks(pid)
    return {"pid": pid, "start": start, "boot": _boot_id()} if start is not None else \
        {"pid": pid}


def same_process(recorded: Mapping[str, Any]) -> bool:
    """Whether the recorded process still runs: same pid, start time and boot."""
    pid = recorded.get("pid")
    if not isinstance(pid, int) or pid <= 0 or recorded.get("start") is None:
        return False
    return start_ticks(pid) == recorded["start"] and _boot_id() == recorded.get("boot")


def carries(pid: int, marker: bytes) -> bool:
    """Whether the process's environment or command line holds ``marker``."""
    for name in ("environ", "cmdline"):
        with contextlib.suppress(OSError):
            if marker in Path(f"/proc/{pid}/{name}").read_bytes():
                return True
    return False


def run_marker(run_id: str) -> bytes:
    return f"{RUN_ENV}={run_id}\0".encode()


def group_members(pgid: int) -> list[int]:
    """Live processes of a process group (zombies are gone already: nothing to signal)."""
    members = []
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else []:
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields and len(fields) > 2 and fields[2] == str(pgid) and fields[0] != "Z":
                members.append(int(entry.name))
    return members


def _group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def end_run_group(pgid: int | None, run_id: str, wait_s: float = 3.0) -> bool:
    """SIGTERM, then SIGKILL, the launcher's process group, only if every live process in
    it carries the run's marker; whether anything of the group is left."""
    if not pgid:
        return False
    marker = run_marker(run_id)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        members = group_members(pgid)
        if members and not all(carries(pid, marker) for pid in members):
            return True  # not provably the run's: touch nothing
        if members:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, sig)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and _group_exists(pgid):  # until reaped, too
            time.sleep(0.05)
        if not _group_exists(pgid):
            return False
    return _group_exists(pgid)
