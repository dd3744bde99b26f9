"""GPU utilization and memory per role, sampled from `nvidia-smi` on a cadence (cheap: one
query every 30 s, in a thread of its own so a slow driver never holds up the runner).

What it records per role (trainer GPUs, inference GPUs, as the plan assigns the local GPU
ids): the latest mean utilization and memory used, and the peak memory seen. A stalled run
whose GPUs sit at 0% is a hang, not a slow step: the stall reason says which."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

QUERY = ("--query-gpu=index,utilization.gpu,memory.used,memory.total",
         "--format=csv,noheader,nounits")
SAMPLE_EVERY_S = 30.0


def parse_sample(text: str) -> dict[int, tuple[float, float, float]]:
    """nvidia-smi's CSV: GPU index -> (utilization %, memory used MiB, memory total MiB)."""
    out = {}
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        try:
            index, util, used, total = int(parts[0]), *map(float, parts[1:4])
        except (ValueError, IndexError):
            continue  # "[N/A]" and the like: a GPU that cannot say
        out[index] = (util, used, total)
    return out


def summarize(sample: Mapping[int, tuple[float, float, float]],
              roles: Mapping[str, Sequence[int]],
              previous: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Per role: mean utilization now, memory used now and the peak so far (GiB)."""
    previous = previous or {}
    out: dict[str, Any] = {}
    for role, ids in roles.items():
        rows = [sample[i] for i in ids if i in sample]
        if not rows:
            continue
        used = max(r[1] for r in rows) / 1024
        peak = max(used, float((previous.get(role) or {}).get("peak_mem_gib") or 0))
        out[role] = {"util_pct": round(sum(r[0] for r in rows) / len(rows), 1),
                     "mem_gib": round(used, 2), "peak_mem_gib": round(peak, 2),
                     "total_gib": round(max(r[2] for r in rows) / 1024, 2)}
    return out


def describe(roles: Mapping[str, Any]) -> str:
    """`GPUs: trainer 0%, inference 3% busy` for a stall reason."""
    if not roles:
        return ""
    parts = [f"{role} {int(r['util_pct'])}%" for role, r in roles.items()]
    return "GPUs: " + ", ".join(parts) + " busy"


class Sampler:
    """Samples in a daemon thread; `latest` is the newest summary (or empty)."""

    def __init__(self, roles: Mapping[str, Sequence[int]], every: float = SAMPLE_EVERY_S,
                 previous: Mapping[str, Any] | None = None) -> None:
        self.roles = roles
        self.every = every
        self.latest: dict[str, Any] = dict(previous or {})
        self.at: float | None = None
        self._stop = threading.Event()
        self._smi = shutil.which("nvidia-smi")
        self._thread = threading.Thread(target=self._loop, name="prm-gpus", daemon=True)

    def start(self) -> Sampler:
        if self._smi:
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        assert self._smi is not None
        while not self._stop.is_set():
            try:
                done = subprocess.run([self._smi, *QUERY], capture_output=True, text=True,
                                      timeout=20)
            except (OSError, subprocess.TimeoutExpired):
                done = None
            if done is not None and done.returncode == 0:
                self.latest = summarize(parse_sample(done.stdout), self.roles, self.latest)
                self.at = time.time()
            self._stop.wait(self.every)
