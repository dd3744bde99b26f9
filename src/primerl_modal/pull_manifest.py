"""What `prm pull` wrote into DEST, so a later pull tells prm's own copy (refreshed when the
run's file changes) from a file the user changed since (kept and reported).

It lives in DEST as ``.prm-pull.json`` and is replaced atomically. Losing it is safe: a file
with no entry is compared with the run's by content before anything replaces it. Each entry
keeps what the file was when prm wrote it (size, mtime, sha256), the version of the run's file
it copies (its mtime there), and the file's ctime and inode: while those two are unchanged the
file cannot have been written since, so a rerun need not read it again to know it is intact.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

NAME = ".prm-pull.json"
VERSION = 1


@dataclass(frozen=True)
class Entry:
    size: int
    mtime_ns: int
    sha256: str
    remote_mtime: float
    ctime_ns: int
    ino: int

    @classmethod
    def of(cls, stat: os.stat_result, sha256: str, remote_mtime: float) -> Entry:
        return cls(stat.st_size, stat.st_mtime_ns, sha256, remote_mtime, stat.st_ctime_ns,
                   stat.st_ino)

    def untouched(self, stat: os.stat_result) -> bool | None:
        """True: the file is as prm left it; False: it changed (size or mtime); None: only
        its content can tell (same size and mtime, but written or copied since)."""
        if (stat.st_size, stat.st_mtime_ns) != (self.size, self.mtime_ns):
            return False
        return True if (stat.st_ctime_ns, stat.st_ino) == (self.ctime_ns, self.ino) else None

    def copies(self, size: int, mtime: float) -> bool:
        """It is a copy of this version of the run's file."""
        return size == self.size and abs(mtime - self.remote_mtime) < 1e-3


class Manifest:
    def __init__(self, dest: Path) -> None:
        self.path = dest / NAME
        self.entries = _load(self.path)

    def get(self, key: str) -> Entry | None:
        return self.entries.get(key)

    def put(self, key: str, entry: Entry) -> None:
        self.entries[key] = entry

    def save(self) -> None:
        """Replace the manifest atomically. Raises OSError when DEST takes no file."""
        part = self.path.with_name(self.path.name + ".prm-part")
        data = {"version": VERSION,
                "files": {key: asdict(entry) for key, entry in self.entries.items()}}
        try:
            part.write_text(json.dumps(data, separators=(",", ":")))
            os.replace(part, self.path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                part.unlink()


def _load(path: Path) -> dict[str, Entry]:
    """The entries of a readable manifest; none for a missing, unreadable or foreign one (then
    every file is compared by content: slower, never wrong)."""
    try:
        data = json.loads(path.read_bytes())
        if data.get("version") != VERSION:
            return {}
        return {key: Entry(**fields) for key, fields in data["files"].items()}
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return {}
