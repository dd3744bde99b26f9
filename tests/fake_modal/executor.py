"""Runs spawned calls as subprocesses: queueing, retries, preemption, cancellation, logs.

Each attempt runs ``_runner.py`` in a new container (containers.py): its own process group,
the function's environment (secrets, image ``ENV``) and its own copies of the volumes it
mounts (volumes.py). How an attempt ends:

- its main process exits by itself: the container's remaining processes are killed, its
  volume changes committed and its result read; a failure (an exception, a non-zero exit
  without a result) is retried per the function's retry policy, its delays multiplied by
  ``FakeModal.retry_delay_scale``;
- timeout: SIGTERM to its process group, ``grace_s``, then the container is killed (its
  uncommitted changes are lost); retried like a failure, as Modal retries timeouts;
- preemption: SIGINT to its main process, ``grace_s``, then the container is killed unless it
  has exited; the same input restarts in a new container with the same retry count (the
  restart is Modal's, not the retry policy's), whatever the exit status;
- cancellation (``FunctionCall.cancel``): with ``terminate_containers`` the container is killed
  at once; without, its main process gets SIGUSR1 (InputCancellation in the function's main
  thread) and the container is killed if it is still there after ``grace_s``; never retried;
- app stop: SIGTERM to its process group, ``grace_s``, then killed; uncommitted changes lost;
- `FakeModal.reset` / `stop`: killed at once.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections import deque
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modal_proto import api_pb2

from .containers import Container, container_env, signal_group, volume_copies
from .runner_io import NO_RESULT, read_output, write_spec

if TYPE_CHECKING:
    from .fake import FakeModal
    from .volumes import ContainerVolumes

FINAL_STATUSES = frozenset({"success", "failure", "timeout", "cancelled", "terminated"})
RUNNER = Path(__file__).with_name("_runner.py")
BOOTSTRAP = "import runpy, sys; runpy.run_path(sys.argv[1], run_name='__main__')"
DEFAULT_TIMEOUT_S = 300
DRAIN_S = 10.0  # for the output pipes to close once every process of the container is dead

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
    stop_status: str | None = None  # "cancelled" or "terminated" once asked to stop
    # How a stop reaches the container: SIGUSR1 (to the main process, an input cancellation)
    # or SIGTERM (to the process group, an app stop), each followed by grace_s; None: a kill.
    stop_signal: signal.Signals | None = None
    stop_event: asyncio.Event = field(default_factory=asyncio.Event)
    kill_now: asyncio.Event = field(default_factory=asyncio.Event)  # cuts any grace short
    preempt_now: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    container: Container | None = None
    task: asyncio.Task[None] | None = None
    result: Any = None  # api_pb2.GenericResult once finished


@dataclass
class _Outcome:
    # "success", "failure", "cancelled", NO_RESULT (a failure too), "timeout", "preempted" or
    # "stopped"
    kind: str
    result: Any = None


class Executor:
    def __init__(self, fake: FakeModal) -> None:
        self.fake = fake
        self.runtimes: dict[str, CallRuntime] = {}
        self.containers: dict[str, Container] = {}  # the live ones, by task id
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
        return sum(1 for rt in self.active_calls(app_id) if rt.container is not None)

    def volumes_of(self, task_id: str | None) -> ContainerVolumes | None:
        """The volume copies of a live container (None for a gone or unknown one)."""
        container = self.containers.get(task_id or "")
        return container.volumes if container is not None else None

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

    def stop_call(self, call_id: str, status: str, how: signal.Signals | None) -> None:
        """Ask a call to stop, and return at once: a queued call is dropped; a running one's
        container gets ``how`` (see `CallRuntime.stop_signal`). A later kill cuts a grace short."""
        rt = self.runtimes[call_id]
        if rt.done.is_set():
            return
        if rt.stop_status is None:
            rt.stop_status, rt.stop_signal = status, how
        if how is None:
            rt.kill_now.set()
        rt.stop_event.set()
        queue = self._queues.get(rt.function_id)
        if queue is not None and call_id in queue:
            queue.remove(call_id)
            self._finish(rt, _stopped_result(status))

    def preempt(self, call_id: str) -> None:
        """Preempt the running attempt of a call now (it restarts with the same input)."""
        rt = self.runtimes[call_id]
        if rt.container is None:
            raise RuntimeError(f"call {call_id} has no running attempt to preempt")
        rt.preempt_now.set()

    async def stop_app_calls(self, app_id: str, status: str) -> None:
        active = self.active_calls(app_id)
        for rt in active:
            self.stop_call(rt.call_id, status, signal.SIGTERM)
        await asyncio.gather(*(rt.done.wait() for rt in active))

    async def shutdown(self) -> None:
        """Kill every container and forget every call (used by `FakeModal.reset` / `stop`)."""
        active = [rt for rt in self.runtimes.values() if not rt.done.is_set()]
        for rt in active:
            self.stop_call(rt.call_id, "terminated", None)
        await asyncio.gather(*(rt.done.wait() for rt in active))
        self.runtimes.clear()
        self._queues.clear()
        self._running.clear()
        self._bodies = 0
        self._bodies_by_function.clear()

    # -------------------------------------------------------------- attempts

    async def _attempts(self, rt: CallRuntime) -> Any:
        definition = self.fake.function_defs(rt.function_id)
        policy = definition.retry_policy if definition.HasField("retry_policy") else None
        retry_count = 0
        while rt.stop_status is None:
            preempt_in = rt.preemptions.pop(0) if rt.preemptions else None
            outcome = await self._run_attempt(rt, definition, preempt_in, retry_count)
            if rt.stop_status is not None:
                break
            if outcome.kind == "preempted":
                self._system_log(
                    rt,
                    "Runner interrupted due to (fake) worker preemption. "
                    "Function will be restarted with the same input.\n",
                )
                continue
            if (
                outcome.kind in ("success", "cancelled")
                or policy is None
                or retry_count >= policy.retries
            ):
                return outcome.result
            retry_count += 1
            delay_s = _retry_delay_s(policy, retry_count) * self.fake.retry_delay_scale
            self._system_log(
                rt,
                f"Retrying input in {delay_s:.2f}s (retry {retry_count} of {policy.retries}).\n",
            )
            with suppress(TimeoutError):
                await asyncio.wait_for(rt.stop_event.wait(), timeout=delay_s)
        return _stopped_result(rt.stop_status or "terminated")

    async def _run_attempt(
        self, rt: CallRuntime, definition: Any, preempt_in: float | None, retry_count: int
    ) -> _Outcome:
        container, attempt, spec = await self._start_container(rt, definition, retry_count)
        ids = {
            "function_id": rt.function_id,
            "function_call_id": rt.call_id,
            "task_id": container.task_id,
            "input_id": rt.input_id,
        }
        process = container.process
        assert process.stdout is not None and process.stderr is not None
        pumps = asyncio.gather(
            self._pump(process.stdout, rt.app_id, "stdout", ids),
            self._pump(process.stderr, rt.app_id, "stderr", ids),
        )
        timeout_s = definition.timeout_secs or DEFAULT_TIMEOUT_S
        kind, by_itself = await self._supervise(rt, container, timeout_s, preempt_in)
        await container.kill()  # the container is gone: so is every process it started
        try:
            await asyncio.wait_for(pumps, DRAIN_S)
        except TimeoutError:
            self.fake.record_error(
                f"{container.task_id}: a process without the container's marker kept its "
                "output open"
            )
        if by_itself:
            container.volumes.commit_all()  # Modal commits a container's volumes at shutdown
        container.volumes.remove()
        del self.containers[container.task_id]
        rt.container = None
        self._body_ended(rt.function_id)
        attempt.update(
            ended=time.time(),
            exit_code=process.returncode,
            preempted=kind == "preempted",
            killed=not by_itself,
        )
        self.fake.pulse()

        # What the function reported, if it ended by itself (read even when stopped or
        # preempted, for the record).
        outcome = (
            _Outcome(*read_output(spec, rt.data_format, process.returncode, self.fake.put_blob))
            if by_itself
            else None
        )
        if outcome is not None and outcome.kind != NO_RESULT:
            attempt["output"] = outcome.kind
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
        assert outcome is not None  # the main process exited by itself
        return outcome

    async def _start_container(
        self, rt: CallRuntime, definition: Any, retry_count: int
    ) -> tuple[Container, dict[str, Any], dict[str, Any]]:
        from .fake import new_id

        call = self.fake.calls[rt.call_id]
        task_id = new_id("ta")
        attempt: dict[str, Any] = {
            "task_id": task_id,
            "retry_count": retry_count,  # Modal's: +1 per failure retried, kept by a restart
            "started": time.time(),
            "ended": None,
            "exit_code": None,
            "preempted": False,
            # Ended by the fake (timeout, stop, kill, grace expired), not by itself: its
            # uncommitted volume changes were lost.
            "killed": False,
            "output": None,  # what the function reported: success, failure or cancelled
        }
        call["attempts"].append(attempt)
        workdir = self.fake.root / "_fake_modal" / "calls" / rt.call_id / str(len(call["attempts"]))
        workdir.mkdir(parents=True, exist_ok=True)
        spec = write_spec(workdir, definition, rt.args, rt.data_format, task_id)
        volumes = volume_copies(self.fake, rt.function_id, task_id)
        volumes.seed()
        env = container_env(self.fake, rt.function_id, task_id, rt.call_id, volumes.local_mounts())
        container = await Container.start(
            task_id,
            volumes,
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
            start_new_session=True,  # its own process group, as a container's processes are
        )
        self.containers[task_id] = container
        rt.container = container
        self._body_started(rt.function_id)
        return container, attempt, spec

    async def _supervise(
        self, rt: CallRuntime, container: Container, timeout_s: float, preempt_in: float | None
    ) -> tuple[str, bool]:
        """Wait for the attempt to end. Returns how ("exited", "stopped", "preempted" or
        "timeout") and whether its main process ended by itself (so its changes commit)."""
        waits = {
            "exited": asyncio.ensure_future(container.exited.wait()),
            "preempted": asyncio.ensure_future(rt.preempt_now.wait()),
            "stopped": asyncio.ensure_future(rt.stop_event.wait()),
        }
        limit = timeout_s if preempt_in is None else min(timeout_s, preempt_in)
        done, _ = await asyncio.wait(
            waits.values(), timeout=limit, return_when=asyncio.FIRST_COMPLETED
        )
        for waiting in waits.values():
            waiting.cancel()
        rt.preempt_now.clear()
        grace_s = self.fake.grace_s
        if waits["exited"] in done:
            return "exited", True
        if waits["stopped"] in done:
            return "stopped", await self._stop_container(rt, container)
        if waits["preempted"] in done or (preempt_in is not None and preempt_in <= timeout_s):
            container.signal_main(signal.SIGINT)
            return "preempted", await container.wait_exit(grace_s, rt.kill_now)
        signal_group(container.process.pid, signal.SIGTERM)
        await container.wait_exit(grace_s, rt.kill_now)
        return "timeout", False

    async def _stop_container(self, rt: CallRuntime, container: Container) -> bool:
        """Deliver a stop; True if the function then ended by itself (an input cancellation
        lets it; a terminated container's changes are lost however it ends)."""
        how = rt.stop_signal
        if how is None or rt.kill_now.is_set():
            return False
        if how == signal.SIGUSR1:
            container.signal_main(how)
            return await container.wait_exit(self.fake.grace_s, rt.kill_now)
        signal_group(container.process.pid, how)
        await container.wait_exit(self.fake.grace_s, rt.kill_now)
        return False

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
