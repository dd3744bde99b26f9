"""Runs spawned calls as subprocesses: queueing, preemption, retries, cancellation, logs.

Each attempt of a call runs ``_runner.py`` in its own process group, with the function's
environment (secrets, image ``ENV``, volume mounts via ``FAKE_MODAL_MOUNTS``), so that a cancel,
app stop or preemption can SIGTERM it, wait ``grace_s`` and SIGKILL it.
"""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modal_proto import api_pb2

if TYPE_CHECKING:
    from .fake import FakeModal

FINAL_STATUSES = frozenset({"success", "failure", "timeout", "cancelled", "terminated"})
RUNNER = Path(__file__).with_name("_runner.py")
BOOTSTRAP = "import runpy, sys; runpy.run_path(sys.argv[1], run_name='__main__')"
DEFAULT_TIMEOUT_S = 300
MAX_INLINE_OUTPUT = 2 * 1024 * 1024  # larger results go through a blob, like Modal's

Result = api_pb2.GenericResult


@dataclass
class CallRuntime:
    """Execution state of one call; `FakeModal.calls[call_id]` is its public record."""

    call_id: str
    function_id: str
    app_id: str
    input_id: str
    args: bytes
    data_format: int
    preemptions: list[float]
    stop_status: str | None = None  # set when cancelled ("cancelled") or app stopped
    stop_event: asyncio.Event = field(default_factory=asyncio.Event)
    preempt_now: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    process: asyncio.subprocess.Process | None = None
    task: asyncio.Task[None] | None = None
    result: Any = None  # api_pb2.GenericResult once finished


@dataclass
class _Outcome:
    kind: str  # "success", "failure", "timeout", "preempted", "stopped"
    result: Any = None


class Executor:
    def __init__(self, fake: FakeModal) -> None:
        self.fake = fake
        self.runtimes: dict[str, CallRuntime] = {}
        self._queues: dict[str, deque[str]] = {}
        self._running: dict[str, set[str]] = {}
        self._bodies = 0
        self._bodies_by_function: dict[str, int] = {}

    # ------------------------------------------------------------ scheduling

    def submit(self, rt: CallRuntime) -> None:
        self.runtimes[rt.call_id] = rt
        self._queues.setdefault(rt.function_id, deque()).append(rt.call_id)
        self._schedule(rt.function_id)

    def active_calls(self, app_id: str) -> list[CallRuntime]:
        return [rt for rt in self.runtimes.values() if rt.app_id == app_id and not rt.done.is_set()]

    def running_tasks(self, app_id: str) -> int:
        return sum(1 for rt in self.active_calls(app_id) if rt.process is not None)

    def _schedule(self, function_id: str) -> None:
        queue = self._queues.get(function_id)
        running = self._running.setdefault(function_id, set())
        limit = self.fake.function_max_containers(function_id)
        while queue and (limit is None or len(running) < limit):
            rt = self.runtimes[queue.popleft()]
            running.add(rt.call_id)
            self.fake.calls[rt.call_id]["status"] = "running"
            rt.task = asyncio.get_running_loop().create_task(self._run_call(rt))

    async def _run_call(self, rt: CallRuntime) -> None:
        try:
            result = await self._attempts(rt)
        except Exception as exc:  # a bug in the fake: fail the call loudly
            import traceback

            self.fake.record_error(traceback.format_exc())
            result = Result(
                status=Result.GENERIC_STATUS_INTERNAL_FAILURE,
                exception=f"fake_modal executor error: {exc!r}",
            )
        finally:
            self._running[rt.function_id].discard(rt.call_id)
        self._finish(rt, result)
        self._schedule(rt.function_id)

    def _finish(self, rt: CallRuntime, result: Any) -> None:
        rt.result = result
        status_names = {
            Result.GENERIC_STATUS_SUCCESS: "success",
            Result.GENERIC_STATUS_TIMEOUT: "timeout",
        }
        call = self.fake.calls[rt.call_id]
        call["status"] = rt.stop_status or status_names.get(result.status, "failure")
        call["finished_at"] = time.time()
        rt.done.set()
        self.fake.on_call_finished(rt.app_id)
        self.fake.pulse()

    # -------------------------------------------------------------- stopping

    async def stop_call(self, call_id: str, status: str) -> None:
        """Cancel a call: drop it from the queue, or terminate its running process."""
        rt = self.runtimes[call_id]
        if rt.done.is_set():
            return
        rt.stop_status = status
        rt.stop_event.set()
        queue = self._queues.get(rt.function_id)
        if queue is not None and call_id in queue:
            queue.remove(call_id)
            self._finish(rt, _stopped_result(status))
            return
        if rt.process is not None:
            await self._terminate(rt.process)
        await rt.done.wait()

    def preempt(self, call_id: str) -> None:
        """Preempt the running attempt of a call now (it restarts with the same input)."""
        rt = self.runtimes[call_id]
        if rt.process is None:
            raise RuntimeError(f"call {call_id} has no running attempt to preempt")
        rt.preempt_now.set()

    async def stop_app_calls(self, app_id: str, status: str) -> None:
        await asyncio.gather(
            *(self.stop_call(rt.call_id, status) for rt in self.active_calls(app_id))
        )

    async def shutdown(self) -> None:
        """Terminate everything (used by `FakeModal.reset` / `stop`)."""
        saved_grace = self.fake.grace_s
        self.fake.grace_s = min(saved_grace, 1.0)
        try:
            active = [rt for rt in self.runtimes.values() if not rt.done.is_set()]
            await asyncio.gather(*(self.stop_call(rt.call_id, "terminated") for rt in active))
        finally:
            self.fake.grace_s = saved_grace
        self.runtimes.clear()
        self._queues.clear()
        self._running.clear()
        self._bodies = 0
        self._bodies_by_function.clear()

    async def _terminate(self, process: asyncio.subprocess.Process) -> None:
        """SIGTERM the process group, wait `grace_s`, then SIGKILL whatever is left."""
        _signal_group(process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), timeout=self.fake.grace_s)
        except TimeoutError:
            _signal_group(process.pid, signal.SIGKILL)
            await process.wait()
        _signal_group(process.pid, signal.SIGKILL)  # stray children of the group

    # -------------------------------------------------------------- attempts

    async def _attempts(self, rt: CallRuntime) -> Any:
        definition = self.fake.function_defs(rt.function_id)
        policy = definition.retry_policy if definition.HasField("retry_policy") else None
        failures = 0
        while rt.stop_status is None:
            preempt_in = rt.preemptions.pop(0) if rt.preemptions else None
            outcome = await self._run_attempt(rt, definition, preempt_in)
            if rt.stop_status is not None:
                return _stopped_result(rt.stop_status)
            if outcome.kind == "preempted":
                self._system_log(
                    rt,
                    "Runner interrupted due to (fake) worker preemption. "
                    "Function will be restarted with the same input.\n",
                )
                continue
            if outcome.kind == "success" or policy is None or failures >= policy.retries:
                return outcome.result
            failures += 1
            delay_s = _retry_delay_s(policy, failures)
            self._system_log(
                rt, f"Retrying input in {delay_s:.1f}s (retry {failures} of {policy.retries}).\n"
            )
            try:
                await asyncio.wait_for(rt.stop_event.wait(), timeout=delay_s)
            except TimeoutError:
                pass
        return _stopped_result(rt.stop_status)

    async def _run_attempt(
        self, rt: CallRuntime, definition: Any, preempt_in: float | None
    ) -> _Outcome:
        from .fake import new_id

        call = self.fake.calls[rt.call_id]
        task_id = new_id("ta")
        attempt: dict[str, Any] = {
            "task_id": task_id,
            "started": time.time(),
            "ended": None,
            "exit_code": None,
            "preempted": False,
        }
        call["attempts"].append(attempt)
        workdir = self.fake.root / "_fake_modal" / "calls" / rt.call_id / str(len(call["attempts"]))
        workdir.mkdir(parents=True, exist_ok=True)
        spec = self._write_spec(rt, definition, task_id, workdir)
        env = self.fake.container_env(rt.function_id, task_id, rt.call_id)

        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-u",
            "-c",
            BOOTSTRAP,
            str(RUNNER),
            str(workdir / "spec.json"),
            cwd=self.fake.root,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # its own process group, so signals reach its children too
        )
        rt.process = process
        self._body_started(rt.function_id)
        if rt.stop_status is not None:  # cancelled while the process was being started
            await self._terminate(process)
        ids = {
            "function_id": rt.function_id,
            "function_call_id": rt.call_id,
            "task_id": task_id,
            "input_id": rt.input_id,
        }
        assert process.stdout is not None and process.stderr is not None
        pumps = asyncio.gather(
            self._pump(process.stdout, rt.app_id, "stdout", ids),
            self._pump(process.stderr, rt.app_id, "stderr", ids),
        )
        timeout_s = definition.timeout_secs or DEFAULT_TIMEOUT_S
        kind: str | None = None
        waiter = asyncio.ensure_future(process.wait())
        preempt_now = asyncio.ensure_future(rt.preempt_now.wait())
        limit = min(timeout_s, preempt_in) if preempt_in is not None else timeout_s
        done, _ = await asyncio.wait(
            {waiter, preempt_now}, timeout=limit, return_when=asyncio.FIRST_COMPLETED
        )
        preempt_now.cancel()
        rt.preempt_now.clear()
        if waiter not in done and rt.stop_status is None:
            timed_out = not done and (preempt_in is None or preempt_in > timeout_s)
            kind = "timeout" if timed_out else "preempted"
            attempt["preempted"] = kind == "preempted"
            await self._terminate(process)
        await waiter
        _signal_group(process.pid, signal.SIGKILL)  # the container is gone: so are its children
        await pumps
        self._body_ended(rt.function_id)
        rt.process = None
        attempt["ended"] = time.time()
        attempt["exit_code"] = process.returncode
        self.fake.pulse()

        if rt.stop_status is not None:
            return _Outcome("stopped")
        if kind == "preempted":
            return _Outcome("preempted")
        if kind == "timeout":
            return _Outcome(
                "timeout",
                Result(
                    status=Result.GENERIC_STATUS_TIMEOUT,
                    exception=f"Function call timed out after {timeout_s} seconds",
                ),
            )
        return _Outcome(*self._read_output(Path(spec["output_path"]), rt, process.returncode))

    def _write_spec(
        self, rt: CallRuntime, definition: Any, task_id: str, workdir: Path
    ) -> dict[str, Any]:
        (workdir / "input.bin").write_bytes(rt.args)
        serialized_path = ""
        if definition.function_serialized:
            serialized_path = str(workdir / "function.pkl")
            Path(serialized_path).write_bytes(definition.function_serialized)
        spec = {
            "module_name": definition.module_name,
            "function_name": definition.implementation_name or definition.function_name,
            "serialized_path": serialized_path,
            "input_path": str(workdir / "input.bin"),
            "output_path": str(workdir / "output.pkl"),
            "data_format": rt.data_format,
            "task_id": task_id,
        }
        (workdir / "spec.json").write_text(json.dumps(spec, indent=2))
        return spec

    def _read_output(self, path: Path, rt: CallRuntime, returncode: int | None) -> tuple[str, Any]:
        if not path.exists():
            message = (
                f"Function exited with code {returncode} before returning a result"
                if returncode
                else "Function exited without returning a result"
            )
            return "failure", Result(
                status=Result.GENERIC_STATUS_FAILURE, exception=message, exitcode=returncode or 0
            )
        output = pickle.loads(path.read_bytes())
        if output["status"] == "success":
            data: bytes = output["data"]
            if len(data) > MAX_INLINE_OUTPUT:
                return "success", Result(
                    status=Result.GENERIC_STATUS_SUCCESS, data_blob_id=self.fake.put_blob(data)
                )
            return "success", Result(status=Result.GENERIC_STATUS_SUCCESS, data=data)
        result = Result(
            status=Result.GENERIC_STATUS_FAILURE,
            exception=output["exception"],
            traceback=output["traceback"],
        )
        if rt.data_format == api_pb2.DATA_FORMAT_PICKLE:  # Modal only ships pickled exceptions
            result.data = output["data"]
            result.serialized_tb = output["serialized_tb"]
            result.tb_line_cache = output["tb_line_cache"]
        return "failure", result

    # ------------------------------------------------------------ bookkeeping

    def _body_started(self, function_id: str) -> None:
        self._bodies += 1
        self._bodies_by_function[function_id] = self._bodies_by_function.get(function_id, 0) + 1
        fake = self.fake
        fake.max_concurrent_calls = max(fake.max_concurrent_calls, self._bodies)
        fake.max_concurrent_by_function[function_id] = max(
            fake.max_concurrent_by_function.get(function_id, 0),
            self._bodies_by_function[function_id],
        )

    def _body_ended(self, function_id: str) -> None:
        self._bodies -= 1
        self._bodies_by_function[function_id] -= 1

    def _system_log(self, rt: CallRuntime, text: str) -> None:
        self.fake.append_log(
            rt.app_id, "system", text, function_id=rt.function_id, function_call_id=rt.call_id
        )

    async def _pump(
        self, stream: asyncio.StreamReader, app_id: str, fd: str, ids: dict[str, str]
    ) -> None:
        """Forward a pipe into the app's logs, one entry per line, as the lines arrive."""
        pending = b""
        while chunk := await stream.read(65536):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                self.fake.append_log(app_id, fd, line.decode(errors="replace") + "\n", **ids)
            if len(pending) > 65536:  # e.g. a progress bar redrawn with "\r": don't hoard it
                self.fake.append_log(app_id, fd, pending.decode(errors="replace"), **ids)
                pending = b""
        if pending:
            self.fake.append_log(app_id, fd, pending.decode(errors="replace"), **ids)


def _stopped_result(status: str) -> Any:
    message = "Function call was cancelled" if status == "cancelled" else "App was stopped"
    return Result(status=Result.GENERIC_STATUS_TERMINATED, exception=message)


def _retry_delay_s(policy: Any, retry_number: int) -> float:
    delay_ms = policy.initial_delay_ms * (policy.backoff_coefficient or 1.0) ** (retry_number - 1)
    if policy.max_delay_ms:
        delay_ms = min(delay_ms, policy.max_delay_ms)
    return float(delay_ms) / 1000


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
