"""One attempt of a call: its containers, from their start together to the end of the last one.

A function that is not clustered runs each attempt in one container (rank 0). A clustered one
(``@modal.clustered(size=N)``) runs it in N containers started together as one cluster
(clusters.py), ranks 0..N-1, each with its own task id, process group, environment and volume
copies, all given the same input; only rank 0's output is the attempt's. How an attempt ends
(executor.py decides what follows: a result, a retry, a restart):

- rank 0's main process exits by itself: its output is the attempt's outcome;
- another rank's main process exits by itself with a result: that container ends, the others
  go on;
- another rank fails (an exception, no result) or any rank is killed
  (`FakeModal.kill_container`): the attempt fails with that rank's failure;
- preemption (of any rank: the whole cluster), cancellation, app stop, timeout: every
  container gets what a single one would (see executor.py).

Every container still running when the attempt's outcome is known is ended: after rank 0's
exit or a rank's failure, SIGTERM to its process group, ``grace_s``, then killed. A container
whose main process ended by itself (also within the grace after a preemption's SIGINT or a
cancellation's SIGUSR1) commits its volumes at its end; one the fake ended (a teardown's
SIGTERM, a timeout, an app stop, a kill) loses what it had not committed.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modal_proto import api_pb2

from .clusters import IP_ENV, cluster_record, prefix_of
from .containers import Container, container_env, signal_group, volume_copies
from .runner_io import NO_RESULT, read_output, write_input, write_spec

if TYPE_CHECKING:
    from .executor import CallRuntime, Executor

RUNNER = Path(__file__).with_name("_runner.py")
BOOTSTRAP = "import runpy, sys; runpy.run_path(sys.argv[1], run_name='__main__')"
DEFAULT_TIMEOUT_S = 300
DRAIN_S = 10.0  # for the output pipes to close once every process of the container is dead

Result = api_pb2.GenericResult


@dataclass
class Outcome:
    # "success", "failure", "cancelled", NO_RESULT (a failure too), "timeout", "preempted" or
    # "stopped"
    kind: str
    result: Any = None


@dataclass
class Member:
    """One container of an attempt."""

    rank: int
    container: Container
    spec: dict[str, Any]
    ipv4: str | None  # its address in its cluster (None: not clustered)
    pumps: asyncio.Future[Any]  # its output, forwarded to the app's logs
    killed: bool = False  # by `FakeModal.kill_container`: a failure of the attempt
    by_itself: bool = False  # its main process ended by itself: its volume changes commit
    ended: bool = False  # the container is gone
    output: tuple[str, Any] | None = None  # what its function reported, once read


class Attempt:
    def __init__(
        self, executor: Executor, rt: CallRuntime, definition: Any, retry_count: int
    ) -> None:
        self.executor = executor
        self.fake = executor.fake
        self.rt = rt
        self.definition = definition
        self.retry_count = retry_count
        self.timeout_s: int = definition.timeout_secs or DEFAULT_TIMEOUT_S
        self.members: list[Member] = []
        self.started = False  # every container is started (they are started one by one)
        self.record: dict[str, Any] = {}  # its entry in `FakeModal.calls[call_id]["attempts"]`

    def live(self) -> list[Member]:
        return [m for m in self.members if not m.ended]

    def member(self, rank: int) -> Member:
        live = {m.rank: m for m in self.live()} if self.started else {}
        if rank not in live:
            raise RuntimeError(f"call {self.rt.call_id} has no running container of rank {rank}")
        return live[rank]

    # ----------------------------------------------------------------- start

    async def start(self) -> None:
        """Start every container of the attempt (N for a cluster of size N, else one)."""
        from .fake import new_id

        call = self.fake.calls[self.rt.call_id]
        group_size = self.definition._experimental_group_size
        task_ids = [new_id("ta") for _ in range(max(group_size, 1))]
        cluster = None
        if group_size:  # modal's entrypoint joins a cluster for any size, even 1
            taken = {prefix_of(c["ipv4"][0]) for c in self.fake.clusters.values()}
            cluster = cluster_record(new_id("cu"), call, task_ids, taken)
            self.fake.clusters[cluster["cluster_id"]] = cluster  # before any container says hello
        self.record = {
            "task_id": task_ids[0],  # rank 0's, as exit_code, killed and output are
            "tasks": task_ids,  # by rank
            "cluster_id": cluster["cluster_id"] if cluster else None,
            "retry_count": self.retry_count,  # Modal's: +1 per failure retried, kept by a restart
            "started": time.time(),
            "ended": None,
            "exit_code": None,
            "exit_codes": [],  # by rank
            "preempted": False,
            # Ended by the fake (timeout, stop, kill, grace expired), not by itself: its
            # uncommitted volume changes were lost.
            "killed": False,
            "output": None,  # what the function reported: success, failure or cancelled
            "failed_rank": None,  # the rank whose failure or kill ended the attempt
        }
        call["attempts"].append(self.record)
        calls_dir = self.fake.root / "_fake_modal" / "calls"
        workdir = calls_dir / self.rt.call_id / str(len(call["attempts"]))
        workdir.mkdir(parents=True, exist_ok=True)
        shared = write_input(workdir, self.definition, self.rt.args, self.rt.data_format)
        for rank, task_id in enumerate(task_ids):
            member = await self._start_member(workdir, shared, rank, task_id, cluster)
            self.members.append(member)
        self.started = True

    async def _start_member(
        self,
        workdir: Path,
        shared: dict[str, Any],
        rank: int,
        task_id: str,
        cluster: dict[str, Any] | None,
    ) -> Member:
        rt = self.rt
        i6pn, ipv4 = (cluster["ipv6"][rank], cluster["ipv4"][rank]) if cluster else (None, None)
        spec_path, spec = write_spec(workdir, shared, rank, task_id, i6pn)
        volumes = volume_copies(self.fake, rt.function_id, task_id)
        volumes.seed()
        env = container_env(self.fake, rt.function_id, task_id, rt.call_id, volumes.local_mounts())
        if ipv4 is not None:
            env[IP_ENV] = ipv4
        container = await Container.start(
            task_id,
            volumes,
            sys.executable,
            "-u",
            "-c",
            BOOTSTRAP,
            str(RUNNER),
            str(spec_path),
            cwd=self.fake.root,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # its own process group, as a container's processes are
        )
        self.executor.containers[task_id] = container
        ids = {
            "function_id": rt.function_id,
            "function_call_id": rt.call_id,
            "task_id": task_id,
            "input_id": rt.input_id,
        }
        process = container.process
        assert process.stdout is not None and process.stderr is not None
        pumps = asyncio.gather(
            self._pump(process.stdout, "stdout", ids), self._pump(process.stderr, "stderr", ids)
        )
        return Member(rank, container, spec, ipv4, pumps)

    async def _pump(self, stream: asyncio.StreamReader, fd: str, ids: dict[str, str]) -> None:
        """Forward a pipe into the app's logs, one entry per line, as the lines arrive."""
        app_id, pending = self.rt.app_id, b""
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

    # ------------------------------------------------------------- running

    async def supervise(self, preempt_in: float | None) -> tuple[str, Member | None]:
        """Wait until the attempt's outcome is known. Returns how it ends: "exited" (rank 0
        exited by itself), "failed" (with the rank that failed or was killed), "stopped",
        "preempted" or "timeout"."""
        rt, loop = self.rt, asyncio.get_running_loop()
        limit = self.timeout_s if preempt_in is None else min(self.timeout_s, preempt_in)
        deadline = loop.time() + limit
        try:
            while True:
                live = self.live()
                exits = [asyncio.ensure_future(m.container.exited.wait()) for m in live]
                preempted = asyncio.ensure_future(rt.preempt_now.wait())
                stopped = asyncio.ensure_future(rt.stop_event.wait())
                waits = [*exits, preempted, stopped]
                timeout = max(deadline - loop.time(), 0)
                done, _ = await asyncio.wait(
                    waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                for waiting in waits:
                    waiting.cancel()
                for member in [m for m in live if m.container.exited.is_set()]:
                    verdict = self._judge_exit(member)
                    if verdict is not None:
                        return verdict
                    await self._end(member)  # a rank > 0 done with its part
                if stopped in done:
                    return "stopped", None
                if preempted in done:
                    return "preempted", None
                if not done:  # the deadline: a timeout, or a preemption planned before it
                    planned = preempt_in is not None and preempt_in <= self.timeout_s
                    return ("preempted" if planned else "timeout"), None
        finally:
            rt.preempt_now.clear()

    def _judge_exit(self, member: Member) -> tuple[str, Member] | None:
        """What a container's exit means for the attempt (None: nothing, it just ends)."""
        if member.killed:
            return "failed", member
        member.by_itself = True
        if member.rank == 0:
            return "exited", member
        kind, _ = self._output(member)
        return None if kind == "success" else ("failed", member)

    def _output(self, member: Member) -> tuple[str, Any]:
        if member.output is None:
            returncode = member.container.process.returncode
            member.output = read_output(member.spec, returncode, self.fake.put_blob)
        return member.output

    async def wind_down(self, how: str) -> None:
        """Bring every container still running to its end as ``how`` (what `supervise` said)
        asks, and note those that ended by themselves."""
        running = [m for m in self.live() if not m.container.exited.is_set()]
        rt = self.rt
        if how == "preempted":
            await self._signal(running, signal.SIGINT, main_only=True, commits=True)
        elif how != "stopped":  # rank 0 exited, a rank failed, or a timeout: a teardown
            await self._signal(running, signal.SIGTERM, main_only=False, commits=False)
        elif rt.stop_signal == signal.SIGUSR1 and not rt.kill_now.is_set():
            await self._signal(running, signal.SIGUSR1, main_only=True, commits=True)
        elif rt.stop_signal is not None and not rt.kill_now.is_set():
            await self._signal(running, rt.stop_signal, main_only=False, commits=False)

    async def _signal(
        self, members: list[Member], sig: signal.Signals, *, main_only: bool, commits: bool
    ) -> None:
        """Signal each container's main process (what Modal's worker does: its children are its
        business) or whole process group, and give them ``grace_s`` together (a kill cuts it
        short); with ``commits``, one that exits within it ended by itself."""
        for m in members:
            if main_only:
                m.container.signal_main(sig)
            else:
                signal_group(m.container.process.pid, sig)
        grace_s, give_up = self.fake.grace_s, self.rt.kill_now
        exited = await asyncio.gather(*(m.container.wait_exit(grace_s, give_up) for m in members))
        for m, gone in zip(members, exited, strict=True):
            m.by_itself = commits and gone and not m.killed

    # ------------------------------------------------------------------- end

    async def end(self) -> None:
        """End every container still there (killing whatever still runs in it)."""
        await asyncio.gather(*(self._end(m) for m in self.live()))

    async def _end(self, member: Member) -> None:
        """The container is gone, and so is every process it started; a container whose main
        process ended by itself commits its volumes, as Modal does at shutdown."""
        container = member.container
        await container.kill()
        try:
            await asyncio.wait_for(member.pumps, DRAIN_S)
        except TimeoutError:
            self.fake.record_error(
                f"{container.task_id}: a process without the container's marker kept its "
                "output open"
            )
        if member.by_itself:
            container.volumes.commit_all()
        container.volumes.remove()
        del self.executor.containers[container.task_id]
        member.ended = True
        self.fake.pulse()

    def conclude(self, how: str, decisive: Member | None) -> Outcome:
        """Record how the attempt ended (once every container is gone) and return its outcome."""
        rank0 = self.members[0]
        self.record.update(
            ended=time.time(),
            exit_code=rank0.container.process.returncode,
            exit_codes=[m.container.process.returncode for m in self.members],
            preempted=how == "preempted",
            killed=not rank0.by_itself,
            failed_rank=decisive.rank if how == "failed" and decisive else None,
        )
        self.fake.pulse()
        # What rank 0 reported, if it ended by itself (read even when stopped or preempted,
        # for the record).
        outcome = Outcome(*self._output(rank0)) if rank0.by_itself else None
        if outcome is not None and outcome.kind != NO_RESULT:
            self.record["output"] = outcome.kind
        if self.rt.stop_status is not None:
            return Outcome("stopped")
        if how in ("preempted", "timeout"):
            return Outcome(how, self._timeout_result() if how == "timeout" else None)
        if how == "failed" and decisive is not None:
            return self._failure(decisive)
        assert outcome is not None  # rank 0's main process exited by itself
        return outcome

    def _timeout_result(self) -> Any:
        message = f"Function call timed out after {self.timeout_s} seconds"
        return Result(status=Result.GENERIC_STATUS_TIMEOUT, exception=message)

    def _failure(self, member: Member) -> Outcome:
        """The attempt failed because of one container: its failure, or its being killed."""
        where = member.container.task_id
        if self.record["cluster_id"]:
            where += f" (cluster rank {member.rank})"
        returncode = member.container.process.returncode
        self.executor.system_log(self.rt, f"Container {where} failed: the attempt ends.\n")
        if not member.killed:
            return Outcome(*self._output(member))
        failed = Result(
            status=Result.GENERIC_STATUS_FAILURE,
            exception=f"Container {where} was killed",
            exitcode=returncode or 0,
        )
        return Outcome(NO_RESULT, failed)
