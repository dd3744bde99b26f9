"""`prm pull`: download a run's files, many at once, resumably, never outside DEST."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from primerl_modal.ui.options import JsonOption, RunArg

if TYPE_CHECKING:
    from primerl_modal.core.selection import RemoteFile


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
    json_out: JsonOption = False,
) -> None:
    """Download a run's files: prime-rl's run directory, and prm's own files under _prm/.

    Each file is written to a temporary name and renamed when complete, so an interrupted
    pull leaves no truncated file and a rerun fetches only what is missing or changed.
    A running run gives a snapshot of what it has committed so far.

    Examples:

    \b
      prm pull math-8x-261129
      prm pull math-8x-261129 ./ckpt --only checkpoints --step latest
      prm pull math-8x-261129 --only logs,metrics --json
    """
    from primerl_modal.backends import get_backend
    from primerl_modal.core.selection import parse_only, select
    from primerl_modal.run_index import open_index
    from primerl_modal.transfer import Outcome, pull_files
    from primerl_modal.ui import console

    wanted = parse_only(only)
    index = open_index()
    record = index.find(run)
    backend = get_backend(record.backend, index)
    target = (dest or Path("outputs") / record.run_id).expanduser()
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
            outcomes = source.run(lambda: pull_files(source, files, target,
                                                     lambda n: bar.advance(task, n), on_file))
        except KeyboardInterrupt:
            console.err().print(
                f"prm: interrupted after {done} of {listed['files']} files; the same command "
                "fetches the rest", highlight=False)
            raise typer.Exit(130) from None
    counts = {s: sum(1 for o in outcomes if o.status == s)
              for s in ("downloaded", "present", "refused", "failed")}
    if json_out:
        console.print_json([o.to_json() for o in outcomes])
    for o in outcomes:
        if o.status in ("refused", "failed"):
            console.warn(f"{o.status}: {o.path} ({o.error})")
    got = sum(o.size for o in outcomes if o.status == "downloaded")
    console.err().print(
        f"{record.run_id}: {counts['downloaded']} files ({got / 1e6:,.1f} MB) downloaded, "
        f"{counts['present']} already present, {counts['refused']} refused, "
        f"{counts['failed']} failed -> {target}", highlight=False)
    if counts["failed"] or counts["refused"]:
        raise typer.Exit(1)
