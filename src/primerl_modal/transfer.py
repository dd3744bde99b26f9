"""`prm pull`'s engine: many transfers in flight, each file to a temporary name renamed when
complete, nothing written outside DEST nor into the run's own folders, and nothing the user
changed in DEST replaced (pull_manifest says what prm wrote there)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import io
import os
import stat
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol, TypeVar

from primerl_modal.core.selection import (
    RemoteFile,
    local_key,
    printable,
    safe_dest,
    too_long,
    within,
)
from primerl_modal.errors import PrmError
from primerl_modal.pull_manifest import NAME as MANIFEST
from primerl_modal.pull_manifest import Entry, Manifest

T = TypeVar("T")
WORKERS = 128
IN_MEMORY = 1 << 20  # files up to this size are fetched into memory: at most WORKERS at once
PART = ".prm-part"
OWN_OUTPUTS = "it would write into the run's own outputs"


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
    status: str  # downloaded, present, modified (kept as the user left it), refused, failed
    error: str | None = None

    def to_json(self) -> dict[str, object]:
        return {"path": self.path, "size": self.size, "status": self.status,
                **({"error": self.error} if self.error else {})}


def prepare_dest(dest: Path, protected: Sequence[str]) -> None:
    """Make DEST a folder prm can write into, before anything is listed or written.

    ``protected``: real paths of the run's own folders on this machine: a DEST that is one of
    them, or lies inside one, would replace the run's files with copies of themselves (under
    a live run, its logs go on into deleted files).

    Raises PrmError for such a DEST, and for one that is a file or cannot be made or written.
    """
    shown = printable(str(dest))
    real = os.path.realpath(dest)
    for place in protected:
        if within(real, place):
            raise PrmError(f"{shown} is inside the run's own outputs ({printable(place)})",
                           "pull into another folder, e.g. ./pulled/RUN-ID")
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except FileExistsError:  # a file, or a device such as /dev/null
        raise PrmError(f"{shown} exists and is not a folder",
                       "name a folder (it is made if missing)") from None
    except NotADirectoryError:
        blocker = next((p for p in dest.absolute().parents if p.exists() and not p.is_dir()),
                       dest)
        raise PrmError(f"cannot make {shown}: {printable(str(blocker))} is not a folder",
                       "name a folder (it is made if missing)") from None
    except OSError as e:
        raise PrmError(f"cannot make {shown}: {e.strerror}", "name another folder") from None
    if not os.access(dest, os.W_OK | os.X_OK):
        raise PrmError(f"cannot write into {shown}: permission denied", "name another folder")


async def pull_files(source: Source, files: Iterable[RemoteFile] | AsyncIterator[RemoteFile],
                     dest: Path, on_bytes: Callable[[int], None],
                     on_file: Callable[[Outcome], None], workers: int = WORKERS, *,
                     overwrite: bool = False, protected: Sequence[str] = ()) -> list[Outcome]:
    """Fetch ``files`` into ``dest`` (a folder: prepare_dest); returns one outcome per file,
    in order. A stream of files (a listing still in progress) starts each download as soon
    as it is listed. ``overwrite`` replaces files changed in DEST since prm wrote them;
    ``protected`` as for prepare_dest (DEST may hold them: a file landing in one is refused).
    """
    pull = _Pull(source, dest, on_bytes, workers, overwrite, protected)

    async def one(item: RemoteFile) -> Outcome:
        outcome = await pull.one(item)
        on_file(outcome)
        return outcome

    try:
        if isinstance(files, AsyncIterator):
            tasks = [asyncio.ensure_future(one(f)) async for f in files]
            return list(await asyncio.gather(*tasks))
        return list(await asyncio.gather(*(one(f) for f in files)))
    finally:  # interrupted too: what was written is recorded
        with contextlib.suppress(OSError):  # a DEST that takes no file got no file either
            pull.manifest.save()


class _Pull:
    def __init__(self, source: Source, dest: Path, on_bytes: Callable[[int], None],
                 workers: int, overwrite: bool, protected: Sequence[str]) -> None:
        self.source, self.on_bytes, self.overwrite = source, on_bytes, overwrite
        self.protected = protected
        # Paths are plain strings here: this runs for every file of the pull.
        self.base, self.root = os.path.abspath(dest), os.path.realpath(dest)
        self.base_bytes = len(os.fsencode(self.base))
        self.name_max = _limit(self.base, "PC_NAME_MAX", 255)
        self.path_max = _limit(self.base, "PC_PATH_MAX", 4096)
        self.gate = asyncio.Semaphore(workers)
        self.manifest = Manifest(dest)
        self.names = _Names()
        # Each folder is made and checked once, not once per file: (refusal, made by us).
        self.folders: dict[str, tuple[str | None, bool]] = {}

    async def one(self, item: RemoteFile) -> Outcome:
        key = local_key(item.dest)
        if not safe_dest(item.dest):
            return Outcome(item.dest, item.size, "refused", "path would leave DEST")
        if key == MANIFEST or key.endswith(PART):
            return Outcome(item.dest, item.size, "refused", "a name prm keeps for its own "
                                                            "files in DEST")
        reason = too_long(key, self.base_bytes, PART, self.name_max, self.path_max)
        if reason:
            return Outcome(item.dest, item.size, "failed", reason)
        reason = self.names.claim(key, item.remote)
        if reason:
            return Outcome(item.dest, item.size, "refused", reason)
        target = os.path.join(self.base, key)
        try:
            refusal, fresh = self.folder_of(target)
        except (OSError, ValueError) as e:
            return Outcome(item.dest, item.size, "failed", f"cannot make its folder: {e}")
        if refusal:
            return Outcome(item.dest, item.size, "refused", refusal)
        if fresh:  # in a folder this pull made, nothing can be there yet
            return await self.download(item, key, target)
        return await self.update(item, key, target)

    def folder_of(self, target: str) -> tuple[str | None, bool]:
        folder = os.path.dirname(target)
        known = self.folders.get(folder)
        if known is None:
            # safe_dest rules out '..' and absolute paths; what is left is a symlink under
            # DEST pointing out of it (or into the run's folders), so resolving each folder
            # once, before making it, is enough.
            real = os.path.realpath(folder)
            refusal = ("path would leave DEST" if not within(real, self.root) else
                       OWN_OUTPUTS if any(within(real, p) for p in self.protected) else None)
            fresh = refusal is None and not os.path.exists(folder)
            if refusal is None:
                os.makedirs(folder, exist_ok=True)
            known = self.folders[folder] = (refusal, fresh)
        return known

    async def update(self, item: RemoteFile, key: str, target: str) -> Outcome:
        """A file that may already be in DEST: kept when prm's copy is current, or when the
        user changed it (unless --overwrite); compared first when prm did not write it."""
        try:
            st = os.lstat(target)
        except FileNotFoundError:
            return await self.download(item, key, target)
        if stat.S_ISLNK(st.st_mode):
            return Outcome(item.dest, item.size, "refused", "path would leave DEST")
        if not stat.S_ISREG(st.st_mode):
            return Outcome(item.dest, item.size, "failed", "DEST has a folder of that name")
        entry = self.manifest.get(key)
        if entry is None:
            if self.overwrite:
                return await self.download(item, key, target)
            if st.st_size != item.size:
                return _modified(item, "not written by prm, and differs from the run's file")
            return await self.compare(item, key, target)
        if not await self.intact(key, target, st, entry):
            if self.overwrite:
                return await self.download(item, key, target)
            return _modified(item, "changed in DEST since prm wrote it")
        if entry.copies(item.size, item.mtime):
            return Outcome(item.dest, item.size, "present")
        return await self.download(item, key, target)  # the run's file changed since

    async def intact(self, key: str, target: str, st: os.stat_result, entry: Entry) -> bool:
        untouched = entry.untouched(st)
        if untouched is None:  # same size and mtime: only the content tells
            untouched = await _sha256_of(target, st.st_size) == entry.sha256
            if untouched:  # remember the new ctime and inode: no need to read it next time
                self.manifest.put(key, Entry.of(st, entry.sha256, entry.remote_mtime))
        return untouched

    async def download(self, item: RemoteFile, key: str, target: str) -> Outcome:
        part = target + PART
        try:
            async with self.gate:
                digest = await _fetch(self.source, item, part, self.on_bytes)
            os.replace(part, target)
            self.manifest.put(key, Entry.of(os.stat(target), digest, item.mtime))
        except BaseException as e:  # one file's failure is reported, the others go on
            return _failed(item, part, e)
        return Outcome(item.dest, item.size, "downloaded")

    async def compare(self, item: RemoteFile, key: str, target: str) -> Outcome:
        """A file prm did not write, of the run's file's size: the run's copy is fetched
        aside and the file in DEST kept; it is present if the two are the same."""
        part = target + PART
        try:
            async with self.gate:  # its bytes are not progress: the file is not replaced
                digest = await _fetch(self.source, item, part, lambda n: None)
            os.unlink(part)
            if await _sha256_of(target, item.size) != digest:
                return _modified(item, "not written by prm, and differs from the run's file")
            self.manifest.put(key, Entry.of(os.stat(target), digest, item.mtime))
        except BaseException as e:
            return _failed(item, part, e)
        return Outcome(item.dest, item.size, "present")


class _Names:
    """The local paths this pull's files claimed, and the folders those need: two remote
    names for one local path are refused by name, never written over each other."""

    def __init__(self) -> None:
        self.files: dict[str, str] = {}
        self.folders: dict[str, str] = {}

    def claim(self, key: str, remote: str) -> str | None:
        """None when ``key`` is free (now claimed by ``remote``), else why it is not."""
        if key in self.files:
            return f"same local path as {self.files[key]!r}, listed before it"
        if key in self.folders:
            return f"a folder of that name holds {self.folders[key]!r}, listed before it"
        folders = _folders(key)
        for folder in folders:
            if folder in self.files:
                return f"{folder!r} is the file {self.files[folder]!r}, listed before it"
        self.files[key] = remote
        for folder in folders:
            self.folders.setdefault(folder, remote)
        return None


def _folders(key: str) -> list[str]:
    """``a/b/c`` -> ``a``, ``a/b``."""
    found, at = [], key.find("/")
    while at != -1:
        found.append(key[:at])
        at = key.find("/", at + 1)
    return found


def _limit(path: str, name: str, default: int) -> int:
    try:
        return os.pathconf(path, name)
    except (OSError, ValueError):
        return default


def _modified(item: RemoteFile, why: str) -> Outcome:
    return Outcome(item.dest, item.size, "modified", f"{why}; --overwrite replaces it")


def _failed(item: RemoteFile, part: str, e: BaseException) -> Outcome:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(part)
    if not isinstance(e, Exception):  # cancelled (Ctrl-C): no part file left behind
        raise e
    if isinstance(e, OSError) and e.errno == errno.ENAMETOOLONG:  # a limit pathconf missed
        return Outcome(item.dest, item.size, "failed", "name too long for the local filesystem")
    return Outcome(item.dest, item.size, "failed", f"{type(e).__name__}: {e}")


async def _fetch(source: Source, item: RemoteFile, part: str,
                 on_bytes: Callable[[int], None]) -> str:
    """The run's file written to ``part`` with its mtime; returns its sha256."""
    if item.size <= IN_MEMORY:  # fetched whole, then written in one go
        buffer = io.BytesIO()
        await source.fetch(item, buffer, on_bytes)
        data = buffer.getbuffer()
        _write(part, data, item.mtime)
        return hashlib.sha256(data).hexdigest()
    with open(part, "wb") as out:  # blocks may land out of order: hashed once complete
        await source.fetch(item, out, on_bytes)
    os.utime(part, (item.mtime, item.mtime))
    return await _sha256_of(part, item.size)


async def _sha256_of(path: str, size: int) -> str:
    if size <= IN_MEMORY:
        return _sha256_file(path)
    return await asyncio.to_thread(_sha256_file, path)


def _sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(IN_MEMORY):
            digest.update(chunk)
    return digest.hexdigest()


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
