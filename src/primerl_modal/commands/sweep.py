"""`prm sweep`: plan, cost, launch, list, show and resume hyperparameter sweeps."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from primerl_modal.ui import complete
from primerl_modal.ui.options import JsonOption


class _SweepGroup(TyperGroup):
    """`prm sweep FILE ...` and `prm sweep --resume ID` go to the hidden `start` command;
    `prm sweep ls` and `prm sweep show ID` are ordinary subcommands."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["start", *args]
        return super().parse_args(ctx, args)


app = typer.Typer(
    cls=_SweepGroup, no_args_is_help=True,
    help="""Hyperparameter sweeps: one object, planned, costed, launched, followed and stopped
    as a whole.

    \b
      prm sweep FILE [--dry-run] [--fail-fast] [--max-usd X] [--max-trials N --yes]
      prm sweep PROFILE --grid KEY=V1,V2 [--grid KEY=...]
      prm sweep --resume SWEEP-ID         relaunch its FAILED/STOPPED/LOST trials
      prm sweep ls | prm sweep show SWEEP-ID

    Launch options (--grid, --set, --backend, --dry-run, --max-trials, --yes,
    --max-parallel, --max-usd, --fail-fast, --json): `prm sweep FILE --help`.

    Examples:

    \b
      prm sweep examples/lr-sweep.toml --dry-run
      prm sweep reverse-text --grid trainer.optim.lr=1e-6,3e-6,1e-5 --grid max_steps=20,40
      prm sweep show lr-sweep-261129
    """,
)


@app.command("start", hidden=True)
def start(
    target: Annotated[
        str | None, typer.Argument(help="Sweep file, or a profile with --grid.",
                                   show_default=False)] = None,
    grid: Annotated[
        list[str] | None,
        typer.Option("--grid", help="KEY=V1,V2,... (repeatable): an inline grid over a profile."),
    ] = None,
    sets: Annotated[
        list[str] | None, typer.Option("--set", help="KEY=VALUE for every trial (repeatable).")
    ] = None,
    backend: Annotated[
        str | None, typer.Option("--backend", help="modal (default) or local.")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the trial table and cost; launch nothing.")
    ] = False,
    max_trials: Annotated[
        int, typer.Option("--max-trials", min=0,
                          help="Refuse more trials than this without --yes.")
    ] = 64,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Launch past --max-trials.")] = False,
    max_parallel: Annotated[
        int | None,
        typer.Option("--max-parallel", help="At most N trials at once (default: the sweep "
                                            "file's max_parallel, else 4)."),
    ] = None,
    fail_fast: Annotated[
        bool, typer.Option("--fail-fast", help="Stop the sweep when a trial fails.")
    ] = False,
    max_usd: Annotated[
        float | None,
        typer.Option("--max-usd", metavar="USD",
                     help="Budget (default: the sweep file's max_usd): no trial starts whose "
                          "worst case could cross it, and running trials stop when the total "
                          "cost so far reaches it."),
    ] = None,
    resume: Annotated[
        str | None,
        typer.Option("--resume", metavar="SWEEP", autocompletion=complete.sweep_ids,
                     help="Relaunch this sweep's FAILED/STOPPED/LOST trials, each resuming."),
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Plan and launch a sweep (see `prm sweep --help`).

    Examples:

    \b
      prm sweep examples/lr-sweep.toml --dry-run
      prm sweep examples/lr-sweep.toml --max-usd 200
    """
    from primerl_modal.commands.run import cli_settings, require_outputs
    from primerl_modal.core.profile import Setting
    from primerl_modal.errors import UsageError
    from primerl_modal.sweeps import plan_sweep, read_spec
    from primerl_modal.ui import console

    if resume:
        if target or grid or sets or dry_run or backend or max_parallel is not None \
                or max_usd is not None:
            raise UsageError("--resume SWEEP takes no sweep file, --grid, --set, --backend, "
                             "--max-parallel, --max-usd or --dry-run",
                             "the sweep's own trials and budget are reused")
        _resume(resume, json_out)
        return
    if not target:
        raise UsageError("prm sweep needs a sweep file (or a profile with --grid)",
                         "see prm sweep --help")
    settings = cli_settings(
        gpu=None, gpus=None, gpu_type=None, trainer_ratio=None, tp=None, name=None, ref=None,
        local_code=None, use_local_code=False, timeout=None, retries=None, trainer_config=None,
        orchestrator_config=None, inference_config=None, sets=sets or [])
    if backend:
        settings.append(Setting("backend.kind", backend, "--backend"))
    spec = read_spec(target, grid or [])
    spec = _with_limits(spec, max_parallel, max_usd)
    count = spec.count()  # before planning: a huge grid is refused at once
    if count > max_trials and not yes and not dry_run:
        raise UsageError(f"the sweep has {_trials(count)}, more than --max-trials {max_trials}",
                         "check it with --dry-run, then add --yes (or raise --max-trials)")
    plan = plan_sweep(spec, settings, prices="try" if dry_run else "launch")
    if dry_run:
        if json_out:
            console.print_json(plan.to_json())
        else:
            _trial_table(plan)
        return
    from primerl_modal.backends import get_backend
    from primerl_modal.run_index import open_index

    require_outputs(plan.backend, plan.trials[0].plan.outputs_root)
    index = open_index()
    record = get_backend(plan.backend, index).launch_sweep(plan, fail_fast=fail_fast)
    if json_out:
        from dataclasses import asdict

        console.print_json(asdict(record))
    else:
        sid = record.sweep_id
        holder = ("by a controller on Modal: the laptop may close" if record.backend == "modal"
                  else "by a detached controller process: closing this shell does not stop it")
        console.err().print(
            f"[bold]launched sweep[/] {sid}: {_trials(count)} on {record.backend}, at most "
            f"{record.max_parallel} at once"
            + (f" within ${spec.max_usd:,.2f}" if spec.max_usd is not None else "")
            + f", held {holder}\n  progress: prm sweep show {sid}"
            f"    runs: prm ls --sweep {sid}    stop: prm stop --sweep {sid}")
        console.out().print(sid)


def _with_limits(spec: Any, max_parallel: int | None, max_usd: float | None) -> Any:
    """The sweep file's max_parallel and max_usd, or the command line's instead."""
    from dataclasses import replace

    from primerl_modal.errors import UsageError

    if max_parallel is not None:
        if max_parallel < 1:
            raise UsageError("--max-parallel must be at least 1")
        spec = replace(spec, max_parallel=max_parallel)
    if max_usd is not None:
        if max_usd <= 0:
            raise UsageError("--max-usd must be more than 0", "leave it out for no budget")
        spec = replace(spec, max_usd=max_usd)
    return spec


TABLE_ROWS = 50  # a dry run's table shows the first and last trials past this; --json all


def _trials(n: int) -> str:
    return f"{n} trial{'s' * (n != 1)}"


def _trial_table(plan: Any) -> None:
    """One row per trial (the first and last ones past TABLE_ROWS), then the totals; a
    local sweep has no cost columns (nothing is billed for this machine's GPUs)."""
    from rich.table import Table

    from primerl_modal.ui import console

    trials, billed = plan.trials, plan.backend == "modal"
    varying = [k for k in trials[0].overrides
               if len({repr(t.overrides.get(k)) for t in trials}) > 1]
    table = Table(title=f"sweep {plan.sweep_id} ({plan.spec.method}, {_trials(len(trials))}, "
                        f"at most {plan.spec.max_parallel} at once)", title_justify="left")
    money = ("$/h", "worst $") if billed else ()
    for col in ("#", "run id", *varying, "gpus", *money):
        table.add_column(col, justify="right" if col in ("#", *money) else "left")
    half = TABLE_ROWS // 2
    shown = trials if len(trials) <= TABLE_ROWS else [*trials[:half], None, *trials[-half:]]
    for t in shown:
        if t is None:
            table.add_row("...", f"{len(trials) - TABLE_ROWS:,} more (--json lists them all)")
            continue
        p = t.plan
        cost = (f"{p.cost.per_hour_usd:,.2f}", f"{p.cost.max_usd:,.2f}") if billed else ()
        table.add_row(str(t.index), p.run_id, *(value_text(t.overrides.get(k)) for k in varying),
                      p.gpu.short, *cost)
    console.out().print(table)
    console.out().print(
        f"total: {_trials(len(trials))}, ${plan.total_per_hour():,.2f}/h if all ran at once; at "
        f"most ${plan.total_max():,.2f} if every attempt of every trial hit its timeout"
        if billed else f"total: {_trials(len(trials))} on this machine's GPUs; nothing billed")
    if plan.spec.max_usd is not None:
        console.out().print(budget_text(plan.spec.max_usd, plan.total_max(), billed))


def budget_text(max_usd: float, worst_usd: float, billed: bool) -> str:
    """The sweep's budget beside its worst case, and what the controller does with it."""
    if not billed:
        return f"budget: ${max_usd:,.2f}, moot: nothing is billed for this machine's GPUs"
    if worst_usd <= max_usd:
        return (f"budget: ${max_usd:,.2f}, above the worst case of ${worst_usd:,.2f}: "
                "every trial can start")
    return (f"budget: ${max_usd:,.2f}, below the worst case of ${worst_usd:,.2f}: a trial starts "
            "only while its worst case fits beside what the started ones could cost, and "
            "running trials stop if the total cost so far reaches it")


def value_text(value: Any) -> str:
    """A swept value as the sweep file writes it (strings quoted, so 1 and "1" differ)."""
    return "-" if value is None else repr(value)


def _resume(sweep_id: str, json_out: bool) -> None:
    from primerl_modal.backends import get_backend
    from primerl_modal.run_index import open_index
    from primerl_modal.ui import console

    index = open_index()
    sweep = index.find_sweep(sweep_id)
    backend = get_backend(sweep.backend, index)
    trials = backend.refresh(index.list(sweep_id=sweep.sweep_id))
    again = backend.resume_sweep(sweep, trials)
    if json_out:
        console.print_json([r.run_id for r in again])
    else:
        console.err().print(f"resuming {_trials(len(again))} of {sweep.sweep_id}: "
                            + ", ".join(r.run_id for r in again))


@app.command("ls")
def ls(json_out: JsonOption = False) -> None:
    """Sweeps, newest first: trials by status, best metric, cost so far.

    Examples:

    \b
      prm sweep ls
    """
    from primerl_modal.commands.ls import refresh_all
    from primerl_modal.run_index import open_index
    from primerl_modal.ui.runs import cost_usd
    from primerl_modal.ui.table import Column, emit

    index = open_index()
    sweeps = index.sweeps()
    by_sweep = {s.sweep_id: index.list(sweep_id=s.sweep_id) for s in sweeps}
    refresh_all(index, [t for trials in by_sweep.values() for t in trials])  # one batch
    rows = []
    for s in sweeps:
        trials = by_sweep[s.sweep_id]
        counts: dict[str, int] = {}
        for t in trials:
            counts[t.status] = counts.get(t.status, 0) + 1
        best = rank(trials, s.goal)[0].metric_value if trials else None
        rows.append((s, counts, round(sum(cost_usd(t, time.time()) for t in trials), 2), best))
    columns: list[Column[Any]] = [
        Column("sweep_id", "sweep", lambda r: r[0].sweep_id),
        Column("name", "name", lambda r: r[0].name),
        Column("trials", "trials", lambda r: r[0].trials, justify="right"),
        Column("statuses", "statuses", lambda r: r[1],
               lambda v: " ".join(f"{k}:{n}" for k, n in sorted(v.items()))),
        Column("best", "best", lambda r: r[3],
               lambda v: "-" if v is None else f"{v:.4g}", "right"),
        Column("metric", "metric", lambda r: f"{r[0].metric} ({r[0].goal})"),
        Column("max_parallel", "parallel", lambda r: r[0].max_parallel, justify="right"),
        Column("cost_usd", "cost", lambda r: r[2], lambda v: f"${v:,.2f}", "right"),
        Column("backend", "on", lambda r: r[0].backend),
    ]
    emit(rows, columns, json_out=json_out, empty="no sweeps yet: prm sweep FILE")


@app.command("show")
def show(
    sweep_id: Annotated[str, typer.Argument(help="Sweep id (or a unique prefix).",
                                            autocompletion=complete.sweep_ids)],
    json_out: JsonOption = False,
) -> None:
    """A sweep's trials, best first by its metric and goal, with the values each trial
    swept, status, step and cost.

    Examples:

    \b
      prm sweep show lr-sweep-261129
    """
    from primerl_modal.backends import get_backend
    from primerl_modal.commands.ls import refresh_all
    from primerl_modal.run_index import open_index
    from primerl_modal.run_reads import swept_values, trends
    from primerl_modal.ui import console
    from primerl_modal.ui.runs import run_columns
    from primerl_modal.ui.table import emit

    index = open_index()
    sweep = index.find_sweep(sweep_id)
    trials = refresh_all(index, index.list(sweep_id=sweep.sweep_id))
    ranked = rank(trials, sweep.goal)
    values = swept_values(get_backend(sweep.backend, index).read_sweep_meta(sweep, "sweep.json"))
    if not json_out:
        console.err().print(
            f"sweep {sweep.sweep_id} ({sweep.name}): {_trials(len(trials))}, ranked by "
            f"{sweep.metric} ({sweep.goal}); at most {sweep.max_parallel} at once")
    trend = trend_column(trends(index, ranked, sweep.metric))
    first, *rest = run_columns()
    emit(ranked, [first, *value_columns(values), trend, *rest], json_out=json_out,
         empty="the sweep has no trials")
    if not json_out:
        from primerl_modal.ui.runs import cost_usd

        total = sum(cost_usd(t, time.time()) for t in trials)
        console.err().print(f"total cost so far: ${total:,.2f}")
        if sweep.backend == "modal":  # what Modal billed the sweep's app, when a token is there
            from primerl_modal.prices import billed_figure, billed_text

            billed = billed_text(billed_figure(None, sweep.sweep_id, sweep.created_at))
            if billed:
                console.err().print(f"billed: {billed}", highlight=False)



def value_columns(values: dict[str, dict[str, Any]]) -> list[Any]:
    """A column per swept key, in the sweep file's order, keyed by it in --json."""
    from primerl_modal.ui.table import Column

    def of(key: str) -> Callable[[Any], Any]:
        return lambda r: values.get(r.run_id, {}).get(key)

    keys = dict.fromkeys(k for overrides in values.values() for k in overrides)
    return [Column(k, k, of(k), value_text) for k in keys]


def trend_column(trends: dict[str, list[float]]) -> Any:
    """Each trial's metric over its steps: a sparkline, and in --json the sampled values
    (empty before its first step)."""
    from primerl_modal.core.metrics import sparkline
    from primerl_modal.ui.table import Column

    return Column("trend", "trend", lambda r: trends.get(r.run_id, []),
                  lambda v: sparkline(v) or "-")


def rank(trials: list[Any], goal: str) -> list[Any]:
    """Best first: trials with a metric value by the goal, then the rest in index order."""
    scored = [t for t in trials if t.metric_value is not None]
    rest = [t for t in trials if t.metric_value is None]
    scored.sort(key=lambda t: t.metric_value, reverse=goal == "max")
    from primerl_modal.core.run_id import trial_index

    return scored + sorted(rest, key=lambda t: trial_index(t.run_id))

