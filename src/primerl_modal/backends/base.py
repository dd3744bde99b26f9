"""The interface every backend implements, and what they share."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from primerl_modal.core import status as st
from primerl_modal.core.logs import LogLine
from primerl_modal.core.plan import Layout, Plan
from primerl_modal.core.profile import ResolvedProfile
from primerl_modal.core.selection import RemoteFile
from primerl_modal.errors import PrmError
from primerl_modal.run_index import RunRecord, SweepRecord
from primerl_modal.runner.state import read_json

if TYPE_CHECKING:
    from primerl_modal.sweeps import SweepPlan
    from primerl_modal.transfer import Source


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

    def read_meta(self, record: RunRecord, name: str) -> bytes | None:
        """A file of the run's metadata folder (plan.json, status.json, ...), if it exists."""
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


def apply_status(record: RunRecord, status: Mapping[str, Any]) -> RunRecord:
    """Copy what a run's status.json says onto its index record."""
    progress = status.get("progress") or {}
    history = status.get("history") or [{}]
    record.status = status.get("status", record.status)
    record.attempts = status.get("attempt", record.attempts)
    record.started_at = status.get("started_at", record.started_at)
    record.ended_at = status.get("ended_at", record.ended_at)
    record.exit_code = status.get("exit_code", record.exit_code)
    record.step = progress.get("step", record.step)
    record.max_steps = progress.get("max_steps", record.max_steps)
    record.metric_value = progress.get("value", record.metric_value)
    record.note = history[-1].get("note", record.note)
    record.updated_at = time.time()
    return record


def read_status(meta_dir: str | Path) -> dict[str, Any] | None:
    return read_json(Path(meta_dir) / "status.json")


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


def record_from_stored(plan_json: Mapping[str, Any], status: Mapping[str, Any] | None,
                       outputs: str) -> RunRecord:
    """An index record rebuilt from a run's plan.json and status.json (`prm ls --all`)."""
    from primerl_modal.core.plan import plan_from_json

    record = new_record(plan_from_json(plan_json), outputs, plan_json.get("sweep_id"))
    if status:
        history = status.get("history") or []
        if history:
            record.created_at = history[0].get("at", record.created_at)
        apply_status(record, status)
    return record
