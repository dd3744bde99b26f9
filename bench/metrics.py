"""`prm metrics` over a long run: median wall time of `prm metrics RUN --json` and
`prm metrics RUN --csv` (every step; the default keys) on a finished local run whose
metrics.jsonl holds 100,000 steps, each row the fake launcher's 7 keys (tests/fake_prime_rl)
as prime-rl's file monitor writes them; `--keys 20` gives wider rows, like a real run's.
DESIGN budget (issue 15): 100,000 steps parse and print in well under a second. The peer,
measured in the same run, is the least a tool could do: a Python process that parses every
line of the same file with json.loads and exits.

    python bench/metrics.py [--steps 100000] [--keys 7] [--runs 7]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from primerl_modal.run_index import FILE_NAME, RunIndex, RunRecord

BIN = Path(sys.executable).parent
RUN_ID = "bench-261130-101010-beef"
BUDGET_S = 1.0
# The fake launcher's keys (the profile's metric, loss and entropy are the default keys),
# then more of what prime-rl logs a step, which `--json` leaves out unless asked for (-k).
KEYS = ("reward/mean", "reward/std", "loss", "grad_norm", "entropy", "seq_len/mean", "lr",
        "loss/std", "entropy/std", "seq_len/max", "perf/throughput", "perf/mfu", "time/step",
        "mismatch_kl/mean", "is_truncated/mean", "batch/size", "reward/min", "reward/max",
        "loss/max", "entropy/max")


def write_run(home: Path, steps: int, keys: int) -> Path:
    """A finished local run with a metrics.jsonl of ``steps`` rows, in a fresh index."""
    rng = random.Random(0)
    outputs = home / "outputs"
    run_dir = outputs / RUN_ID
    run_dir.mkdir(parents=True)
    path = run_dir / "metrics.jsonl"
    start = time.time() - steps * 30
    names = [KEYS[i] if i < len(KEYS) else f"extra/key_{i}" for i in range(keys)]
    with path.open("w") as f:
        for step in range(1, steps + 1):
            row = {"step": step, "time": start + step * 30}
            row |= {name: rng.random() for name in names}
            f.write(json.dumps(row) + "\n")
    index = RunIndex(home / FILE_NAME)
    now = time.time()
    index.upsert(RunRecord(
        run_id=RUN_ID, name="bench", profile="bench", backend="local", status="SUCCEEDED",
        created_at=now, updated_at=now, gpu_type="H100", gpu_count=8, trainer=2, inference=6,
        tp=1, dp=6, usd_per_gpu_hour=3.95, timeout_s=86400, retries=0, outputs=str(outputs),
        meta_dir=str(outputs / "_prm" / RUN_ID), run_dir=str(run_dir), step=steps,
        max_steps=steps, metric="reward/mean"))
    index.close()
    return path


def median_wall(argv: list[str], runs: int, env: dict[str, str], cwd: str) -> float:
    subprocess.run(argv, env=env, cwd=cwd, capture_output=True, check=True)  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, env=env, cwd=cwd, capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100_000, help="rows of metrics.jsonl")
    parser.add_argument("--keys", type=int, default=7, help="metric keys a row")
    parser.add_argument("--runs", type=int, default=7, help="timed runs of each command")
    args = parser.parse_args()
    prm = str(BIN / "prm")
    with tempfile.TemporaryDirectory(prefix="prm-bench-metrics-") as tmp:
        home = Path(tmp) / "prm-home"
        path = write_run(home, args.steps, args.keys)
        env = {**os.environ, "PRM_HOME": str(home)}
        out = subprocess.run([prm, "metrics", RUN_ID, "--json"], env=env, cwd=tmp,
                             capture_output=True, check=True, text=True).stdout
        lines = out.splitlines()
        assert len(lines) == args.steps and json.loads(lines[-1])["step"] == args.steps, \
            f"prm metrics --json gave {len(lines)} of {args.steps} steps"
        peer_code = ("import json, sys\n"
                     "rows = [json.loads(line) for line in open(sys.argv[1], 'rb')]")
        peer = median_wall([sys.executable, "-c", peer_code, str(path)], args.runs, env, tmp)
        figures = {f"prm metrics RUN {flag}": median_wall([prm, "metrics", RUN_ID, flag],
                                                          args.runs, env, tmp)
                   for flag in ("--json", "--csv")}
        size = path.stat().st_size
    print(f"metrics.jsonl of {args.steps:,} steps x {args.keys} keys ({size / 1e6:.1f} MB); "
          f"median of {args.runs} runs after a warm-up")
    print(f"{'python json.loads a line (peer)':31} median {peer:.3f} s")
    for label, seconds in figures.items():
        verdict = "ok" if seconds < BUDGET_S else "MISSED"
        print(f"{label:31} median {seconds:.3f} s  ratio {seconds / peer:.2f} of the peer "
              f"(budget < {BUDGET_S:g} s: {verdict})")


if __name__ == "__main__":
    main()
