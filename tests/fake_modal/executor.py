"""Runs spawned calls as subprocesses: queueing, retries, preemption, cancellation, logs.

Each attempt runs ``_runner.py`` in a new container (containers.py): its own process group,
the function's environment (secrets, image ``ENV``) and its own copies of the volumes it
mounts (volumes.py); a clustered function's attempt runs in N containers at once, which end
together (attempt.py says how). How an attempt ends:

- its main process exits by itself: the container's remaining processes are killed, its
  volume changes committed and its result read; a failure (an exception, a non-zero exit
  without a result) is retried per the function's retry policy, its delays multiplied by
  ``FakeModal.retry_delay_scale``;
- timeout: SIGTERM to its process group, ``grace_s``, then the container is killed (its
  uncommitted changes are lost); retried like a failure, as Modal retries timeouts;
- preemption (`FakeModal.preempt`, of any container of a cluster: all of them): SIGINT to its
  main process, ``grace_s``, then the container is killed unless it has exited; the same input
  restarts in a new container (a new cluster) with the same retry count (the restart is
  Modal's, not the retry policy's), whatever the exit status;
- cancellation (``FunctionCall.cancel``): with ``terminate_containers`` the container is killed
  at once; without, its main process gets SIGUSR1 (InputCancellation in the function's main
  thread) and the container is killed if it is still there after ``grace_s``; never retried;
- app stop: SIGTERM to its process group, ``grace_s``, then killed; uncommitted changes lost;
- `FakeModal.reset` / `stop`: killed at once.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections import deque
from contextlib import suppress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from modal_proto import api_pb2

from .attempt import Attempt, Outcome
from .containers import Container

if TYPE_CHECKING:
    from .fake import FakeModal
    from .volumes import ContainerVolumes

FINAL_STATUSES = frozenset({"success", "failure", "timeout", "cancelled", "terminated"})

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
    attempt: Attempt | None = None  # the running one
    task: asyncio.Task[None] | None = None
    result: Any = None  # api_pb2.GenericResult once finished


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
        return len(self.live_containers(app_id=app_id))

    def live_containers(self, *, app_id: str = "", call_id: str = "") -> list[dict[str, Any]]:
        """The containers running now (of an app, of a call, or all), by call and rank."""
        return [
            {
                "call_id": rt.call_id,
                "app_id": rt.app_id,
                "rank": m.rank,
                "task_id": m.container.task_id,
                "pid": m.container.process.pid,
                "ipv4": m.ipv4,
                "started": rt.attempt.record["started"],
            }
            for rt in self.runtimes.values()
            if rt.attempt is not None and app_id in ("", rt.app_id) and call_id in ("", rt.call_id)
            for m in (rt.attempt.live() if rt.attempt.started else [])
        ]

    def volumes_of(self, task_id: str | None) -> ContainerVolumes | None:
        """The volume copies of a live container (None for a gone or unknown one)."""
        container = self.containers.get(task_id or "")
        return container.volumes if container is not None else None

    def _schedule(self, function_id: str) -> None:
        queue = self._queues.get(function_id)
        running = self._running.setdefault(function_id, set())
        limit = self.fake.function_max_containers(function_id)  # counts containers
        size = max(self.fake.function_defs(function_id)._experimental_group_size, 1)
        while queue and (limit is None or (len(running) + 1) * size <= limit):
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

    def _running_attempt(self, call_id: str) -> Attempt:
        attempt = self.runtimes[call_id].attempt
        if attempt is None:
            raise RuntimeError(f"call {call_id} has no running attempt")
        return attempt

    def preempt(self, call_id: str, rank: int) -> None:
        """Preempt a container of the running attempt of a call now: the whole attempt (a
        cluster's every container) ends and restarts with the same input."""
        self._running_attempt(call_id).member(rank)
        self.runtimes[call_id].preempt_now.set()

    async def kill_container(self, call_id: str, rank: int) -> None:
        """Kill a container of the running attempt of a call, as a crash would: the attempt
        fails (retried per the policy)."""
        member = self._running_attempt(call_id).member(rank)
        member.killed = True
        await member.container.kill()

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
                self.system_log(
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
            self.system_log(
                rt,
                f"Retrying input in {delay_s:.2f}s (retry {retry_count} of {policy.retries}).\n",
            )
            with suppress(TimeoutError):
                await asyncio.wait_for(rt.stop_event.wait(), timeout=delay_s)
        return _stopped_result(rt.stop_status or "terminated")

    async def _run_attempt(
        self, rt: CallRuntime, definition: Any, preempt_in: float | None, retry_count: int
    ) -> Outcome:
        attempt = Attempt(self, rt, definition, retry_count)
        rt.attempt = attempt
        self._body_started(rt.function_id)
        try:
            await attempt.start()
            how, decisive = await attempt.supervise(preempt_in)
            await attempt.wind_down(how)
        finally:
            await attempt.end()  # whatever happened, no container outlives its attempt
            rt.attempt = None
            self._body_ended(rt.function_id)
        return attempt.conclude(how, decisive)

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

    def system_log(self, rt: CallRuntime, text: str) -> None:
        self.fake.append_log(
            rt.app_id, "system", text, function_id=rt.function_id, function_call_id=rt.call_id
        )


def _stopped_result(status: str) -> Any:
    message = "Function call was cancelled" if status == "cancelled" else "App was stopped"
    return Result(status=Result.GENERIC_STATUS_TERMINATED, exception=message)


def _retry_delay_s(policy: Any, retry_number: int) -> float:
    delay_ms = policy.initial_delay_ms * (policy.backoff_coefficient or 1.0) ** (retry_number - 1)
    if policy.max_delay_ms:
        delay_ms = min(delay_ms, policy.max_delay_ms)
    return float(delay_ms) / 1000
