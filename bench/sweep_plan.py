"""Sweep planning: expand a 10,000-trial grid over a shipped profile and plan every trial
(resolve, split GPUs, build each command line), as `prm sweep FILE --dry-run` does before
anything launches. Budget (DESIGN.md): under 1 s. The peer, measured in the same run, is
planning one run the same way 10,000 times over from scratch (profile files read each time),
which is what a loop of `prm run --dry-run` calls would at best cost inside one process.

    python bench/sweep_plan.py [--runs 5] [--side 100]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--side", type=int, default=100, help="grid of side x side trials")
    args = parser.parse_args()
    os.environ["PRM_HOME"] = tempfile.mkdtemp()
    from primerl_modal.core.sweep import SweepSpec
    from primerl_modal.planning import plan_profile
    from primerl_modal.sweeps import plan_sweep

    spec = SweepSpec(name="bench", profile="hendrycks-sanity", parameters={
        "trainer.optim.lr": tuple(1e-7 * i for i in range(1, args.side + 1)),
        "orchestrator.batch_size": tuple(range(16, 16 + args.side)),
    })
    n = spec.count()
    sweep_times, peer_times = [], []
    for _ in range(args.runs):
        start = time.perf_counter()
        plan = plan_sweep(spec)
        sweep_times.append(time.perf_counter() - start)
        assert len(plan.trials) == n
        start = time.perf_counter()
        for _ in range(min(n, 1000)):
            plan_profile("hendrycks-sanity")
        peer_times.append((time.perf_counter() - start) * n / min(n, 1000))
    sweep, peer = statistics.median(sweep_times), statistics.median(peer_times)
    print(f"{n:,} runs planned one by one (peer, extrapolated from 1,000)  median {peer:.3f} s")
    print(f"{n:,}-trial grid expanded and planned by prm sweep               median {sweep:.3f} s"
          f"  ratio {sweep / peer:.2f} of the peer (budget < 1 s: "
          f"{'ok' if sweep < 1 else 'MISSED'})")


if __name__ == "__main__":
    main()
