"""What `prm rm` and `prm prune` may delete, chosen from a run's file listing (pure).

Deleting is the one thing prm does that cannot be undone, so the rules sit here, apart from
the backends that carry them out: which paths are a run's own (a damaged index row must
never turn into "the whole volume"), which checkpoints a prune takes (never the newest
complete one, which a resume needs), and when a command may delete without asking.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from primerl_modal.core.plan import META_DIR
from primerl_modal.core.run_id import is_run_id
from primerl_modal.core.selection import RemoteFile, checkpoint_step
from primerl_modal.errors import PrmError, UsageError

# prime-rl saves `checkpoints/step_<N>/trainer` with torch distributed checkpointing, whose
# `.metadata` comes last (runner/checkpoints.py: the same rule decides what a resume uses).
DCP_METADATA = ".metadata"


def own_paths(run_id: str) -> tuple[str, str]:
    """A run's folders, relative to its outputs: prime-rl's run directory, then prm's
    `_prm/<run-id>` (last: its plan.json is what `prm ls --all` finds a run by, so a removal
    cut short can still be found and done again).

    Raises PrmError for a run id that is not one (it would name some other folder).
    """
    return _checked_id(run_id), f"{META_DIR}/{run_id}"


def sweep_path(sweep_id: str) -> str:
    """A sweep's own folder, relative to its outputs. Raises PrmError as own_paths does."""
    return f"{META_DIR}/sweeps/{_checked_id(sweep_id)}"


def _checked_id(text: str) -> str:
    if not is_run_id(text):
        raise PrmError(f"{text!r} is not a run or sweep id: refusing to delete by it",
                       "its row in the run index is damaged; nothing was deleted")
    return text


def inside_run(rel: str) -> str:
    """``rel``, a path inside a run's directory, normalized (``a/b``).

    Raises PrmError for one that is empty, absolute or climbs out (``..``).
    """
    parts = [p for p in rel.split("/") if p and p != "."]
    if rel.startswith("/") or not parts or ".." in parts:
        raise PrmError(f"{rel!r} is not a path inside the run's directory: refusing to "
                       "delete it")
    return "/".join(parts)


@dataclass(frozen=True)
class Footprint:
    files: int
    bytes: int


def footprint(files: Iterable[RemoteFile]) -> Footprint:
    """How many files, and how many bytes they hold."""
    count = size = 0
    for f in files:
        count += 1
        size += f.size
    return Footprint(count, size)


@dataclass(frozen=True)
class Checkpoint:
    name: str  # the folder's own name under checkpoints/ (`step_8`)
    step: int
    complete: bool
    files: int
    bytes: int

    @property
    def rel(self) -> str:
        return f"checkpoints/{self.name}"


def checkpoints(files: Iterable[RemoteFile], shards: int | None = None) -> list[Checkpoint]:
    """The run's `checkpoints/step_<N>` folders, oldest first, from its listing (paths as
    `prm pull` writes them). Complete: `trainer/.metadata` is there and, for a cluster's
    ``shards`` trainer ranks, every rank's `trainer/__<rank>_0.distcp`."""
    found: dict[str, tuple[int, list[RemoteFile]]] = {}
    for f in files:
        step = checkpoint_step(f.dest)
        if step is not None:
            name = f.dest.split("/")[1]
            found.setdefault(name, (step, []))[1].append(f)
    out = []
    for name, (step, items) in found.items():
        trainer = {f.dest.removeprefix(f"checkpoints/{name}/trainer/") for f in items}
        needed = {DCP_METADATA, *(f"__{r}_0.distcp" for r in range(shards or 0))}
        size = footprint(items)
        out.append(Checkpoint(name, step, needed <= trainer, size.files, size.bytes))
    return sorted(out, key=lambda c: (c.step, c.name))


@dataclass(frozen=True)
class Pruning:
    keep: tuple[Checkpoint, ...]
    drop: tuple[Checkpoint, ...]

    @property
    def freed(self) -> Footprint:
        return Footprint(sum(c.files for c in self.drop), sum(c.bytes for c in self.drop))


def choose_pruning(found: Sequence[Checkpoint], keep_last: int) -> Pruning:
    """The newest ``keep_last`` complete checkpoints stay, and so does every step folder
    newer than the newest complete one (a torn save: nothing older is worth less); older
    complete ones and incomplete ones older than the newest complete one go.

    Raises UsageError for ``keep_last`` below 1: the newest complete checkpoint always stays.
    """
    if keep_last < 1:
        raise UsageError(f"--keep-last must be at least 1, got {keep_last}",
                         "the newest complete checkpoint is what a resume starts from")
    complete = [c for c in found if c.complete]
    kept = set(complete[-keep_last:])
    newest = complete[-1].step if complete else None
    drop = tuple(c for c in found if newest is not None and c not in kept and c.step <= newest)
    return Pruning(tuple(c for c in found if c not in drop), drop)


def must_ask(yes: bool, json_out: bool, terminal: bool) -> bool:
    """Whether to ask before deleting: on a terminal, unless ``--yes``.

    Raises UsageError without a terminal, or under ``--json``, when ``--yes`` is missing:
    nothing is deleted unasked, and a program is never left waiting on a prompt.
    """
    if yes:
        return False
    if json_out:
        raise UsageError("under --json nothing is deleted without --yes",
                         "add --yes to delete (nothing was deleted)")
    if not terminal:
        raise UsageError("there is no terminal to ask on before deleting",
                         "add --yes to delete without asking (nothing was deleted)")
    return True
