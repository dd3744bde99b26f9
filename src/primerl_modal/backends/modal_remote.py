"""What runs inside the Modal container: one attempt of the runner, committing the outputs
volume on a cadence and at the end. Modal imports this module in the container and calls
`run_remote` (decorated per run by modal_backend, so each run has its own image)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

OUTPUTS_MOUNT = "/outputs"
OPEN_FILES = 32000  # prime-rl's Dockerfile entrypoint: `ulimit -n 32000`
# The launcher's grace after a stop or preemption: inside Modal's ~30 s, with time left to
# record the end and commit.
GRACE_S = 20.0


def run_remote(plan: dict[str, Any]) -> int:
    """Run the next attempt of ``plan`` in this container.

    How it ends tells Modal what to do next: returning ends the call (the run reached a final
    status); an exception makes Modal retry the input (a failure with retries left, counted
    by Modal as by the runner); KeyboardInterrupt after a preemption reports nothing, so the
    input is restarted by Modal's preemption handling without spending a retry.
    """
    import modal

    from primerl_modal.core import status as st
    from primerl_modal.core.plan import META_DIR
    from primerl_modal.runner.cluster import run_node
    from primerl_modal.runner.core import RunnerOptions, gpu_sample_every, run
    from primerl_modal.runner.state import STOP_MARKER, RunState

    raise_open_files_limit()
    # PRM_OUTPUTS_DIR / PRM_WORKDIR / PRM_LAUNCHER exist for tests against a fake Modal.
    outputs = Path(os.environ.get("PRM_OUTPUTS_DIR", OUTPUTS_MOUNT))
    volume = modal.Volume.from_name(plan["volumes"][OUTPUTS_MOUNT])
    run_id = plan["run_id"]

    def stop_requested(_meta: Path) -> bool:
        # This container's mount shows others' writes only after a reload: ask the volume.
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
        gpu_sample_every=gpu_sample_every(),
        outputs_root=outputs,
        workdir=Path(os.environ["PRM_WORKDIR"]) if os.environ.get("PRM_WORKDIR") else None,
        launcher=tuple(json.loads(launcher)) if launcher else None,
        grace=GRACE_S,
        retries=int(plan.get("retries", 0)),
        call_id=modal.current_function_call_id(),
        preemptible=True,
        time_limit_s=float(plan["timeout_s"]) if plan.get("timeout_s") else None,
        stop_requested=stop_requested,
    )
    if int((plan.get("gpu") or {}).get("nodes") or 1) > 1:
        node = cluster_node(plan, volume, outputs)
        code = run_node(plan, volume.commit, options, node, ready_timeout())
        if node.rank > 0:
            return code  # only rank 0's result counts: it ends the call, or retries it
    else:
        code = run(plan, volume.commit, options)
    state = RunState.load(outputs / META_DIR / run_id, run_id)
    if state.status == st.RECOVERING:
        if state.data["attempts"][-1].get("preempted"):
            raise KeyboardInterrupt(f"{run_id}: preempted; Modal restarts this input")
        raise RuntimeError(f"{run_id}: attempt ended with exit code {code}; Modal retries it")
    return code


def cluster_node(plan: dict[str, Any], volume: Any, outputs: Path) -> Any:
    """This container's place in the run's Modal cluster: its rank, every rank's address
    (IPv4 where Modal gives one to every container, else IPv6), and the volume as the
    ranks' meeting point."""
    import modal

    from primerl_modal.runner.cluster import Node, Shared

    cluster = modal.Cluster.from_context()
    rank = cluster.container_rank()
    hosts = cluster.container_ips("ipv4")
    if len(hosts) != int(plan["gpu"]["nodes"]) or not all(hosts):
        hosts = cluster.container_ips("ipv6")

    def listdir(path: str) -> list[str]:
        try:
            return [entry.path for entry in volume.listdir(path)]
        except (FileNotFoundError, modal.exception.NotFoundError):
            return []

    launcher = json.loads(os.environ["PRM_LAUNCHER"]) if os.environ.get("PRM_LAUNCHER") \
        else plan["launcher"]
    # prime-rl's entry points (torchrun, orchestrator, inference, vllm-router) sit beside `rl`
    bin_dir = os.environ.get("PRM_PRIME_RL_BIN") or str(Path(launcher[0]).parent)
    shared = Shared(outputs, lambda path: committed(volume, path), listdir, volume.commit,
                    volume.reload)
    return Node(plan, rank, hosts, str(cluster.object_id), shared, bin_dir,
                poll_s=float(os.environ.get("PRM_CLUSTER_POLL_S") or 2.0))


def committed(volume: Any, path: str) -> bytes | None:
    """A file as the volume last committed it (None if there is none): what every container
    sees, unlike this container's mount, which shows others' writes only after a reload."""
    import modal

    try:
        return b"".join(volume.read_file(path))
    except (FileNotFoundError, modal.exception.NotFoundError):
        return None


def ready_timeout() -> float:
    from primerl_modal.runner.cluster import READY_TIMEOUT_S

    return float(os.environ.get("PRM_CLUSTER_TIMEOUT") or READY_TIMEOUT_S)


def preflight_remote(plan: dict[str, Any]) -> tuple[int, list[str]]:
    """prime-rl's `rl ... --dry-run` for ``plan``, in the run's image on a CPU container:
    (exit code, the last lines of its output). The caller decides what a refusal means."""
    from primerl_modal.runner.preflight import dry_run

    # PRM_WORKDIR / PRM_LAUNCHER: tests against a fake Modal, as for run_remote
    workdir, launcher = os.environ.get("PRM_WORKDIR"), os.environ.get("PRM_LAUNCHER")
    return dry_run(plan, workdir=Path(workdir) if workdir else None,
                   launcher=tuple(json.loads(launcher)) if launcher else None)


def raise_open_files_limit(want: int = OPEN_FILES) -> None:
    """vLLM engines and env servers open many sockets: prime-rl's own image raises the
    limit at start (its entrypoint's `ulimit -n`), and so does prm's runner."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= want:
        return
    for limits in ((want, max(hard, want)), (min(want, hard), hard)):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, limits)
            return
        except (ValueError, OSError):
            continue


def run_sweep(sweep: dict[str, Any], functions: dict[str, Any]) -> None:
    """The sweep controller, a CPU function in the sweep's app: starts trials (calls of the
    trial ``functions``) while fewer than max_parallel run, within the budget of the sweep's
    sweep.json. Its state lives on the outputs volume, so a restarted controller carries on
    where the last one was."""
    import modal

    from primerl_modal.core import status as st
    from primerl_modal.core.plan import META_DIR
    from primerl_modal.runner.state import (
        STOP_MARKER,
        RunState,
        json_object,
        read_json,
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

    outputs = Path(os.environ.get("PRM_OUTPUTS_DIR", OUTPUTS_MOUNT))
    volume = modal.Volume.from_name(sweep["outputs_volume"])
    sweep_id = sweep["sweep_id"]
    state_path = outputs / META_DIR / "sweeps" / sweep_id / "state.json"
    by_index = {t["index"]: t for t in sweep["trials"]}
    me = sweep["generation"]
    previous = read_json(state_path) or {}
    # A retried controller (the same input) carries on; a new one (a resume) starts afresh.
    saved = ({t["index"]: t for t in previous.get("trials", [])}
             if previous.get("controller") == me else {})
    trials = [TrialState(**saved[i]) if i in saved else TrialState(i, t["run_id"])
              for i, t in by_index.items()]

    def on_volume(path: str) -> bytes | None:
        return committed(volume, path)

    def status_of(run_id: str) -> dict[str, Any] | None:
        # as the trial's runner last committed it: this container's mount may be older
        return json_object(on_volume(f"{META_DIR}/{run_id}/status.json"))

    plan = json_object(on_volume(f"{META_DIR}/sweeps/{sweep_id}/sweep.json")) or {}
    with_rates(trials, plan)

    def start(t: TrialState) -> str:
        spec = by_index[t.index]
        return str(functions[spec["function"]].spawn(spec["plan"]).object_id)

    unreadable: dict[int, int] = {}

    def poll(t: TrialState) -> str | None:
        try:
            modal.FunctionCall.from_id(t.handle or "").get(timeout=0)
        except TimeoutError:
            return None
        except Exception:  # the call failed; its run's status says how
            pass
        raw = on_volume(f"{META_DIR}/{t.run_id}/status.json")
        status = json_object(raw)
        if raw is not None and status is None and unreadable.get(t.index, 0) < 3:
            unreadable[t.index] = unreadable.get(t.index, 0) + 1
            return None  # being rewritten just now: look again next tick
        final = (status or {}).get("status", "")
        return final if st.is_final(final) else st.LOST

    def stop(t: TrialState) -> None:
        (outputs / META_DIR / t.run_id).mkdir(parents=True, exist_ok=True)
        (outputs / META_DIR / t.run_id / STOP_MARKER).write_text("sweep")
        volume.commit()
        # InputCancellation in the trial's runner: it stops prime-rl and records STOPPED
        modal.FunctionCall.from_id(t.handle or "").cancel()

    def mark_stopped(t: TrialState, note: str) -> None:
        meta, data = outputs / META_DIR / t.run_id, status_of(t.run_id)
        state = RunState(meta, data) if data else RunState.create(meta, t.run_id)
        state.set_status(st.STOPPED, note)

    def save(items: list[TrialState]) -> None:
        write_json_atomic(state_path, {"sweep_id": sweep_id, "controller": me,
                                       "trials": [t.to_json() for t in items]})
        volume.commit()

    hooks = Hooks(
        start=start, poll=poll, stop=stop, mark_stopped=mark_stopped,
        stop_requested=lambda: on_volume(f"{META_DIR}/sweeps/{sweep_id}/{STOP_MARKER}")
        is not None,
        save=save, spent=lambda t: trial_spent(status_of(t.run_id), t.per_hour_usd),
        log=lambda text: print(f"[sweep] {text}", flush=True),
        tick=float(os.environ.get("PRM_SWEEP_TICK", "2")),
    )
    control(trials, int(sweep["max_parallel"]), bool(sweep["fail_fast"]), hooks,
            sweep_budget(plan, trials, status_of))
