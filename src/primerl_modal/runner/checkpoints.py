"""Which checkpoint a run resumes from, and how each dialect is told.

prime-rl writes `checkpoints/step_<N>/trainer` with torch distributed checkpointing, whose
`.metadata` file is written last: a step folder without it was cut off mid-write (a kill,
a preemption past its grace) and cannot be loaded. prime-rl's bare `--resume` takes the
highest step folder without looking, so prm names the newest complete one itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from primerl_modal.core.cleanup import DCP_METADATA

_STEP_DIR = re.compile(r"step_(\d+)")


def checkpoint_steps(run_dir: Path) -> dict[int, Path]:
    """Every `step_<N>` folder under the run's checkpoints, complete or not."""
    try:
        entries = list((run_dir / "checkpoints").iterdir())
    except OSError:
        return {}
    return {int(m.group(1)): p for p in entries
            if (m := _STEP_DIR.fullmatch(p.name)) and p.is_dir()}


def is_complete(step_dir: Path, shards: int | None = None) -> bool:
    """``.metadata`` is there (and, for a cluster's ``shards`` trainer ranks, every rank's
    ``__<rank>_0.distcp``: each trainer node writes and commits its own)."""
    trainer = step_dir / "trainer"
    if not (trainer / DCP_METADATA).is_file():
        return False
    return shards is None or all((trainer / f"__{r}_0.distcp").is_file() for r in range(shards))


def latest_complete(run_dir: Path, shards: int | None = None) -> int | None:
    steps = checkpoint_steps(run_dir)
    return max((n for n, p in steps.items() if is_complete(p, shards)), default=None)


def set_aside(run_dir: Path, steps: tuple[int, ...]) -> Path:
    """Move torn step folders out of `checkpoints/` (into `incomplete-checkpoints/`, kept,
    not deleted): prime-rl's bare `--resume` would pick the newest and fail to load it on
    every attempt."""
    aside = run_dir / "incomplete-checkpoints"
    aside.mkdir(exist_ok=True)
    for n in steps:
        target = aside / f"step_{n}"
        suffix = 1
        while target.exists():
            suffix += 1
            target = aside / f"step_{n}.{suffix}"
        (run_dir / "checkpoints" / f"step_{n}").rename(target)
    return aside


@dataclass(frozen=True)
class Resume:
    args: tuple[str, ...]
    step: int | None  # the checkpoint step resumed from (None: from the start)
    skipped: tuple[int, ...] = ()  # newer, incomplete step folders passed over


def resume_from(dialect: str, run_dir: Path, shards: int | None = None) -> Resume:
    """How this dialect continues from the newest complete checkpoint (never --clean);
    ``shards``: a cluster's trainer ranks, each of whose shards a complete one has."""
    steps = checkpoint_steps(run_dir)
    step = latest_complete(run_dir, shards)
    skipped = tuple(sorted(n for n in steps if step is None or n > step))
    if dialect == "current":
        # Bare --resume on a directory without a complete checkpoint: prime-rl starts over
        # (an incomplete newest folder would fail its load either way).
        args: tuple[str, ...] = ("--resume.step", str(step)) if step is not None else \
            ("--resume",)
    else:  # 2025-10: `--ckpt.resume-step N`; 0 would mean no resume, so none is passed then
        args = ("--ckpt.resume-step", str(step)) if step is not None else ()
    return Resume(args, step, skipped)
