"""`prm pull`'s engine: many transfers in flight, each file to a temporary name renamed when
complete, files already present (same size and time) skipped, nothing written outside DEST."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol, TypeVar

from primerl_modal.core.selection import RemoteFile, safe_dest

T = TypeVar("T")
WORKERS = 128
IN_MEMORY = 1 << 20  # files up to this size are fetched into memory: at most WORKERS at once
PART = ".prm-part"


class Source(Protocol):
    async def fetch(self, item: RemoteFile, out: IO[bytes],
                    progress: Callable[[int], None]) -> None: ...

    def run(self, main: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Run the transfer's event loop (a source may have a loop of its own to use)."""
        ...


@dataclass
class Outcome:
    path: str
    size: int
    status: str  # downloaded, present, refused, failed
    error: str | None = None

    def to_json(self) -> dict[str, object]:
        return {"path": self.path, "size": self.size, "status": self.status,
                **({"error": self.error} if self.error else {})}


def _present(target: str, item: RemoteFile) -> bool:
    try:
        stat = os.stat(target)
    except FileNotFoundError:
        return False
    return stat.st_size == item.size and abs(stat.st_mtime - item.mtime) < 1e-3


async def pull_files(source: Source, files: Iterable[RemoteFile] | AsyncIterator[RemoteFile],
                     dest: Path, on_bytes: Callable[[int], None],
                     on_file: Callable[[Outcome], None],
                     workers: int = WORKERS) -> list[Outcome]:
    """Fetch ``files`` into ``dest``; returns one outcome per file, in order. A stream of
    files (a listing still in progress) starts each download as soon as it is listed."""
    dest.mkdir(parents=True, exist_ok=True)
    base, root = str(dest), os.path.realpath(dest)
    gate = asyncio.Semaphore(workers)
    # Each folder is made and checked once, not once per file: (inside DEST, made by us).
    # Paths are plain strings here: this runs for every file of the pull.
    folders: dict[str, tuple[bool, bool]] = {}

    def folder_of(target: str) -> tuple[bool, bool]:
        # safe_dest rules out '..' and absolute paths; what is left is a symlink under DEST
        # pointing out of it, so resolving each folder once is enough.
        folder = os.path.dirname(target)
        known = folders.get(folder)
        if known is None:
            fresh = not os.path.exists(folder)
            os.makedirs(folder, exist_ok=True)
            real = os.path.realpath(folder)
            known = folders[folder] = (os.path.commonpath((real, root)) == root, fresh)
        return known

    async def one(item: RemoteFile) -> Outcome:
        target = os.path.join(base, item.dest)
        inside, fresh = folder_of(target) if safe_dest(item.dest) else (False, False)
        # In a folder this pull made, nothing can be there yet, let alone a symlink.
        if not inside or (not fresh and os.path.islink(target)):
            outcome = Outcome(item.dest, item.size, "refused", "path would leave DEST")
        elif not fresh and _present(target, item):
            outcome = Outcome(item.dest, item.size, "present")
        else:
            async with gate:
                outcome = await _download(source, item, target, on_bytes)
        on_file(outcome)
        return outcome

    if isinstance(files, AsyncIterator):
        tasks = [asyncio.ensure_future(one(f)) async for f in files]
        return list(await asyncio.gather(*tasks))
    return list(await asyncio.gather(*(one(f) for f in files)))


async def _download(source: Source, item: RemoteFile, target: str,
                    on_bytes: Callable[[int], None]) -> Outcome:
    part = target + PART
    try:
        if item.size <= IN_MEMORY:  # fetched whole, then written in one go
            buffer = io.BytesIO()
            await source.fetch(item, buffer, on_bytes)
            _write(part, buffer.getbuffer(), item.mtime)
        else:
            with open(part, "wb") as out:
                await source.fetch(item, out, on_bytes)
            os.utime(part, (item.mtime, item.mtime))
        os.replace(part, target)
    except BaseException as e:  # one file's failure is reported, the others go on
        with contextlib.suppress(FileNotFoundError):
            os.unlink(part)
        if not isinstance(e, Exception):  # cancelled (Ctrl-C): no part file left behind
            raise
        return Outcome(item.dest, item.size, "failed", f"{type(e).__name__}: {e}")
    return Outcome(item.dest, item.size, "downloaded")


def _write(path: str, data: memoryview, mtime: float) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0),
                 0o666)
    try:
        while data:
            data = data[os.write(fd, data):]
        if os.utime in os.supports_fd:
            os.utime(fd, (mtime, mtime))
    finally:
        os.close(fd)
    if os.utime not in os.supports_fd:
        os.utime(path, (mtime, mtime))
