"""Runner log throughput: lines a second the runner forwards from a launcher printing as fast
as it can (the fake prime-rl launcher's FAKE_RL_FAST_LINES), against the same launcher read
straight from a pipe with no runner in between (the peer). Budget: >= 50,000 lines/s.

    python bench/runner_logs.py [--lines 1000000] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FAKE = ROOT / "tests" / "fake_prime_rl" / "rl.py"


def timed_lines(argv: list[str], env: dict[str, str]) -> tuple[float, int]:
    """Wall time until ``argv`` exits, and the lines it printed (read as a consumer would)."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, env=env)
    assert proc.stdout is not None
    count = 0
    while chunk := proc.stdout.read(1 << 16):
        count += chunk.count(b"\n")
    proc.wait()
    return time.perf_counter() - start, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    env = {**os.environ, "FAKE_RL_FAST_LINES": str(args.lines)}
    runner_rates, peer_rates = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.runs):
            out = Path(tmp) / f"out{i}"
            run_id = f"bench-{i}"
            plan = {
                "run_id": run_id, "dialect": "current", "outputs_root": str(out),
                "run_dir": f"{out}/{run_id}", "workdir": tmp, "env": {}, "inputs": [],
                "launcher": [sys.executable, str(FAKE)], "metric": "reward/mean",
                "argv": [sys.executable, str(FAKE), "--output-dir", str(out),
                         "--run.name", run_id],
            }
            plan_file = Path(tmp) / f"plan{i}.json"
            plan_file.write_text(json.dumps(plan))
            runner = [sys.executable, "-m", "primerl_modal.runner", "--plan", str(plan_file),
                      "--outputs-root", str(out)]
            seconds, _ = timed_lines(runner, env)
            log = out / "_prm" / run_id / "logs" / "attempt_1.log"
            forwarded = sum(1 for line in log.open("rb") if b" [launcher] line " in line)
            assert forwarded == args.lines, f"runner forwarded {forwarded} of {args.lines}"
            runner_rates.append(forwarded / seconds)
            seconds, n = timed_lines([sys.executable, str(FAKE)], env)
            peer_rates.append(n / seconds)
    runner_rate, peer_rate = statistics.median(runner_rates), statistics.median(peer_rates)
    print(f"launcher read directly (peer)  {peer_rate:12,.0f} lines/s")
    print(f"through the prm runner         {runner_rate:12,.0f} lines/s  "
          f"ratio {runner_rate / peer_rate:.2f} of the peer (budget >= 50,000 lines/s: "
          f"{'ok' if runner_rate >= 50_000 else 'MISSED'})")


if __name__ == "__main__":
    main()
