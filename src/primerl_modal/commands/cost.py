"""`prm cost`: what Modal billed each run and sweep, beside prm's own estimate."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

import typer

from primerl_modal.ui import complete
from primerl_modal.ui.options import JsonOption

if TYPE_CHECKING:
    from primerl_modal.prices import Bill
    from primerl_modal.run_index import RunRecord, SweepRecord
    from primerl_modal.ui.table import Column


@dataclass(frozen=True)
class Row:
    kind: str  # run, trial (a sweep's run), sweep, or total
    id: str | None
    status: str | None
    estimate_usd: float | None  # prm's: cost so far at the plan's prices
    billed_usd: float | None  # Modal's, from the app's tags; None: no app of its own


def cost(
    runs: Annotated[
        list[str] | None,
        typer.Argument(help="Runs (ids or unique prefixes); default: every Modal run and "
                            "sweep created in the --since window.",
                       autocompletion=complete.run_ids, show_default=False),
    ] = None,
    sweep: Annotated[
        str | None, typer.Option("--sweep", help="This sweep (its app holds all its trials).",
                                 autocompletion=complete.sweep_ids),
    ] = None,
    since: Annotated[
        str, typer.Option("--since", help="The window, e.g. 7d or 12h (named runs and "
                                          "sweeps: from their start).")
    ] = "7d",
    json_out: JsonOption = False,
) -> None:
    """What Modal billed each run and sweep (found by their apps' prm-run / prm-sweep tags),
    beside prm's estimate of its cost so far, with totals. Modal bills whole hours: the hour
    under way shows up in the next one. Needs a Modal token.

    Examples:

    \b
      prm cost
      prm cost math-8x-261129 --json
      prm cost --sweep lr-sweep-261129
      prm cost --since 30d
    """
    from datetime import UTC, datetime

    from primerl_modal.commands.ls import refresh_all
    from primerl_modal.core.durations import parse_duration
    from primerl_modal.prices import bill
    from primerl_modal.run_index import open_index
    from primerl_modal.ui import console
    from primerl_modal.ui.table import emit

    index = open_index()
    now = time.time()
    if runs or sweep:
        records = [index.find(r) for r in runs or []]
        sweeps = [index.find_sweep(sweep)] if sweep else []
        start = min([r.created_at for r in records] + [s.created_at for s in sweeps])
    else:
        start = now - parse_duration(since, what="--since")
        records = [r for r in index.list(since=start) if r.backend == "modal" and not r.sweep_id]
        sweeps = [s for s in index.sweeps() if s.backend == "modal" and s.created_at >= start]
    found = bill(datetime.fromtimestamp(start, UTC))
    trials = {s.sweep_id: index.list(sweep_id=s.sweep_id) for s in sweeps}
    refresh_all(index, records + [t for ts in trials.values() for t in ts])
    rows = [_run_row(r, found, now) for r in records]
    rows += [_sweep_row(s, trials[s.sweep_id], found, now) for s in sweeps]
    if not (runs or sweep):
        rows += _unknown_rows(found, {r.id for r in rows})
    rows.append(_total(rows, records))
    emit(rows, columns(), json_out=json_out)
    if not json_out:
        console.err().print(f"billed by Modal over whole hours, {found.window()}; the hour "
                            "under way is billed in the next one", highlight=False)
        if any(r.kind == "trial" and r.billed_usd is None for r in rows):
            console.err().print("a trial runs in its sweep's app: see the sweep's billed "
                                "figure (prm cost --sweep ID)", highlight=False)


def _run_row(r: RunRecord, found: Bill, now: float) -> Row:
    from primerl_modal.ui.runs import cost_usd

    billed = found.by_run.get(r.run_id)
    if billed is None and r.backend == "modal" and not r.sweep_id:
        billed = 0.0  # its own app, with nothing billed in the window yet
    return Row("trial" if r.sweep_id else "run", r.run_id, r.status, cost_usd(r, now), billed)


def _sweep_row(s: SweepRecord, trials: list[RunRecord], found: Bill, now: float) -> Row:
    from primerl_modal.ui.runs import cost_usd

    counts: dict[str, int] = {}
    for t in trials:
        counts[t.status] = counts.get(t.status, 0) + 1
    statuses = " ".join(f"{k}:{n}" for k, n in sorted(counts.items()))
    return Row("sweep", s.sweep_id, statuses or None,
               round(sum(cost_usd(t, now) for t in trials), 2), found.by_sweep.get(s.sweep_id, 0.0))


def _unknown_rows(found: Bill, shown: set[str | None]) -> list[Row]:
    """Apps Modal billed for prm that this machine's index does not know (launched from
    another machine: `prm ls --all` finds them)."""
    rows = [Row("sweep", sid, None, None, usd) for sid, usd in sorted(found.by_sweep.items())
            if sid not in shown]
    swept = set(found.by_sweep)
    rows += [Row("run", rid, None, None, usd) for rid, usd in sorted(found.by_run.items())
             if rid not in shown and not any(rid.startswith(f"{s}-") for s in swept)]
    return rows


def _total(rows: list[Row], records: list[RunRecord]) -> Row:
    """Each dollar once: a trial whose sweep is shown is in the sweep's figures."""
    shown = {r.id for r in rows if r.kind == "sweep"}
    in_sweep = {r.run_id for r in records if r.sweep_id in shown}
    counted = [r for r in rows if r.id not in in_sweep]
    estimates = [r.estimate_usd for r in counted if r.estimate_usd is not None]
    billed = [r.billed_usd for r in counted if r.billed_usd is not None]
    return Row("total", None, None, round(sum(estimates), 2), round(sum(billed), 9))


def _usd(value: float | None) -> str:
    from primerl_modal.core.cost import format_usd

    return "-" if value is None else format_usd(value)


def columns() -> list[Column[Row]]:
    from primerl_modal.ui.runs import STATUS_STYLE
    from primerl_modal.ui.table import Column

    return [
        Column("kind", "", lambda r: r.kind),
        Column("id", "run / sweep", lambda r: r.id),
        Column("status", "status", lambda r: r.status, style=lambda v: STATUS_STYLE.get(v, "")),
        Column("estimate_usd", "estimate", lambda r: r.estimate_usd, _usd, "right"),
        Column("billed_usd", "billed", lambda r: r.billed_usd, _usd, "right"),
    ]
