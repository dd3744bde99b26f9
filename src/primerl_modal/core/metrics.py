"""prime-rl's ``metrics.jsonl`` as data: rows by step, which keys to show, and the small
summaries (a down-sampled trend, a sparkline) that tables print.

Rules, from how prime-rl's file monitor writes the file (one ``{"step": N, "time": t,
"<key>": value, ...}`` object a line, appended, non-finite values left out):

- A step may appear more than once: a resumed run repeats the steps after its checkpoint.
  The later value of each key wins, so a repeated step reads as its last run; rows of one
  step that carry different keys are merged rather than dropped.
- A key may be missing from a row (prime-rl drops NaN and infinities); NaN or Infinity
  written by an older writer reads as missing too.
- A live run's file ends wherever the writer was: a torn last line, or any line that is not
  a JSON object with an integer step, is skipped.

A number (but the step, an int) is kept as the bytes of its JSON literal, as prime-rl wrote
it (``series`` gives floats, for a chart): --json and --csv then print exactly what was
written, and skip turning every value into a float and back into text, which was most of
their time.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any, TypeGuard, TypeVar

from primerl_modal.core.run_id import trial_index
from primerl_modal.errors import PrmError

STEP, TIME = "step", "time"
# Besides the profile's metric, the families shown by default: their plain key or its mean
# (prime-rl logs ``loss/mean``, ``entropy/mean`` beside ``/std``, ``/max``, ...).
DEFAULT_FAMILIES = ("loss", "entropy")
SPARKS = "▁▂▃▄▅▆▇█"
TREND_POINTS = 16

Row = dict[str, Any]
T = TypeVar("T")


@dataclass(frozen=True)
class RunMetrics:
    """One run's metrics as read: ``label`` names it in a chart's legend, ``metric`` is its
    profile's metric (None when its record has none)."""

    run_id: str
    label: str
    metric: str | None
    rows: list[Row]

    def keys(self) -> list[str]:
        """The metric keys of its rows (not step or time), in order of first appearance."""
        seen: Row = {}
        for row in self.rows:
            seen.update(row)
        return [k for k in seen if k != STEP and k != TIME]


def _missing(_constant: str) -> None:
    """NaN, Infinity and -Infinity in the file: missing values, as prime-rl means them."""
    return None


# keeps a number as its literal's bytes (a type no other JSON value has)
_DECODER = json.JSONDecoder(parse_float=str.encode, parse_int=str.encode,
                            parse_constant=_missing)


def parse_metrics(data: bytes) -> list[Row]:
    """The rows of a metrics.jsonl, one per step in step order (see the module's rules).
    Never raises: what cannot be read is skipped."""
    text = data.decode("utf-8", "replace").strip()
    head, _, last = text.rpartition("\n")
    if _loads(last) is None:  # a live run's torn last line: the rest still parses at once
        text = head
    try:
        # one parse of the whole file as an array: a C loop, faster than a parse a line
        parsed = _DECODER.decode("[" + text.replace("\n", ",") + "]")
    except ValueError:  # a torn, damaged or blank line: read line by line, skipping it
        parsed = [_loads(line) for line in text.split("\n") if line.strip()]
    by_step: dict[int, Row] = {}
    for row in parsed:
        if not isinstance(row, dict):
            continue
        step = row.get(STEP)
        if type(step) is not bytes or not step.isdigit():
            continue
        row[STEP] = step = int(step)
        seen = by_step.get(step)
        if seen is None:
            by_step[step] = row
        else:
            seen.update(row)
    return [by_step[s] for s in sorted(by_step)]


def _loads(line: str) -> Any:
    try:
        return _DECODER.decode(line)
    except ValueError:
        return None


def is_number(value: Any) -> TypeGuard[bytes]:
    """A number as parse_metrics keeps it (not a bool: a JSON true is no metric value)."""
    return type(value) is bytes


def key_counts(rows: Iterable[Row]) -> dict[str, int]:
    """Every metric key of the rows (not step or time) with the number of steps that have a
    value for it, in the order the keys first appear."""
    counts: dict[str, int] = {}
    for row in rows:
        for key, value in row.items():
            if is_number(value) and key != STEP and key != TIME:
                counts[key] = counts.get(key, 0) + 1
    return counts


def default_keys(keys: Iterable[str], metric: str | None) -> list[str]:
    """The keys shown when none are asked for: the profile's metric, then the plain or mean
    loss and entropy keys, among ``keys``."""
    present = list(keys)
    chosen = [metric] if metric in present else []
    for key in present:
        family, _, rest = key.partition("/")
        if family in DEFAULT_FAMILIES and rest in ("", "mean") and key not in chosen:
            chosen.append(key)
    return chosen


def require_keys(asked: Sequence[str], have: Sequence[str], runs: Sequence[str]) -> None:
    """Raises PrmError when a key of ``asked`` is in none of ``have`` (the keys of every run
    of ``runs`` read), naming the keys there are."""
    missing = [k for k in asked if k not in have]
    if missing:
        who = f"{runs[0]} has no" if len(runs) == 1 else f"none of the {len(runs)} runs has"
        raise PrmError(f"{who} metric {', '.join(missing)}", keys_hint(have))


def keys_hint(keys: Sequence[str]) -> str:
    return f"keys there are: {', '.join(keys)}" if keys else "there are no metric keys yet"


def last_steps(rows: list[T], n: int | None) -> list[T]:
    """The last ``n`` of ``rows`` (all of them when ``n`` is None)."""
    return rows[-n:] if n else rows


def series(rows: Iterable[Row], key: str) -> tuple[list[int], list[float]]:
    """The steps that have a value for ``key``, and the values."""
    steps: list[int] = []
    values: list[float] = []
    for row in rows:
        value = row.get(key)
        if is_number(value):
            steps.append(row[STEP])
            values.append(float(value))
    return steps, values


def step_cells(rows: Iterable[Row], keys: Sequence[str]) -> list[tuple[Any, ...]]:
    """``(step, time, *values of keys)`` of each row with a value for at least one of
    ``keys`` (None where it has none): what the table, --json and --csv print."""
    n = len(keys)
    cells = []
    for row in rows:
        values = [row.get(k) for k in keys]
        if values.count(None) < n:
            cells.append((row[STEP], row.get(TIME), *values))
    return cells


def downsample(values: Sequence[float], points: int = TREND_POINTS) -> list[float]:
    """At most ``points`` values: the mean of each of ``points`` consecutive, equal slices
    (the first and the last slice hold the first and the last values), rounded for print."""
    n = len(values)
    if n <= points:
        return [_round(v) for v in values]
    out = []
    for i in range(points):
        chunk = values[i * n // points:(i + 1) * n // points]
        out.append(_round(sum(chunk) / len(chunk)))
    return out


def _round(value: float) -> float:
    return float(f"{value:.6g}")


def sparkline(values: Sequence[float]) -> str:
    """One block character a value, low to high across the values' own range."""
    if not values:
        return ""
    low, high = min(values), max(values)
    if high == low:
        return SPARKS[len(SPARKS) // 2] * len(values)
    top = len(SPARKS) - 1
    return "".join(SPARKS[round((v - low) / (high - low) * top)] for v in values)


def _all_literals(cells: list[tuple[Any, ...]]) -> bool:
    """Whether every cell is a number's literal (the step an int): then a line is one bytes
    format, several times faster than an encoder's pass over a dict."""
    return set(map(type, chain.from_iterable(cells))) <= {int, bytes}


def _literal(text: str) -> bytes:
    return text.encode().replace(b"%", b"%%")


def _json(value: Any) -> str:
    return value.decode() if type(value) is bytes else json.dumps(value, ensure_ascii=False)


def json_text(rows: Iterable[Row], keys: Sequence[str], run: str | None) -> str:
    """One JSON object a line and step: ``run`` first when given, then step, time and
    ``keys`` (null where the step has no value); steps with none of ``keys`` are left out."""
    head = {"run": run} if run is not None else {}
    start = json.dumps(head, ensure_ascii=False)[:-1] + (", " if head else "")
    quoted = [json.dumps(k, ensure_ascii=False) for k in (STEP, TIME, *keys)]
    cells = step_cells(rows, keys)
    if _all_literals(cells):
        formats = [b"%d"] + [b"%b"] * (len(quoted) - 1)  # the step, then literals
        template = _literal(start) + b", ".join(
            _literal(q) + b": " + f for q, f in zip(quoted, formats, strict=True)) + b"}\n"
        return b"".join([template % c for c in cells]).decode()
    return "".join([start + ", ".join(f"{q}: {_json(v)}" for q, v in zip(quoted, c, strict=True))
                    + "}\n" for c in cells])


def csv_header(keys: Sequence[str], with_run: bool) -> str:
    return _csv([[*(["run"] if with_run else []), STEP, TIME, *keys]])


def csv_text(rows: Iterable[Row], keys: Sequence[str], run: str | None) -> str:
    """The CSV lines of ``rows`` (header apart, see csv_header): empty cells where a step
    has no value; steps with none of ``keys`` are left out."""
    cells = step_cells(rows, keys)
    head = [run] if run is not None else []
    if _all_literals(cells):
        start = _csv([head]).rstrip("\n") + "," if head else ""
        template = _literal(start) + b",".join([b"%d"] + [b"%b"] * (len(keys) + 1)) + b"\n"
        return b"".join([template % c for c in cells]).decode()
    return _csv([*head, *(v.decode() if type(v) is bytes else v for v in c)] for c in cells)


def _csv(lines: Iterable[Sequence[Any]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(lines)
    return buffer.getvalue()


def legend_labels(run_ids: Sequence[str], swept: dict[str, dict[str, Any]]) -> dict[str, str]:
    """A short label a run for a chart's legend: a sweep trial is ``#<trial> `` and the
    swept values that differ between the trials (``lr=1e-06``, by the key's last part unless
    two keys share it); any other run is its run id."""
    varying = [k for k in dict.fromkeys(k for v in swept.values() for k in v)
               if len({repr(v.get(k)) for v in swept.values()}) > 1]
    short = {k: k.rsplit(".", 1)[-1] for k in varying}
    if len(set(short.values())) < len(short):
        short = {k: k for k in varying}
    labels = {}
    for run_id in run_ids:
        values = swept.get(run_id)
        labels[run_id] = run_id if values is None else " ".join(
            [f"#{trial_index(run_id)}", *(f"{short[k]}={_value(values.get(k))}"
                                          for k in varying)])
    return labels


def _value(value: Any) -> str:
    return "-" if value is None else repr(value)
