"""`prm stop`: stop runs; each records STOPPED and commits what it wrote."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from primerl_modal.ui import complete
from primerl_modal.ui.options import JsonOption

if TYPE_CHECKING:
    from primerl_modal.run_index import RunRecord


def stop(
    runs: Annotated[
        list[str] | None, typer.Argument(help="Run ids (or unique prefixes).",
                                    autocompletion=complete.run_ids)] = None,
    sweep: Annotated[
        str | None,
        typer.Option("--sweep", help="Stop every trial of this sweep not yet final, queued "
                                     "ones included.", autocompletion=complete.sweep_ids),
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Stop runs. The runner forwards the stop to prime-rl, waits for it to exit, records
    STOPPED and commits its files. Stopping a finished run changes nothing.

    Examples:

    \b
      prm stop reverse-text-261129-103005-beef
      prm stop rev                 # a unique prefix is enough
      prm stop --sweep lr-sweep-261129
    """
    from primerl_modal.backends import get_backend
    from primerl_modal.core import status as st
    from primerl_modal.errors import UsageError
    from primerl_modal.run_index import open_index
    from primerl_modal.ui import console

    index = open_index()
    results = []
    if sweep:
        found = index.find_sweep(sweep)
        backend = get_backend(found.backend, index)
        trials = backend.refresh(index.list(sweep_id=found.sweep_id))
        if all(st.is_final(t.status) for t in trials):
            message = f"sweep {found.sweep_id} has ended ({_statuses(trials)}); nothing to stop"
            results = [{"run_id": t.run_id, "status": t.status, "message": message}
                       for t in trials]
            if not json_out:
                console.err().print(message, highlight=False)
        else:
            for line in backend.stop_sweep(found, trials):
                console.err().print(line, highlight=False)
            results = [{"run_id": t.run_id, "status": t.status, "message": "sweep stopped"}
                       for t in index.list(sweep_id=found.sweep_id)]
    elif not runs:
        raise UsageError("name the runs to stop, or --sweep ID", "see prm stop --help")
    for run in runs or []:
        record = index.find(run)
        message = get_backend(record.backend, index).stop(record)
        final = index.get(record.run_id) or record
        results.append({"run_id": final.run_id, "status": final.status, "message": message})
        if not json_out:
            console.err().print(message, highlight=False)
    if json_out:
        console.print_json(results)


def _statuses(trials: list[RunRecord]) -> str:
    """``3 SUCCEEDED, 1 FAILED``: how many trials ended in each status."""
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.status] = counts.get(t.status, 0) + 1
    return ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
