"""The interface every backend implements, and what they share."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from primerl_modal.core import status as st
from primerl_modal.core.logs import LogLine
from primerl_modal.core.plan import Layout, Plan, plan_from_json
from primerl_modal.core.profile import ResolvedProfile
from primerl_modal.core.selection import RemoteFile
from primerl_modal.core.shapes import WRONG, clean, summary
from primerl_modal.errors import PrmError
from primerl_modal.run_index import RunRecord, SweepRecord

if TYPE_CHECKING:
    from primerl_modal.sweeps import SweepPlan
    from primerl_modal.transfer import Source


@dataclass(frozen=True)
class RunEntry:
    """One entry of a folder of a run's directory."""

    name: str
    is_dir: bool
    size: int


class Backend(Protocol):
    name: str

    def layout(self, profile: ResolvedProfile) -> Layout:
        """Where this backend puts outputs and finds prime-rl, for ``profile``."""
        ...

    def launch(self, plan: Plan, *, sweep_id: str | None = None) -> RunRecord:
        """Start the run (detached); the returned record is already in the index."""
        ...

    def refresh(self, records: list[RunRecord]) -> list[RunRecord]:
        """Fresh status and progress of runs not yet final, in one batch."""
        ...

    def stop(self, record: RunRecord) -> str:
        """Stop the run; returns what happened, in words."""
        ...

    def resume(self, record: RunRecord) -> RunRecord:
        """Relaunch a FAILED, STOPPED or LOST run as a new attempt under the same id."""
        ...

    def launch_sweep(self, sweep: SweepPlan, *, fail_fast: bool) -> SweepRecord:
        """Record every trial and start a controller that holds max_parallel on its own."""
        ...

    def stop_sweep(self, sweep: SweepRecord, trials: list[RunRecord]) -> list[str]:
        """Stop every trial not yet final (queued ones too); one line of outcome each."""
        ...

    def resume_sweep(self, sweep: SweepRecord, trials: list[RunRecord]) -> list[RunRecord]:
        """Relaunch the FAILED, STOPPED and LOST trials, each resuming from its checkpoint."""
        ...

    def read_sweep_meta(self, sweep: SweepRecord, name: str) -> bytes | None:
        """A file of the sweep's folder (sweep.json, state.json), if it exists."""
        ...

    def read_meta(self, record: RunRecord, name: str) -> bytes | None:
        """A file of the run's metadata folder (plan.json, status.json, ...), if it exists."""
        ...

    def read_run_file(self, record: RunRecord, rel: str) -> bytes | None:
        """A file of prime-rl's run directory (``metrics.jsonl``, ``rollouts/...``), as the
        run has written (on Modal: committed) it so far; None if there is none."""
        ...

    def list_run_dir(self, record: RunRecord, rel: str = "") -> list[RunEntry] | None:
        """The entries of a folder of prime-rl's run directory (not recursive); None if
        there is no such folder."""
        ...

    def stored_logs(self, record: RunRecord) -> Iterator[LogLine]:
        """Every attempt's lines as the runner stored them (they outlive log services)."""
        ...

    def live_logs(self, record: RunRecord,
                  seen: Mapping[int, int] | None = None) -> Iterator[LogLine]:
        """Lines as they come until the run is final; the first ``seen[n]`` lines of attempt
        n are skipped (already shown)."""
        ...

    def discover(self, known: set[str]) -> list[RunRecord]:
        """Runs in this backend's outputs that the index does not know (added to it)."""
        ...

    def file_stream(self, record: RunRecord, keep: Callable[[RemoteFile], bool]
                    ) -> tuple[AsyncIterator[RemoteFile], Source]:
        """The run's files kept by ``keep``, as the listing arrives (run on the source's
        loop), so downloads can start before the listing ends."""
        ...

    def files(self, record: RunRecord) -> tuple[list[RemoteFile], Source]:
        """The run's files (prime-rl's run dir, and prm's under _prm/) and how to fetch them."""
        ...

    def remove_run(self, record: RunRecord) -> None:
        """Delete the run's files: prime-rl's run directory, then prm's `_prm/<run-id>/`
        (core/cleanup.own_paths); a folder already gone (removed by hand) is fine."""
        ...

    def remove_run_paths(self, record: RunRecord, rels: list[str]) -> None:
        """Delete these folders (whole) or files of prime-rl's run directory, each a path
        inside it (core/cleanup.inside_run); one already gone is fine."""
        ...

    def remove_sweep(self, sweep: SweepRecord) -> None:
        """Delete the sweep's own folder, `_prm/sweeps/<sweep-id>/` (not its trials')."""
        ...


def new_record(plan: Plan, outputs: str, sweep_id: str | None = None) -> RunRecord:
    now = time.time()
    g = plan.gpu
    return RunRecord(
        run_id=plan.run_id, name=plan.experiment, profile=plan.profile, backend=plan.backend,
        status=st.PENDING, created_at=now, updated_at=now, gpu_type=g.type, gpu_count=g.count,
        trainer=g.trainer, inference=g.inference, tp=g.tp, dp=g.dp,
        # the node's whole price (GPUs, CPU, memory) per GPU-hour: what "cost so far" uses
        usd_per_gpu_hour=round(plan.cost.per_hour_usd / g.count, 6),
        timeout_s=plan.timeout_s, retries=plan.retries,
        outputs=outputs, meta_dir=plan.meta_dir, run_dir=plan.run_dir, metric=plan.metric,
        sweep_id=sweep_id,
    )


def apply_status(record: RunRecord, status: Any) -> RunRecord:
    """Copy what a run's status.json says onto its index record. Total: ``status`` may be
    anything read from that file (see st.checked_status); a damaged one makes the run
    UNKNOWN with a note, instead of breaking every listing it is part of."""
    now = time.time()
    data = st.checked_status(status, now)
    progress = data.get("progress") or {}
    history = data.get("history") or [{}]
    record.status = data["status"]
    record.attempts = data.get("attempt") or record.attempts  # the index has no null here
    record.started_at = data.get("started_at", record.started_at)
    record.ended_at = data.get("ended_at", record.ended_at)
    record.exit_code = data.get("exit_code", record.exit_code)
    record.step = progress.get("step", record.step)
    record.max_steps = progress.get("max_steps", record.max_steps)
    record.metric_value = progress.get("value", record.metric_value)
    record.note = history[-1].get("note", record.note)
    record.size_bytes = progress.get("size_bytes", record.size_bytes)
    roles = (data.get("gpus") or {}).get("roles") or {}
    utils = [r["util_pct"] for r in roles.values() if isinstance(r.get("util_pct"), float)]
    record.gpu_util = round(sum(utils) / len(utils), 1) if utils else record.gpu_util
    record.updated_at = now
    return record


def parse_status(data: bytes | None) -> dict[str, Any] | None:
    """A run's status.json from its bytes: None when there is none yet, else always a usable
    status (st.status_from_json: UNKNOWN, with a note, when the file is not one)."""
    return None if data is None else st.status_from_json(data, time.time())


def read_status(meta_dir: str | Path) -> dict[str, Any] | None:
    """parse_status of the status.json in ``meta_dir`` (a local run)."""
    try:
        data = (Path(meta_dir) / "status.json").read_bytes()
    except OSError:  # missing, or not ours to read: as if not written yet
        return None
    return parse_status(data)


def require_resumable(record: RunRecord) -> None:
    """Raises PrmError unless ``record`` is FAILED, STOPPED or LOST."""
    if record.status not in st.RESUMABLE:
        raise PrmError(
            f"{record.run_id} is {record.status}; only FAILED, STOPPED or LOST runs resume",
            f"follow it with `prm logs {record.run_id} -f`" if not st.is_final(record.status)
            else "launch a new run instead",
        )


def resumable_trials(sweep: SweepRecord, trials: list[RunRecord]) -> list[RunRecord]:
    """The sweep's trials that can resume. Raises PrmError when there are none."""
    again = [t for t in trials if t.status in st.RESUMABLE]
    if not again:
        raise PrmError(f"{sweep.sweep_id} has no FAILED, STOPPED or LOST trials",
                       f"see prm sweep show {sweep.sweep_id}")
    return again


def stored_plan(plan_json: Any, where: str) -> Plan:
    """The plan a run's plan.json (at ``where``) holds.

    Raises PrmError when it holds none: a key missing, a value of the wrong type.
    """
    found: list[str] = []
    if clean(plan_json, dict[str, Any], "", found) is WRONG:
        raise PrmError(f"{where} unreadable: {found[0]}")
    try:
        plan = plan_from_json(plan_json)
    except KeyError as e:
        raise PrmError(f"{where} unreadable: no {e}") from None
    except (TypeError, AttributeError, ValueError) as e:
        raise PrmError(f"{where} unreadable: not a plan ({e})") from None
    clean(plan, Plan, "", found)
    if not found and plan.gpu.count < 1:  # new_record divides by it
        found.append(f"gpu.count is {plan.gpu.count}")
    if found:
        raise PrmError(f"{where} unreadable: {summary(found)}")
    return plan


def record_from_stored(plan_json: Any, status: Any, outputs: str, where: str) -> RunRecord:
    """An index record rebuilt from a run's plan.json (at ``where``) and status.json
    (`prm ls --all`); ``status`` None when the run has none yet.

    Raises PrmError when plan.json holds no plan (see stored_plan).
    """
    plan = stored_plan(plan_json, where)
    record = new_record(plan, outputs, plan.sweep_id)
    if status is not None:
        data = st.checked_status(status, time.time())
        history = data.get("history") or [{}]
        record.created_at = history[0].get("at", record.created_at)
        apply_status(record, data)
    return record
