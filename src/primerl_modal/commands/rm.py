"""`prm rm` and `prm prune`: delete a finished run's files, or its older checkpoints, after
showing what and how much. Storage on a Modal volume is billed: this is how it is reclaimed.
One module for both, since both confirm, refuse and report alike (core/cleanup decides
what goes)."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

import typer

from primerl_modal.ui import complete
from primerl_modal.ui.options import JsonOption, RunArg

if TYPE_CHECKING:
    from primerl_modal.backends.base import Backend
    from primerl_modal.core.cleanup import Checkpoint, Pruning
    from primerl_modal.run_index import RunIndex, RunRecord, SweepRecord
    from primerl_modal.ui.table import Column

# A controller records the end of its last trials within one of its ticks (1 s locally,
# 2 s on Modal); one that is gone never will.
SETTLE_S = 15.0

YesOption = Annotated[
    bool, typer.Option("--yes", "-y", help="Delete without asking (needed without a terminal, "
                                           "and with --json).")
]


@dataclass(frozen=True)
class Doomed:
    """A run about to be removed, and what its files hold."""

    record: RunRecord
    files: int
    bytes: int


DryRunOption = Annotated[
    bool, typer.Option("--dry-run", help="Show what would be deleted, and delete nothing.")
]


def rm(
    runs: Annotated[
        list[str] | None, typer.Argument(help="Run ids (or unique prefixes).",
                                         autocompletion=complete.run_ids)] = None,
    sweep: Annotated[
        str | None,
        typer.Option("--sweep", help="Remove every trial of this sweep (all must have "
                                     "ended), and the sweep itself.",
                     autocompletion=complete.sweep_ids),
    ] = None,
    yes: YesOption = False,
    dry_run: DryRunOption = False,
    json_out: JsonOption = False,
) -> None:
    """Delete finished runs: prime-rl's run directory and prm's _prm/RUN-ID/ (on the volume
    or in the local outputs), and their rows in the index. Shows the runs, their files and
    bytes first, and asks (default no); without a terminal, or with --json, --yes is
    needed. A run that has not ended is refused: stop it first.

    Examples:

    \b
      prm rm reverse-text-261129-103005-beef
      prm rm rev math --yes          # unique prefixes are enough
      prm rm --sweep lr-sweep-261129 --dry-run --json
    """
    from primerl_modal.core.cleanup import must_ask
    from primerl_modal.ui.table import emit

    ask = not dry_run and must_ask(yes, json_out, sys.stdin.isatty())
    index, found, records = _selected(runs, sweep)
    backends = _backends(index, [r.backend for r in records] + ([found.backend] if found else []))
    records = _finished(backends, records, found)
    if found and not dry_run:
        _settle(backends[found.backend], found)
    doomed = [Doomed(r, *_measure(backends[r.backend], r)) for r in records]
    if not json_out:
        emit(doomed, _run_columns(), json_out=False, empty="")
    if dry_run:
        _say(f"dry run: {_rm_what(doomed, found)} would go; nothing was deleted")
    else:
        index.require_writable("remove runs")
        _confirm(ask, f"delete {_rm_what(doomed, found)} for good?")
        _remove(index, backends, doomed, found)
        _say(f"removed {_plural(len(doomed), 'run')}" + (f" and sweep {found.sweep_id}"
                                                          if found else "") + _reclaimed(doomed))
    if json_out:
        emit(doomed, _run_columns(), json_out=True)


def prune(
    run: RunArg,
    keep_last: Annotated[
        int, typer.Option("--keep-last", min=1, show_default=False,
                          help="Keep the newest N complete checkpoints (at least 1).")],
    yes: YesOption = False,
    dry_run: DryRunOption = False,
    json_out: JsonOption = False,
) -> None:
    """Delete a finished run's older checkpoints (checkpoints/step_N/), keeping the newest
    N complete ones: never the newest complete one, which a resume starts from. Incomplete
    step folders (no trainer/.metadata: a save cut short) older than the newest complete
    one go too. Shows every checkpoint and what happens to it first, and asks (default
    no); without a terminal, or with --json, --yes is needed.

    Examples:

    \b
      prm prune math-8x-261129 --keep-last 1
      prm prune math-8x-261129 --keep-last 3 --dry-run
      prm prune math-8x-261129 --keep-last 3 --yes --json
    """
    from primerl_modal.backends import get_backend
    from primerl_modal.core.cleanup import checkpoints, choose_pruning, must_ask
    from primerl_modal.run_index import open_index
    from primerl_modal.ui.table import emit

    ask = not dry_run and must_ask(yes, json_out, sys.stdin.isatty())
    index = open_index()
    record = index.find(run)
    backend = get_backend(record.backend, index)
    (record,) = _finished({record.backend: backend}, [record], None)
    files, _ = backend.files(record)
    found = checkpoints(files, _shards(record))
    pruning = choose_pruning(found, keep_last)
    if not json_out:
        emit(found, _checkpoint_columns(pruning), json_out=False, empty="")
    freed = pruning.freed
    what = (f"{_steps(pruning.drop)} of {record.run_id} ({_plural(freed.files, 'file')}, "
            f"{_size(freed.bytes)} {_where(record)})")
    if not pruning.drop:
        _say(f"{record.run_id}: nothing to prune ({_kept(pruning, keep_last)})")
    elif dry_run:
        _say(f"dry run: {what} would go; nothing was deleted")
    else:
        _confirm(ask, f"delete {what}?")
        backend.remove_run_paths(record, [c.rel for c in pruning.drop])
        # the index's size of the run (prime-rl's directory) as it now is
        run_bytes = sum(f.size for f in files if not f.dest.startswith("_prm/"))
        index.update(record.run_id, size_bytes=run_bytes - freed.bytes)
        _say(f"{record.run_id}: deleted {_steps(pruning.drop)}, {_size(freed.bytes)} "
             f"reclaimed {_where(record)}")
    if json_out:
        emit(found, _checkpoint_columns(pruning), json_out=True)


def _remove(index: RunIndex, backends: dict[str, Backend], doomed: list[Doomed],
            sweep: SweepRecord | None) -> None:
    """Each run's files, then its row (a removal cut short is done again by the same
    command: what is gone is skipped); then the sweep's folder and its row."""
    for d in doomed:
        backends[d.record.backend].remove_run(d.record)
        index.delete(d.record.run_id)
    if sweep:
        backends[sweep.backend].remove_sweep(sweep)
        index.delete_sweep(sweep.sweep_id)


def _selected(runs: list[str] | None, sweep: str | None
              ) -> tuple[RunIndex, SweepRecord | None, list[RunRecord]]:
    """The index, the sweep if one is named, and the runs.

    Raises PrmError for a run or sweep the index does not have, UsageError for neither or
    both named.
    """
    from primerl_modal.errors import UsageError
    from primerl_modal.run_index import open_index

    if bool(runs) == bool(sweep):
        raise UsageError("name the runs to remove, or --sweep ID (not both)",
                         "see prm rm --help")
    index = open_index()
    if sweep:
        found = index.find_sweep(sweep)
        return index, found, index.list(sweep_id=found.sweep_id)
    unique = {r.run_id: r for r in map(index.find, runs or [])}  # a run named twice: once
    return index, None, list(unique.values())


def _backends(index: RunIndex, names: list[str]) -> dict[str, Backend]:
    from primerl_modal.backends import get_backend

    return {name: get_backend(name, index) for name in sorted(set(names))}


def _finished(backends: dict[str, Backend], records: list[RunRecord],
              sweep: SweepRecord | None) -> list[RunRecord]:
    """``records`` with their fresh status. Raises PrmError naming `prm stop` when one has
    not ended: its files are still being written."""
    from primerl_modal.core import status as st
    from primerl_modal.errors import PrmError

    fresh = {r.run_id: r for name, backend in backends.items()
             for r in backend.refresh([r for r in records if r.backend == name])}
    records = [fresh[r.run_id] for r in records]
    busy = [r for r in records if not st.is_final(r.status)]
    if not busy:
        return records
    listed = ", ".join(f"{r.run_id} is {r.status}" for r in busy[:5])
    listed += f" (and {len(busy) - 5} more)" if len(busy) > 5 else ""
    if sweep:
        raise PrmError(f"sweep {sweep.sweep_id} has not ended: {listed}",
                       f"stop it first with `prm stop --sweep {sweep.sweep_id}`")
    raise PrmError(f"{listed}: a run's files are deleted only once it has ended",
                   f"stop it first with `prm stop {' '.join(r.run_id for r in busy)}`")


def _settle(backend: Backend, sweep: SweepRecord) -> None:
    """Wait (at most SETTLE_S) until the sweep's controller has recorded every trial's end.
    It writes its state once more when it notices the last one, and that write would put
    the sweep's folder back after it is deleted; a controller that is gone never does, and
    then the folder goes anyway."""
    from primerl_modal.runner.state import json_object
    from primerl_modal.sweep_control import ENDED

    deadline, told = time.monotonic() + SETTLE_S, False
    while time.monotonic() < deadline:
        trials = (json_object(backend.read_sweep_meta(sweep, "state.json")) or {}).get("trials")
        if not isinstance(trials, list) or all(
                isinstance(t, dict) and t.get("state") == ENDED for t in trials):
            return
        if not told:
            _say(f"waiting (at most {SETTLE_S:g} s) for sweep {sweep.sweep_id}'s controller "
                 "to record the end of its trials")
            told = True
        time.sleep(0.5)


def _measure(backend: Backend, record: RunRecord) -> tuple[int, int]:
    """How many files the run has, and their bytes (listed as `prm pull` lists them)."""
    from primerl_modal.core.cleanup import footprint

    size = footprint(backend.files(record)[0])
    return size.files, size.bytes


def _shards(record: RunRecord) -> int | None:
    """A cluster's trainer ranks (each writes its own shard of a checkpoint), else None."""
    return record.trainer if record.trainer + record.inference > record.gpu_count else None


def _confirm(ask: bool, question: str) -> None:
    """Ask on the terminal (default no) when ``ask``; a no ends the command, exit 1."""
    if ask and not typer.confirm(question, default=False, err=True):
        _say("nothing was deleted")
        raise typer.Exit(1)


def _rm_what(doomed: list[Doomed], sweep: SweepRecord | None) -> str:
    """``sweep x: its record, its folder and 3 runs (120 files, 1.2 GB)``."""
    files, size = sum(d.files for d in doomed), sum(d.bytes for d in doomed)
    what = f"sweep {sweep.sweep_id}: its record, its folder and " if sweep else ""
    return (f"{what}{_plural(len(doomed), 'run')} ({_plural(files, 'file')}, "
            f"{_size(size)})")


def _reclaimed(doomed: list[Doomed]) -> str:
    """``, 1.2 GB reclaimed on Modal volume x (...)``, per outputs location."""
    places: dict[str, int] = {}
    for d in doomed:
        where = _where(d.record)
        places[where] = places.get(where, 0) + d.bytes
    return "".join(f", {_size(size)} reclaimed {where}" for where, size in places.items())


def _where(record: RunRecord) -> str:
    if record.backend == "modal":
        return f"on Modal volume {record.outputs} (volume storage is billed)"
    return f"in {record.outputs}"


def _kept(pruning: Pruning, keep_last: int) -> str:
    if not pruning.keep:
        return "it has no checkpoints"
    if not any(c.complete for c in pruning.keep):
        return "no complete checkpoint: an incomplete one goes only when a complete one is newer"
    return f"--keep-last {keep_last} keeps {_steps(pruning.keep)}"


def _steps(items: tuple[Checkpoint, ...]) -> str:
    noun = "checkpoint step" if len(items) == 1 else "checkpoint steps"
    return f"{noun} {', '.join(str(c.step) for c in items)}"


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _size(n: int) -> str:
    from primerl_modal.ui.runs import size_text

    return size_text(n)


def _say(text: str) -> None:
    from primerl_modal.ui import console

    console.err().print(text, markup=False, highlight=False)


def _run_columns() -> list[Column[Doomed]]:
    from primerl_modal.ui.table import Column

    return [
        Column("run_id", "run", lambda d: d.record.run_id),
        Column("status", "status", lambda d: d.record.status),
        Column("backend", "on", lambda d: d.record.backend),
        Column("outputs", "outputs", lambda d: d.record.outputs),
        Column("files", "files", lambda d: d.files, justify="right"),
        Column("bytes", "size", lambda d: d.bytes, _size, "right"),
    ]


def _checkpoint_columns(pruning: Pruning) -> list[Column[Checkpoint]]:
    from primerl_modal.ui.table import Column

    return [
        Column("path", "checkpoint", lambda c: c.rel),
        Column("step", "step", lambda c: c.step, justify="right"),
        Column("complete", "complete", lambda c: c.complete,
               lambda v: "yes" if v else "no (torn)"),
        Column("files", "files", lambda c: c.files, justify="right"),
        Column("bytes", "size", lambda c: c.bytes, _size, "right"),
        Column("action", "prune", lambda c: "delete" if c in pruning.drop else "keep",
               style=lambda v: "red" if v == "delete" else ""),
    ]
