"""`prm show`: everything about one run."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from datetime import datetime
from typing import Any

from primerl_modal.ui.options import JsonOption, RunArg


def show(
    run: RunArg,
    json_out: JsonOption = False,
) -> None:
    """Everything about one run: plan (GPU picture, command line, image, volumes, secret
    names), status history, attempts and exit codes, progress, cost, paths, W&B, and the
    commands to follow up.

    Examples:

    \b
      prm show math-8x-261129
      prm show math-8x-261129 --json | jq .status.attempts
    """
    from primerl_modal.backends import get_backend
    from primerl_modal.backends.base import apply_status, parse_status
    from primerl_modal.errors import PrmError
    from primerl_modal.run_index import open_index
    from primerl_modal.ui import console
    from primerl_modal.ui.runs import cost_usd

    index = open_index()
    record = index.find(run)
    backend = get_backend(record.backend, index)
    problems: list[str] = []
    try:
        (record,) = backend.refresh([record])
        plan, problem = _plan(backend.read_meta(record, "plan.json"))
        status = parse_status(backend.read_meta(record, "status.json"))
    except PrmError as e:  # offline, or Modal out of reach: what the index knows, said so
        plan, problem, status = None, f"the run's own files could not be read: {e.one_line()}", \
            None
    if problem:
        problems.append(problem)
    if status and status.get("status") not in (None, record.status):
        # the run's own file is the truth: an index left behind by a race is corrected
        apply_status(record, status)
        index.upsert(record)
    now = time.time()
    wandb = (plan or {}).get("wandb") or {}
    details: dict[str, Any] = {
        "run": asdict(record),
        "problems": problems,
        "cost": {"so_far_usd": cost_usd(record, now),
                 "max_usd": ((plan or {}).get("cost") or {}).get("max_usd")},
        "paths": {"outputs": record.outputs, "run_dir": record.run_dir,
                  "meta_dir": record.meta_dir},
        "wandb": {**wandb, "url": _wandb_url(wandb)},
        "plan": plan,
        "status": status,
        "next": _next_steps(record.run_id, record.status),
    }
    if len((plan or {}).get("roles") or []) > 1:
        details["nodes"] = _nodes(plan or {}, status, lambda name: backend.read_meta(record, name))
    if record.backend == "modal":  # what Modal billed, when a token is there: a note at worst
        from primerl_modal.prices import billed_figure

        details["cost"] |= billed_figure(record.run_id, record.sweep_id, record.created_at)
    if json_out:
        for item in (details.get("plan") or {}).get("inputs", []):
            item.pop("text", None)
        console.print_json(details)
        return
    _render(details)


def _plan(data: bytes | None) -> tuple[dict[str, Any] | None, str | None]:
    """plan.json when it holds a plan; else None, and why (when there is a file)."""
    from primerl_modal.backends.base import stored_plan
    from primerl_modal.errors import PrmError

    if data is None:
        return None, None
    try:
        plan = json.loads(data)
        stored_plan(plan, "plan.json")
    except ValueError:
        return None, "plan.json unreadable: not JSON"
    except PrmError as e:
        return None, e.message
    return plan, None


def _nodes(plan: dict[str, Any], status: dict[str, Any] | None,
           read: Any) -> list[dict[str, Any]]:
    """Each node of a cluster: its role and processes, and what its runner last recorded
    (rank 0's is the run's status; the others keep theirs in nodes/<rank>/)."""
    from primerl_modal.backends.base import parse_status
    from primerl_modal.errors import PrmError

    nodes = []
    for role in plan.get("roles") or []:
        rank = role.get("rank", 0)
        own = status
        if rank:
            try:
                own = parse_status(read(f"nodes/{rank}/status.json"))
            except PrmError:
                own = None
        history = ((own or {}).get("history") or [{}])[-1]
        nodes.append({"rank": rank, "role": role.get("role"),
                      "starts": [p.get("process") for p in role.get("starts") or []],
                      "status": (own or {}).get("status"), "note": history.get("note"),
                      "heartbeat_at": ((own or {}).get("runner") or {}).get("heartbeat_at")})
    return nodes


def _wandb_url(wandb: dict[str, Any]) -> str | None:
    if not (wandb.get("entity") and wandb.get("project")):
        return None
    return f"https://wandb.ai/{wandb['entity']}/{wandb['project']}"


def _next_steps(run_id: str, status: str) -> list[str]:
    from primerl_modal.core import status as st

    steps = [f"prm logs {run_id}" + ("" if st.is_final(status) else " -f"),
             f"prm pull {run_id}"]
    if not st.is_final(status):
        steps.append(f"prm stop {run_id}")
    if status in st.RESUMABLE:
        steps.append(f"prm run --resume {run_id}")
    return steps


def _gpu_lines(gpus: dict[str, Any]) -> list[str]:
    """Per role: utilization and memory now, and the peak memory seen (nvidia-smi)."""
    lines: list[str] = []
    for role, r in (gpus.get("roles") or {}).items():
        lines.append(f"{'GPUs' if not lines else '':<10}{role}: {r.get('util_pct', '?')}% busy, "
                     f"{r.get('mem_gib', '?')} GiB now, peak {r.get('peak_mem_gib', '?')} of "
                     f"{r.get('total_gib', '?')} GiB")
    if lines and gpus.get("at"):
        lines[-1] += f"  (sampled {_when(gpus['at'])})"
    return lines


def _resumed_from(attempt: dict[str, Any]) -> str:
    if not attempt.get("resumed"):
        return "-"
    step = attempt.get("resumed_from")
    return f"step {step}" if step is not None else "start (no complete checkpoint)"


def _attempt_note(attempt: dict[str, Any]) -> str:
    """Why an attempt ended, where its outcome alone does not say."""
    if attempt.get("preempted"):
        return f"preempted ({attempt.get('signal', 'signal')})"
    if attempt.get("outcome") == "KILLED":
        return ("killed after " + attempt["signal"] if attempt.get("signal")
                else "killed without notice (a crash or out of memory): counted as a failure")
    return ""


def _when(t: float | None) -> str:
    if t is None:
        return "-"
    try:
        return datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")
    except (OverflowError, OSError, ValueError):  # a damaged status.json's time
        return str(t)


def _text(value: Any, default: str) -> str:
    """A value of status.json as a cell: absent and null read as ``default``."""
    return default if value is None else str(value)


def _render(d: dict[str, Any]) -> None:
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    from primerl_modal.core.durations import format_duration
    from primerl_modal.core.plan import plan_from_json
    from primerl_modal.ui import console
    from primerl_modal.ui.plan_view import render
    from primerl_modal.ui.runs import STATUS_STYLE, size_text

    out = console.out()
    r = d["run"]
    style = STATUS_STYLE.get(r["status"], "")
    out.print(f"[bold]{escape(r['run_id'])}[/]  [{style}]{r['status']}[/]"
              + (f"  {escape(r['note'])}" if r.get("note") else ""), highlight=False)
    for problem in d["problems"]:
        out.print(Text(problem, style="yellow"))
    if d["plan"]:
        out.print(render(plan_from_json(d["plan"]), title="plan"))
    status = d["status"] or {}
    progress = status.get("progress") or {}
    if progress:
        metric = progress.get("metric", "metric")
        out.print(f"progress  step {progress.get('step', '-')}/{progress.get('max_steps') or '?'}"
                  f"   {metric} {progress.get('value', '-')}"
                  f"   latest checkpoint {progress.get('ckpt_step') or 'none'}", highlight=False,
                  markup=False)
    size = progress.get("size_bytes", r.get("size_bytes"))
    if size is not None:
        out.print(f"size      {size_text(size)} in its run directory (last measured)")
    for line in _gpu_lines(status.get("gpus") or {}):
        out.print(line, highlight=False, markup=False)
    stall = status.get("stall") or {}
    if stall:
        out.print(Text(f"stalled   {_when(stall.get('at'))}: {stall.get('reason', '')}",
                       style="red"))
        for component, lines in (stall.get("lines") or {}).items():
            for line in lines:
                out.print(f"  [{component}] {line}", highlight=False, markup=False)
    if d.get("nodes"):
        nodes = Table(title="nodes", title_justify="left", box=None, header_style="bold")
        for col in ("node", "role", "starts", "status", "heartbeat", "note"):
            nodes.add_column(col)
        for n in d["nodes"]:
            nodes.add_row(*map(Text, (f"node{n['rank']}", _text(n["role"], "?"),
                                      ", ".join(n["starts"]), _text(n["status"], "not started"),
                                      _when(n["heartbeat_at"]), _text(n["note"], ""))))
        out.print(nodes)
    attempts = Table(title="attempts", title_justify="left", box=None, header_style="bold")
    for col in ("#", "started", "ended", "took", "outcome", "exit", "resumed from", "note"):
        attempts.add_column(col)
    for a in status.get("attempts") or []:
        took = (format_duration(a["ended_at"] - a["started_at"])
                if a.get("ended_at") and a.get("started_at") else "-")
        attempts.add_row(*map(Text, (
            _text(a.get("n"), "?"), _when(a.get("started_at")), _when(a.get("ended_at")), took,
            _text(a.get("outcome"), "running"), _text(a.get("exit_code"), "-"),
            _resumed_from(a), _attempt_note(a))))
    out.print(attempts)
    history = Table(title="status history", title_justify="left", box=None,
                    header_style="bold")
    for col in ("at", "status", "attempt", "note"):
        history.add_column(col)
    for h in status.get("history") or []:
        history.add_row(*map(Text, (_when(h.get("at")), _text(h.get("status"), "?"),
                                    _text(h.get("attempt"), ""), _text(h.get("note"), ""))))
    out.print(history)
    failure = status.get("failure")
    if failure and r["status"] in ("FAILED", "RECOVERING"):
        out.print(Text(f"{_text(failure.get('component'), '?')} failed"
                       f" (exit {_text(failure.get('exit_code'), '?')}):", style="red"))
        for line in failure.get("lines") or []:
            out.print(f"  {line}", highlight=False, markup=False)
    cost = d["cost"]
    if r["backend"] == "local":
        out.print("cost      nothing billed: this machine's GPUs")
    else:
        out.print(f"cost      ${cost['so_far_usd']:,.2f} so far"
                  + (f", at most ${cost['max_usd']:,.2f}" if cost.get("max_usd") else ""))
        from primerl_modal.prices import billed_text

        billed = billed_text(cost)
        if billed:
            out.print(f"billed    {billed}", highlight=False, markup=False)
    p = d["paths"]
    out.print(f"outputs   {p['outputs']}\nrun dir   {p['run_dir']}\nprm files {p['meta_dir']}",
              highlight=False, markup=False)
    w = d["wandb"]
    if w.get("project"):
        out.print(f"W&B       {w['project']} / {w.get('name')}"
                  + (f"  {w['url']}" if w.get("url") else ""), highlight=False, markup=False)
    out.print("next      " + "\n          ".join(d["next"]), highlight=False)
