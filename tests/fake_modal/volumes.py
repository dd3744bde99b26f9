"""Volumes as Modal keeps them: one committed state, and a working copy in every container.

``FakeModal.volume_path(name)`` holds the committed state: what the client lists, reads,
uploads and removes, and what tests read. Each container gets its own copy of every volume it
mounts, seeded from the committed state when it starts. It sees its own writes at once and
nobody else's: `ContainerVolumes.commit` (a ``VolumeCommit`` from the container) publishes the
files and directories it created, changed or deleted since its last commit or reload, the last
writer winning per file as Modal documents; `ContainerVolumes.reload` publishes too (Modal
says a reload may commit pending changes), then refreshes the copy from the committed state.

A container whose main process ends by itself is committed at shutdown, as Modal does; one the
fake kills (grace expired, timeout, terminated, app stopped) loses what it had not committed.
Modal also commits in the background every few seconds; the fake never does, so it is
stricter than Modal there: only an explicit commit or a clean exit publishes anything.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

# ("dir",), ("link", target) or ("file", size, sha256 hex): equal entries, same content.
Entry = tuple[str, ...]


def scan(root: Path) -> dict[str, Entry]:
    """Every directory, symlink and regular file under ``root``, by relative posix path."""
    entries: dict[str, Entry] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            entry = _entry(path)
            if entry is not None:
                entries[path.relative_to(root).as_posix()] = entry
    return entries


def _entry(path: Path) -> Entry | None:
    """None for a path that vanished while being looked at, or a fifo/socket (never published)."""
    try:
        mode = os.lstat(path).st_mode
        if stat.S_ISLNK(mode):
            return ("link", os.readlink(path))
        if stat.S_ISDIR(mode):
            return ("dir",)
        if not stat.S_ISREG(mode):
            return None
        with path.open("rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        return ("file", str(os.path.getsize(path)), digest)
    except FileNotFoundError:
        return None


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.is_dir():
        shutil.rmtree(path, ignore_errors=True)


def _make_dir(path: Path) -> None:
    """``mkdir -p``, replacing any file that stands where a directory must be."""
    if path.is_dir() and not path.is_symlink():
        return
    _make_dir(path.parent)
    if path.is_symlink() or path.exists():
        path.unlink()
    path.mkdir()


def _place(src_root: Path, dst_root: Path, rel: str, entry: Entry, staging: Path) -> None:
    """Make ``dst_root/rel`` what ``src_root/rel`` is. Files land whole (written aside, then
    renamed): a block read of the committed state never sees half a file."""
    dst = dst_root / rel
    if entry[0] == "dir":
        _make_dir(dst)
        return
    _make_dir(dst.parent)
    if entry[0] == "link":
        _remove(dst)
        os.symlink(entry[1], dst)
        return
    fd, tmp = tempfile.mkstemp(dir=staging)
    os.close(fd)
    try:
        shutil.copy2(src_root / rel, tmp)
        if dst.is_dir() and not dst.is_symlink():
            shutil.rmtree(dst)
        os.replace(tmp, dst)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _unpublish(root: Path, rel: str, entry: Entry) -> None:
    """Delete what a container deleted; a directory only once empty (others may have
    committed files into it)."""
    path = root / rel
    if entry[0] == "dir":
        if path.is_dir() and not path.is_symlink():
            try:
                path.rmdir()
            except OSError:
                pass
    elif path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)


class ContainerVolumes:
    """The working copies of one container's mounted volumes, under ``home/<volume name>``."""

    def __init__(
        self,
        home: Path,
        mounts: dict[str, str],
        committed: Callable[[str], Path],
        staging: Path,
    ) -> None:
        self.mounts = mounts  # mount path -> volume name
        self._home = home
        self._committed = committed
        self._staging = staging
        self._copies = {name: home / name for name in mounts.values()}
        self._base: dict[str, dict[str, Entry]] = {}  # the copy as of its last commit or reload

    def seed(self) -> None:
        """Copy each volume's committed state into the container, as a container starts."""
        self._staging.mkdir(parents=True, exist_ok=True)
        for name, copy in self._copies.items():
            committed = self._committed(name)
            committed.mkdir(parents=True, exist_ok=True)
            shutil.copytree(committed, copy, symlinks=True)
            self._base[name] = scan(copy)

    def local_mounts(self) -> dict[str, str]:
        """Mount path -> the local directory standing in for it in this container."""
        return {mount: str(self._copies[name]) for mount, name in self.mounts.items()}

    def mounts_volume(self, name: str) -> bool:
        return name in self._copies

    def commit(self, name: str) -> None:
        """Publish the changes of the copy since its last commit or reload."""
        copy, committed, base = self._copies[name], self._committed(name), self._base[name]
        current = scan(copy)
        for rel in sorted(current):  # parents before their contents
            if base.get(rel) != current[rel]:
                try:
                    _place(copy, committed, rel, current[rel], self._staging)
                except FileNotFoundError:  # deleted by the container meanwhile: not published
                    current.pop(rel)
        for rel in sorted(base.keys() - current.keys(), reverse=True):  # contents first
            _unpublish(committed, rel, base[rel])
        self._base[name] = current

    def reload(self, name: str) -> None:
        """Publish the copy's changes, then make the copy the committed state."""
        self.commit(name)
        copy, committed = self._copies[name], self._committed(name)
        target, current = scan(committed), self._base[name]
        for rel in sorted(current.keys() - target.keys(), reverse=True):
            _remove(copy / rel)
        for rel in sorted(target):
            if current.get(rel) != target[rel]:
                _place(committed, copy, rel, target[rel], self._staging)
        self._base[name] = scan(copy)

    def commit_all(self) -> None:
        for name in self._copies:
            self.commit(name)

    def remove(self) -> None:
        """Drop the copies (the container is gone)."""
        shutil.rmtree(self._home, ignore_errors=True)
