"""Every key a profile may hold: its section, kind, default and meaning.

One table serves validation, `--set` key checks, `--explain`, `prm init` comments and
docs/profiles.md, so they cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from primerl_modal.core.gpus import CPU_CORES_PER_GPU, MEMORY_GIB_PER_GPU

Kind = Literal["str", "int", "float", "bool", "str_list", "duration", "str_table", "table"]

PRIME_RL_REPO = "https://github.com/PrimeIntellect-ai/prime-rl.git"
PRIME_RL_REF = "559b44772e471d1538537b8805cc77f3824a5e64"
DIALECTS = ("current", "2025-10")
BACKENDS = ("modal", "local")
BASE_IMAGE = "nvidia/cuda:12.8.1-cudnn-devel-ubuntu24.04"
# An exact uv, so an image build is repeatable; prime-rl's [tool.uv] required-version at the
# default ref is ">=0.11.1".
UV_VERSION = "0.13.9"


@dataclass(frozen=True)
class Key:
    section: str
    name: str
    kind: Kind
    default: Any
    help: str

    @property
    def dotted(self) -> str:
        return f"{self.section}.{self.name}" if self.section else self.name


KEYS: tuple[Key, ...] = (
    Key("", "extends", "str", None, "Parent profile, relative to this file; tables deep-merge."),
    Key("experiment", "name", "str", None, "Run-id prefix; defaults to the profile's file stem."),
    Key("experiment", "tags", "str_list", [], "Free-form tags, kept with the run."),
    Key("experiment", "metric", "str", "reward/mean", "metrics.jsonl key shown as progress."),
    Key("prime_rl", "repo", "str", PRIME_RL_REPO, "Git URL of prime-rl (or your fork)."),
    Key("prime_rl", "ref", "str", PRIME_RL_REF, "Commit (best), tag or branch to build."),
    Key("prime_rl", "dialect", "str", "current", "Launcher dialect: current or 2025-10."),
    Key("prime_rl", "config", "str", None,
        "rl.toml: a path in the prime-rl checkout, or ./local.toml to upload (current)."),
    Key("prime_rl", "trainer_config", "str", None, "Trainer TOML (2025-10 dialect)."),
    Key("prime_rl", "orchestrator_config", "str", None, "Orchestrator TOML (2025-10 dialect)."),
    Key("prime_rl", "inference_config", "str", None, "Inference TOML (2025-10 dialect)."),
    Key("prime_rl", "local_code", "str", None,
        "Local prime-rl checkout whose src/ and configs/ overlay the pinned ref."),
    Key("prime_rl", "image", "str", None,
        "Prebuilt prime-rl image to run instead of building one (Modal), e.g. "
        "ghcr.io/primeintellect-ai/prime-rl:commit-SHA-amd64 (SHA: the full commit)."),
    Key("prime_rl", "uv_version", "str", UV_VERSION,
        "Exact uv the built image installs; the ref's required-version must accept it."),
    Key("prime_rl", "ckpt_interval", "int", None,
        "Checkpoint every N steps (--ckpt.interval); needed to resume after preemption."),
    Key("prime_rl", "ckpt_keep_last", "int", 3,
        "With ckpt_interval: keep only the newest N checkpoints on the volume (at least 2: "
        "the newest may be incomplete when a run is cut)."),
    Key("prime_rl", "ckpt_keep_every", "int", None,
        "With ckpt_interval: also keep every checkpoint at a multiple of N steps, for good "
        "(current dialect)."),
    Key("gpu", "type", "str", "H100", "GPU type: A100-40GB, A100-80GB, H100, H200, B200, ..."),
    Key("gpu", "count", "int", 2, "GPUs on the node (2..8): trainer + inference."),
    Key("gpu", "nodes", "int", 1,
        "Nodes of `count` GPUs each (Modal cluster, up to 32); over 1, whole nodes per role."),
    Key("gpu", "trainer_ratio", "float", 0.5,
        "Share of the GPUs (of the nodes, when nodes > 1) for the trainer, in (0, 1)."),
    Key("gpu", "tp", "int", 1, "Inference tensor parallel size; must divide the inference GPUs."),
    Key("gpu", "trainer", "int", None, "Explicit trainer GPU count (instead of the ratio)."),
    Key("gpu", "inference", "int", None, "Explicit inference GPU count (instead of the ratio)."),
    Key("modal", "timeout", "duration", "24h", "Time limit of one attempt (at most 24h)."),
    Key("modal", "retries", "int", 3, "Restarts after preemption or crash (0..10), each resuming."),
    Key("modal", "outputs_volume", "str", "prime-rl-outputs", "Volume mounted at /outputs."),
    Key("modal", "cache_volume", "str", "prime-rl-cache", "Volume mounted at /cache (HF_HOME)."),
    Key("modal", "secrets", "str_list", ["wandb", "huggingface"], "Modal secret names to attach."),
    Key("modal", "region", "str", None, "Modal region, e.g. us-east."),
    Key("modal", "cpu", "float", None,
        f"Physical CPU cores to reserve (default: {CPU_CORES_PER_GPU:g} per GPU)."),
    Key("modal", "memory", "int", None,
        f"Memory to reserve, MiB (default: {MEMORY_GIB_PER_GPU} GiB per GPU)."),
    Key("modal", "base_image", "str", BASE_IMAGE,
        "CUDA devel base image a built image starts from."),
    Key("guard", "stall_timeout", "duration", "30m",
        "No new training step for this long after the first: a hung run, stopped FAILED and "
        "not retried."),
    Key("guard", "startup_timeout", "duration", "60m",
        "No first step this long after launch (image pull, model download, compile): "
        "stopped FAILED and not retried."),
    Key("guard", "startup_retries", "int", 1,
        "Retries of a failure before the first step (config errors repeat); a failure "
        "after progress keeps [modal] retries."),
    Key("guard", "max_usd", "float", None,
        "Budget: the run (all attempts, at the plan's rates) is stopped when it reaches it."),
    Key("wandb", "project", "str", "prime-rl", "W&B project; the run name is the run id."),
    Key("wandb", "entity", "str", None, "W&B entity (team or user)."),
    Key("wandb", "group", "str", None, "W&B group."),
    Key("backend", "kind", "str", "modal", "Where runs go: modal, or local (this machine)."),
    Key("local", "prime_rl_dir", "str", None, "prime-rl checkout the local backend runs in."),
    Key("local", "outputs_dir", "str", None, "Local outputs root (default $PRM_HOME/outputs)."),
    Key("local", "launcher", "str_list", None, "Launcher argv prefix (default: uv run rl)."),
    Key("env", "*", "str_table", {}, "Plain environment variables (never secrets)."),
    Key("overrides", "*", "table", {}, "prime-rl config overrides, rendered as --a.b-c flags."),
)

SECTIONS: tuple[str, ...] = tuple(dict.fromkeys(k.section for k in KEYS if k.section))
FREE_SECTIONS = {k.section for k in KEYS if k.name == "*"}
BY_DOTTED: dict[str, Key] = {k.dotted: k for k in KEYS if k.name != "*"}


def keys_of(section: str) -> list[str]:
    return [k.name for k in KEYS if k.section == section and k.name != "*"]


def defaults() -> dict[str, Any]:
    """The built-in default of every key, as a nested table (None values left out)."""
    out: dict[str, Any] = {}
    for k in KEYS:
        if k.section and k.name != "*" and k.default is not None:
            out.setdefault(k.section, {})[k.name] = k.default
    return out
