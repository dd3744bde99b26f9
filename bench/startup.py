"""Start-up budgets (bench/README.md): `prm --help` at most 0.25 x the wall time of
`modal --help`, measured in the same run; `prm run reverse-text --dry-run` under 0.3 s, both
as a person sees it (the Rich plan) and as a program gets it (`--json`).

The commands take turns: every round runs each of them once, in an order that rotates from
round to round, so a machine that gets busier or quieter during the run moves all the
figures alike instead of favouring whichever ran first. The figure is the median of the
rounds, after one warm-up round (page cache, .pyc files).

    python bench/startup.py [--runs 15]

Exit status 1 when a budget is over.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

BIN = Path(sys.executable).parent
PEER = "modal --help"


@dataclass(frozen=True)
class Budget:
    command: str
    reads: str  # the budget as bench/README.md states it
    met: Callable[[float, float], bool]  # (median, the peer's median) -> within it


BUDGETS = (
    Budget("prm --help", "<= 0.25 x modal --help", lambda s, peer: s <= 0.25 * peer),
    Budget("prm run reverse-text --dry-run", "< 0.3 s", lambda s, peer: s < 0.3),
    Budget("prm run reverse-text --dry-run --json", "< 0.3 s", lambda s, peer: s < 0.3),
)


def argv_of(command: str) -> list[str]:
    tool, *args = command.split()
    return [str(BIN / tool), *args]


def wall(argv: list[str], cwd: str, env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, cwd=cwd, env=env, capture_output=True, check=True)
    return time.perf_counter() - start


def interleaved(commands: list[str], runs: int, cwd: str,
                env: dict[str, str]) -> dict[str, list[float]]:
    """Wall times of each command over ``runs`` rounds, each round running every command
    once, the order rotated by one each round; a warm-up round first, not counted."""
    for command in commands:
        wall(argv_of(command), cwd, env)
    times: dict[str, list[float]] = {command: [] for command in commands}
    for r in range(runs):
        k = r % len(commands)
        for command in commands[k:] + commands[:k]:
            times[command].append(wall(argv_of(command), cwd, env))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=15, help="rounds (each command once each)")
    args = parser.parse_args()
    commands = [PEER, *(b.command for b in BUDGETS)]
    with tempfile.TemporaryDirectory() as cwd:
        env = {**os.environ, "PRM_HOME": str(Path(cwd) / "prm-home")}
        times = interleaved(commands, args.runs, cwd, env)
    median = {command: statistics.median(t) for command, t in times.items()}
    peer = median[PEER]
    width = max(map(len, commands))
    print(f"median of {args.runs} interleaved rounds after a warm-up round")
    print(f"{PEER:{width}}  {peer:.3f} s  (the peer)")
    over = False
    for b in BUDGETS:
        seconds = median[b.command]
        met = b.met(seconds, peer)
        over |= not met
        print(f"{b.command:{width}}  {seconds:.3f} s  ratio {seconds / peer:.2f}  "
              f"budget {b.reads}: {'ok' if met else 'OVER'}")
    sys.exit(1 if over else 0)


if __name__ == "__main__":
    main()
