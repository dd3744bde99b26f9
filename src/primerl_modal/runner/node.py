"""`python -m primerl_modal.runner.node SPEC.json`: one node of a cluster, what prime-rl's
`rl` launcher is on a single node. It starts the node's processes (SPEC: a list of
``{"component", "argv", "env"}``), prints each one's lines prefixed ``[component] ``, and
ends as prime-rl's multi-node template does: the first process to fail ends the node with
its exit code (the others are stopped); when every finite process (trainer, orchestrator)
has exited 0 the servers are stopped and the node exits 0; a node of servers only runs
until it is signalled. SIGTERM/SIGINT stop every process (each gets the signal, then
SIGKILL after the grace) and the node exits 128 + the signal.

The runner supervises this program exactly as it supervises `rl` on one node: it reads the
prefixes to tell the components apart.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

from primerl_modal.core.cluster import FINITE
from primerl_modal.runner.core import dies_with_this_process

GRACE_S = 15.0
_POLL_S = 0.2


class Node:
    def __init__(self, spec: list[dict[str, Any]], out: Any = None) -> None:
        self.spec = spec
        self.out = out or sys.stdout
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.lock = threading.Lock()
        self.signal: int | None = None

    def say(self, component: str, text: str) -> None:
        with self.lock:
            self.out.write(f"[{component}] {text}\n")
            self.out.flush()

    def _forward(self, component: str, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for raw in iter(proc.stdout.readline, b""):
            self.say(component, raw.decode("utf-8", "replace").rstrip("\n"))

    def start(self) -> None:
        for item in self.spec:
            component = item["component"]
            try:
                # each in its own group, so that a stop reaches its children; and each dies
                # with this node, should it be killed
                proc = subprocess.Popen(
                    dies_with_this_process(item["argv"]), env={**os.environ, **item.get("env", {})},
                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                    start_new_session=True)
            except OSError as e:
                self.say(component, f"cannot start {item['argv'][0]!r}: {e}")
                return
            self.procs.append((component, proc))
            threading.Thread(target=self._forward, args=(component, proc), daemon=True).start()

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        self.start()
        if len(self.procs) < len(self.spec):
            self.stop()
            return 127
        finite = {c for c, _ in self.procs if c in FINITE}
        done: set[str] = set()
        while self.signal is None:
            for component, proc in self.procs:
                code = proc.poll()
                if code is None or component in done:
                    continue
                done.add(component)
                if code != 0 or component not in FINITE:
                    why = f"exited with code {code}" if code else "exited"
                    self.say("node", f"{component} {why}: stopping the node")
                    self.stop()
                    return code if code and code > 0 else 1
            if finite and finite <= done:
                self.say("node", f"{', '.join(sorted(finite))} finished: stopping the node")
                self.stop()
                return 0
            time.sleep(_POLL_S)
        self.stop()
        return 128 + self.signal

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self.signal is None:
            self.signal = signum
        for _, proc in self.procs:
            _signal_group(proc.pid, signum)

    def stop(self) -> None:
        """SIGTERM to every process still running (its group), SIGKILL after the grace."""
        for _, proc in self.procs:
            if proc.poll() is None:
                _signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + GRACE_S
        while time.monotonic() < deadline and any(p.poll() is None for _, p in self.procs):
            time.sleep(0.05)
        for _, proc in self.procs:
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait()


def _signal_group(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m primerl_modal.runner.node SPEC.json", file=sys.stderr)
        return 2
    spec = json.loads(Path(args[0]).read_text())
    return Node(spec).run()


if __name__ == "__main__":
    sys.exit(main())
