"""The local sweep controller: a detached process that starts trials (local runners) while
fewer than max_parallel run. `python -m primerl_modal.backends.local_sweep --sweep-dir DIR`."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from primerl_modal.core import status as st
from primerl_modal.runner.state import (
    STOP_MARKER,
    RunState,
    read_json,
    request_stop,
    write_json_atomic,
)
from primerl_modal.sweep_control import (
    Hooks,
    TrialState,
    control,
    sweep_budget,
    trial_spent,
    with_rates,
)


def main(argv: list[str] | None = None) -> int:
    from primerl_modal.backends.local import live_runner, spawn_runner

    parser = argparse.ArgumentParser(prog="python -m primerl_modal.backends.local_sweep")
    parser.add_argument("--sweep-dir", type=Path, required=True)
    parser.add_argument("--tick", type=float, default=1.0)
    args = parser.parse_args(argv)
    sweep_dir: Path = args.sweep_dir
    spec = json.loads((sweep_dir / "controller.json").read_text())
    outputs = spec["outputs_root"]
    meta_root = Path(outputs) / "_prm"
    plan = read_json(sweep_dir / "sweep.json") or {}
    trials = with_rates([TrialState(t["index"], t["run_id"]) for t in spec["trials"]], plan)

    def status_of(run_id: str) -> dict[str, Any]:
        return read_json(meta_root / run_id / "status.json") or {}

    def poll(t: TrialState) -> str | None:
        status = status_of(t.run_id)
        final = str(status.get("status", ""))
        if st.is_final(final):
            return final
        alive = live_runner(meta_root / t.run_id, status, int(t.handle or 0))
        return None if alive else st.LOST

    def stop(t: TrialState) -> None:
        request_stop(meta_root / t.run_id)
        pid = live_runner(meta_root / t.run_id, status_of(t.run_id), int(t.handle or 0))
        if pid:
            os.kill(pid, signal.SIGTERM)

    def mark_stopped(t: TrialState, note: str) -> None:
        RunState.load(meta_root / t.run_id, t.run_id).set_status(st.STOPPED, note)

    hooks = Hooks(
        start=lambda t: str(spawn_runner(meta_root / t.run_id, outputs)),
        poll=poll, stop=stop, mark_stopped=mark_stopped,
        stop_requested=lambda: (sweep_dir / STOP_MARKER).exists(),
        save=lambda items: write_json_atomic(
            sweep_dir / "state.json", {"controller": os.getpid(),
                                       "trials": [t.to_json() for t in items]}),
        spent=lambda t: trial_spent(status_of(t.run_id), t.per_hour_usd),
        log=lambda text: print(text, flush=True), tick=args.tick,
    )
    write_json_atomic(sweep_dir / "state.json", {"controller": os.getpid(),
                                                 "trials": [t.to_json() for t in trials]})
    budget = sweep_budget(plan, trials, status_of)
    control(trials, int(spec["max_parallel"]), bool(spec["fail_fast"]), hooks, budget)
    return 0


if __name__ == "__main__":
    sys.exit(main())
