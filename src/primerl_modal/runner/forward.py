"""Forward every launcher line and every component log line, prefixed with its source.

Lines go to the runner's stdout (which Modal's live log stream carries) and, each with the
time it was forwarded, to ``logs/attempt_<n>.log`` in the run's metadata folder (which
outlives any log service).
Each attempt tails only files that attempt writes, so no line is forwarded twice.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
from collections import deque
from itertools import count
from pathlib import Path
from typing import TextIO

from primerl_modal.core.status import FAILURE_LINES, bounded

CHUNK = 1 << 16
_ERROR = re.compile(r"Traceback|Error|ERROR|Exception|FAILED|failed")
# A cluster node's verdict on which of its processes failed (runner/node.py)
_NODE_VERDICT = re.compile(r"(\S+) exited with code \d+")


class Sink:
    """Thread-safe writer of prefixed lines to a stream and a log file."""

    def __init__(self, out: TextIO, log_path: Path, node: int | None = None) -> None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        # a cluster's lines say which node they come from: [node1/trainer]
        self._label = "" if node is None else f"node{node}/"
        self._out = out
        self._log = open(log_path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
        self._lock = threading.Lock()
        self._tails: dict[str, deque[str]] = {}
        self._last_error: dict[str, int] = {}
        self._seq = count()

    def emit(self, prefix: str, lines: list[str]) -> None:
        if not lines:
            return
        text = "".join(f"[{self._label}{prefix}] {line}\n" for line in lines)
        stamp = f"{time.time():.3f} "
        with self._lock:
            self._out.write(text)
            self._out.flush()
            # the same lines, each led by the time (every newline but the last gets one)
            self._log.write(stamp + text.replace("\n", "\n" + stamp, len(lines) - 1))
            self._log.flush()  # followers (`prm logs -f`, `prm run`) read this file live
            # bounded as status.json keeps them: a 10 MB line must not end up there whole
            self._tails.setdefault(prefix, deque(maxlen=FAILURE_LINES)).extend(bounded(lines))
            if prefix != "runner" and any(_ERROR.search(line)
                                          for line in lines[-FAILURE_LINES:]):
                self._last_error[prefix] = next(self._seq)
            if prefix == "node":  # the node names the process that failed: it is to blame
                for line in lines:
                    if verdict := _NODE_VERDICT.match(line):
                        self._last_error[verdict.group(1)] = next(self._seq)

    def failure(self) -> tuple[str, list[str]]:
        """The component that reported an error last (else the launcher), and its last
        lines (at most FAILURE_LINES, each cut to LINE_CHARS): what a FAILED status shows
        without opening any log."""
        with self._lock:
            components = [c for c in self._last_error if c not in ("launcher", "node")]
            pick = max(components, key=self._last_error.__getitem__, default="launcher")
            return pick, list(self._tails.get(pick, ()))

    def tails(self, n: int = 10) -> dict[str, list[str]]:
        """Every component's last ``n`` lines (what a stall leaves on record)."""
        with self._lock:
            return {c: list(t)[-n:] for c, t in self._tails.items() if c != "runner"}

    def close(self) -> None:
        with self._lock:
            self._log.close()


class _LineSplitter:
    """Bytes in, complete decoded lines out; the unfinished tail waits for more."""

    def __init__(self) -> None:
        self._carry = b""

    def feed(self, data: bytes) -> list[str]:
        data = self._carry + data
        cut = data.rfind(b"\n")
        if cut < 0:
            self._carry = data
            return []
        self._carry = data[cut + 1 :]
        return _as_shown(data[:cut].decode("utf-8", "replace"))

    def rest(self) -> list[str]:
        tail, self._carry = self._carry, b""
        return _as_shown(tail.decode("utf-8", "replace")) if tail else []


def _as_shown(text: str) -> list[str]:
    """Lines as a terminal leaves them: a progress bar redrawn with "\r" keeps its last
    drawing (one line, not one per redraw, and no "\r" for log readers to trip on)."""
    lines = text.split("\n")
    if "\r" in text:
        lines = [line.rstrip("\r").rsplit("\r", 1)[-1] for line in lines]
    return lines


_TAGGED = re.compile(r"\[([\w.-]+)\] (.*)", re.S)


def pump_pipe(fd: int, sink: Sink, prefix: str = "launcher",
              tagged: bool = False) -> threading.Thread:
    """A thread that forwards everything readable from ``fd`` until EOF. ``tagged``: each
    line names its component itself (``[trainer] text``, a cluster node's output)."""

    def emit(lines: list[str]) -> None:
        if not tagged:
            sink.emit(prefix, lines)
            return
        for line in lines:
            match = _TAGGED.match(line)
            sink.emit(*((match.group(1), [match.group(2)]) if match else (prefix, [line])))

    def loop() -> None:
        splitter = _LineSplitter()
        while True:
            try:
                data = os.read(fd, CHUNK)
            except OSError:
                break
            if not data:
                break
            emit(splitter.feed(data))
        emit(splitter.rest())

    thread = threading.Thread(target=loop, name="prm-pipe", daemon=True)
    thread.start()
    return thread


def component_of(relative: Path) -> str:
    """``trainer.log`` -> trainer; ``trainer.stdout`` -> trainer;
    ``trainer/torchrun/0/stdout.log`` -> trainer; envs -> env."""
    head = relative.parts[0]
    name = head.split(".", 1)[0] if len(relative.parts) == 1 else head
    return "env" if name == "envs" else name


class LogTailer:
    """Follows prime-rl's component log files of the current attempt.

    `current`: each launch writes a new ``logs/attempt_<n>/`` (``*.log``, torchrun ranks
    below). `2025-10` (rl.py then): ``logs/<component>.stdout``, each opened with "w" (or its
    folder deleted) by every launch, so a file that shrinks or is replaced is read afresh.
    """

    def __init__(self, run_dir: Path, dialect: str, sink: Sink) -> None:
        self.logs = run_dir / "logs"
        self.dialect = dialect
        self.sink = sink
        # path -> (inode, offset, splitter)
        self._files: dict[Path, tuple[int, int, _LineSplitter]] = {}
        self._old_attempts: set[str] = set()

    def snapshot(self) -> None:
        """Remember what exists before this attempt starts, so it is not forwarded again."""
        if not self.logs.is_dir():
            return
        if self.dialect == "current":
            self._old_attempts = {p.name for p in self.logs.glob("attempt_*")}
            return
        for path in self.logs.glob("*.stdout"):
            with contextlib.suppress(OSError):
                st = path.stat()
                self._files[path] = (st.st_ino, st.st_size, _LineSplitter())

    def _paths(self) -> list[tuple[Path, str]]:
        if not self.logs.is_dir():
            return []
        if self.dialect != "current":
            return [(p, component_of(Path(p.name))) for p in sorted(self.logs.glob("*.stdout"))]
        out = []
        for root in sorted(p for p in self.logs.glob("attempt_*")
                           if p.is_dir() and p.name not in self._old_attempts):
            out += [(p, component_of(p.relative_to(root))) for p in sorted(root.glob("**/*.log"))]
        return out

    def poll(self, final: bool = False) -> None:
        for path, component in self._paths():
            self._read(path, component, final)

    def _read(self, path: Path, component: str, final: bool) -> None:
        try:
            with open(path, "rb") as f:
                st = os.fstat(f.fileno())
                inode, offset, splitter = self._files.get(path, (st.st_ino, 0, _LineSplitter()))
                if st.st_ino != inode or st.st_size < offset:  # replaced or truncated
                    inode, offset, splitter = st.st_ino, 0, _LineSplitter()
                f.seek(offset)
                data = f.read()
        except OSError:
            return
        lines = splitter.feed(data)
        if final:
            lines += splitter.rest()
        self._files[path] = (inode, offset + len(data), splitter)
        self.sink.emit(component, lines)
