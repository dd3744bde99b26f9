"""How runs read in tables: status colours, GPU split, step, metric, age, duration, cost."""

from __future__ import annotations

import time

from primerl_modal.core import status as st
from primerl_modal.core.durations import format_duration
from primerl_modal.run_index import RunRecord
from primerl_modal.ui.table import Column

STATUS_STYLE = {
    st.PENDING: "yellow", st.RUNNING: "cyan", st.RECOVERING: "magenta",
    st.SUCCEEDED: "green", st.FAILED: "red", st.STOPPED: "dim", st.LOST: "red",
    st.UNKNOWN: "bold yellow",
}


def gpu_text(r: RunRecord) -> str:
    nodes = (r.trainer + r.inference) // r.gpu_count if r.gpu_count else 1
    if nodes > 1:  # a cluster: trainer and inference count whole nodes of gpu_count GPUs
        return (f"{nodes}x{r.gpu_type}x{r.gpu_count} "
                f"{r.trainer // r.gpu_count}T/{r.inference // r.gpu_count}I nodes")
    return f"{r.gpu_type}x{r.gpu_count} {r.trainer}T/{r.inference}I"


def duration_s(r: RunRecord, now: float) -> float | None:
    if r.started_at is None:
        return None
    end = r.ended_at if r.ended_at is not None else (now if not st.is_final(r.status) else None)
    return max(0.0, (end or r.updated_at) - r.started_at)


def cost_usd(r: RunRecord, now: float) -> float:
    """GPU-seconds so far times the price: wall time of the node from the first start."""
    seconds = duration_s(r, now) or 0.0
    return round(seconds * r.gpu_count * r.usd_per_gpu_hour / 3600, 2)


def size_text(size_bytes: int | None) -> str:
    """A size on the outputs as storage is billed (decimal units), or "-" when not known."""
    if size_bytes is None:
        return "-"
    value = float(size_bytes)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:,.1f} TB"


def _step(value: list[int | None]) -> str:
    step, total = value
    if step is None:
        return "-"
    return f"{step}/{total}" if total else str(step)


def _metric(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def run_columns(now: float | None = None) -> list[Column[RunRecord]]:
    t = now if now is not None else time.time()
    return [
        Column("run_id", "run", lambda r: r.run_id),
        Column("status", "status", lambda r: r.status, style=lambda v: STATUS_STYLE.get(v, "")),
        Column("gpu", "gpus", gpu_text),
        Column("step", "step", lambda r: [r.step, r.max_steps], _step, "right"),
        Column("metric_value", "metric", lambda r: r.metric_value, _metric, "right"),
        Column("created_at", "age", lambda r: r.created_at,
               lambda v: format_duration(t - v) + " ago", "right"),
        Column("duration_s", "duration", lambda r: duration_s(r, t),
               lambda v: "-" if v is None else format_duration(v), "right"),
        Column("cost_usd", "cost", lambda r: cost_usd(r, t), lambda v: f"${v:,.2f}", "right"),
        Column("size_bytes", "size", lambda r: r.size_bytes, size_text, "right"),
        Column("gpu_util", "gpu%", lambda r: None if st.is_final(r.status) else r.gpu_util,
               lambda v: "-" if v is None else f"{v:.0f}%", "right"),
        Column("backend", "on", lambda r: r.backend),
        Column("sweep_id", "sweep", lambda r: r.sweep_id),
        Column("note", "why", lambda r: r.note if r.status in _EXPLAINED else None, _why),
    ]


_EXPLAINED = {st.FAILED, st.STOPPED, st.LOST, st.UNKNOWN}


def _why(note: str | None) -> str:
    """The reason a run ended badly (e.g. `stalled: no step for 30m (last step 412)`), cut
    to fit a table row; `prm show` has it whole."""
    if not note:
        return ""
    return note if len(note) <= 60 else note[:57] + "..."
