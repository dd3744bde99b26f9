"""`python -m primerl_modal.runner --plan PLAN.json --outputs-root DIR`: one attempt.

The local backend starts this detached; exits with the launcher's exit code.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from primerl_modal.runner.core import RunnerOptions, gpu_sample_every, load_plan, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m primerl_modal.runner")
    parser.add_argument("--plan", type=Path, required=True, help="plan.json of the run")
    parser.add_argument("--outputs-root", type=Path, required=True,
                        help="where the plan's outputs root really is")
    parser.add_argument("--workdir", type=Path, help="prime-rl checkout (default: the plan's)")
    parser.add_argument("--launcher", help="JSON list replacing the plan's launcher prefix")
    parser.add_argument("--commit-every", type=float, default=30.0)
    parser.add_argument("--grace", type=float, default=25.0)
    args = parser.parse_args(argv)
    options = RunnerOptions(
        gpu_sample_every=gpu_sample_every(),
        outputs_root=args.outputs_root.resolve(),
        workdir=args.workdir,
        launcher=tuple(json.loads(args.launcher)) if args.launcher else None,
        commit_every=args.commit_every,
        grace=args.grace,
    )
    return run(load_plan(args.plan), lambda: None, options)


if __name__ == "__main__":
    sys.exit(main())
