"""The Modal backend: one detached ephemeral app per run, whose one function call runs the
runner on the run's GPUs (a clustered call for a multi-node run). Reading and deleting a
run's files is modal_run_files.py's. Client-side, modal is imported by the backends'
modal_* modules and in `prm doctor`'s checks; nowhere else."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import secrets
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import modal
import modal.exception

from primerl_modal import interrupts
from primerl_modal.backends import modal_remote
from primerl_modal.backends.base import (
    apply_status,
    new_record,
    parse_status,
    record_from_stored,
    require_resumable,
    resumable_trials,
)
from primerl_modal.backends.modal_client import MISSING, connect, modal_errors
from primerl_modal.backends.modal_image import check_local_code, controller_image, to_modal_image
from primerl_modal.backends.modal_run_files import ModalRunFiles
from primerl_modal.core import status as st
from primerl_modal.core.image_spec import image_spec
from primerl_modal.core.logs import LogLine, parse_prefixed
from primerl_modal.core.plan import META_DIR, MODAL_LAYOUT, Layout, Plan
from primerl_modal.core.profile import ResolvedProfile
from primerl_modal.core.run_id import trial_index
from primerl_modal.errors import PrmError
from primerl_modal.run_index import RunIndex, RunRecord, SweepRecord
from primerl_modal.runner.preflight import require_accepted
from primerl_modal.runner.state import (
    STOP_MARKER,
    close_attempt,
    json_object,
    record_status,
)
from primerl_modal.sweeps import SweepPlan, sweep_record
from primerl_modal.ui import console

STOP_WAIT_S = 45.0  # the runner's grace (20 s) and its last commit, with room to spare
# The preflight's container: no GPU, no volume, no secret (prime-rl's dry run downloads no
# model and starts no W&B run), no retry (a refusal repeats); memory enough to import prime-rl
# (torch, vLLM's config), time enough to do so from a freshly pulled image.
PREFLIGHT_RESOURCES: dict[str, Any] = {"cpu": 2.0, "memory": 4096, "timeout": 600}
_POLL_S = 2.0


def run_secrets(plan: Plan) -> list[modal.Secret]:
    """The plan's named secrets, plus `--env` variables sent for this run only."""
    secrets = [modal.Secret.from_name(name) for name in plan.secrets]
    if plan.pass_env:
        missing = [k for k in plan.pass_env if k not in os.environ]
        if missing:
            raise PrmError(f"--env {missing[0]}: {missing[0]} is not set in this shell",
                           f"export {missing[0]}=... first, or drop --env {missing[0]}")
        secrets.append(modal.Secret.from_dict({k: os.environ[k] for k in plan.pass_env}))
    return secrets


def _body(plan: Plan) -> Any:
    """The function a run's containers run: the runner, on a cluster of ``nodes``
    containers (each with all the GPUs of its host, networked together, RDMA between
    them for NCCL) when the plan has more than one node."""
    if plan.gpu.nodes == 1:
        return modal_remote.run_remote
    return modal.clustered(size=plan.gpu.nodes, rdma=True)(modal_remote.run_remote)


def tags_of(run_id: str, sweep_id: str | None) -> dict[str, str]:
    return {"prm-run": run_id, **({"prm-sweep": sweep_id} if sweep_id else {})}


class ModalBackend(ModalRunFiles):
    name = "modal"

    def __init__(self, index: RunIndex) -> None:
        self.index = index

    def layout(self, profile: ResolvedProfile) -> Layout:
        return MODAL_LAYOUT

    def define(self, plan: Plan, sweep_id: str | None = None,
               preflight: bool = False) -> tuple[modal.App, Any, Any | None]:
        """The app of one run, its GPU function and, with ``preflight``, the CPU function
        that dry-runs prime-rl in the same image first (defining them makes no network
        call)."""
        app = modal.App(plan.run_id, tags=tags_of(plan.run_id, sweep_id))
        options = self._function_options(plan)
        function = app.function(**options)(_body(plan))
        check = app.function(image=options["image"], **PREFLIGHT_RESOURCES)(
            modal_remote.preflight_remote) if preflight else None
        return app, function, check

    def _function_options(self, plan: Plan, max_containers: int | None = None) -> dict[str, Any]:
        retries = (modal.Retries(max_retries=plan.retries, backoff_coefficient=1.0,
                                 initial_delay=10.0) if plan.retries else None)
        return dict(
            image=to_modal_image(image_spec(plan)), gpu=plan.gpu.modal_gpu,
            timeout=plan.timeout_s, retries=retries,
            volumes={
                "/outputs": self._volume(plan.volumes["/outputs"]),
                "/cache": self._volume(plan.volumes["/cache"]),
            },
            # plan.env goes to prime-rl through the runner, not into the function: it holds
            # per-run values (PRL_RUN_ID) that would make every sweep trial its own function
            secrets=run_secrets(plan), cpu=plan.cpu,
            memory=plan.memory_mb, region=plan.region, max_containers=max_containers,
        )

    def launch_sweep(self, sweep: SweepPlan, *, fail_fast: bool) -> SweepRecord:
        """One app for the sweep: a function per distinct trial shape (GPU, image, limits),
        and a CPU controller function that starts trials while fewer than max_parallel run,
        on Modal's side, so the limit holds with the laptop closed."""
        outputs = sweep.trials[0].plan.volumes["/outputs"]
        summary = sweep_record(sweep, outputs, fail_fast)
        summary.app_id, summary.call_id = self._start_sweep(
            summary, [(t.index, t.plan) for t in sweep.trials],
            extra={f"{META_DIR}/sweeps/{sweep.sweep_id}/sweep.json":
                   json.dumps(sweep.to_json()).encode()})
        records = []
        for trial in sweep.trials:
            record = new_record(trial.plan, outputs, sweep.sweep_id)
            record.app_id = summary.app_id
            records.append(record)
        self.index.upsert_many(records)
        self.index.upsert_sweep(summary)
        return summary

    def resume_sweep(self, sweep: SweepRecord, trials: list[RunRecord]) -> list[RunRecord]:
        """A new controller for the sweep's FAILED, STOPPED and LOST trials; each trial's
        next attempt resumes from its latest checkpoint."""
        again = resumable_trials(sweep, trials)
        plans = [(trial_index(t.run_id), self._stored_plan(t)) for t in again]
        connect()
        with modal_errors():
            volume = self._volume(sweep.outputs)
            for path in [f"{META_DIR}/sweeps/{sweep.sweep_id}/{STOP_MARKER}",
                         *(f"{META_DIR}/{t.run_id}/{STOP_MARKER}" for t in again)]:
                with contextlib.suppress(*MISSING):
                    volume.remove_file(path)
        sweep.app_id, sweep.call_id = self._start_sweep(sweep, plans, {})
        for t in again:
            t.status, t.app_id, t.call_id, t.ended_at = st.PENDING, sweep.app_id, None, None
            t.note = "resume requested"
        self.index.upsert_many(again)
        self.index.upsert_sweep(sweep)
        return again

    def _start_sweep(self, sweep: SweepRecord, plans: list[tuple[int, Plan]],
                     extra: dict[str, bytes]) -> tuple[str, str]:
        connect()
        with modal_errors():
            app = modal.App(sweep.sweep_id, tags={"prm-sweep": sweep.sweep_id})
            shapes: dict[str, str] = {}
            functions: dict[str, Any] = {}
            payload = []
            for index, plan in plans:
                key = _shape(plan)
                if key not in shapes:
                    shapes[key] = f"trial-{len(shapes)}"
                    functions[shapes[key]] = app.function(
                        name=shapes[key],
                        # a cluster is that many containers: Modal counts containers
                        **self._function_options(plan, sweep.max_parallel * plan.gpu.nodes),
                    )(_body(plan))
                payload.append({"index": index, "run_id": plan.run_id, "function": shapes[key],
                                "plan": plan.to_json(with_input_texts=True)})
            controller = app.function(
                name="sweep-controller", image=controller_image(), timeout=24 * 3600,
                retries=modal.Retries(max_retries=3, initial_delay=5.0), cpu=0.25,
                volumes={"/outputs": self._volume(sweep.outputs)},
            )(modal_remote.run_sweep)
            files = {f"{META_DIR}/{t['run_id']}/plan.json": json.dumps(t["plan"]).encode()
                     for t in payload}
            self._upload_paths(sweep.outputs, {**files, **extra})
            arguments = {"sweep_id": sweep.sweep_id, "outputs_volume": sweep.outputs,
                         "generation": secrets.token_hex(8),
                         "max_parallel": sweep.max_parallel, "fail_fast": bool(sweep.fail_fast),
                         "trials": payload}
            with app.run(name=sweep.sweep_id, detach=True):
                call = controller.spawn(arguments, functions)
                return str(app.app_id), str(call.object_id)

    def stop_sweep(self, sweep: SweepRecord, trials: list[RunRecord]) -> list[str]:
        """Mark the sweep stopped (its controller starts nothing more and records queued
        trials STOPPED), then stop every trial that runs."""
        connect()
        self.refresh(trials)
        with modal_errors():
            marks = {f"{META_DIR}/sweeps/{sweep.sweep_id}/{STOP_MARKER}": b"stop"}
            marks |= {f"{META_DIR}/{t.run_id}/{STOP_MARKER}": b"sweep" for t in trials
                      if not st.is_final(t.status)}
            self._upload_paths(sweep.outputs, marks)
            self._fill_call_ids(trials)
            self._stop_calls([t for t in trials if not st.is_final(t.status)])
        return [f"{t.run_id} {t.status}" for t in trials]

    def _fill_call_ids(self, records: list[RunRecord]) -> None:
        """Trials started by a sweep controller: their call ids, from its state file."""
        states: dict[tuple[str, str], dict[str, Any]] = {}
        for r in records:
            if r.sweep_id and not r.call_id:
                key = (r.outputs, r.sweep_id)
                if key not in states:
                    raw = self._read(r.outputs, f"{META_DIR}/sweeps/{r.sweep_id}/state.json")
                    # read while the controller rewrites it: unreadable now, fine next time
                    state = json_object(raw) or {}
                    states[key] = {t["run_id"]: t for t in state.get("trials", [])}
                trial = states[key].get(r.run_id)
                if trial and trial.get("handle"):
                    r.call_id = trial["handle"]


    def launch(self, plan: Plan, *, sweep_id: str | None = None) -> RunRecord:
        connect()
        check_local_code(plan)
        plan_json = plan.to_json(with_input_texts=True)
        with contextlib.ExitStack() as hold:
            app_id, call_id = self._start(plan, sweep_id, hold, preflight=plan.preflight)
            with modal_errors():  # only a launched run leaves its plan (`ls --all`, resume)
                self._upload(plan.volumes["/outputs"],
                             {"plan.json": json.dumps(plan_json, indent=1).encode()},
                             plan.run_id)
            record = new_record(plan, plan.volumes["/outputs"], sweep_id)
            record.app_id, record.call_id = app_id, call_id
            self.index.upsert(record)
        return record

    def _start(self, plan: Plan, sweep_id: str | None, hold: contextlib.ExitStack,
               preflight: bool = False) -> tuple[str, str]:
        """Build the image if Modal does not have it (Modal's own output, on stderr), run
        the preflight if asked, and start the run's call. From the moment the call exists,
        Ctrl-C is held until the caller's ``hold`` ends, so a started run is always
        recorded."""
        plan_json = plan.to_json(with_input_texts=True)
        with modal_errors():
            for name in plan.volumes.values():  # a wrong one is said before any build
                self._volume(name).hydrate()
            app, function, check = self.define(plan, sweep_id, preflight)
            with modal_output(plan), app.run(name=plan.run_id, detach=True):
                if check is not None:  # a refusal raises here: the app stops, no GPU starts
                    _preflight(check, plan_json)
                call = function.spawn(plan_json)
                hold.enter_context(interrupts.held())
                return str(app.app_id), str(call.object_id)

    def _upload(self, volume: str, files: dict[str, bytes], run_id: str) -> None:
        self._upload_paths(volume, {f"{META_DIR}/{run_id}/{k}": v for k, v in files.items()})

    def _upload_paths(self, volume: str, files: dict[str, bytes]) -> None:
        with self._volume(volume).batch_upload(force=True) as batch:
            for path, data in files.items():
                batch.put_file(io.BytesIO(data), f"/{path}")

    def read_status(self, record: RunRecord) -> dict[str, Any] | None:
        return parse_status(self._read(record.outputs, f"{META_DIR}/{record.run_id}/status.json"))

    def _live_apps(self) -> set[str]:
        return {a.app_id for a in modal.Environment.from_context().apps.list() if a.app_id}

    def refresh(self, records: list[RunRecord]) -> list[RunRecord]:
        pending = [r for r in records if not st.is_final(r.status)]
        if not pending:
            return records
        connect()
        with modal_errors():
            self._fill_call_ids(pending)
            live = self._live_apps()
            for record in pending:
                self._refresh_one(record, record.app_id in live)
        return records

    def _refresh_one(self, record: RunRecord, app_alive: bool) -> RunRecord:
        status = self.read_status(record)
        if status:
            apply_status(record, status)
        if not app_alive and not st.is_final(record.status):
            # Recorded on the volume too (the run's own files are the truth), with the
            # attempt that never recorded its end closed.
            lost = dict(status or {"run_id": record.run_id})
            close_attempt(lost, st.LOST)
            record_status(lost, st.LOST, "the Modal app is gone and the run never wrote a "
                                         "final status")
            with contextlib.suppress(modal.exception.Error, PrmError):
                self._upload(record.outputs,
                             {"status.json": json.dumps(lost, indent=1).encode()},
                             record.run_id)
            apply_status(record, lost)
        self.index.upsert(record)
        return record

    def stop(self, record: RunRecord) -> str:
        self.refresh([record])
        if st.is_final(record.status):
            return f"{record.run_id} is already {record.status}; nothing to stop"
        with modal_errors():
            self._upload(record.outputs, {STOP_MARKER: str(time.time()).encode()},
                         record.run_id)
            self._stop_calls([record])
            if record.app_id:  # the run is over: let its app go too
                with contextlib.suppress(modal.exception.Error):
                    modal.App.lookup(record.app_id).stop()
        return f"{record.run_id} {record.status}"

    def _stop_calls(self, records: list[RunRecord]) -> None:
        """Cancel each run's call: Modal raises InputCancellation in the runner, which stops
        prime-rl within its grace, records STOPPED and commits. A run whose runner has not
        recorded it by the deadline (its container gone, or between two attempts) has its
        container terminated and STOPPED written for it here."""
        calls = {r.run_id: modal.FunctionCall.from_id(r.call_id) for r in records if r.call_id}
        for call in calls.values():
            with contextlib.suppress(modal.exception.Error):
                call.cancel()
        waiting = list(records)
        deadline = time.monotonic() + STOP_WAIT_S
        while waiting and time.monotonic() < deadline:
            time.sleep(_POLL_S / 4)
            for r in list(waiting):
                status = self.read_status(r) or {}
                idle = status.get("status") != st.RUNNING and _done(calls.get(r.run_id))
                if st.is_final(status.get("status", "")) or idle:
                    waiting.remove(r)
        for r in records:
            status = self.read_status(r) or {}
            if not st.is_final(status.get("status", "")):
                if r.run_id in calls:
                    with contextlib.suppress(modal.exception.Error):
                        calls[r.run_id].cancel(terminate_containers=True)
                status = status or {"run_id": r.run_id}
                close_attempt(status, st.STOPPED)
                record_status(status, st.STOPPED,
                              "stopped by prm stop (the runner did not record it; its "
                              "container was terminated)")
                self._upload(r.outputs, {"status.json": json.dumps(status, indent=1).encode()},
                             r.run_id)
            self._refresh_one(r, app_alive=False)

    def resume(self, record: RunRecord) -> RunRecord:
        self.refresh([record])
        require_resumable(record)
        plan = self._stored_plan(record)
        connect()
        with modal_errors():
            volume = self._volume(record.outputs)
            with contextlib.suppress(*MISSING):
                volume.remove_file(f"{META_DIR}/{record.run_id}/{STOP_MARKER}")
        with contextlib.ExitStack() as hold:
            record.app_id, record.call_id = self._start(plan, record.sweep_id, hold)
            record.status, record.ended_at, record.note = st.PENDING, None, "resume requested"
            self.index.upsert(record)
        return record

    def _stored_plan(self, record: RunRecord) -> Plan:
        from primerl_modal.core.plan import plan_from_json

        path = f"{META_DIR}/{record.run_id}/plan.json"
        with modal_errors():
            data = self._read(record.outputs, path)
        if data is None:
            raise PrmError(f"{record.run_id} has no {path} on volume {record.outputs}",
                           "it cannot be resumed; launch it again")
        plan = json_object(data)
        if plan is None:
            raise PrmError(f"{record.run_id}: {path} on volume {record.outputs} is unreadable",
                           "try again in a moment")
        return plan_from_json(plan)







    def live_logs(self, record: RunRecord,
                  seen: Mapping[int, int] | None = None) -> Iterator[LogLine]:
        """Modal's live log stream of the run's call: the runner's stdout, line by line, the
        same lines in the same order as its attempt logs; the first ``seen[n]`` lines of
        attempt n (already shown from the volume) are skipped."""
        if not record.call_id:
            return
        connect()
        seen = seen or {}
        attempt, index = max(record.attempts, 1), 0
        with modal_errors():
            for entry in modal.FunctionCall.from_id(record.call_id).logs.stream():
                t = entry.timestamp.timestamp() if entry.timestamp else None
                lines = entry.message.removesuffix("\n").split("\n") if entry.message else []
                for text in lines:  # "\n" only, as the attempt logs are split
                    line = parse_prefixed(text, t, attempt)
                    if line.component == "runner" and (m := _ATTEMPT.search(line.text)):
                        attempt, index = int(m.group(1)), 0
                        line = parse_prefixed(text, t, attempt)
                    if line.component != "modal":
                        index += 1
                        if index <= seen.get(attempt, 0):
                            continue
                    yield line
            while not st.is_final(record.status):  # the stream ends with the app
                self.refresh([record])
                if not st.is_final(record.status):
                    time.sleep(_POLL_S)

    def _outputs_volumes(self) -> set[str]:
        from primerl_modal.core.schema import BY_DOTTED

        return {BY_DOTTED["modal.outputs_volume"].default} | self.index.outputs_locations(
            self.name)

    def discover(self, known: set[str]) -> list[RunRecord]:
        connect()
        found = []
        with modal_errors():
            for name in sorted(self._outputs_volumes()):
                volume = self._volume(name)
                try:
                    entries = volume.listdir(META_DIR)
                except MISSING:
                    continue
                for entry in entries:
                    run_id = Path(entry.path).name
                    if run_id in known:
                        continue
                    probe = RunRecord(**{**_BLANK, "run_id": run_id, "outputs": name})
                    plan = json_object(self.read_meta(probe, "plan.json"))
                    if not plan:
                        continue
                    status = json_object(self.read_meta(probe, "status.json"))
                    try:
                        record = record_from_stored(
                            plan, status, name, f"volume {name}: {META_DIR}/{run_id}/plan.json")
                    except PrmError as e:  # one damaged run does not hide the others
                        console.warn(f"skipped a run: {e.one_line()}")
                        continue
                    self.index.upsert(record)
                    found.append(record)
        return found








_ATTEMPT = re.compile(r": attempt (\d+)$")
_BLANK: dict[str, Any] = {
    "name": "", "profile": "", "backend": "modal", "status": st.PENDING, "created_at": 0.0,
    "updated_at": 0.0, "gpu_type": "", "gpu_count": 0, "trainer": 0, "inference": 0, "tp": 0,
    "dp": 0, "usd_per_gpu_hour": 0.0, "timeout_s": 0, "retries": 0, "meta_dir": "",
    "run_dir": "",
}


@contextlib.contextmanager
def modal_output(plan: Plan) -> Iterator[None]:
    """Modal's own progress (objects, the image build and its log lines) on stderr, where
    prm's progress goes: stdout stays for data."""
    spec = image_spec(plan)
    if spec.prebuilt:
        console.err().print(f"image: {spec.base} (prebuilt: Modal pulls it, nothing is built)",
                            highlight=False)
    else:
        console.err().print(f"image: prime-rl {plan.ref[:12]}; the first launch of an image "
                            "builds it (several minutes, shown below), later launches reuse it",
                            highlight=False)
    with contextlib.redirect_stdout(sys.stderr), modal.enable_output():
        yield


def _preflight(check: Any, plan_json: dict[str, Any]) -> None:
    """prime-rl's dry run on the CPU function, waited for.

    Raises PreflightRejected when prime-rl refuses the config, PrmError when the container
    could not run it.
    """
    console.err().print("preflight: prime-rl's rl --dry-run on a CPU container "
                        "(--no-preflight skips it)", highlight=False)
    started = time.monotonic()
    try:
        code, output = check.remote(plan_json)
    except modal.exception.Error:
        raise  # modal_errors says it
    except Exception as e:  # noqa: BLE001 - the container's own error, raised again here
        raise PrmError(f"preflight: the CPU container could not run prime-rl's dry run "
                       f"({type(e).__name__}: {e}); nothing was launched",
                       "pass --no-preflight to launch without the check") from None
    require_accepted(code, output, time.monotonic() - started)


def _done(call: modal.FunctionCall | None) -> bool:
    """Whether a call has ended (whatever its result); no call counts as ended."""
    if call is None:
        return True
    try:
        call.get(timeout=0)
    except TimeoutError:
        return False
    except (Exception, modal.exception.InputCancellation):
        pass
    return True


def _shape(plan: Plan) -> str:
    """What makes two trials need different Modal functions."""
    spec = image_spec(plan)
    return json.dumps([spec.build_steps(), spec.overlays,
                       plan.gpu.modal_gpu, plan.gpu.nodes, plan.timeout_s, plan.retries,
                       plan.secrets, plan.pass_env, plan.cpu, plan.memory_mb, plan.region,
                       plan.volumes], default=str)
