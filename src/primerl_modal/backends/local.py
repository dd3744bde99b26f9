"""The local backend: runs on this machine's GPUs, the runner detached from the terminal."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar

from primerl_modal import paths
from primerl_modal.backends.base import (
    RunEntry,
    apply_status,
    new_record,
    read_status,
    record_from_stored,
    require_resumable,
    resumable_trials,
)
from primerl_modal.backends.follow import follow_attempt_logs
from primerl_modal.core import status as st
from primerl_modal.core.cleanup import inside_run, own_paths, sweep_path
from primerl_modal.core.cmdline import LAUNCHER
from primerl_modal.core.logs import LogLine, parse_attempt_log
from primerl_modal.core.plan import META_DIR, Layout, Plan
from primerl_modal.core.profile import ResolvedProfile
from primerl_modal.core.run_id import trial_index
from primerl_modal.core.selection import RemoteFile
from primerl_modal.errors import PrmError
from primerl_modal.processes import carries, end_run_group, same_process
from primerl_modal.run_index import RunIndex, RunRecord, SweepRecord
from primerl_modal.runner.state import (
    STOP_MARKER,
    RunState,
    close_attempt,
    read_json,
    request_stop,
    runner_pid,
    write_json_atomic,
)
from primerl_modal.transfer import Source
from primerl_modal.ui.console import warn

if TYPE_CHECKING:
    from primerl_modal.sweeps import SweepPlan

T = TypeVar("T")
STOP_WAIT_S = 40.0  # the runner's grace (25 s) plus time to commit


def count_gpus() -> int | None:
    """GPUs this machine has, from `nvidia-smi -L`; None when that cannot be asked."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return None
    try:
        listing = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if listing.returncode != 0:
        return None
    return sum(1 for line in listing.stdout.splitlines() if line.startswith("GPU "))


def runner_alive(pid: int | None, what: bytes = b"primerl_modal.runner") -> bool:
    """Whether ``pid`` is still a prm runner (or ``what`` else: not a recycled pid)."""
    if not pid:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return what in cmdline


def live_runner(meta_dir: str | Path, status: Mapping[str, Any],
                fallback: int | None = None) -> int | None:
    """The pid of this run's runner if it provably still runs, else None: the start time
    it recorded (same boot), and the run's plan in its command line. A pid that is not
    provably the run's runner is never signalled."""
    marker = str(Path(meta_dir) / "plan.json").encode()
    recorded = status.get("runner")
    if isinstance(recorded, Mapping) and recorded.get("start") is not None:
        pid = recorded.get("pid")
        ours = same_process(recorded) and isinstance(pid, int) and carries(pid, marker)
        return pid if ours else None
    pid = runner_pid(status, fallback)  # recorded by an older runner, or just spawned
    return pid if pid and runner_alive(pid) and carries(pid, marker) else None


def spawn_runner(meta: Path, outputs_root: str) -> int:
    """Start a run's runner in its own session: it survives the shell that launched it."""
    argv = [sys.executable, "-m", "primerl_modal.runner", "--plan", str(meta / "plan.json"),
            "--outputs-root", outputs_root]
    with open(meta / "runner.err", "ab") as err:
        proc = subprocess.Popen(argv, cwd=meta, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    return proc.pid


def sweep_dir(outputs_root: str, sweep_id: str) -> Path:
    return Path(outputs_root) / META_DIR / "sweeps" / sweep_id


def controller_alive(outputs_root: str, sweep_id: str) -> bool:
    state = read_json(sweep_dir(outputs_root, sweep_id) / "state.json") or {}
    return runner_alive(state.get("controller"), b"primerl_modal.backends.local_sweep")


def local_layout(profile: ResolvedProfile) -> Layout:
    """Outputs under [local] outputs_dir (default $PRM_HOME/outputs), prime-rl in
    [local] prime_rl_dir (or the local-code checkout).

    Raises PrmError when there is no checkout to run in.
    """
    workdir = profile.get("local.prime_rl_dir") or profile.get("prime_rl.local_code")
    if not workdir:
        raise PrmError(
            "the local backend needs a prime-rl checkout to run in",
            "set [local] prime_rl_dir = \"/path/to/prime-rl\" in the profile "
            "(or --set local.prime_rl_dir=PATH)",
        )
    outputs = profile.get("local.outputs_dir") or str(paths.prm_home() / "outputs")
    launcher = tuple(profile.get("local.launcher") or LAUNCHER)
    return Layout("local", outputs, workdir, launcher)


class LocalBackend:
    name = "local"

    def __init__(self, index: RunIndex) -> None:
        self.index = index

    def layout(self, profile: ResolvedProfile) -> Layout:
        return local_layout(profile)

    def _check_machine(self, plan: Plan) -> None:
        have = count_gpus()
        if have is None:
            warn(f"nvidia-smi not found: cannot check that this machine has the "
                 f"{plan.gpu.count} GPUs the plan needs")
        elif have < plan.gpu.count:
            raise PrmError(
                f"the plan needs {plan.gpu.count} GPUs but this machine has {have}",
                f"use --gpus {have}, or run on Modal" if have >= 2
                else "prime-rl needs at least 2 (1 trainer + 1 inference): run on Modal",
            )
        if not Path(plan.workdir).is_dir():
            raise PrmError(f"prime-rl checkout {plan.workdir} does not exist",
                           "set [local] prime_rl_dir to your prime-rl clone")

    def launch(self, plan: Plan, *, sweep_id: str | None = None) -> RunRecord:
        self._check_machine(plan)
        if plan.preflight:  # before anything of the run exists: a refusal leaves nothing
            from primerl_modal.runner.preflight import local_check

            local_check(plan.to_json(with_input_texts=True))
        record = _prepare(plan, sweep_id)
        try:
            self.index.upsert(record)
        except BaseException:
            # not recorded, not launched: leave no folder to be listed as a run later
            shutil.rmtree(plan.meta_dir, ignore_errors=True)
            raise
        record.pid = spawn_runner(Path(plan.meta_dir), plan.outputs_root)
        self.index.update(plan.run_id, pid=record.pid)
        return record

    def refresh(self, records: list[RunRecord]) -> list[RunRecord]:
        out = []
        for record in records:
            if not st.is_final(record.status):
                record = self._refresh_one(record)
            out.append(record)
        return out

    def _refresh_one(self, record: RunRecord) -> RunRecord:
        status = read_status(record.meta_dir)
        if status is None:
            return record
        apply_status(record, status)
        queued = (record.status == st.PENDING and record.sweep_id is not None
                  and controller_alive(record.outputs, record.sweep_id))
        if not st.is_final(record.status) and not queued and \
                live_runner(record.meta_dir, status, record.pid) is None:
            # The runner was killed without a chance to write its end: say so, close its
            # attempt, and leave nothing of the run's behind it.
            left = end_run_group(status.get("launcher_pid"), record.run_id)
            state = RunState(Path(record.meta_dir), dict(status))
            close_attempt(state.data, st.LOST)
            note = (f"runner is gone without a final status; its errors, if any, are in "
                    f"{record.meta_dir}/runner.err")
            if left:
                note += "; processes in its launcher's group are not provably the run's: " \
                        "left alone"
            state.set_status(st.LOST, note)
            apply_status(record, state.data)
        self.index.upsert(record)
        return record

    def stop(self, record: RunRecord) -> str:
        record = self._refresh_one(record)
        if st.is_final(record.status):
            return f"{record.run_id} is already {record.status}; nothing to stop"
        meta = Path(record.meta_dir)
        request_stop(meta)

        def runner() -> int | None:
            return live_runner(meta, read_status(meta) or {}, record.pid)

        pid = runner()
        if pid:
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_WAIT_S
        while time.monotonic() < deadline and runner():
            time.sleep(0.1)
        status = read_status(meta) or {}
        if not st.is_final(status.get("status", "")):
            # The runner did not finish its own bookkeeping: end it and record the stop.
            if pid := runner():
                os.kill(pid, signal.SIGKILL)
            end_run_group(status.get("launcher_pid"), record.run_id)
            state = RunState(meta, dict(status) or RunState.create(meta, record.run_id).data)
            close_attempt(state.data, st.STOPPED)
            state.set_status(st.STOPPED, "stopped by prm stop (runner did not answer)")
        record = self._refresh_one(record)
        return f"{record.run_id} {record.status}"

    def resume(self, record: RunRecord) -> RunRecord:
        record = self._refresh_one(record)
        require_resumable(record)
        _reopen(record)
        record.pid = spawn_runner(Path(record.meta_dir), record.outputs)
        self.index.upsert(record)
        return record

    def launch_sweep(self, sweep: SweepPlan, *, fail_fast: bool) -> SweepRecord:
        """Every trial recorded PENDING, then a detached controller process that starts
        them while fewer than max_parallel run (it outlives this shell)."""
        from primerl_modal.sweeps import sweep_record

        first = sweep.trials[0].plan
        parallel = min(sweep.spec.max_parallel, len(sweep.trials))
        if parallel > 1:
            # Every local trial uses GPU ids from 0 up: trials at once would share GPUs.
            raise PrmError(
                f"{parallel} local trials at once would share GPUs (each uses GPU ids from 0)",
                "use --max-parallel 1 (or run the sweep on Modal)",
            )
        self._check_machine(max((t.plan for t in sweep.trials), key=lambda p: p.gpu.count))
        self.index.upsert_many([_prepare(t.plan, sweep.sweep_id) for t in sweep.trials])
        folder = sweep_dir(first.outputs_root, sweep.sweep_id)
        write_json_atomic(folder / "sweep.json", sweep.to_json())
        summary = sweep_record(sweep, first.outputs_root, fail_fast)
        summary.pid = self._spawn_controller(summary, [t.plan.run_id for t in sweep.trials])
        self.index.upsert_sweep(summary)
        return summary

    def _spawn_controller(self, sweep: SweepRecord, run_ids: list[str]) -> int:
        folder = sweep_dir(sweep.outputs, sweep.sweep_id)
        write_json_atomic(folder / "controller.json", {
            "outputs_root": sweep.outputs, "max_parallel": sweep.max_parallel,
            "fail_fast": bool(sweep.fail_fast),
            "trials": [{"index": trial_index(r), "run_id": r} for r in run_ids]})
        with open(folder / "controller.log", "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "primerl_modal.backends.local_sweep", "--sweep-dir",
                 str(folder)], cwd=folder, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=True)
        wait_until = time.monotonic() + 10  # its state names it: queued trials are not lost
        while time.monotonic() < wait_until and not controller_alive(sweep.outputs,
                                                                   sweep.sweep_id):
            time.sleep(0.05)
        return proc.pid

    def stop_sweep(self, sweep: SweepRecord, trials: list[RunRecord]) -> list[str]:
        request_stop(sweep_dir(sweep.outputs, sweep.sweep_id))
        lines = [self.stop(t) for t in trials if t.status not in st.FINAL]
        deadline = time.monotonic() + STOP_WAIT_S
        while time.monotonic() < deadline:
            trials = self.refresh(trials)
            if all(st.is_final(t.status) for t in trials):
                break
            time.sleep(0.1)
        return lines + [f"{t.run_id} {t.status}" for t in trials if t.status == st.STOPPED
                        and not any(line.startswith(t.run_id) for line in lines)]

    def resume_sweep(self, sweep: SweepRecord, trials: list[RunRecord]) -> list[RunRecord]:
        again = resumable_trials(sweep, self.refresh(trials))
        with contextlib.suppress(FileNotFoundError):
            (sweep_dir(sweep.outputs, sweep.sweep_id) / STOP_MARKER).unlink()
        for t in again:
            _reopen(t)
        self.index.upsert_many(again)
        sweep.pid = self._spawn_controller(sweep, [t.run_id for t in again])
        self.index.upsert_sweep(sweep)
        return again

    def read_sweep_meta(self, sweep: SweepRecord, name: str) -> bytes | None:
        try:
            return (sweep_dir(sweep.outputs, sweep.sweep_id) / name).read_bytes()
        except FileNotFoundError:
            return None

    def read_meta(self, record: RunRecord, name: str) -> bytes | None:
        try:
            return (Path(record.meta_dir) / name).read_bytes()
        except FileNotFoundError:
            return None

    def read_run_file(self, record: RunRecord, rel: str) -> bytes | None:
        try:
            return (Path(record.run_dir) / rel).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None

    def list_run_dir(self, record: RunRecord, rel: str = "") -> list[RunEntry] | None:
        try:
            paths = sorted((Path(record.run_dir) / rel).iterdir())
        except (FileNotFoundError, NotADirectoryError):
            return None
        return [RunEntry(p.name, p.is_dir(), 0 if p.is_dir() else p.stat().st_size)
                for p in paths]

    def stored_logs(self, record: RunRecord) -> Iterator[LogLine]:
        for n, path in attempt_logs(Path(record.meta_dir) / "logs"):
            yield from parse_attempt_log(path.read_bytes().decode("utf-8", "replace"), n)

    def live_logs(self, record: RunRecord,
                  seen: Mapping[int, int] | None = None) -> Iterator[LogLine]:
        return follow_attempt_logs(record, lambda: self._refresh_one(record), seen)

    def discover(self, known: set[str]) -> list[RunRecord]:
        roots = {str(paths.prm_home() / "outputs")} | self.index.outputs_locations(self.name)
        found = []
        for root in sorted(roots):
            for plan_path in sorted(Path(root).glob(f"{META_DIR}/*/plan.json")):
                run_id = plan_path.parent.name
                plan = read_json(plan_path)
                if run_id in known or not plan or plan.get("backend") != self.name:
                    continue
                try:
                    record = record_from_stored(plan, read_status(plan_path.parent), root,
                                                str(plan_path))
                except PrmError as e:  # one damaged run does not hide the others
                    warn(f"skipped a run: {e.one_line()}")
                    continue
                self.index.upsert(record)
                found.append(record)
        return found

    def file_stream(self, record: RunRecord, keep: Callable[[RemoteFile], bool]
                    ) -> tuple[AsyncIterator[RemoteFile], Source]:
        items, source = self.files(record)

        async def stream() -> AsyncIterator[RemoteFile]:  # a local listing is quick
            for item in items:
                if keep(item):
                    yield item

        return stream(), source

    def files(self, record: RunRecord) -> tuple[list[RemoteFile], Source]:
        items = []
        for base, prefix in ((Path(record.run_dir), ""), (Path(record.meta_dir), "_prm/")):
            for path in sorted(base.rglob("*")) if base.is_dir() else []:
                if path.is_file() and not path.is_symlink():
                    stat = path.stat()
                    rel = path.relative_to(base).as_posix()
                    items.append(RemoteFile(str(path), prefix + rel, stat.st_size, stat.st_mtime))
        return items, LocalSource()

    def remove_run(self, record: RunRecord) -> None:
        root = Path(record.outputs)
        folders = own_paths(record.run_id)
        if [Path(record.run_dir), Path(record.meta_dir)] != [root / f for f in folders]:
            raise PrmError(f"{record.run_id}: its index row names {record.run_dir} and "
                           f"{record.meta_dir}, not its own folders under {root}: refusing "
                           "to delete them", "delete them by hand if they are this run's")
        for rel in folders:
            _remove_inside(root, rel)

    def remove_run_paths(self, record: RunRecord, rels: list[str]) -> None:
        run_dir = Path(record.outputs) / own_paths(record.run_id)[0]
        for rel in rels:
            _remove_inside(run_dir, inside_run(rel))

    def remove_sweep(self, sweep: SweepRecord) -> None:
        _remove_inside(Path(sweep.outputs), sweep_path(sweep.sweep_id))


def _remove_inside(root: Path, rel: str) -> None:
    """Delete ``root/rel``: a folder whole (symbolic links in it are unlinked, never
    followed) or a file; one already gone is fine.

    Raises PrmError for a path that leads out of ``root`` through a symbolic link, or one
    that cannot be deleted.
    """
    target = root / rel
    base, parent = os.path.realpath(root), os.path.realpath(target.parent)
    if parent != base and not parent.startswith(base + os.sep):
        raise PrmError(f"{target} leads out of {root} through a symbolic link: refusing to "
                       "delete it", "delete it by hand if it is this run's")
    try:
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        else:
            target.unlink()
    except FileNotFoundError:
        return
    except OSError as e:
        raise PrmError(f"cannot delete {target} ({e.strerror or e})",
                       "fix that and run the same command again: what is gone is skipped"
                       ) from None


def _prepare(plan: Plan, sweep_id: str | None) -> RunRecord:
    """A new run's files (plan with its inputs, PENDING status) and its index record."""
    meta = Path(plan.meta_dir)
    write_json_atomic(meta / "plan.json", plan.to_json(with_input_texts=True))
    RunState.create(meta, plan.run_id)
    return new_record(plan, plan.outputs_root, sweep_id)


def _reopen(record: RunRecord) -> None:
    """A FAILED, STOPPED or LOST run made PENDING again for its next attempt."""
    meta = Path(record.meta_dir)
    with contextlib.suppress(FileNotFoundError):
        (meta / STOP_MARKER).unlink()
    state = RunState.load(meta, record.run_id)
    # the last runner is gone: until the new one records itself, the index's pid stands
    state.data.pop("runner", None)
    state.set_status(st.PENDING, "resume requested")
    record.status, record.ended_at, record.note = st.PENDING, None, "resume requested"


def attempt_logs(logs: Path) -> list[tuple[int, Path]]:
    """(attempt number, path) of every attempt log, in attempt order."""
    found = []
    for path in logs.glob("attempt_*.log"):
        number = path.stem.removeprefix("attempt_")
        if number.isdigit():
            found.append((int(number), path))
    return sorted(found)


class LocalSource:
    def run(self, main: Callable[[], Coroutine[Any, Any, T]]) -> T:
        return asyncio.run(main())

    async def fetch(self, item: RemoteFile, out: IO[bytes],
                    progress: Callable[[int], None]) -> None:
        def copy() -> None:
            with open(item.remote, "rb") as f:
                while chunk := f.read(1 << 20):
                    out.write(chunk)
                    progress(len(chunk))

        await asyncio.to_thread(copy)
