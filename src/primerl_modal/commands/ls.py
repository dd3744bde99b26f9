"""`prm ls`: the runs, newest first, with fresh status for those not yet final."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated

import typer

from primerl_modal.ui.options import JsonOption

if TYPE_CHECKING:
    from primerl_modal.run_index import RunIndex, RunRecord


def ls(
    status: Annotated[
        list[str] | None,
        typer.Option("--status", "-s", help="Only runs in these statuses (repeatable, or a,b)."),
    ] = None,
    sweep: Annotated[str | None, typer.Option("--sweep", help="Only this sweep's trials.")] = None,
    since: Annotated[
        str | None, typer.Option("--since", help="Only runs created in this window, e.g. 2d.")
    ] = None,
    limit: Annotated[
        int, typer.Option("--limit", "-n", min=0, help="At most N runs (0 = all).")
    ] = 50,
    all_: Annotated[
        bool,
        typer.Option("--all", help="Also find runs on the outputs that this machine never "
                                   "launched (a teammate's), and add them to the index."),
    ] = False,
    json_out: JsonOption = False,
) -> None:
    """List runs: id, status, GPUs and split, step, last metric, age, duration, cost so far.

    Runs not yet final are refreshed from their backend, in one batch per backend;
    finished runs are answered from the local index alone.

    Examples:

    \b
      prm ls
      prm ls --status RUNNING,RECOVERING
      prm ls --since 2d --limit 0 --json
      prm ls --all                 # include runs launched from other machines
    """
    from primerl_modal.core import status as st
    from primerl_modal.core.durations import parse_duration
    from primerl_modal.errors import UsageError
    from primerl_modal.run_index import open_index
    from primerl_modal.ui.console import warn
    from primerl_modal.ui.runs import run_columns
    from primerl_modal.ui.table import emit

    wanted = sorted({s.strip().upper() for item in status or [] for s in item.split(",")
                     if s.strip()})
    unknown = [s for s in wanted if s not in st.ALL]
    if unknown:
        raise UsageError(f"--status {unknown[0]}: no such status",
                         f"statuses: {', '.join(st.ALL)}")
    cutoff = time.time() - parse_duration(since, what="--since") if since else None
    index = open_index()
    if sweep:
        sweep = index.find_sweep(sweep).sweep_id
    complete = _discover(index) if all_ else True
    # Runs not final may change status when refreshed: fetch them whatever the filter says.
    fetch = sorted(set(wanted) | set(st.ALL) - st.FINAL) if wanted else []
    records = index.list(statuses=fetch, sweep_id=sweep, since=cutoff,
                         limit=None if wanted else (limit or None))
    records = refresh_all(index, records)
    if wanted:
        records = [r for r in records if r.status in wanted][: limit or None]
    # "no runs yet" would be untrue when a place that may hold runs could not be searched
    empty = ("no runs match" if wanted or sweep or since
             else "no runs yet: start one with `prm run PROFILE`")
    emit(records, run_columns(), json_out=json_out, empty=empty if complete else "")
    for r in records:
        if r.status == st.UNKNOWN:  # the table has no room for why
            warn(f"{r.run_id} is {r.status}: {r.note}")


def refresh_all(index: RunIndex, records: list[RunRecord]) -> list[RunRecord]:
    """Fresh status for every run not yet final, one batch per backend. A backend that
    cannot be reached leaves its runs as the index last saw them, with a warning."""
    from primerl_modal.backends import get_backend
    from primerl_modal.core import status as st
    from primerl_modal.errors import PrmError
    from primerl_modal.ui.console import warn

    by_backend: dict[str, list[RunRecord]] = {}
    for r in records:
        if not st.is_final(r.status):
            by_backend.setdefault(r.backend, []).append(r)
    for name, batch in by_backend.items():
        try:
            get_backend(name, index).refresh(batch)
        except PrmError as e:
            warn(f"could not refresh {len(batch)} {name} run(s): {e.one_line()}")
    return records


def _discover(index: RunIndex) -> bool:
    """Add runs found where runs are kept (volumes, outputs folders); whether every such
    place could be searched."""
    from primerl_modal.backends import get_backend
    from primerl_modal.errors import PrmError
    from primerl_modal.ui.console import warn

    known = {r.run_id for r in index.list()}
    complete = True
    for name in ("local", "modal"):
        try:
            found = get_backend(name, index).discover(known)
        except PrmError as e:
            warn(f"could not look for {name} runs: {e.one_line()}")
            complete = False
            continue
        known |= {r.run_id for r in found}
    return complete
