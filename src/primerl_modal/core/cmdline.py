"""prime-rl `rl` command lines, per dialect (PRIME_RL.md), as argv lists.

Never a shell string: every value is its own argv element.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from primerl_modal.core.gpu_plan import GpuPlan
from primerl_modal.core.retention import Retention
from primerl_modal.errors import PlanError

LAUNCHER = ("uv", "run", "rl")  # a user's own checkout (local backend): uv keeps it synced

# prime-rl keys prm sets itself from the plan: overriding them would desynchronise the
# GPU request, the run directory or the W&B name from what prm records.
_MANAGED = {
    "current": {
        "deployment.num_train_gpus": "gpu.trainer",
        "deployment.num_infer_gpus": "gpu.inference",
        "deployment.type": "gpu.nodes",
        "deployment.num_train_nodes": "gpu.nodes and gpu.trainer_ratio",
        "deployment.num_infer_nodes": "gpu.nodes and gpu.trainer_ratio",
        "deployment.gpus_per_node": "gpu.count",
        "dry_run": "prm run --dry-run",
        "inference.vllm.tensor_parallel_size": "gpu.tp",
        "inference.vllm.data_parallel_size": "gpu.tp (dp follows)",
        "output_dir": "[modal] outputs_volume",
        "run.name": "experiment.name (the run id)",
        "monitors.wandb.name": "experiment.name (the run id)",
        "monitors.wandb.project": "wandb.project",
        "ckpt.interval": "prime_rl.ckpt_interval",
        "ckpt.keep_last": "prime_rl.ckpt_keep_last",
        "ckpt.keep_interval": "prime_rl.ckpt_keep_every",
        "clean": "prm never wipes a run directory: delete it yourself if you must",
        "resume": "prm run --resume RUN continues a run",
    },
    "2025-10": {
        "trainer_gpu_ids": "gpu.trainer",
        "inference_gpu_ids": "gpu.inference",
        "inference.parallel.dp": "gpu.tp (dp follows)",
        "inference.parallel.tp": "gpu.tp",
        "output_dir": "[modal] outputs_volume",
        "wandb.name": "experiment.name (the run id)",
        "wandb.project": "wandb.project",
        "trainer.wandb.id": "experiment.name (W&B run ids derive from the run id)",
        "orchestrator.wandb.id": "experiment.name (W&B run ids derive from the run id)",
        "ckpt.interval": "prime_rl.ckpt_interval",
        "ckpt.keep": "prime_rl.ckpt_keep_last",
        "ckpt.resume_step": "prm run --resume RUN continues a run",
        "clean": "prm never wipes a run directory: delete it yourself if you must",
        "resume": "prm run --resume RUN continues a run",
    },
}


@dataclass(frozen=True)
class Wandb:
    project: str
    name: str
    entity: str | None = None
    group: str | None = None


def venv_launcher(workdir: str) -> tuple[str, ...]:
    """The installed checkout's own `rl` entry point: unlike `uv run rl` it never re-checks
    the lock or re-syncs packages when a container starts."""
    return (f"{workdir}/.venv/bin/rl",)


def wandb_run_id(run_id: str, component: str = "") -> str:
    """A W&B run id that is the same for every attempt and resume of ``run_id``: 32 lowercase
    hex digits, the shape of the uuid4().hex prime-rl would pick itself, so it passes W&B's
    rule (no / \\ # ? % :) and whatever else prime-rl hands PRL_RUN_ID to."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"prm:{run_id}:{component}").hex


def flatten(table: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Leaves of a nested table as (dotted key, value), in insertion order."""
    for key, value in table.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            yield from flatten(value, dotted + ".")
        else:
            yield dotted, value


def flag(dotted: str) -> str:
    """``trainer.optim.max_norm`` -> ``--trainer.optim.max-norm``."""
    return "--" + ".".join(part.replace("_", "-") for part in dotted.split("."))


def render_value(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list | dict):
        return json.dumps(value, separators=(",", ":"), default=str)
    return str(value)


def override_args(overrides: Mapping[str, Any], dialect: str) -> list[str]:
    """``[overrides]`` as prime-rl flags: booleans as --flag / --no-flag, lists as JSON.

    Raises PlanError for a key that prm manages itself, naming the prm key to use.
    """
    args: list[str] = []
    managed = _MANAGED[dialect]
    for dotted, value in flatten(overrides):
        parts = dotted.split(".")
        for n in range(1, len(parts) + 1):
            use = managed.get(".".join(parts[:n]))
            if use:
                raise PlanError(
                    f"override {dotted!r} is set by prm for every run",
                    use if use.startswith("prm ") else f"use {use} instead",
                )
        if isinstance(value, bool):
            args.append(flag(dotted) if value else "--no-" + flag(dotted)[2:])
        else:
            args += [flag(dotted), render_value(value)]
    return args


def current_argv(
    config: str, gpus: GpuPlan, output_dir: str, run_id: str, wandb: Wandb,
    ckpt_interval: int | None, overrides: Mapping[str, Any],
    launcher: tuple[str, ...] = LAUNCHER, retention: Retention | None = None,
) -> list[str]:
    """`rl` argv for dialect ``current``: one rl.toml, [deployment], inference.vllm.*, and
    the shared [ckpt] interval and retention (keep_last, keep_interval)."""
    argv = [*launcher, "@", config]
    argv += ["--deployment.num-train-gpus", str(gpus.trainer)]
    argv += ["--deployment.num-infer-gpus", str(gpus.inference)]
    argv += ["--inference.vllm.tensor-parallel-size", str(gpus.tp)]
    argv += ["--inference.vllm.data-parallel-size", str(gpus.dp)]
    argv += ["--output-dir", output_dir, "--run.name", run_id]
    argv += _monitors_wandb_args(wandb) + _ckpt_args(ckpt_interval, retention)
    return argv + override_args(overrides, "current")


def multi_node_argv(
    config: str, gpus: GpuPlan, output_dir: str, run_id: str, wandb: Wandb,
    ckpt_interval: int | None, overrides: Mapping[str, Any],
    launcher: tuple[str, ...] = LAUNCHER, retention: Retention | None = None,
) -> list[str]:
    """Rank 0's `rl` argv for a cluster (dialect ``current``): the multi-node deployment
    and `--dry-run`, with which prime-rl resolves and writes the sub-configs and renders
    its job script without submitting anything (docs/multi-node.md). No DP flag: each
    inference node runs gpus_per_node / TP engines, so DP follows the nodes."""
    argv = [*launcher, "@", config, "--deployment.type", "multi_node"]
    argv += ["--deployment.num-train-nodes", str(gpus.trainer_nodes)]
    argv += ["--deployment.num-infer-nodes", str(gpus.inference_nodes)]
    argv += ["--deployment.gpus-per-node", str(gpus.count)]
    argv += ["--inference.vllm.tensor-parallel-size", str(gpus.tp)]
    # the rendered job script (never submitted) is named after the run
    argv += ["--output-dir", output_dir, "--run.name", run_id, "--slurm.job-name", run_id]
    argv += _monitors_wandb_args(wandb) + _ckpt_args(ckpt_interval, retention)
    return argv + override_args(overrides, "current") + ["--dry-run"]


def _ckpt_args(ckpt_interval: int | None, retention: Retention | None) -> list[str]:
    if not ckpt_interval:
        return []
    args = ["--ckpt.interval", str(ckpt_interval)]
    if retention:
        args += ["--ckpt.keep-last", str(retention.keep_last)]
        if retention.keep_every:
            args += ["--ckpt.keep-interval", str(retention.keep_every)]
    return args


def legacy_argv(
    configs: tuple[str, str, str], gpus: GpuPlan, run_id: str, run_dir: str, wandb: Wandb,
    ckpt_interval: int | None, overrides: Mapping[str, Any],
    launcher: tuple[str, ...] = LAUNCHER, retention: Retention | None = None,
) -> list[str]:
    """`rl` argv for dialect ``2025-10``: three files, GPU id lists, inference.parallel.*,
    the shared [ckpt] interval and its `keep` (that launcher has no keep interval).

    That launcher's shared [wandb] has only project, name and offline (entity and group
    travel as WANDB_ENTITY / WANDB_RUN_GROUP, see ``legacy_wandb_env``); trainer and
    orchestrator log to W&B runs of their own, each given a stable id so a resume continues
    it. Raises PlanError for a --ckpt.* override without prime_rl.ckpt_interval.
    """
    if not ckpt_interval and any(k.startswith("ckpt.") for k, _ in flatten(overrides)):
        raise PlanError(
            "in dialect 2025-10 any --ckpt.* flag resets the config files' [ckpt] interval "
            "to prime-rl's default of 50",
            "set prime_rl.ckpt_interval too, so prm passes --ckpt.interval with it",
        )
    trainer, orchestrator, inference = configs
    argv = [*launcher, "--trainer", "@", trainer, "--orchestrator", "@", orchestrator]
    argv += ["--inference", "@", inference]
    argv += ["--trainer-gpu-ids", ",".join(map(str, gpus.trainer_gpu_ids))]
    argv += ["--inference-gpu-ids", ",".join(map(str, gpus.inference_gpu_ids))]
    argv += ["--inference.parallel.dp", str(gpus.dp), "--inference.parallel.tp", str(gpus.tp)]
    argv += ["--output-dir", run_dir]
    argv += ["--wandb.project", wandb.project, "--wandb.name", wandb.name]
    argv += ["--trainer.wandb.id", wandb_run_id(run_id, "trainer")]
    argv += ["--orchestrator.wandb.id", wandb_run_id(run_id, "orchestrator")]
    if ckpt_interval:
        argv += ["--ckpt.interval", str(ckpt_interval)]
    if ckpt_interval and retention:
        argv += ["--ckpt.keep", str(retention.keep_last)]
    return argv + override_args(overrides, "2025-10")


def legacy_wandb_env(wandb: Wandb) -> dict[str, str]:
    """Entity and group for dialect 2025-10, whose config has no field for them: the wandb
    library reads these variables when wandb.init is not given them."""
    env = {"WANDB_ENTITY": wandb.entity, "WANDB_RUN_GROUP": wandb.group}
    return {k: v for k, v in env.items() if v}


def _monitors_wandb_args(wandb: Wandb) -> list[str]:
    args = ["--monitors.wandb.project", wandb.project, "--monitors.wandb.name", wandb.name]
    if wandb.entity:
        args += ["--monitors.wandb.entity", wandb.entity]
    if wandb.group:
        args += ["--monitors.wandb.group", wandb.group]
    return args
