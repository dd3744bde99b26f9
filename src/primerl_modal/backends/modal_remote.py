"""What runs inside the Modal container: one attempt of the runner, committing the outputs
volume on a cadence and at the end. Modal imports this module in the container and calls
`run_remote` (decorated per run by modal_backend, so each run has its own image)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

OUTPUTS_MOUNT = "/outputs"


def run_remote(plan: dict[str, Any]) -> int:
    """Run the next attempt of ``plan``. Raises when the attempt failed and Modal should
    retry it (a new attempt resumes from the latest checkpoint)."""
    import modal

    from primerl_modal.core import status as st
    from primerl_modal.core.plan import META_DIR
    from primerl_modal.runner.core import RunnerOptions, run
    from primerl_modal.runner.state import STOP_MARKER, RunState

    # PRM_OUTPUTS_DIR / PRM_WORKDIR / PRM_LAUNCHER exist for tests against a fake Modal.
    outputs = Path(os.environ.get("PRM_OUTPUTS_DIR", OUTPUTS_MOUNT))
    volume = modal.Volume.from_name(plan["volumes"][OUTPUTS_MOUNT])
    run_id = plan["run_id"]
    state = RunState.load(outputs / META_DIR / run_id, run_id)
    failures = sum(1 for a in state.data.get("attempts", []) if a.get("outcome") != st.SUCCEEDED)

    def stop_requested(_meta: Path) -> bool:
        # The mount only shows what this container wrote; ask the volume itself.
        try:
            for _ in volume.read_file(f"{META_DIR}/{run_id}/{STOP_MARKER}"):
                pass
        except (FileNotFoundError, modal.exception.NotFoundError):
            return False
        except modal.exception.Error:  # Modal unreachable: trust what the mount shows
            return (outputs / META_DIR / run_id / STOP_MARKER).exists()
        return True

    launcher = os.environ.get("PRM_LAUNCHER")
    options = RunnerOptions(
        outputs_root=outputs,
        workdir=Path(os.environ["PRM_WORKDIR"]) if os.environ.get("PRM_WORKDIR") else None,
        launcher=tuple(json.loads(launcher)) if launcher else None,
        retry_expected=failures < int(plan.get("retries", 0)),
        stop_requested=stop_requested,
    )
    code = run(plan, volume.commit, options)
    final = RunState.load(outputs / META_DIR / run_id, run_id).status
    if final == st.RECOVERING:
        raise RuntimeError(f"{run_id}: attempt ended with exit code {code}; Modal retries it")
    return code
