"""What `prm run` does once it has a plan (or a run to resume): launch, announce, follow."""

from __future__ import annotations

import sys
from dataclasses import asdict

import typer

from primerl_modal.backends import get_backend
from primerl_modal.backends.base import Backend
from primerl_modal.core import status as st
from primerl_modal.core.plan import Plan
from primerl_modal.run_index import RunRecord, open_index
from primerl_modal.ui import console


def launch_plan(plan: Plan, *, detach: bool, json_out: bool) -> None:
    index = open_index()
    backend = get_backend(plan.backend, index)
    record = backend.launch(plan)
    _after_launch(backend, record, "launched", detach=detach, json_out=json_out)


def resume_run(run: str, *, detach: bool, json_out: bool) -> None:
    index = open_index()
    record = index.find(run)
    backend = get_backend(record.backend, index)
    record = backend.resume(record)
    _after_launch(backend, record, "resuming", detach=detach, json_out=json_out)


def _after_launch(backend: Backend, record: RunRecord, verb: str, *, detach: bool,
                  json_out: bool) -> None:
    rid = record.run_id
    err = console.err()
    err.print(f"[bold]{verb}[/] {rid} on {record.backend} "
              f"({record.gpu_type} x {record.gpu_count}: {record.trainer} trainer + "
              f"{record.inference} inference)")
    err.print(f"  follow: prm logs {rid} -f    stop: prm stop {rid}    list: prm ls",
              highlight=False)
    if detach:
        if json_out:
            console.print_json(asdict(record))
        else:
            sys.stdout.write(rid + "\n")
        return
    out = sys.stderr if json_out else sys.stdout
    try:
        for line in backend.live_logs(record):
            out.write(line.render() + "\n")
            out.flush()
        (final,) = backend.refresh([record])
    except KeyboardInterrupt:
        err.print(f"\nstopped following; {rid} keeps running. "
                  f"`prm logs {rid} -f` follows it again, `prm stop {rid}` stops it.")
        raise typer.Exit(130) from None
    if json_out:
        console.print_json(asdict(final))
    colour = "green" if final.status == st.SUCCEEDED else "red"
    err.print(f"{rid} [{colour}]{final.status}[/]" + (f": {final.note}" if final.note else ""))
    if final.status != st.SUCCEEDED:
        if final.status in st.RESUMABLE:
            err.print(f"  resume from the latest checkpoint: prm run --resume {rid}")
        raise typer.Exit(1)
