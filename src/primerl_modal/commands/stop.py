"""`prm stop`: stop runs; each records STOPPED and commits what it wrote."""

from __future__ import annotations

from typing import Annotated

import typer

from primerl_modal.ui.options import JsonOption


def stop(
    runs: Annotated[list[str], typer.Argument(help="Run ids (or unique prefixes).")],
    json_out: JsonOption = False,
) -> None:
    """Stop runs. The runner forwards the stop to prime-rl, waits for it to exit, records
    STOPPED and commits its files. Stopping a finished run changes nothing.

    Examples:

    \\b
      prm stop reverse-text-261129-103005-beef
      prm stop rev                 # a unique prefix is enough
    """
    from primerl_modal.backends import get_backend
    from primerl_modal.planning import run_index
    from primerl_modal.ui import console

    index = run_index()
    results = []
    for run in runs:
        record = index.find(run)
        message = get_backend(record.backend, index).stop(record)
        final = index.get(record.run_id) or record
        results.append({"run_id": final.run_id, "status": final.status, "message": message})
        if not json_out:
            console.err().print(message, highlight=False)
    if json_out:
        console.print_json(results)
