"""`prm ls` over a big index: median wall time of `prm ls --json` (the default 50 rows),
`prm ls --json --limit 0` (every row) and plain `prm ls` (the Rich table, 50 rows), on an index of
10,000 finished runs (SUCCEEDED/FAILED/STOPPED, so no backend is contacted). DESIGN.md budget:
`prm ls` over 10,000 runs under 0.4 s, for the listing as a user gets it (the default 50 rows,
table or JSON). Every row (`--limit 0`) is printed for information, with no budget: it is
bound by turning 10,000 rows into records and JSON. The peer, measured in the same run, is the
floor: a Python process that reads every row of the same index with sqlite3 and exits.

    python bench/ls.py [--count 10000] [--runs 10]
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
from datetime import UTC, datetime
from pathlib import Path

from primerl_modal.run_index import FILE_NAME, RunIndex, RunRecord

BIN = Path(sys.executable).parent
DAY = 86400.0
PROFILES = ("reverse-text", "wordle", "wiki-search", "hendrycks-math-1b-2025-10",
            "hendrycks-sanity")
GPUS = {"L40S": 1.95, "A100-40GB": 2.10, "A100-80GB": 2.50, "H100": 3.95}
FINAL = (("SUCCEEDED", 0.7), ("FAILED", 0.2), ("STOPPED", 0.1))


def fake_record(rng: random.Random, n: int, now: float) -> RunRecord:
    """A plausible finished local run created in the last 30 days (``n`` keeps ids unique)."""
    profile = rng.choice(PROFILES)
    gpu_type = rng.choice(list(GPUS))
    gpu_count = rng.choice((1, 2, 4, 8))
    trainer = max(1, gpu_count // 4)
    inference = max(gpu_count - trainer, 1)
    created = now - rng.uniform(0, 30 * DAY)
    started = created + rng.uniform(20, 300)
    ended = started + rng.uniform(60, 12 * 3600)
    status = rng.choices([s for s, _ in FINAL], [w for _, w in FINAL])[0]
    max_steps = rng.choice((20, 100, 200, 500, 1000))
    step = max_steps if status == "SUCCEEDED" else rng.randrange(max_steps)
    stamp = datetime.fromtimestamp(created, UTC).strftime("%y%m%d-%H%M%S")
    run_id = f"{profile}-{stamp}-{n:04x}"
    outputs = "/data/prime-rl/outputs"
    return RunRecord(
        run_id=run_id, name=profile, profile=profile, backend="local", status=status,
        created_at=created, updated_at=ended + 1, gpu_type=gpu_type, gpu_count=gpu_count,
        trainer=trainer, inference=inference, tp=1, dp=inference,
        usd_per_gpu_hour=GPUS[gpu_type], timeout_s=24 * 3600, retries=rng.choice((0, 2)),
        outputs=outputs, meta_dir=f"{outputs}/_prm/{run_id}", run_dir=f"{outputs}/{run_id}",
        started_at=started, ended_at=ended, attempts=rng.choice((1, 1, 1, 2)), step=step,
        max_steps=max_steps, metric="reward/mean", metric_value=rng.uniform(0, 1),
        exit_code={"SUCCEEDED": 0, "FAILED": 1, "STOPPED": -15}[status],
        sweep_id=f"sweep-{n // 50:03d}" if rng.random() < 0.2 else None,
        pid=rng.randrange(1000, 60000),
        note="stopped by user" if status == "STOPPED" else None,
    )


def build_index(home: Path, count: int) -> Path:
    index = RunIndex(home / FILE_NAME)
    rng, now = random.Random(0), time.time()
    index.db.execute("BEGIN")
    for n in range(count):
        index.upsert(fake_record(rng, n, now))
    index.db.execute("COMMIT")
    index.close()
    return home / FILE_NAME


def median_wall(argv: list[str], runs: int, env: dict[str, str], cwd: str) -> float:
    subprocess.run(argv, env=env, cwd=cwd, capture_output=True, check=True)  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, env=env, cwd=cwd, capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def count_json(argv: list[str], env: dict[str, str], cwd: str) -> int:
    out = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, check=True).stdout
    rows = json.loads(out)
    assert isinstance(rows, list) and all(isinstance(r, dict) for r in rows), rows[:1]
    return len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=10_000, help="runs in the index")
    parser.add_argument("--runs", type=int, default=10, help="timed runs of each command")
    args = parser.parse_args()
    prm = str(BIN / "prm")
    with tempfile.TemporaryDirectory(prefix="prm-bench-ls-") as tmp:
        home = Path(tmp) / "prm-home"
        db = build_index(home, args.count)
        cwd = str(Path(tmp))
        env = {**os.environ, "PRM_HOME": str(home), "COLUMNS": "160"}
        every = count_json([prm, "ls", "--json", "--limit", "0"], env, cwd)
        assert every == args.count, f"prm ls --json --limit 0 gave {every} of {args.count} runs"
        default = count_json([prm, "ls", "--json"], env, cwd)
        assert default == min(50, args.count), f"prm ls --json gave {default} runs, not 50"
        peer_code = (f"import sqlite3; rows = sqlite3.connect({str(db)!r}).execute("
                     "'select * from runs order by created_at desc').fetchall()")
        commands = {
            "prm ls --json": [prm, "ls", "--json"],
            "prm ls --json --limit 0": [prm, "ls", "--json", "--limit", "0"],
            "prm ls": [prm, "ls"],
        }
        peer = median_wall([sys.executable, "-c", peer_code], args.runs, env, cwd)
        figures = {label: median_wall(argv, args.runs, env, cwd)
                   for label, argv in commands.items()}
    print(f"index of {args.count:,} finished runs; median of {args.runs} runs after a warm-up; "
          f"--limit 0 --json returned {every:,} objects")
    print(f"{'python + sqlite3, every row (peer)':34} median {peer:.3f} s")
    for label, seconds in figures.items():
        verdict = ("no budget" if "--limit 0" in label
                   else f"budget < 0.4 s: {'ok' if seconds < 0.4 else 'MISSED'}")
        print(f"{label:34} median {seconds:.3f} s  ratio {seconds / peer:.2f} of the peer "
              f"({verdict})")


if __name__ == "__main__":
    main()
