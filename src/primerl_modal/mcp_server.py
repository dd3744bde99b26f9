"""prm's operations as MCP tools, served over stdio (`prm mcp`).

Every tool runs the prm CLI itself as a subprocess with ``--json``
(``python -m primerl_modal <command> ... --json``), with this server's environment
(``PRM_HOME``, ``MODAL_*`` and the rest pass through), stdin closed and a time limit.
So there is one implementation of every operation, and nothing but MCP frames ever
reaches this process's stdout. On success a tool returns prm's JSON; on failure it
returns an error result whose text is prm's one line (``message; hint``, as ``prm: error:``
prints it) and whose structured content is the error prm printed on stdout under
``--json``, ``{"error": {"kind", "message", "hint"}}``; never a traceback.

No tool blocks on a run: ``run`` and ``sweep`` launch detached and return at once,
``logs`` returns a bounded tail and never follows.

An assistant cannot overspend: ``run`` refuses a plan whose worst case is over the server's
cap (``prm mcp --max-usd``, default $100), ``sweep`` launches with a budget within it, and
every launch carries ``guard.max_usd`` within it, so the runner stops the run there too.

Try it without the CLI wiring: ``python -m primerl_modal.mcp_server``.
"""

from __future__ import annotations

import functools
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from mcp.server.mcpserver import MCPServer
from mcp.types import CallToolResult, TextContent, ToolAnnotations
from pydantic import Field

from primerl_modal import __version__
from primerl_modal.core.cost import format_usd
from primerl_modal.errors import one_line

# Time limits for one prm subprocess, in seconds. Queries are quick; a first launch on Modal
# may build the image; stop waits for the runner to commit; pull moves checkpoints.
QUERY_TIMEOUT_S = 120.0
LAUNCH_TIMEOUT_S = 1800.0
STOP_TIMEOUT_S = 600.0
PULL_TIMEOUT_S = 3600.0

MAX_LOG_LINES = 2000
MAX_LINE_CHARS = 2000
MAX_RUNS = 1000
DEFAULT_MAX_USD = 100.0

INSTRUCTIONS = """\
prm runs prime-rl reinforcement-learning training on Modal GPUs (or this machine's GPUs).
A profile (e.g. reverse-text, hendrycks-sanity, or a path to a .toml) describes a run.
Check a plan with plan_run before launching with run; run and sweep return at once with
an id: follow with show_run (status, progress, cost), logs (recent lines) and list_runs;
stop with stop; download files with pull. Sweeps: plan_sweep, sweep, sweep_status.
Run and sweep ids may be shortened to a unique prefix. Every failure is one line that
says what went wrong and how to fix it. Launches are capped: a run whose worst case (every
attempt to its timeout) is over the server's cap is refused; lower modal.timeout or
modal.retries, or use fewer GPUs. A sweep runs within a budget no higher than the cap.
"""


class PrmFailed(Exception):
    """prm exited non-zero (or could not be run, or a tool's arguments make no command):
    ``message`` is the one line that explains it; ``error`` is prm's JSON error, ``{"kind",
    "message", "hint"}`` (kind "error" when prm printed none)."""

    def __init__(self, message: str, error: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.error = error or {"kind": "error", "message": message, "hint": None}


# ---------------------------------------------------------------------------------------------
# Running prm


def prm_argv(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "primerl_modal", *args]


def run_prm(args: list[str], *, timeout: float = QUERY_TIMEOUT_S) -> tuple[str, str]:
    """Run ``prm ARGS`` and return (stdout, stderr); raise PrmFailed on a non-zero exit.

    Output goes to temporary files rather than pipes, so a detached process that prm starts
    (a local runner, a sweep controller) can never hold this call open.
    """
    env = {k: v for k, v in os.environ.items() if k != "PRM_TRACEBACK"}  # one-line errors only
    command = args[0] if args else "prm"
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen(prm_argv(args), stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=err, env=env, start_new_session=True)
        except OSError as e:
            raise PrmFailed(f"could not start prm ({e.strerror or e})") from None
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _end(proc)
            raise PrmFailed(
                f"prm {command} did not finish within {timeout:g} s and was stopped; "
                "list_runs shows what it did") from None
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode("utf-8", "replace")
        stderr = err.read().decode("utf-8", "replace")
    if code != 0:
        error = json_error(stdout)
        if error is not None:
            raise PrmFailed(one_line(error["message"], error["hint"]), error)
        raise PrmFailed(error_line(stderr, code, command))
    return stdout, stderr


def _end(proc: subprocess.Popen[bytes]) -> None:
    """Stop a prm that ran out of time: SIGTERM to its process group, then SIGKILL."""
    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def json_error(stdout: str) -> dict[str, Any] | None:
    """prm's error under ``--json``: the ``{"error": {...}}`` object on the last line of its
    stdout (after any data it printed first), or None."""
    lines = stdout.strip().splitlines()
    try:
        data = json.loads(lines[-1]) if lines else None
    except ValueError:
        return None
    error = data.get("error") if isinstance(data, dict) and len(data) == 1 else None
    if not isinstance(error, dict) or not isinstance(error.get("message"), str):
        return None
    hint = error.get("hint")
    return {"kind": str(error.get("kind") or "error"), "message": error["message"],
            "hint": hint if isinstance(hint, str) else None}


def error_line(stderr: str, code: int, command: str) -> str:
    """The one line that explains a prm that failed without a JSON error (it crashed, or it
    printed its data and exit 1, as a pull with refused files does): the last line it
    printed, with any warnings before it."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    if not lines:
        return f"prm {command} failed (exit {code}) without saying why"
    if any(ln.startswith("Traceback (most recent call last)") for ln in lines):
        return f"prm {command} failed unexpectedly: {lines[-1]}"
    warnings = [ln for ln in lines[:-1] if ln.startswith("warning:")]
    return "; ".join([*warnings[:5], lines[-1]])


def warnings_in(stderr: str) -> list[str]:
    return [ln.strip()[len("warning:"):].strip() for ln in stderr.splitlines()
            if ln.strip().startswith("warning:")]


def parse_json(stdout: str, command: str) -> Any:
    try:
        return json.loads(stdout)
    except ValueError:
        snippet = " ".join(stdout.split())[:200]
        raise PrmFailed(f"prm {command} printed something that is not JSON: {snippet!r}") from None


def with_json(args: list[str]) -> list[str]:
    """``args`` plus ``--json``, placed before the ``--`` that ends the options (the
    positionals, run ids and paths, follow it, so none is ever read as an option)."""
    if "--" in args:
        i = args.index("--")
        return [*args[:i], "--json", *args[i:]]
    return [*args, "--json"]


def prm_json(args: list[str], *, timeout: float = QUERY_TIMEOUT_S) -> tuple[Any, str]:
    """Run ``prm ARGS --json``; return (its parsed JSON, its stderr)."""
    stdout, stderr = run_prm(with_json(args), timeout=timeout)
    return parse_json(stdout, args[0]), stderr


def opt(name: str, value: object) -> list[str]:
    """``--name=value`` (one token, so a value starting with '-' stays a value), or nothing."""
    if value is None:
        return []
    return [f"{name}={value}"]


def opts(name: str, values: list[str] | None) -> list[str]:
    return [f"{name}={v}" for v in values or []]


def flag(name: str, on: bool) -> list[str]:
    return [name] if on else []


def _capped(n: int, cap: int) -> int:
    """``n`` within 1..cap; 0 or less (the CLI's "all") means the cap."""
    return cap if n <= 0 else min(n, cap)


def joined(values: list[str] | None) -> str | None:
    items = [v.strip() for v in values or [] if v.strip()]
    return ",".join(items) if items else None


# ---------------------------------------------------------------------------------------------
# The spending cap (`prm mcp --max-usd`)


@dataclass
class Cap:
    """What one launch through this server may cost at worst; set once by ``serve``."""

    max_usd: float = DEFAULT_MAX_USD


CAP = Cap()


def over_cap(what: str, worst: float, hint: str) -> PrmFailed:
    """The refusal of a launch, with the plan's worst case and the cap in its JSON too."""
    message = (f"{what} could cost {format_usd(worst)} at worst, over this server's cap of "
               f"{format_usd(CAP.max_usd)} (prm mcp --max-usd)")
    return PrmFailed(one_line(message, hint), {
        "kind": "budget", "message": message, "hint": hint,
        "worst_case_usd": worst, "cap_usd": CAP.max_usd})


def guard_within(*limits: float | None) -> float:
    """The tightest of the guards already set and the cap: what a launch carries."""
    return min([CAP.max_usd, *(x for x in limits if x is not None)])


def cost_so_far(record: dict[str, Any]) -> float:
    """A just-launched run's cost so far, as `prm ls` counts it (0 until it starts)."""
    from primerl_modal.run_index import RunRecord
    from primerl_modal.ui.runs import cost_usd

    return cost_usd(RunRecord(**record), time.time())


# ---------------------------------------------------------------------------------------------
# Parameter types (their descriptions become the tools' JSON schemas)

Profile = Annotated[
    str | None,
    Field(description="Profile name (reverse-text, wiki-search, wordle, hendrycks-sanity, "
                      "hendrycks-math-1b-2025-10, or one in ./configs or $PRM_HOME/profiles) "
                      "or a path to a profile .toml. Default: reverse-text."),
]
Overrides = Annotated[
    list[str] | None,
    Field(description='KEY=VALUE overrides, e.g. ["max_steps=200", "trainer.optim.lr=3e-6", '
                      '"gpu.trainer_ratio=0.25", "gpu.tp=2"]: prime-rl config keys, or prm '
                      "keys (gpu.*, experiment.name, prime_rl.ref, modal.timeout, ...)."),
]
Gpu = Annotated[
    str | None,
    Field(description='GPU type and count on the node, "TYPE:N", e.g. "H100:8" or '
                      '"A100-80GB:2" (N from 2 to 8; one GPU at least trains, one serves).'),
]
Backend = Annotated[
    str | None,
    Field(description='"modal" (Modal GPUs, the default) or "local" (this machine\'s GPUs). '
                      "Default: the profile's [backend]."),
]
RunId = Annotated[str, Field(description="Run id, or a unique prefix of one.")]


def _run_args(profile: str | None, overrides: list[str] | None, gpu: str | None,
              backend: str | None) -> list[str]:
    return [*opt("--gpu", gpu), *opt("--backend", backend), *opts("--set", overrides),
            "--", *([profile] if profile else [])]


def _run_hints(run_id: str) -> list[str]:
    return [f"show_run(run={run_id!r}): status, progress, attempts, cost",
            f"logs(run={run_id!r}): the latest lines (written as the run commits them)",
            f"list_runs(): every run's status; stop(runs=[{run_id!r}]) stops it"]


# ---------------------------------------------------------------------------------------------
# Tools


def plan_run(profile: Profile = None, overrides: Overrides = None, gpu: Gpu = None,
             backend: Backend = None) -> dict[str, Any]:
    """Plan a run without launching anything (free, instant): the resolved profile, the GPU
    split (which GPUs train, which serve inference, tensor/data parallel), the exact prime-rl
    command line, the Modal image, volumes, secret names, timeout and worst-case cost.

    Use it to check a profile and overrides before `run`; a bad input returns a one-line
    error saying how to fix it. `cap` says whether `run` would launch it: its worst case
    against this server's cap.
    """
    data, _ = prm_json(["run", "--dry-run", *_run_args(profile, overrides, gpu, backend)])
    worst = data["cost"]["max_usd"]
    return {**data, "cap": {"max_usd": CAP.max_usd, "worst_case_usd": worst,
                            "within": worst <= CAP.max_usd}}


def run(profile: Profile = None, overrides: Overrides = None, gpu: Gpu = None,
        backend: Backend = None) -> dict[str, Any]:
    """Launch a training run, detached: returns at once with the run id; the run goes on
    without this server (on Modal, or as a detached process on this machine).

    This starts paid GPU time on Modal: check the plan with `plan_run` first. A plan whose
    worst case (every attempt running to its timeout) is over this server's cap is refused;
    a launched run carries a budget (guard.max_usd) within the cap, at which it is stopped.
    Follow the run with `show_run` (status, progress, cost) and `logs`; `stop` ends it.
    """
    plan, _ = prm_json(["run", "--dry-run", *_run_args(profile, overrides, gpu, backend)])
    worst = plan["cost"]["max_usd"]
    if worst > CAP.max_usd:
        raise over_cap("this run", worst, "lower modal.timeout or modal.retries, or use fewer "
                                          "or cheaper GPUs (plan_run shows the cost)")
    guard = guard_within((plan.get("guard") or {}).get("max_usd"))
    carried = [*(overrides or []), f"guard.max_usd={guard}"]
    record, stderr = prm_json(["run", "--detach", *_run_args(profile, carried, gpu, backend)],
                              timeout=LAUNCH_TIMEOUT_S)
    rid = record["run_id"]
    return {
        "run_id": rid,
        "status": record.get("status"),
        "backend": record.get("backend"),
        "gpus": f"{record.get('gpu_type')} x {record.get('gpu_count')}: "
                f"{record.get('trainer')} trainer + {record.get('inference')} inference",
        "cost": {"so_far_usd": cost_so_far(record),
                 "per_hour_usd": plan["cost"]["per_hour_usd"], "worst_case_usd": worst,
                 "guard_max_usd": guard, "cap_usd": CAP.max_usd},
        "record": record,
        "warnings": warnings_in(stderr),
        "next": _run_hints(rid),
    }


def list_runs(
    status: Annotated[
        list[str] | None,
        Field(description="Only runs in these statuses: PENDING, RUNNING, RECOVERING, "
                          "SUCCEEDED, FAILED, STOPPED, LOST."),
    ] = None,
    sweep: Annotated[str | None, Field(description="Only this sweep's trials (sweep id).")] = None,
    since: Annotated[
        str | None, Field(description='Only runs created in this window, e.g. "2d", "6h".')
    ] = None,
    limit: Annotated[
        int, Field(description=f"At most this many runs, newest first (capped at {MAX_RUNS}).")
    ] = 50,
    all: Annotated[
        bool,
        Field(description="Also find runs launched from other machines (a teammate's) on the "
                          "outputs volume, and add them to the local index. Slower."),
    ] = False,
) -> dict[str, Any]:
    """List runs, newest first: id, status, GPUs and split, step / max steps, last metric,
    age, duration, cost so far, backend, sweep. Runs not yet finished are refreshed from
    their backend. Use it to find run ids and to poll whether runs have ended.
    """
    args = ["ls", *opt("--status", joined(status)), *opt("--sweep", sweep),
            *opt("--since", since), *opt("--limit", _capped(limit, MAX_RUNS)),
            *flag("--all", all)]
    rows, stderr = prm_json(args)
    out: dict[str, Any] = {"runs": rows, "count": len(rows)}
    if warnings := warnings_in(stderr):
        out["warnings"] = warnings
    return out


def show_run(run: RunId) -> dict[str, Any]:
    """Everything about one run: its record (status, step, metric, cost), the plan (GPU split,
    command line, image, volumes, secret names), status history, attempts with exit codes,
    the failure's last lines if it failed, paths, W&B, and the next steps.

    Returns at once; call it again to follow a running run.
    """
    data, _ = prm_json(["show", "--", run])
    return dict(data)


def logs(
    run: RunId,
    tail: Annotated[
        int,
        Field(description=f"The last N matching lines (capped at {MAX_LOG_LINES})."),
    ] = 200,
    components: Annotated[
        list[str] | None,
        Field(description="Only these components: trainer, orchestrator, inference, env, "
                          "launcher, runner (and modal, for Modal's own lines)."),
    ] = None,
    grep: Annotated[
        str | None, Field(description="Only lines matching this regular expression.")
    ] = None,
    attempt: Annotated[
        int | None, Field(ge=1, description="Only this attempt (retries are attempts 2, 3, ...).")
    ] = None,
    since: Annotated[
        str | None, Field(description='Only lines from this window, e.g. "10m".')
    ] = None,
) -> dict[str, Any]:
    """A run's recent log lines (the last `tail` that match), each with its time, attempt and
    component. Bounded and immediate: it never follows. While a run is live, the lines are
    those stored so far; call again for newer ones. Narrow with components and grep (e.g.
    grep "error|Traceback") rather than raising tail.
    """
    tail = _capped(tail, MAX_LOG_LINES)
    args = ["logs", *opt("--tail", tail), *opt("--component", joined(components)),
            *opt("--grep", grep), *opt("--attempt", attempt), *opt("--since", since), "--", run]
    stdout, _ = run_prm(with_json(args))  # one JSON object a line
    lines = []
    for raw in stdout.splitlines():
        if not raw.strip():
            continue
        item = parse_json(raw, "logs")
        text = item.get("line")
        if isinstance(text, str) and len(text) > MAX_LINE_CHARS:
            item["line"] = text[:MAX_LINE_CHARS] + " ...[cut]"
        lines.append(item)
    lines = lines[-tail:]
    out: dict[str, Any] = {"run": run, "count": len(lines), "lines": lines}
    if len(lines) >= tail:
        out["note"] = f"showing the last {tail} matching lines; older ones exist"
    return out


def pull(
    run: RunId,
    dest: Annotated[
        str | None,
        Field(description="Directory to download into (created if missing). Default: "
                          "./outputs/<run id> under the server's working directory."),
    ] = None,
    only: Annotated[
        list[str] | None,
        Field(description="Only these kinds: logs, configs, metrics, checkpoints, rollouts."),
    ] = None,
    step: Annotated[
        str | None,
        Field(description='Only this checkpoint: "latest" or a step number, e.g. "40".'),
    ] = None,
) -> dict[str, Any]:
    """Download a run's files (prime-rl's run directory and prm's own files under _prm/)
    into a local directory, many at once. Reruns fetch only what is missing or changed; a
    running run gives a snapshot of what it has committed. Returns the manifest: every file
    with its size and status (downloaded, present, refused, failed).
    """
    target = str(Path(dest).expanduser().resolve()) if dest else None
    args = ["pull", *opt("--only", joined(only)), *opt("--step", step), "--", run,
            *([target] if target else [])]
    files, stderr = prm_json(args, timeout=PULL_TIMEOUT_S)
    counts = {s: sum(1 for f in files if f.get("status") == s)
              for s in ("downloaded", "present", "refused", "failed")}
    if target is None:
        match = re.search(r"-> (.+)$", stderr.strip())
        target = str(Path(match.group(1).strip()).resolve()) if match else None
    return {"run": run, "dest": target, "counts": counts,
            "bytes_downloaded": sum(f.get("size", 0) for f in files
                                    if f.get("status") == "downloaded"),
            "files": files}


def stop(
    runs: Annotated[
        list[str] | None, Field(description="Run ids (or unique prefixes) to stop.")
    ] = None,
    sweep: Annotated[
        str | None,
        Field(description="Stop every trial of this sweep not yet finished, queued ones "
                          "included (sweep id)."),
    ] = None,
) -> dict[str, Any]:
    """Stop runs (or a whole sweep): prime-rl is told to stop, the run records STOPPED and
    keeps the files it wrote (resume later from its checkpoint with the CLI:
    `prm run --resume RUN`). Waits until each run has stopped, which may take up to a minute
    a run; stopping a finished run changes nothing.
    """
    if not runs and not sweep:
        raise PrmFailed("name the runs to stop, or a sweep")
    args = ["stop", *opt("--sweep", sweep), "--", *(runs or [])]
    results, _ = prm_json(args, timeout=STOP_TIMEOUT_S)
    return {"results": results}


SweepFile = Annotated[
    str | None,
    Field(description="Path to a sweep .toml (profile, method grid/random/list, parameters, "
                      "max_parallel, metric, goal). Give this, or profile with grid."),
]
SweepProfile = Annotated[
    str | None, Field(description="A profile to sweep with an inline grid (instead of a file).")
]
Grid = Annotated[
    list[str] | None,
    Field(description='With profile: grid axes "KEY=V1,V2,...", e.g. '
                      '["trainer.optim.lr=1e-6,3e-6,1e-5", "max_steps=20,40"].'),
]
SweepOverrides = Annotated[
    list[str] | None, Field(description="KEY=VALUE overrides applied to every trial.")
]
MaxParallel = Annotated[
    int | None,
    Field(ge=1, description="At most this many trials at once (default: the sweep file's "
                            "max_parallel, else 4)."),
]
SweepBudget = Annotated[
    float | None,
    Field(gt=0, description="The sweep's budget in USD (default: the sweep file's max_usd): "
                            "no trial starts whose worst case could cross it, running trials "
                            "stop when the total cost reaches it. At most this server's cap."),
]


def budget_of(plan: dict[str, Any]) -> float:
    """The budget a sweep launched through this server runs within: its own, at most the
    cap."""
    own = plan.get("max_usd")
    return min(own, CAP.max_usd) if isinstance(own, int | float) else CAP.max_usd


def _sweep_args(sweep_file: str | None, profile: str | None, grid: list[str] | None,
                overrides: list[str] | None, backend: str | None,
                max_parallel: int | None) -> list[str]:
    if sweep_file and profile:
        raise PrmFailed("give sweep_file or profile (with grid), not both")
    if not sweep_file and not profile:
        raise PrmFailed("give sweep_file, or profile with grid (e.g. "
                        '["trainer.optim.lr=1e-6,3e-6"])')
    if profile and not grid:
        raise PrmFailed('profile needs grid, e.g. ["trainer.optim.lr=1e-6,3e-6"]')
    if sweep_file and grid:
        raise PrmFailed("grid goes with profile; a sweep file holds its own parameters")
    return [*opts("--grid", grid), *opts("--set", overrides), *opt("--backend", backend),
            *opt("--max-parallel", max_parallel), "--", str(sweep_file or profile)]


def plan_sweep(sweep_file: SweepFile = None, profile: SweepProfile = None, grid: Grid = None,
               overrides: SweepOverrides = None, backend: Backend = None,
               max_parallel: MaxParallel = None, max_usd: SweepBudget = None) -> dict[str, Any]:
    """Expand a sweep without launching anything: the sweep id, every trial with its
    overrides, run id, GPUs and cost, and the total cost; `cap` says which budget `sweep`
    would run it within. Use it before `sweep`.
    """
    args = _sweep_args(sweep_file, profile, grid, overrides, backend, max_parallel)
    data, _ = prm_json(["sweep", "--dry-run", *opt("--max-usd", max_usd), *args])
    return {**data, "cap": {"max_usd": CAP.max_usd, "budget_usd": budget_of(data),
                            "worst_case_usd": data["total"]["max_usd"]}}


def sweep(
    sweep_file: SweepFile = None, profile: SweepProfile = None, grid: Grid = None,
    overrides: SweepOverrides = None, backend: Backend = None, max_parallel: MaxParallel = None,
    fail_fast: Annotated[bool, Field(description="Stop the sweep when a trial fails.")] = False,
    yes: Annotated[
        bool, Field(description="Launch even with more trials than max_trials.")
    ] = False,
    max_trials: Annotated[
        int, Field(ge=1, description="Refuse a sweep with more trials than this unless yes.")
    ] = 64,
    max_usd: SweepBudget = None,
) -> dict[str, Any]:
    """Launch a sweep, detached: returns at once with the sweep record; a controller (on
    Modal, or a detached local process) starts the trials, at most max_parallel at once,
    within a budget no higher than this server's cap (a sweep none of whose trials fits it
    is refused).

    This starts paid GPU time: check it with `plan_sweep` first. Follow it with
    `sweep_status` (trials ranked by the sweep's metric, cost so far) and
    `list_runs(sweep=...)`; `stop(sweep=...)` stops it.
    """
    args = _sweep_args(sweep_file, profile, grid, overrides, backend, max_parallel)
    plan, _ = prm_json(["sweep", "--dry-run", *opt("--max-usd", max_usd), *args])
    budget = budget_of(plan)
    cheapest = min(t["max_usd"] for t in plan["trials"])
    if cheapest > budget:
        raise over_cap("its cheapest trial", cheapest, "lower modal.timeout or modal.retries, "
                                                       "or use fewer or cheaper GPUs")
    guard = guard_within(budget, *(t.get("guard_max_usd") for t in plan["trials"]))
    carried = _sweep_args(sweep_file, profile, grid, [*(overrides or []),
                                                      f"guard.max_usd={guard}"],
                          backend, max_parallel)
    record, stderr = prm_json(["sweep", *opt("--max-trials", max_trials), *flag("--yes", yes),
                               *flag("--fail-fast", fail_fast), *opt("--max-usd", budget),
                               *carried], timeout=LAUNCH_TIMEOUT_S)
    sid = record["sweep_id"]
    notes = ([f"max_usd {format_usd(max_usd)} is over this server's cap: the sweep's budget is "
              f"{format_usd(budget)}"] if max_usd is not None and max_usd > budget else [])
    return {"sweep_id": sid, "trials": record.get("trials"),
            "max_parallel": record.get("max_parallel"), "backend": record.get("backend"),
            "cost": {"so_far_usd": 0.0, "worst_case_usd": plan["total"]["max_usd"],
                     "max_usd": budget, "guard_max_usd": guard, "cap_usd": CAP.max_usd},
            "record": record, "warnings": [*notes, *warnings_in(stderr)],
            "next": [f"sweep_status(sweep_id={sid!r}): trials ranked by "
                     f"{record.get('metric')} ({record.get('goal')})",
                     f"list_runs(sweep={sid!r}): the trials' status",
                     f"stop(sweep={sid!r}): stop every trial"]}


def sweep_status(
    sweep_id: Annotated[str, Field(description="Sweep id, or a unique prefix of one.")],
) -> dict[str, Any]:
    """A sweep's trials, best first by the sweep's metric and goal (trials without a value
    yet follow in index order), each with status, step, metric, duration and cost, and the
    sweep's cost so far.
    Returns at once; call again to follow.
    """
    rows, stderr = prm_json(["sweep", "show", "--", sweep_id])
    out: dict[str, Any] = {"sweep_id": sweep_id, "count": len(rows), "trials": rows,
                           "cost_so_far_usd": round(sum(r.get("cost_usd") or 0.0 for r in rows),
                                                    2)}
    if warnings := warnings_in(stderr):
        out["warnings"] = warnings
    return out


# ---------------------------------------------------------------------------------------------
# The server

READ_ONLY = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True,
                            open_world_hint=True)
LAUNCHES = ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=False,
                           open_world_hint=True)
STOPS = ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=True,
                        open_world_hint=True)
DELETES = ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=True,
                          open_world_hint=True)
WRITES_LOCAL = ToolAnnotations(read_only_hint=False, destructive_hint=False,
                               idempotent_hint=True, open_world_hint=True)

TOOLS: list[tuple[Callable[..., dict[str, Any]], str, ToolAnnotations]] = [
    (plan_run, "Plan a run (dry run)", READ_ONLY),
    (run, "Launch a run", LAUNCHES),
    (list_runs, "List runs", READ_ONLY),
    (show_run, "Show a run", READ_ONLY),
    (logs, "A run's log lines", READ_ONLY),
    (pull, "Download a run's files", WRITES_LOCAL),
    (stop, "Stop runs", STOPS),
    (plan_sweep, "Plan a sweep (dry run)", READ_ONLY),
    (sweep, "Launch a sweep", LAUNCHES),
    (sweep_status, "A sweep's ranked trials", READ_ONLY),
]


def as_tool(fn: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any] | CallToolResult]:
    """``fn`` with PrmFailed turned into an error result: its text is exactly prm's line, its
    structured content prm's ``{"error": {"kind", "message", "hint"}}``.

    (Raising the SDK's ToolError would prefix it with "Error executing tool NAME: ".)
    The wrapper keeps fn's signature and docstring, so the schema is fn's.
    """

    @functools.wraps(fn)
    def call(**kwargs: Any) -> dict[str, Any] | CallToolResult:
        try:
            return fn(**kwargs)
        except PrmFailed as e:
            return CallToolResult(content=[TextContent(type="text", text=e.message)],
                                  structured_content={"error": e.error}, is_error=True)

    return call


def build_server() -> MCPServer[Any]:
    server: MCPServer[Any] = MCPServer("prm", instructions=INSTRUCTIONS, version=__version__,
                                       log_level="WARNING")
    from primerl_modal import mcp_look

    look: list[tuple[Callable[..., dict[str, Any]], str, ToolAnnotations]] = [
        (mcp_look.metrics, "A run's metrics by step", READ_ONLY),
        (mcp_look.rollouts, "A step's episodes", READ_ONLY),
        (mcp_look.remove_runs, "Delete finished runs (confirm)", DELETES),
        (mcp_look.prune_checkpoints, "Delete older checkpoints (confirm)", DELETES)]
    for fn, title, hints in [*TOOLS, *look]:
        server.add_tool(as_tool(fn), name=fn.__name__, title=title, annotations=hints)
    return server


def serve(max_usd: float = DEFAULT_MAX_USD) -> None:
    """Serve the tools over stdio until the client closes the connection; no launch may
    cost more than ``max_usd`` at worst."""
    CAP.max_usd = max_usd
    build_server().run("stdio")


if __name__ == "__main__":
    serve()
