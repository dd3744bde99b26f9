"""Which of a run's files `prm pull` fetches, where each lands under DEST, and the rules that
keep those paths safe to write and to print (pure)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from primerl_modal.errors import PrmError, UsageError

CATEGORIES = ("logs", "configs", "metrics", "checkpoints", "rollouts")
_STEP = re.compile(r"^checkpoints/step_(\d+)(/|$)")


@dataclass(frozen=True)
class RemoteFile:
    remote: str  # where the backend finds it
    dest: str  # relative path under DEST: the run dir's layout, prm's files under _prm/
    size: int
    mtime: float


def _parts(dest: str) -> list[str]:
    """A relative posix path's components, as PurePosixPath.parts gives them (no empty or
    '.' parts), without its cost: this runs once per listed file."""
    return [p for p in dest.split("/") if p and p != "."]


def category(dest: str) -> str:
    """logs, configs, metrics, checkpoints, rollouts, broadcasts or other."""
    parts = _parts(dest)
    if parts and parts[0] == "_prm":
        name = parts[1] if len(parts) > 1 else ""
        return {"logs": "logs", "inputs": "configs", "plan.json": "configs"}.get(name, "metrics")
    head = parts[0] if parts else ""
    if head in ("logs", "configs", "checkpoints", "rollouts", "broadcasts"):
        return head
    return "metrics" if head.endswith(".jsonl") else "other"


def checkpoint_step(dest: str) -> int | None:
    match = _STEP.match(dest)
    return int(match.group(1)) if match else None


def parse_only(text: str | None) -> frozenset[str] | None:
    """``logs,checkpoints`` -> that set. Raises UsageError for an unknown category."""
    if not text:
        return None
    wanted = frozenset(p.strip() for p in text.split(",") if p.strip())
    unknown = sorted(wanted - set(CATEGORIES))
    if unknown:
        raise UsageError(f"--only: unknown category {unknown[0]!r}",
                         f"choose from {', '.join(CATEGORIES)}")
    return wanted


def select(files: Iterable[RemoteFile], only: frozenset[str] | None,
           step: str | None) -> list[RemoteFile]:
    """The files to fetch. Without --only: everything but broadcasts/ (prime-rl's
    transient weight hand-offs). ``step`` = latest or N keeps one checkpoint.

    Raises PrmError for a --step that names no checkpoint the run has.
    """
    files = list(files)
    keep = [f for f in files if (category(f.dest) in only if only
                                 else category(f.dest) != "broadcasts")]
    if step is None:
        return keep
    steps = sorted({s for f in files if (s := checkpoint_step(f.dest)) is not None})
    if step == "latest":
        if not steps:
            raise PrmError("the run has no checkpoint yet", "drop --step, or wait for one")
        wanted = steps[-1]
    elif step.isdigit():
        wanted = int(step)
        if wanted not in steps:
            raise PrmError(f"the run has no checkpoint step {wanted}",
                           f"it has: {', '.join(map(str, steps)) or 'none'}")
    else:
        raise UsageError(f"--step {step!r}", "use --step latest or --step N")
    return [f for f in keep if checkpoint_step(f.dest) in (None, wanted)]


def safe_dest(dest: str) -> bool:
    """A relative path with no '..' and no absolute part: it cannot leave DEST."""
    return bool(dest) and not dest.startswith("/") and ".." not in _parts(dest) and \
        "\\" not in dest


def local_key(dest: str) -> str:
    """The path a file lands on under DEST, as the filesystem sees it: ``a//./b`` and
    ``a/b`` are one file, and two remote names with one key cannot both be written."""
    return "/".join(_parts(dest))


def within(path: str, folder: str) -> bool:
    """``path`` is ``folder`` or lies inside it (both absolute, normalised)."""
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def too_long(key: str, base_bytes: int, suffix: str, name_max: int,
             path_max: int) -> str | None:
    """Why ``key`` cannot be written under a DEST of ``base_bytes`` bytes on a filesystem of
    these limits (``suffix``: the temporary name's, which must fit too), or None."""
    raw = [part.encode(errors="surrogateescape") for part in key.split("/")]
    *folders, name = raw
    if len(name) + len(suffix) > name_max:
        return (f"name too long for the local filesystem ({len(name)} bytes; at most "
                f"{name_max - len(suffix)}, as prm writes it first as NAME{suffix})")
    longest = max(folders, key=len, default=b"")
    if len(longest) > name_max:
        return (f"folder name too long for the local filesystem ({len(longest)} bytes; at "
                f"most {name_max})")
    total = base_bytes + sum(len(part) + 1 for part in raw) + len(suffix)
    if total >= path_max:  # path_max counts the terminating NUL
        return (f"path too long for the local filesystem ({total} bytes with DEST; at most "
                f"{path_max - 1})")
    return None


def printable(text: str) -> str:
    """``text`` safe to print on a terminal: control and other invisible characters escaped
    as Python writes them (``\\x1b``), so a hostile file name cannot drive the terminal."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape",
                                                      "backslashreplace").decode("ascii")
                   for c in text)
