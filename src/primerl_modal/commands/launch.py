"""What `prm run` does once it has a plan (or a run to resume): launch, announce, follow."""

from __future__ import annotations

import sys
from dataclasses import asdict
from typing import NoReturn

import typer

from primerl_modal.backends import get_backend
from primerl_modal.backends.base import Backend
from primerl_modal.core import status as st
from primerl_modal.core.plan import Plan
from primerl_modal.run_index import RunIndex, RunRecord, open_index
from primerl_modal.ui import console


def launch_plan(plan: Plan, *, detach: bool, json_out: bool) -> None:
    index = open_index()
    backend = get_backend(plan.backend, index)
    try:
        record = backend.launch(plan)
    except KeyboardInterrupt:
        _interrupted(index, plan.run_id)
    _after_launch(backend, record, "launched", detach=detach, json_out=json_out)


def _interrupted(index: RunIndex, run_id: str) -> NoReturn:
    """Ctrl-C while launching: say whether the run exists (the launch holds Ctrl-C from
    the moment its call is started until the run is recorded)."""
    if index.get(run_id) is None:
        console.err().print("interrupted: nothing was launched")
    else:
        console.err().print(f"interrupted: {run_id} was launched and keeps running; "
                            f"`prm stop {run_id}` stops it", highlight=False)
    raise typer.Exit(130)


def resume_run(run: str, *, detach: bool, json_out: bool) -> None:
    index = open_index()
    record = index.find(run)
    backend = get_backend(record.backend, index)
    before = record.call_id
    try:
        record = backend.resume(record)
    except KeyboardInterrupt:
        again = index.get(record.run_id)
        relaunched = again is not None and again.call_id != before
        console.err().print(f"interrupted: {record.run_id} " + (
            "was relaunched and keeps running" if relaunched else "was not relaunched"))
        raise typer.Exit(130) from None
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
