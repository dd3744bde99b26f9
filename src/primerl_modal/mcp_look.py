"""The MCP tools that look inside runs and clean up after them (issue 15): metrics,
rollouts, and deleting runs or old checkpoints. Same rules as mcp_server.py's tools: each
runs `prm ... --json` and returns bounded data; nothing is deleted without ``confirm``
(until then a tool returns what it would delete, from prm's own `--dry-run`)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from primerl_modal.mcp_server import (
    QUERY_TIMEOUT_S,
    PrmFailed,
    RunId,
    flag,
    opt,
    opts,
    parse_json,
    prm_json,
    run_prm,
    with_json,
)

MAX_METRIC_ROWS = 500  # per run; older steps are sampled away, the last ones always kept
MAX_EPISODES = 10
MAX_TURN_CHARS = 2000
MAX_ROLLOUT_CHARS = 20000
MAX_ROWS = 200
DELETE_TIMEOUT_S = 900.0

Confirm = Annotated[
    bool,
    Field(description="Really delete. Without it, nothing is deleted: the answer lists what "
                      "would be (show it to the user and ask first)."),
]


def _json_lines(stdout: str, command: str) -> list[Any]:
    return [parse_json(raw, command) for raw in stdout.splitlines() if raw.strip()]


def metrics(
    runs: Annotated[list[str] | None, Field(description="Run ids (or unique prefixes).")] = None,
    sweep: Annotated[str | None, Field(description="Every trial of this sweep.")] = None,
    keys: Annotated[
        list[str] | None,
        Field(description='Metric keys, e.g. ["reward/mean", "loss"]. Default: the run\'s '
                          "metric and its loss/entropy keys. Unknown keys: the error lists "
                          "the keys there are."),
    ] = None,
    last: Annotated[int | None, Field(ge=1, description="Only the last N steps.")] = None,
) -> dict[str, Any]:
    """A run's training metrics by step (from prime-rl's metrics.jsonl, as committed so far):
    is the reward climbing, is the loss sane. Several runs or a sweep's trials compare. At
    most 500 steps a run come back (evenly sampled, the last step always included)."""
    if not runs and not sweep:
        raise PrmFailed("name the runs, or a sweep")
    args = ["metrics", *opts("--key", keys), *opt("--last", last), *opt("--sweep", sweep),
            "--", *(runs or [])]
    stdout, _ = run_prm(with_json(args), timeout=QUERY_TIMEOUT_S)
    by_run: dict[str, list[dict[str, Any]]] = {}
    for row in _json_lines(stdout, "metrics"):
        # rows name their run when there are several; one run: the one asked for
        by_run.setdefault(str(row.get("run") or (runs[0] if runs else sweep)), []).append(row)
    out: dict[str, Any] = {"runs": {}}
    for run_id, rows in by_run.items():
        kept = _sampled(rows, MAX_METRIC_ROWS)
        out["runs"][run_id] = {"steps": len(rows), "rows": kept}
        if len(kept) < len(rows):
            out["runs"][run_id]["note"] = f"{len(rows)} steps sampled down to {len(kept)}"
    return out


def _sampled(rows: list[Any], cap: int) -> list[Any]:
    if len(rows) <= cap:
        return rows
    stride = len(rows) / cap
    picked = [rows[int(i * stride)] for i in range(cap - 1)]
    return [*picked, rows[-1]]


def rollouts(
    run: RunId,
    step: Annotated[str, Field(description='A step number, or "latest".')] = "latest",
    kind: Annotated[
        str, Field(description='"all" (every episode, failed ones too) or "effective" (those '
                               "that went into training).")
    ] = "all",
    env: Annotated[str | None, Field(description="Only this environment's episodes.")] = None,
    sort: Annotated[
        str | None, Field(description='"-reward" (best first) or "reward" (worst first).')
    ] = "-reward",
    limit: Annotated[int, Field(ge=1, description=f"Episodes (at most {MAX_EPISODES}).")] = 3,
) -> dict[str, Any]:
    """Sample episodes of one step of a run: what the model was asked and what it answered,
    each with its reward and any error or timeout. Each conversation's turns come in order
    (role, whether the model sampled it, text cut at 2,000 characters); token ids and
    logprobs are left out."""
    limit = min(limit, MAX_EPISODES)
    args = ["rollouts", *opt("--step", step), *opt("--kind", kind), *opt("--env", env),
            *opt("--sort", sort), *opt("--limit", limit), "--", run]
    stdout, _ = run_prm(with_json(args), timeout=QUERY_TIMEOUT_S)
    episodes: list[dict[str, Any]] = []
    size = 0
    for record in _json_lines(stdout, "rollouts"):
        episode = _episode(record)
        size += len(str(episode))
        if episodes and size > MAX_ROLLOUT_CHARS:
            break
        episodes.append(episode)
    return {"run": run, "step": step, "kind": kind, "count": len(episodes),
            "episodes": episodes}


def _episode(record: dict[str, Any]) -> dict[str, Any]:
    """An episode record as an assistant reads it: the conversation, rewards and errors."""
    from primerl_modal.core.rollouts import episode

    e = episode(record, "")
    return {
        "id": record.get("id"), "env": e.env, "ok": e.ok, "is_timeout": e.is_timeout,
        "reward": e.reward, "errors": list(e.errors),
        "traces": [{"turns": [{"role": t.role, "sampled": t.sampled, "text": _cut(t.text)}
                              for t in tr.turns],
                    "rewards": {r.name: {"score": r.score, "weight": r.weight}
                                for r in tr.rewards},
                    "stop": tr.stop} for tr in e.traces],
    }


def _cut(text: str) -> str:
    return text if len(text) <= MAX_TURN_CHARS else text[:MAX_TURN_CHARS] + " ...[cut]"


def remove_runs(
    runs: Annotated[list[str] | None, Field(description="Finished runs to delete.")] = None,
    sweep: Annotated[str | None, Field(description="A finished sweep: every trial.")] = None,
    confirm: Confirm = False,
) -> dict[str, Any]:
    """Delete finished runs (their files on the volume or on disk, and their records): the
    way to reclaim billed volume storage. Without confirm, returns what would be deleted
    (files, bytes) and deletes nothing. A run still running is refused (stop it first)."""
    if not runs and not sweep:
        raise PrmFailed("name the runs to delete, or a sweep")
    args = ["rm", *opt("--sweep", sweep), *flag("--yes", confirm),
            *flag("--dry-run", not confirm), "--", *(runs or [])]
    rows, _ = prm_json(args, timeout=DELETE_TIMEOUT_S)
    return _bounded(rows, deleted=confirm)


def prune_checkpoints(
    run: RunId,
    keep_last: Annotated[int, Field(ge=1, description="Complete checkpoints to keep.")],
    confirm: Confirm = False,
) -> dict[str, Any]:
    """Delete a finished run's older checkpoints, keeping the newest `keep_last` complete
    ones (never the newest complete one, which a resume needs). Without confirm, returns
    every checkpoint with keep/delete and deletes nothing."""
    args = ["prune", *opt("--keep-last", keep_last), *flag("--yes", confirm),
            *flag("--dry-run", not confirm), "--", run]
    rows, _ = prm_json(args, timeout=DELETE_TIMEOUT_S)
    return _bounded(rows, deleted=confirm)


def _bounded(rows: list[dict[str, Any]], *, deleted: bool) -> dict[str, Any]:
    doomed = [r for r in rows if r.get("action", "delete") == "delete"]
    out: dict[str, Any] = {
        "deleted": deleted, "rows": rows[:MAX_ROWS],
        "files": sum(int(r.get("files") or 0) for r in doomed),
        "bytes": sum(int(r.get("bytes") or 0) for r in doomed),
    }
    if len(rows) > MAX_ROWS:
        out["left_off"] = len(rows) - MAX_ROWS
    if not deleted:
        out["note"] = "nothing was deleted: call again with confirm=true to delete these"
    return out

