"""`prm metrics`: what prime-rl logged each step (its metrics.jsonl), of one run, several
runs or a whole sweep: a table, JSON lines, CSV or terminal charts. Only that one file is
read, as the run has written (on Modal: committed) it so far."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated

import typer

from primerl_modal.ui import complete
from primerl_modal.ui.options import JsonOption

if TYPE_CHECKING:
    from primerl_modal.core.metrics import RunMetrics
    from primerl_modal.run_index import RunIndex, RunRecord



def metrics(
    runs: Annotated[
        list[str] | None, typer.Argument(help="Run ids (or unique prefixes).",
                                         autocompletion=complete.run_ids)] = None,
    sweep: Annotated[
        str | None,
        typer.Option("--sweep", metavar="SWEEP", autocompletion=complete.sweep_ids,
                     help="Every trial of this sweep, labelled by the values it swept."),
    ] = None,
    keys: Annotated[
        list[str] | None,
        typer.Option("--key", "-k", metavar="KEY",
                     help="This metric (repeatable; see --list). Default: the profile's "
                          "metric and the loss and entropy keys."),
    ] = None,
    last: Annotated[
        int | None, typer.Option("--last", "-n", min=1, metavar="N",
                                 help="Only the last N steps of each run (the table: 20 "
                                      "unless given).")
    ] = None,
    plot: Annotated[
        bool, typer.Option("--plot", help="Draw a line chart per key in the terminal, the "
                                          "runs overlaid with a legend.")
    ] = False,
    list_keys: Annotated[
        bool, typer.Option("--list", help="List the metric keys, with how many steps have "
                                          "each.")
    ] = False,
    csv_out: Annotated[
        bool, typer.Option("--csv", help="Print CSV: a header, then a row per run and step.")
    ] = False,
    json_out: JsonOption = False,
) -> None:
    """Print the metrics prime-rl logged each step (metrics.jsonl): a table of the last
    steps, every step as JSON lines (`--json`, with `run` when several runs) or CSV, or
    line charts (`--plot`). A running run shows what it has written so far.

    Examples:

    \b
      prm metrics math-8x-261129
      prm metrics math-8x-261129 -k reward/mean --plot
      prm metrics math-8x-261129 other-run --plot
      prm metrics --sweep lr-sweep-261129 --plot
      prm metrics math-8x-261129 --list
      prm metrics math-8x-261129 --csv > metrics.csv
    """
    from primerl_modal.run_index import open_index

    _check_modes(plot, list_keys, csv_out, json_out, bool(keys))
    index = open_index()
    found = _read(index, *_select(index, runs or [], sweep))
    if list_keys:
        from primerl_modal.ui.metrics_view import key_table

        key_table(found, json_out=json_out)
        return
    chosen = _keys(found, keys or [])
    if json_out or csv_out:
        _print_rows(found, chosen, last, as_csv=csv_out)
    elif plot:
        from primerl_modal.ui.metrics_view import charts

        charts(found, chosen, last)
    else:
        from primerl_modal.ui.metrics_view import step_table

        step_table(found, chosen, last)


def _check_modes(plot: bool, list_keys: bool, csv_out: bool, json_out: bool,
                 keys: bool) -> None:
    from primerl_modal.errors import UsageError

    outputs = [name for name, on in (("--plot", plot), ("--list", list_keys),
                                     ("--csv", csv_out)) if on]
    if len(outputs) > 1 or (json_out and (plot or csv_out)):
        raise UsageError(f"{' and '.join(outputs + ['--json'] * json_out)} do not go together",
                         "pick one way to print (--list takes --json)")
    if list_keys and keys:
        raise UsageError("--list lists every key: it takes no --key")


def _select(index: RunIndex, runs: list[str],
            sweep: str | None) -> tuple[list[RunRecord], dict[str, str]]:
    """The runs named and the sweep's trials (in trial order), and their legend labels.

    Raises PrmError for a run or sweep that does not exist (or is ambiguous).
    """
    from primerl_modal.core.metrics import legend_labels
    from primerl_modal.errors import UsageError

    if not runs and not sweep:
        raise UsageError("name the runs to read, or --sweep ID", "see prm metrics --help")
    records = {r.run_id: r for r in (index.find(run) for run in runs)}
    labels = {run_id: run_id for run_id in records}
    if sweep:
        from primerl_modal.backends import get_backend
        from primerl_modal.core.run_id import trial_index
        from primerl_modal.run_reads import swept_values

        found = index.find_sweep(sweep)
        trials = sorted(index.list(sweep_id=found.sweep_id), key=lambda t: trial_index(t.run_id))
        swept = swept_values(get_backend(found.backend, index).read_sweep_meta(found,
                                                                               "sweep.json"))
        labels |= legend_labels([t.run_id for t in trials], swept)
        records |= {t.run_id: t for t in trials}
    return list(records.values()), labels



def _read(index: RunIndex, records: list[RunRecord],
          labels: dict[str, str]) -> list[RunMetrics]:
    """The runs that have metrics, each parsed; a run without any is left out with a warning.

    Raises PrmError when none of them has any.
    """
    from primerl_modal.core.metrics import RunMetrics, parse_metrics
    from primerl_modal.errors import PrmError
    from primerl_modal.ui.console import warn

    found, empty = [], []
    from primerl_modal.run_reads import read_metrics

    for record, data in zip(records, read_metrics(index, records), strict=True):
        rows = parse_metrics(data) if data else []
        if rows:
            found.append(RunMetrics(record.run_id, labels[record.run_id], record.metric, rows))
        else:
            empty.append(record.run_id)
    hint = "prime-rl appends a row to metrics.jsonl after each training step"
    if not found:
        who = f"{empty[0]} has no" if len(empty) == 1 else f"none of the {len(empty)} runs has"
        raise PrmError(f"{who} metrics yet", f"there are no metric keys yet: {hint}")
    if empty:
        warn(f"left out, no metrics yet: {', '.join(empty)}")
    return found


def _keys(found: list[RunMetrics], asked: list[str]) -> list[str]:
    """The keys asked for, or each run's default keys. Raises PrmError for a key no run has
    (or, by default, when no run has any of its default keys), naming the keys there are."""
    from primerl_modal.core.metrics import default_keys, require_keys
    from primerl_modal.errors import PrmError

    each = [(m, m.keys()) for m in found]
    have = list(dict.fromkeys(k for _, keys in each for k in keys))
    run_ids = [m.run_id for m in found]
    if asked:
        require_keys(asked, have, run_ids)
        return list(dict.fromkeys(asked))
    chosen = list(dict.fromkeys(k for m, keys in each for k in default_keys(keys, m.metric)))
    if not chosen:
        metrics = sorted({m.metric for m in found if m.metric})
        who = run_ids[0] if len(run_ids) == 1 else "the runs"
        raise PrmError(f"{who} logged no {', '.join([*metrics, 'loss', 'entropy'])}",
                       f"pick keys with -k; keys there are: {', '.join(have)}")
    return chosen


def _print_rows(found: list[RunMetrics], keys: list[str], last: int | None,
                as_csv: bool) -> None:
    """Every step (or the last ``last``) of every run: JSON lines or CSV, ``run`` first when
    there are several runs."""
    from primerl_modal.core.metrics import csv_header, csv_text, json_text, last_steps

    several = len(found) > 1
    out = sys.stdout
    if as_csv:
        out.write(csv_header(keys, several))
    for m in found:
        run = m.run_id if several else None
        out.write((csv_text if as_csv else json_text)(last_steps(m.rows, last), keys, run))
    out.flush()
