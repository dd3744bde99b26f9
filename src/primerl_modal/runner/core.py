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
from typing import Any, TextIO

from primerl_modal.core import status as st
from primerl_modal.core.plan import META_DIR
from primerl_modal.runner.forward import LogTailer, Sink, pump_pipe
from primerl_modal.runner.progress import Progress, latest_checkpoint, max_steps_from_argv
from primerl_modal.runner.state import RunState, read_json, stop_requested, write_json_atomic

FAILURE_LINES = 20
_HEARTBEAT_S = 5.0
_SAVE_EVERY_S = 1.0


@dataclass(frozen=True)
class RunnerOptions:
    outputs_root: Path  # where the plan's outputs root really is (a volume mount, a folder)
    workdir: Path | None = None  # the prime-rl checkout, when not the plan's
    launcher: tuple[str, ...] | None = None  # replaces the plan's launcher prefix
    commit_every: float = 30.0
    grace: float = 25.0
    retry_expected: bool = False  # a failed or interrupted attempt will be retried
    poll: float = 0.25
    # Whether `prm stop` asked for this stop (else a signal means preemption or shutdown).
    stop_requested: Callable[[Path], bool] = stop_requested


def has_artifacts(run_dir: Path) -> bool:
    """Whether prime-rl would refuse this run directory without --resume."""
    return run_dir.is_dir() and any(p.name != "configs" for p in run_dir.iterdir())


def resume_args(dialect: str, run_dir: Path) -> list[str]:
    """How this dialect continues from its latest checkpoint (never --clean)."""
    if dialect == "current":
        return ["--resume"]
    step = latest_checkpoint(run_dir)
    return ["--ckpt.resume-step", str(step)] if step is not None else []


class Runner:
    def __init__(self, plan: dict[str, Any], commit: Callable[[], None],
                 options: RunnerOptions, out: TextIO) -> None:
        self.plan = plan
        self.commit = commit
        self.options = options
        self.out = out
        self.run_id: str = plan["run_id"]
        root = options.outputs_root
        self.meta_dir = root / META_DIR / self.run_id
        self.run_dir = Path(self.remap(plan["run_dir"]))
        self.state = RunState.load(self.meta_dir, self.run_id)
        self.signal: int | None = None
        self.signal_at = 0.0
        self.proc: subprocess.Popen[bytes] | None = None

    def remap(self, value: str) -> str:
        """Paths under the plan's outputs root, moved to where that root really is."""
        logical = self.plan["outputs_root"]
        if value == logical or value.startswith(logical + "/"):
            return str(self.options.outputs_root) + value[len(logical):]
        return value

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

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self.signal is None:
            self.signal, self.signal_at = signum, time.monotonic()
        if self.proc is not None:
            signal_group(self.proc.pid, signum)

    def run(self) -> int:
        argv = self.prepare()
        if self.options.stop_requested(self.meta_dir) and self.state.attempt == 0:
            self.state.set_status(st.STOPPED, "stopped before it started")
            self.commit()
            return 143
        resumed = self.state.attempt > 0 or has_artifacts(self.run_dir)
        if resumed:
            argv += resume_args(self.plan["dialect"], self.run_dir)
        n = self.state.begin_attempt(argv, resumed)
        self.state.set_status(st.RUNNING, f"attempt {n}" + (" (resuming)" if resumed else ""))
        sink = Sink(self.out, self.meta_dir / "logs" / f"attempt_{n}.log")
        sink.emit("runner", [f"{self.run_id}: attempt {n}", shlex.join(argv)])
        tailer = LogTailer(self.run_dir, self.plan["dialect"], sink)
        tailer.snapshot()
        progress = Progress(self.run_dir, self.plan.get("metric", "reward/mean"),
                            max_steps_from_argv(argv))
        in_main = threading.current_thread() is threading.main_thread()
        previous = {}
        if in_main:
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, self._on_signal)
        try:
            code = self._supervise(argv, sink, tailer, progress)
            # Still ours until the end is recorded and committed: a second SIGTERM (a stop
            # and a cancel, a preemption notice twice) must not kill the bookkeeping.
            self._finish(code, sink, progress)
            sink.close()
            self.commit()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return code

    def _supervise(self, argv: list[str], sink: Sink, tailer: LogTailer,
                   progress: Progress) -> int:
        workdir = self.options.workdir or Path(self.plan["workdir"])
        env = {**os.environ, **self.plan.get("env", {}), "PRM_RUN_ID": self.run_id}
        try:
            self.proc = subprocess.Popen(
                argv, cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, start_new_session=True,
            )
        except OSError as e:
            sink.emit("runner", [f"cannot start the launcher {argv[0]!r}: {e}"])
            return 127
        assert self.proc.stdout is not None
        self.state.data["launcher_pid"] = self.proc.pid
        self.state.save()
        if self.signal is not None:  # a signal that arrived while starting
            signal_group(self.proc.pid, self.signal)
        reader = pump_pipe(self.proc.stdout.fileno(), sink)
        last_commit = last_save = time.monotonic()
        killed = dirty = False
        while self.proc.poll() is None:
            time.sleep(self.options.poll)
            tailer.poll()
            now = time.monotonic()
            if self.signal is not None and not killed:
                if now - self.signal_at > self.options.grace:
                    sink.emit("runner", [f"launcher still alive {self.options.grace:g}s after "
                                         f"{signal.Signals(self.signal).name}: killing it"])
                    signal_group(self.proc.pid, signal.SIGKILL)
                    killed = True
            dirty = progress.poll() or dirty
            since_save = now - last_save
            if (dirty and since_save >= _SAVE_EVERY_S) or since_save >= _HEARTBEAT_S:
                self.state.data["progress"] = progress.summary
                self.state.data["runner"]["heartbeat_at"] = time.time()
                self.state.save()
                last_save, dirty = now, False
            if now - last_commit >= self.options.commit_every:
                self.commit()
                last_commit = now
        code = self.proc.returncode
        reap_group(self.proc.pid)
        reader.join(timeout=5)
        tailer.poll(final=True)
        progress.poll()
        return 128 - code if code < 0 else code

    def _finish(self, code: int, sink: Sink, progress: Progress) -> None:
        self.state.data["progress"] = progress.summary
        self.state.data["exit_code"] = code
        if self.signal is not None:
            name = signal.Signals(self.signal).name
            sink.emit("runner", [f"received {name}; the launcher exited with {code}"])
            self.state.event("signal_received", signal=name)
            if self.options.stop_requested(self.meta_dir):
                outcome, note = st.STOPPED, "stopped by prm stop"
            elif self.options.retry_expected:
                outcome, note = st.RECOVERING, f"{name} (preempted?); a retry will resume"
            else:
                outcome, note = st.STOPPED, f"{name} received"
        elif code == 0:
            outcome, note = st.SUCCEEDED, "launcher exited 0"
        else:
            component, lines = sink.failure()
            self.state.data["failure"] = {"component": component, "exit_code": code,
                                          "lines": lines}
            outcome = st.RECOVERING if self.options.retry_expected else st.FAILED
            note = f"{component} failed, exit code {code}"
        sink.emit("runner", [f"{self.run_id}: {outcome} ({note})"])
        self.state.end_attempt(outcome, code)
        if outcome in st.FINAL:
            self.state.data["ended_at"] = time.time()
        self.state.set_status(outcome, note)


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

    A crash of the runner itself is recorded as FAILED before it propagates.
    """
    runner = Runner(plan, commit, options, out or sys.stdout)
    try:
        return runner.run()
    except BaseException as e:
        if runner.state.status not in st.FINAL and not isinstance(e, SystemExit):
            runner.state.set_status(st.FAILED, f"runner error: {type(e).__name__}: {e}")
            with contextlib.suppress(Exception):
                commit()
        raise


def load_plan(path: Path) -> dict[str, Any]:
    plan = read_json(path)
    if plan is None:
        raise SystemExit(f"prm runner: cannot read plan {path}")
    return plan
