"""`prm pull`: download a run's files, many at once, resumably, never outside DEST, never
into the run's own folders, never over a file the user changed."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from primerl_modal.ui.options import JsonOption, RunArg

if TYPE_CHECKING:
    from primerl_modal.core.selection import RemoteFile
    from primerl_modal.run_index import RunRecord
    from primerl_modal.transfer import Outcome

SHOWN = {"downloaded": "downloaded", "present": "already present",
         "modified": "modified locally", "refused": "refused", "failed": "failed"}


def pull(
    run: RunArg,
    dest: Annotated[
        Path | None,
        typer.Argument(help="Where to put the files (default ./outputs/RUN-ID).",
                       show_default=False),
    ] = None,
    only: Annotated[
        str | None,
        typer.Option("--only", help="Only these: logs,configs,metrics,checkpoints,rollouts."),
    ] = None,
    step: Annotated[
        str | None,
        typer.Option("--step", help="Only this checkpoint: latest or a step number."),
    ] = None,
    overwrite: Annotated[
        bool,
        typer.Option("--overwrite",
                     help="Replace files in DEST that were changed there since prm wrote them "
                          "(or that prm did not write)."),
    ] = False,
    json_out: JsonOption = False,
) -> None:
    """Download a run's files: prime-rl's run directory, and prm's own files under _prm/.

    Each file is written to a temporary name and renamed when complete, so an interrupted
    pull leaves no truncated file and a rerun fetches only what is missing or changed.
    A running run gives a snapshot of what it has committed so far.

    DEST/.prm-pull.json records what prm wrote: a file changed in DEST since is kept and
    reported "modified locally" (exit 1) unless --overwrite. DEST may not be, or lie inside,
    the run's own folders.

    Examples:

    \b
      prm pull math-8x-261129
      prm pull math-8x-261129 ./ckpt --only checkpoints --step latest
      prm pull math-8x-261129 --only logs,metrics --json
    """
    from primerl_modal.backends import get_backend
    from primerl_modal.core.selection import parse_only, select
    from primerl_modal.run_index import open_index
    from primerl_modal.transfer import prepare_dest, pull_files
    from primerl_modal.ui import console

    wanted = parse_only(only)
    index = open_index()
    record = index.find(run)
    backend = get_backend(record.backend, index)
    target = (dest or Path("outputs") / record.run_id).expanduser()
    protected = _own_folders(record)
    prepare_dest(target, protected)
    files: Iterable[RemoteFile] | AsyncIterator[RemoteFile]
    if step is None:  # download while the listing is still arriving
        files, source = backend.file_stream(record, lambda f: bool(select([f], wanted, None)))
    else:  # the latest (or a given) checkpoint needs the whole listing first
        listing, source = backend.files(record)
        files = select(listing, wanted, step)
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), TimeRemainingColumn(), console=console.err(),
                  transient=True, disable=not console.err().is_terminal) as bar:
        task = bar.add_task("listing", total=None)
        listed = {"files": 0, "bytes": 0}
        done, shown = 0, 0.0

        def note_listed(item: RemoteFile) -> None:
            listed["files"] += 1
            listed["bytes"] += item.size
            bar.update(task, total=listed["bytes"])

        async def counted(items: AsyncIterator[RemoteFile]) -> AsyncIterator[RemoteFile]:
            async for item in items:
                note_listed(item)
                yield item

        if isinstance(files, AsyncIterator):
            files = counted(files)
        else:
            for item in files:
                note_listed(item)

        def on_file(outcome: Outcome) -> None:
            nonlocal done, shown
            done += 1
            if outcome.status != "downloaded":
                bar.advance(task, outcome.size)
            now = time.monotonic()
            if now - shown > 0.1:  # the bar redraws 10 times a second anyway
                bar.update(task, description=f"{done}/{listed['files']} files")
                shown = now

        try:
            outcomes = source.run(lambda: pull_files(
                source, files, target, lambda n: bar.advance(task, n), on_file,
                overwrite=overwrite, protected=protected))
        except KeyboardInterrupt:
            console.err().print(
                f"prm: interrupted after {done} of {listed['files']} files; the same command "
                "fetches the rest", highlight=False)
            raise typer.Exit(130) from None
    if json_out:
        console.print_json([o.to_json() for o in outcomes])
    _report(record.run_id, outcomes, target)


def _own_folders(record: RunRecord) -> list[str]:
    """The run's folders on this machine (real paths), which a pull must never write into. A
    Modal run's are on its volume, out of a pull's reach."""
    if record.backend != "local":
        return []
    return sorted({os.path.realpath(p) for p in (record.run_dir, record.meta_dir,
                                                 record.outputs)})


def _report(run_id: str, outcomes: list[Outcome], target: Path) -> None:
    """A line per file that is not as the run has it, and the summary. Names are the run's
    (anyone's): escaped, so that they can neither drive the terminal nor carry Rich markup.

    Raises typer.Exit(1) when a file was not brought over."""
    from rich.markup import escape

    from primerl_modal.core.selection import printable
    from primerl_modal.ui import console

    counts = dict.fromkeys(SHOWN, 0)
    for o in outcomes:
        counts[o.status] += 1
        if o.status in ("modified", "refused", "failed"):
            console.warn(escape(printable(f"{SHOWN[o.status]}: {o.path} ({o.error})")))
    got = sum(o.size for o in outcomes if o.status == "downloaded")
    console.err().print(
        f"{run_id}: {counts['downloaded']} file{'' if counts['downloaded'] == 1 else 's'} "
        f"({got / 1e6:,.1f} MB) downloaded, "
        + ", ".join(f"{counts[s]} {SHOWN[s]}" for s in list(SHOWN)[1:])
        + f" -> {printable(str(target))}", markup=False, highlight=False)
    if counts["modified"] or counts["refused"] or counts["failed"]:
        raise typer.Exit(1)
