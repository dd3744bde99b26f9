"""Startup budget: `prm --help` and `prm run reverse-text --dry-run --json` against
`modal --help`, measured in the same run (DESIGN.md: prm --help <= 0.25 x modal --help;
dry run under 0.3 s).

    python bench/startup.py [--runs 15]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def median_wall(argv: list[str], runs: int, cwd: str) -> float:
    subprocess.run(argv, cwd=cwd, capture_output=True, check=True)  # warm the page cache
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, cwd=cwd, capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as cwd:
        modal_help = median_wall([str(BIN / "modal"), "--help"], args.runs, cwd)
        prm_help = median_wall([str(BIN / "prm"), "--help"], args.runs, cwd)
        dry_run = median_wall(
            [str(BIN / "prm"), "run", "reverse-text", "--dry-run", "--json"], args.runs, cwd
        )
    print(f"modal --help                           median {modal_help:.3f} s")
    print(f"prm --help                             median {prm_help:.3f} s  "
          f"ratio {prm_help / modal_help:.2f} (budget <= 0.25)")
    print(f"prm run reverse-text --dry-run --json  median {dry_run:.3f} s  "
          f"ratio {dry_run / modal_help:.2f} (budget < 0.3 s)")


if __name__ == "__main__":
    main()
