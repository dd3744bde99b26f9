"""How `prm metrics` prints: the keys a run has, a table of its last steps, and terminal
line charts (plotext) with the runs overlaid."""

from __future__ import annotations

import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from primerl_modal.core.metrics import (
    STEP,
    TIME,
    RunMetrics,
    is_number,
    key_counts,
    last_steps,
    series,
    step_cells,
)
from primerl_modal.ui import console
from primerl_modal.ui.table import Column, emit

TABLE_STEPS = 20  # the table's steps a run, unless --last says otherwise
NO_TERMINAL_SIZE = (100, 25)  # a chart's columns and lines when stdout is no terminal
MAX_CHART_LINES = 25
# Without colours the series of one chart differ by their marker only.
PLAIN_MARKERS = ("hd", "+", "x", "o", "*", "#", "@", "%", "=", "~")


def key_table(found: Sequence[RunMetrics], *, json_out: bool) -> None:
    """Each run's keys, in the order prime-rl first wrote them, and how many steps have
    each; ``run`` first when there are several runs."""
    rows = [(m.run_id, key, steps) for m in found for key, steps in key_counts(m.rows).items()]
    columns: list[Column[Any]] = [
        Column("key", "key", lambda r: r[1]),
        Column("steps", "steps", lambda r: r[2], justify="right"),
    ]
    if len(found) > 1:
        columns.insert(0, Column("run", "run", lambda r: r[0]))
    emit(rows, columns, json_out=json_out, empty="no metric keys yet")


def _value(value: Any) -> str:
    if is_number(value):
        return f"{float(value):.4g}"
    return "-" if value is None else str(value)


def _clock(value: Any) -> str:
    if not is_number(value):
        return "-"
    return time.strftime("%m-%d %H:%M:%S", time.localtime(float(value)))


def step_table(found: Sequence[RunMetrics], keys: Sequence[str], last: int | None) -> None:
    """The last ``last`` (default TABLE_STEPS) steps of each run: the columns of --json and
    --csv, with a note on stderr when steps are left out."""
    def cell(i: int) -> Callable[[Any], Any]:
        return lambda r: r[1][i]

    several = len(found) > 1
    rows = []
    cut = 0
    for m in found:
        cells = step_cells(m.rows, keys)
        kept = last_steps(cells, last or TABLE_STEPS)
        cut += len(cells) - len(kept)
        rows += [(m.run_id, c) for c in kept]
    columns: list[Column[Any]] = [
        *([Column("run", "run", lambda r: r[0])] if several else []),
        Column(STEP, STEP, cell(0), justify="right"),
        Column(TIME, TIME, cell(1), _clock),
        *(Column(k, k, cell(i), _value, "right") for i, k in enumerate(keys, 2)),
    ]
    emit(rows, columns, json_out=False)
    if cut:
        each = " of each run" if several else ""
        console.err().print(f"the last {last or TABLE_STEPS} steps{each}: {cut:,} earlier "
                            "left out (--last N for more; --json or --csv for every step)",
                            highlight=False)


def chart_size() -> tuple[int, int]:
    """Columns and lines of one chart: the terminal's width and up to MAX_CHART_LINES of its
    height; NO_TERMINAL_SIZE when stdout is not a terminal."""
    if not sys.stdout.isatty():
        return NO_TERMINAL_SIZE
    columns, lines = shutil.get_terminal_size(NO_TERMINAL_SIZE)
    return columns, max(10, min(MAX_CHART_LINES, lines - 2))


def charts(found: Sequence[RunMetrics], keys: Sequence[str], last: int | None) -> None:
    """A line chart per key (steps across, values up), every run that has the key overlaid
    and named in the legend."""
    # plotext: a maintained terminal plotting library with no required dependencies (its
    # drawing kernel ships compiled in its wheels), drawing line charts with axes and a
    # legend in any terminal. Imported here only: it costs about 0.1 s, which `prm --help`
    # and `prm run --dry-run` must not pay.
    import plotext

    colour = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    width, height = chart_size()
    plotext.terminal.limit(False, False)  # the size is chart_size's, terminal or none
    out = []
    for key in keys:
        lines = [(m.label, *series(last_steps(m.rows, last), key)) for m in found]
        lines = [line for line in lines if line[1]]
        if lines:
            out.append(_chart(plotext.figure, key, lines, (width, height), colour))
    sys.stdout.write("\n\n".join(out) + "\n")
    sys.stdout.flush()


def _chart(figure: Any, key: str, lines: list[tuple[str, list[int], list[float]]],
           size: tuple[int, int], colour: bool) -> str:
    """One chart of ``lines`` (label, steps, values) on plotext's figure, as text."""
    figure.clear()
    figure.theme("simple")  # coloured lines on the terminal's own background
    figure.plot_size(*size)
    figure.title(key)
    figure.label(STEP)
    for n, (label, steps, values) in enumerate(lines):
        marker = "hd" if colour else PLAIN_MARKERS[n % len(PLAIN_MARKERS)]
        figure.draw(figure.signal(steps, values, marker=marker).label(label).lines())
    low, high = min(s[0] for _, s, _ in lines), max(s[-1] for _, s, _ in lines)
    figure.ruler("x").ticks(step_ticks(low, high, size[0] // 12))
    if sum(v[-1] - v[0] for _, _, v in lines) < 0:
        # falling lines (a loss) leave the top right empty, rising ones the top left, where
        # plotext puts the legend by default
        top = max(max(v) for _, _, v in lines)
        figure.legend(x=high, y=top, ha="right", va="top", relative=True)
    return str(figure.build().string(colorless=not colour)).rstrip("\n")


def step_ticks(low: int, high: int, count: int) -> list[int]:
    """About ``count`` whole steps from ``low`` to ``high``, 1, 2 or 5 times a power of ten
    apart (plotext would mark fractions of a step)."""
    if high <= low:
        return [low]
    raw = (high - low) / max(1, count - 1)
    power = 10 ** math.floor(math.log10(raw))
    gap = max(1, next(int(m * power) for m in (1, 2, 5, 10) if m * power >= raw))
    return list(range(math.ceil(low / gap) * gap, high + 1, gap))
