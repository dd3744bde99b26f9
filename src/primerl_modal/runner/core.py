"""Run one attempt of a planned run: start the prime-rl launcher, forward its output,
track progress, commit outputs, handle signals, and record how the attempt ended."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Protocol, TextIO

from primerl_modal.core import status as st
from primerl_modal.core.cost import format_usd
from primerl_modal.core.plan import META_DIR
from primerl_modal.runner.checkpoints import resume_from, set_aside
from primerl_modal.runner.forward import LogTailer, Sink, pump_pipe
from primerl_modal.runner.progress import Progress, max_steps_from_argv
from primerl_modal.runner.state import RunState, read_json, stop_requested, write_json_atomic
from primerl_modal.runner.telemetry import SAMPLE_EVERY_S, Sampler, describe
from primerl_modal.runner.watch import Verdict, Watch, spent_usd

FAILURE_LINES = 20
_HEARTBEAT_S = 5.0
_SAVE_EVERY_S = 1.0
_STOP_POLL_S = 10.0
# What is left of the attempt's time limit when the runner ends the attempt itself: the
# launcher's grace plus a commit, so a timeout is a recorded failure, not a kill.
_TIME_LIMIT_MARGIN_S = 15.0
CANCEL_SIGNAL = signal.SIGUSR1  # Modal's input cancellation for a synchronous function


@dataclass(frozen=True)
class PeerEnd:
    """How another node of the cluster ended (what it announced)."""

    rank: int
    status: str
    note: str
    preempted: bool = False


class ClusterHooks(Protocol):
    """What makes this runner one node of a Modal cluster (runner/cluster.py)."""

    rank: int
    poll_s: float

    def log_path(self, attempt: int) -> Path: ...

    def launch(self, runner: Runner, argv: list[str], sink: Sink) -> list[str] | int: ...

    def peer_end(self) -> PeerEnd | None: ...

    def peer_failures(self) -> list[PeerEnd]: ...

    def announce_failure(self, status: str, note: str) -> None: ...


@dataclass(frozen=True)
class RunnerOptions:
    outputs_root: Path  # where the plan's outputs root really is (a volume mount, a folder)
    workdir: Path | None = None  # the prime-rl checkout, when not the plan's
    launcher: tuple[str, ...] | None = None  # replaces the plan's launcher prefix
    commit_every: float = 30.0
    grace: float = 25.0
    poll: float = 0.25
    # Failure retries the platform grants this call, and the call itself: the budget is
    # counted from the run's own attempt records, so it survives hard kills.
    retries: int = 0
    call_id: str | None = None
    # A platform SIGINT/SIGTERM is a preemption that the platform restarts (Modal), rather
    # than an end (a local kill).
    preemptible: bool = False
    time_limit_s: float | None = None  # the platform's limit for this attempt
    gpu_sample_every: float = SAMPLE_EVERY_S
    # Whether `prm stop` asked for this stop (else a signal means preemption or shutdown).
    stop_requested: Callable[[Path], bool] = stop_requested
    # One node of a cluster: its hooks, and where its own state lives (rank 0: the run's)
    cluster: ClusterHooks | None = None
    meta_dir: Path | None = None


def gpu_sample_every() -> float:
    """How often the runner asks nvidia-smi (PRM_GPU_SAMPLE_S: tests sample faster)."""
    try:
        return float(os.environ.get("PRM_GPU_SAMPLE_S") or SAMPLE_EVERY_S)
    except ValueError:
        return SAMPLE_EVERY_S


def has_artifacts(run_dir: Path) -> bool:
    """Whether prime-rl would refuse this run directory without --resume."""
    return run_dir.is_dir() and any(p.name != "configs" for p in run_dir.iterdir())


class Runner:
    def __init__(self, plan: dict[str, Any], commit: Callable[[], None],
                 options: RunnerOptions, out: TextIO) -> None:
        self.plan = plan
        self._commit = commit
        self.options = options
        self.out = out
        self.run_id: str = plan["run_id"]
        root = options.outputs_root
        self.meta_dir = options.meta_dir or root / META_DIR / self.run_id
        self.run_dir = Path(self.remap(plan["run_dir"]))
        self.state = RunState.load(self.meta_dir, self.run_id)
        self.signal: int | None = None
        self.signal_at = 0.0
        self.reason: str | None = None  # why the runner itself ended the launcher
        self.verdict: Verdict | None = None  # the guard's, when it ended the launcher
        self.peer: PeerEnd | None = None  # another node's end, which ended this one
        self.proc: subprocess.Popen[bytes] | None = None
        self.sink: Sink | None = None
        self.started = time.monotonic()

    def remap(self, value: str) -> str:
        """Paths under the plan's outputs root, moved to where that root really is."""
        logical = self.plan["outputs_root"]
        if value == logical or value.startswith(logical + "/"):
            return str(self.options.outputs_root) + value[len(logical):]
        return value

    def commit(self) -> None:
        """Publish what the run wrote; a failed commit is said, never fatal (the next one,
        or the platform's own at shutdown, carries it)."""
        try:
            self._commit()
        except Exception as e:  # noqa: BLE001 - any platform error: keep running
            self.say(f"commit failed ({type(e).__name__}: {e}); retrying at the next one")

    def say(self, text: str) -> None:
        if self.sink is not None:
            self.sink.emit("runner", [text])
        else:
            print(f"[runner] {text}", file=self.out, flush=True)

    def prepare(self) -> list[str]:
        if not (self.meta_dir / "plan.json").exists():
            write_json_atomic(self.meta_dir / "plan.json", self.plan)
        for item in self.plan.get("inputs", []):
            path = Path(self.remap(item["path"]))
            if "text" in item and (not path.exists() or path.read_text() != item["text"]):
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(item["text"])
        argv = [self.remap(a) for a in self.plan["argv"]]
        if self.options.launcher:
            argv = [*self.options.launcher, *argv[len(self.plan["launcher"]):]]
        return argv

    def workdir(self) -> Path:
        return self.options.workdir or Path(self.plan["workdir"])

    def launch_env(self) -> dict[str, str]:
        return {**os.environ, **self.plan.get("env", {}), "PRM_RUN_ID": self.run_id}

    def start(self, argv: list[str]) -> subprocess.Popen[bytes]:
        """``argv`` in the checkout with the run's environment, in a process group of its
        own (a stop reaches all it starts), dying with this runner, its output in a pipe."""
        return subprocess.Popen(
            dies_with_this_process(argv), cwd=self.workdir(), env=self.launch_env(),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self.signal is None:
            self.signal, self.signal_at = signum, time.monotonic()
        if self.proc is not None:
            # prime-rl stops on SIGTERM or SIGINT; a cancellation is a stop for it too
            signal_group(self.proc.pid, signal.SIGTERM if signum == CANCEL_SIGNAL else signum)

    def run(self) -> int:
        argv = self.prepare()
        if self.options.stop_requested(self.meta_dir):
            self.state.close_unended()
            self.state.data["ended_at"] = time.time()
            self.state.set_status(st.STOPPED, "stopped before this attempt started")
            self.commit()
            return 143
        self.state.close_unended()
        guard = self.plan.get("guard") or {}
        per_hour = float((self.plan.get("cost") or {}).get("per_hour_usd") or 0.0)
        spent = spent_usd(self.state.data.get("attempts") or [], per_hour)
        budget = guard.get("max_usd")
        if isinstance(budget, int | float) and per_hour and spent >= budget:
            self.state.data["ended_at"] = time.time()
            self.state.set_status(st.STOPPED,
                                  f"budget: {format_usd(spent)} of {format_usd(budget)}")
            self.commit()
            return 143
        failures = self.state.failures(self.options.call_id)
        resumed = self.state.attempt > 0 or has_artifacts(self.run_dir)
        gpu = self.plan.get("gpu") or {}
        shards = int(gpu["trainer"]) if int(gpu.get("nodes") or 1) > 1 else None
        resume = resume_from(self.plan["dialect"], self.run_dir, shards) if resumed else None
        if resume:
            argv += resume.args
        n = self.state.begin_attempt(argv, resume.step if resume else None, resumed,
                                     self.options.call_id)
        note = f"attempt {n}" + (f" (resuming from step {resume.step})" if resume and
                                 resume.step is not None else " (resuming)" if resume else "")
        self.state.set_status(st.RUNNING, note)
        self.commit()  # the attempt is on record before anything can kill it
        cluster = self.options.cluster
        log = cluster.log_path(n) if cluster else self.meta_dir / "logs" / f"attempt_{n}.log"
        self.sink = sink = Sink(self.out, log, node=cluster.rank if cluster else None)
        sink.emit("runner", [f"{self.run_id}: attempt {n}", shlex.join(argv)])
        if resume and resume.skipped:
            torn = ", ".join(map(str, resume.skipped))
            missing = "no trainer/.metadata" + (", or a trainer node's shards" if shards else "")
            sink.emit("runner", [f"checkpoint step {torn} is incomplete ({missing}):"
                                 " not resumed from"])
            if resume.step is None and self.plan["dialect"] == "current" and \
                    (cluster is None or cluster.rank == 0):  # a cluster's files: rank 0's
                aside = set_aside(self.run_dir, resume.skipped)
                sink.emit("runner", [f"moved it to {aside} so that --resume starts afresh "
                                     "instead of failing to load it"])
        tailer = LogTailer(self.run_dir, self.plan["dialect"], sink)
        tailer.snapshot()
        progress = Progress(self.run_dir, self.plan.get("metric", "reward/mean"),
                            max_steps_from_argv(argv))
        progress.poll()  # what earlier attempts wrote: not this attempt's progress
        watch = Watch(guard, per_hour, spent, progress.rows, self.started)
        sampler = Sampler({"trainer": gpu.get("trainer_gpu_ids") or [],
                           "inference": gpu.get("inference_gpu_ids") or []},
                          self.options.gpu_sample_every,
                          (self.state.data.get("gpus") or {}).get("roles")).start()
        in_main = threading.current_thread() is threading.main_thread()
        previous = {}
        if in_main:
            for sig in (signal.SIGTERM, signal.SIGINT, CANCEL_SIGNAL):
                previous[sig] = signal.signal(sig, self._on_signal)
        try:
            code = self._supervise(argv, sink, tailer, progress, watch, sampler)
            # Still ours until the end is recorded and committed: a second SIGTERM (a stop
            # and a cancel, a preemption notice twice) must not kill the bookkeeping.
            self._finish(code, sink, progress, failures, watch)
            sink.close()
            self.commit()
        finally:
            sampler.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return code

    def _supervise(self, argv: list[str], sink: Sink, tailer: LogTailer,
                   progress: Progress, watch: Watch, sampler: Sampler) -> int:
        cluster = self.options.cluster
        if cluster is not None:  # rank 0's dry run, then this node's processes
            launched = cluster.launch(self, argv, sink)
            if isinstance(launched, int):
                return launched
            argv = launched
        try:
            self.proc = self.start(argv)
        except OSError as e:
            sink.emit("runner", [f"cannot start the launcher {argv[0]!r}: {e}"])
            return 127
        assert self.proc.stdout is not None
        self.state.data["launcher_pid"] = self.proc.pid
        self.state.save()
        if self.signal is not None:  # a signal that arrived while starting
            self._on_signal(self.signal, None)
        reader = pump_pipe(self.proc.stdout.fileno(), sink, tagged=cluster is not None)
        last_commit = last_save = last_stop_poll = last_peer_poll = time.monotonic()
        killed = dirty = signal_recorded = False
        ending_at: float | None = None
        while self.proc.poll() is None:
            time.sleep(self.options.poll)
            tailer.poll()
            now = time.monotonic()
            if self.signal is not None and not signal_recorded:
                signal_recorded = True
                ending_at = self.signal_at
                self._record_signal(sink)
            elif ending_at is None and now - last_stop_poll >= _STOP_POLL_S:
                last_stop_poll = now
                if self.options.stop_requested(self.meta_dir):
                    ending_at = self._end_launcher("stop requested", sink)
            elif ending_at is None and cluster is not None and \
                    now - last_peer_poll >= cluster.poll_s:
                last_peer_poll = now
                if (peer := cluster.peer_end()) is not None:
                    self.peer = peer
                    ending_at = self._end_launcher(f"node{peer.rank} ended ({peer.status}: "
                                                   f"{peer.note})", sink)
            elif ending_at is None and self._out_of_time(now):
                ending_at = self._end_launcher("time limit", sink)
            elif ending_at is None and (verdict := watch.check(
                    now, progress.summary.get("step"), describe(sampler.latest))):
                self.verdict = verdict
                if verdict.outcome == st.FAILED:  # a hang: what each component said last
                    self.state.data["stall"] = {"at": time.time(), "reason": verdict.note,
                                                "lines": sink.tails()}
                ending_at = self._end_launcher(verdict.note, sink)
            if ending_at is not None and not killed and now - ending_at > self.options.grace:
                sink.emit("runner", [f"launcher still alive {self.options.grace:g}s after "
                                     "being told to stop: killing it"])
                signal_group(self.proc.pid, signal.SIGKILL)
                killed = True
            ckpt = progress.summary.get("ckpt_step")
            dirty = progress.poll() or dirty
            watch.observe(progress.rows, now)
            new_checkpoint = progress.summary.get("ckpt_step") != ckpt
            since_save = now - last_save
            if (dirty and since_save >= _SAVE_EVERY_S) or since_save >= _HEARTBEAT_S or \
                    new_checkpoint:
                self.state.data["progress"] = progress.summary
                self.state.data["runner"]["heartbeat_at"] = time.time()
                if sampler.at:
                    self.state.data["gpus"] = {"at": sampler.at, "roles": sampler.latest}
                self.state.save()
                last_save, dirty = now, False
            # A complete checkpoint is published at once: no kill can take it back then.
            if new_checkpoint or now - last_commit >= self.options.commit_every:
                self.commit()
                last_commit = now
        code = self.proc.returncode
        reap_group(self.proc.pid)
        reader.join(timeout=5)
        tailer.poll(final=True)
        progress.measure()  # what stays on the outputs, after prime-rl's own clean-up
        progress.poll()
        return 128 - code if code < 0 else code

    def _record_signal(self, sink: Sink) -> None:
        """Put the signal on record at once: if the platform kills this container before
        the launcher has stopped, the next attempt still knows it was a preemption."""
        assert self.signal is not None
        name = signal.Signals(self.signal).name
        sink.emit("runner", [f"received {name}; stopping the launcher"])
        self.state.current_attempt()["signal"] = name
        self.state.event("signal_received", signal=name)
        self.state.save()
        self.commit()

    def _out_of_time(self, now: float) -> bool:
        limit = self.options.time_limit_s
        return limit is not None and now - self.started > limit - self.options.grace - \
            _TIME_LIMIT_MARGIN_S

    def _end_launcher(self, reason: str, sink: Sink) -> float:
        assert self.proc is not None
        self.reason = reason
        sink.emit("runner", [f"{reason}: stopping the launcher"])
        signal_group(self.proc.pid, signal.SIGTERM)
        return time.monotonic()

    def _outcome(self, code: int, sink: Sink, failures: int,
                 progressed: bool) -> tuple[str, str, bool]:
        """(status, note, whether it spends the failure budget) of the ending attempt."""
        if self.verdict is not None:  # the guard's: final, never retried
            return self.verdict.outcome, self.verdict.note, self.verdict.outcome == st.FAILED
        # A failure before the attempt's first step (a config error, a missing package, out
        # of memory at load) repeats: it gets [guard] startup_retries, not all the retries.
        startup_retries = int((self.plan.get("guard") or {}).get("startup_retries", 1))
        retry = failures < self.options.retries and (
            progressed or self.state.startup_failures(self.options.call_id) < startup_retries)
        if self.signal == CANCEL_SIGNAL:
            return st.STOPPED, "stopped (its call was cancelled)", False
        if self.peer is not None and self.signal is None:
            return self._after_peer(self.peer, retry)
        if self.signal is not None or self.reason == "stop requested":
            name = signal.Signals(self.signal).name if self.signal else self.reason
            if self.options.stop_requested(self.meta_dir):
                return st.STOPPED, "stopped by prm stop", False
            if self.options.preemptible:
                return st.RECOVERING, f"preempted ({name}); the platform restarts it", False
            return st.STOPPED, f"{name} received", False
        if self.reason == "time limit":
            limit = f"{self.options.time_limit_s:g}s"
            return (st.RECOVERING if retry else st.FAILED,
                    f"reached the attempt's time limit ({limit})", True)
        if code == 0:
            return st.SUCCEEDED, "launcher exited 0", False
        component, lines = sink.failure()
        self.state.data["failure"] = {"component": component, "exit_code": code,
                                      "lines": lines}
        left = self.options.retries - failures
        note = f"{component} failed, exit code {code}"
        cluster = self.options.cluster
        if cluster is not None:  # which node (any other that failed with it: at the end)
            note = f"node{cluster.rank}: {note}"
        if not progressed:
            note += " before its first step"
        if retry:
            note += f"; retrying ({left} left)"
        elif self.options.retries:
            note += "; no retries left" if progressed or failures >= self.options.retries \
                else f"; no retries left for failures before the first step ({startup_retries})"
        outcome = st.RECOVERING if retry else st.FAILED
        if cluster is not None:  # said at once, so that the others end, and say so too
            cluster.announce_failure(outcome, note)
            note += "".join(f"; also {p.note.split(';')[0]}" for p in cluster.peer_failures())
        return outcome, note, True

    def _after_peer(self, peer: PeerEnd, retry: bool) -> tuple[str, str, bool]:
        """This node was ended because another one ended: the cluster shares its fate (a
        finish, a stop, a preemption), and another node's failure is the cluster's."""
        why = peer.note if peer.note.startswith(f"node{peer.rank}:") else \
            f"node{peer.rank}: {peer.note}"
        if peer.status in (st.SUCCEEDED, st.STOPPED):
            return peer.status, why, False
        if peer.preempted:
            return st.RECOVERING, why, False
        return (st.RECOVERING if retry else st.FAILED), why, True

    def _finish(self, code: int, sink: Sink, progress: Progress, failures: int,
                watch: Watch) -> None:
        self.state.data["progress"] = progress.summary
        self.state.data["exit_code"] = code
        # only rank 0 of a cluster sees the run's steps: the others do not judge progress
        cluster = self.options.cluster
        progressed = watch.progressed or (cluster is not None and cluster.rank > 0)
        outcome, note, failed = self._outcome(code, sink, failures, progressed)
        sink.emit("runner", [f"{self.run_id}: {outcome} ({note})"])
        self.state.end_attempt(outcome, code, failure=failed, progressed=progressed,
                               preempted=outcome == st.RECOVERING and not failed)
        if outcome in st.FINAL:
            self.state.data["ended_at"] = time.time()
        self.state.set_status(outcome, note)

    def abort(self, error: BaseException) -> None:
        """The runner itself was interrupted (an exception, a cancellation raised in the
        main thread): stop the launcher's group first, then record how the attempt ended."""
        if self.proc is not None:
            signal_group(self.proc.pid, signal.SIGTERM)
            deadline = time.monotonic() + self.options.grace
            while self.proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            reap_group(self.proc.pid)
        if self.state.status in st.FINAL or not self.state.data.get("attempts"):
            return
        name = type(error).__name__
        if name == "InputCancellation":
            outcome, note, failed = st.STOPPED, "stopped (its call was cancelled)", False
        elif isinstance(error, KeyboardInterrupt) and self.options.preemptible:
            outcome, note, failed = st.RECOVERING, "interrupted; the platform restarts it", False
        else:
            retry = self.state.failures(self.options.call_id) < self.options.retries
            outcome, failed = (st.RECOVERING if retry else st.FAILED), True
            note = f"runner error: {name}: {error}"
        if "ended_at" not in self.state.current_attempt():
            self.state.end_attempt(outcome, None, failure=failed)
        if outcome in st.FINAL:
            self.state.data["ended_at"] = time.time()
        self.state.set_status(outcome, note)
        self.commit()


# Linux's parent-death signal, set in the launcher's own process before it execs prime-rl:
# should this runner die (kill -9, out of memory), the launcher gets SIGTERM and stops its
# components, instead of training on unsupervised. A thread-safe exec shim rather than a
# preexec_fn, which may deadlock in a process with threads.
_PARENT_DEATH_SHIM = """\
import ctypes, os, signal, sys
ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
if os.getppid() != int(sys.argv[1]):  # the runner died before the line above
    os._exit(143)
try:
    os.execvp(sys.argv[2], sys.argv[2:])
except OSError as e:
    print(f"cannot start the launcher {sys.argv[2]!r}: {e}", file=sys.stderr)
    os._exit(127)
"""


def dies_with_this_process(argv: list[str]) -> list[str]:
    """``argv`` started so that it gets SIGTERM when this process dies (Linux)."""
    if not sys.platform.startswith("linux"):
        return argv
    return [sys.executable, "-c", _PARENT_DEATH_SHIM, str(os.getpid()), *argv]


def signal_group(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)


def reap_group(pgid: int, wait_s: float = 3.0) -> None:
    """Leave no orphans: whatever the launcher left in its group gets SIGTERM, then SIGKILL."""
    signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.05)
    signal_group(pgid, signal.SIGKILL)


def run(plan: dict[str, Any], commit: Callable[[], None], options: RunnerOptions,
        out: TextIO | None = None) -> int:
    """Run the next attempt of ``plan`` and return the launcher's exit code.

    Whatever interrupts the runner itself (an exception, a cancellation raised in the main
    thread) first stops the launcher's process group and records the attempt's end, then
    propagates.
    """
    runner = Runner(plan, commit, options, out or sys.stdout)
    try:
        return runner.run()
    except BaseException as e:
        if not isinstance(e, SystemExit):
            runner.abort(e)
        raise


def load_plan(path: Path) -> dict[str, Any]:
    plan = read_json(path)
    if plan is None:
        raise SystemExit(f"prm runner: cannot read plan {path}")
    return plan
