#!/usr/bin/env python3
"""A fake prime-rl ``rl`` launcher for tests (stdlib only, no GPUs).

Run it where a test would run ``uv run rl``::

    python tests/fake_prime_rl/rl.py @ rl.toml --output-dir /x --run.name ID ...
    tests/fake_prime_rl/bin/rl @ rl.toml ...   # the same, with the python3 on PATH

From the outside it behaves like prime-rl's launcher as described in
``shared/PRIME_RL.md``: same argv for both dialects (``current`` and ``2025-10``, the
latter detected by ``--trainer @ FILE``), same validation errors (exit 2, nothing
written), same run directory layout (``configs/``, ``logs/``, ``metrics.jsonl``,
``checkpoints/step_N/``, ``rollouts/step_N/``), same handling of a run directory that
already holds artifacts and same resume semantics, per dialect (below).
Each step takes ``FAKE_RL_STEP_SECONDS`` and appends to the component logs, to
``metrics.jsonl``, writes the step's rollouts and (every checkpoint interval steps) a
checkpoint.

Rollouts, as prime-rl's file monitor writes them: ``rollouts/step_N/train/all/traces.jsonl``
and ``rollouts/step_N/train/effective/traces.jsonl``, one verifiers 0.4.0 episode record
(``Episode.to_record()``: ``id``, ``env``, ``task``, ``ok``, ``is_timeout``, ``errors``,
``traces[]`` with ``nodes``, ``rewards``, ``metrics``, ...) a line, in the exact shape of
``shared/samples/traces.jsonl``. Per env of the orchestrator config (``env`` list ids;
``reverse-text`` when none) a step has 3 reverse-text tasks sampled twice each: a system
and a user message (the text to reverse, varying per task), one sampled assistant reply, one
``lcs_ratio`` reward (perfect more often as steps go on). One episode per env a step fails
without trace content (``ok`` false, one error): a timeout (``is_timeout`` true,
``TimeoutError``) on odd steps, a ``ProviderError`` (503) on even ones. ``effective`` holds
the episodes that train: succeeded, with a reward off their task group's mean. Everything
is a function of (env, step, episode index), timestamps included.

It spawns one idle child process per component (inference, orchestrator, trainer) in
the launcher's process group, so tests can check that a runner leaves no orphans; it prints
``All components started`` once they are up. The caller must start it in a new process
group (``start_new_session=True``); on SIGTERM/SIGINT the launcher stops its children
itself, so signalling the launcher alone or the whole group both work.

During startup, before ``All components started``, stdout carries a tqdm-style progress
bar (``\\rLoading safetensors checkpoint shards:   0% Completed | 0/4 [...]`` redrawn to
100% with ``\\r``, each redraw flushed on its own, then a newline) and ``inference.log``
gets the same bar.

Checkpoints, as prime-rl writes them (torch distributed checkpointing, not atomic):
``checkpoints/step_N/orchestrator/progress.pt``, then one shard per trainer rank
``checkpoints/step_N/trainer/__<rank>_0.distcp``, then ``FAKE_RL_CKPT_SECONDS`` later the
trainer's ``.metadata`` (written to a temp name and renamed, so it appears whole). A step
folder without ``trainer/.metadata`` is incomplete: a SIGTERM/SIGINT during those seconds
or ``FAKE_RL_DIE_IN_CHECKPOINT_AT_STEP`` leaves one behind. A step folder being
rewritten (after a resume from an earlier step) is removed first.

Loading a checkpoint: when a launch resumes from step N, the trainer loads
``checkpoints/step_N/trainer`` right after ``All components started``. Without its
``.metadata`` (an incomplete or missing step folder) it fails as a torch DCP load does: the
trainer log gets a traceback through ``CheckpointException`` whose last line is
``FileNotFoundError: [Errno 2] No such file or directory: '<path>'`` (``<path>``: the
absolute ``.../checkpoints/step_N/trainer/.metadata``), and the launcher reports
``trainer process failed with exit code 1 while loading checkpoint step N`` (stdout and
stderr) and exits 1.

Dialect ``current`` (prime-rl from Aug 2026):

- A run directory holding artifacts is refused (exit 1, nothing written) unless
  ``--resume`` or ``--clean`` is given; ``--clean`` deletes the run directory first;
  ``--resume`` with ``--clean`` is a usage error. ``configs/`` (rewritten on every
  launch) is not an artifact, anything else in the run directory is.
- Bare ``--resume`` resumes from the highest ``checkpoints/step_*`` folder WITHOUT
  checking that it is complete (as prime-rl does), so an incomplete newest folder fails
  the load. ``--resume.step N`` resumes from exactly step N (the same load failure when
  that folder is incomplete or missing). ``--resume`` with no ``step_*`` folder at all
  warns ``no checkpoint found`` on stderr, prints ``No checkpoint found, starting from
  step 1`` and trains from step 1.
- Checkpoints only with ``--ckpt.interval N`` / ``[ckpt] interval``.
- Logs go to a new ``logs/attempt_<n>`` per launch (``logs/latest`` points at it).
- The launcher does ``os.environ.setdefault("PRL_RUN_ID", uuid4().hex)`` and sets
  ``PRL_RUN_NAME`` to the run name; its children inherit both.
- Unknown config keys are refused before anything else, from a flag or a config file
  alike, as prime-rl's pydantic configs (``extra="forbid"``) refuse them through
  pydantic-config: on stderr, in a box titled ``Config file error``, ``Failed to validate
  config:``, ``N validation error(s) for RLConfig``, then per key its flag form
  (``--trainer.optim.lrr``) and ``Extra inputs are not permitted (got <value>)``; exit 1,
  nothing written (``--dry-run`` included). The fake knows the top-level keys, the
  ``[trainer]`` keys, the optimizer's (``[trainer.optim]``) and the shared ``[ckpt]``
  keys (``CURRENT_SCHEMA``); inside the other tables any key passes. (Real prime-rl's
  pydantic-config reports an unknown flag outside a union-typed table as
  ``Unrecognized command-line option(s):`` in the same box; the fake uses one wording.)

Dialect ``2025-10`` (prime-rl of Oct 2025, three files):

- ``clean`` defaults to true, as in prime-rl then: every launch deletes ``logs/`` and
  ``rollouts/``, and ``checkpoints/`` too unless it resumes; ``--no-clean`` keeps
  everything. A run directory holding artifacts is never refused.
- Resume is ``--ckpt.resume-step N`` (or ``[ckpt] resume_step`` in the trainer file):
  resumes from exactly step N, same load failure when incomplete or missing; 0 means no
  resume. ``--resume`` does not exist here: it is rejected like any unknown flag
  (``unrecognized arguments``, exit 2), and so are ``--dry-run`` (prime-rl then had no dry
  run; its config also checked the GPUs it was given), ``--ckpt.*`` keys other than
  ``interval``, ``resume-step``, ``keep`` and ``--wandb.*`` keys other than ``project``,
  ``name``, ``offline`` (e.g. ``--wandb.entity``, ``--wandb.id``).
- Any ``--ckpt.*`` flag creates the shared ``[ckpt]`` table, whose interval (default 50)
  then replaces the files' ``[ckpt] interval``: ``--ckpt.resume-step N`` alone means
  checkpoints every 50 steps. Without any ``--ckpt.*`` flag the trainer (else
  orchestrator) file's ``[ckpt] interval`` applies; none means no checkpoints.
- W&B run ids are per component: ``--trainer.wandb.id``, ``--orchestrator.wandb.id``.
- ``--inference-gpu-ids`` must hold exactly ``dp * tp`` ids.
- Logs are ``logs/{inference,orchestrator,trainer}.stdout`` (prime-rl then: each opened
  with "w" on every launch).
- The launcher does not set ``PRL_RUN_ID`` (it passes on an inherited one).

Multi-node (dialect ``current``, ``[deployment] type = "multi_node"`` or
``--deployment.type multi_node``), as prime-rl's RLConfig and ``rl_slurm`` have it: refused
without a ``[slurm]`` table or a ``--slurm.*`` flag (``Must use SLURM for multi-node
deployment.``, exit 2); ``num_train_nodes`` and ``num_infer_nodes`` are required (the fake
needs at least one of each: no fake-data training without inference) and the
single-node ``num_train_gpus`` / ``num_infer_gpus`` are unknown keys there (the box, exit 1);
the tensor parallel size (``inference.vllm.tensor_parallel_size``, else
``inference.parallel.tp``) must divide ``gpus_per_node``; ``[weight_broadcast] type`` is
``filesystem`` (default) or ``nccl``. With ``--dry-run`` it writes
``configs/{trainer,orchestrator,inference}.toml`` (TOML: each section over the shared keys;
trainer and orchestrator also get the absolute ``output_dir`` (the run directory),
``max_steps`` and ``[ckpt]`` with the interval and the resolved ``resume_step`` (resolved as
a launch resolves it); the orchestrator ``[weight_broadcast] type``) and a stand-in job
script ``rl.sbatch``, prints ``Dry run complete. To submit manually:`` and ``  sbatch
<script>``, exits 0 and starts nothing. Without ``--dry-run`` it exits 1 (nothing to submit
to). What each node then runs is ``roles.py``, through the entry points in ``bin/``.

Dialect ``current``: ``--dry-run`` validates and writes ``configs/`` only, without
checking for artifacts. Both dialects: configs are written as JSON; a resume appends to
``metrics.jsonl`` (steps after the checkpoint may repeat), and so does a 2025-10 launch
that cleaned the rest.

Exit codes: 0 finished (or ``--dry-run``), 1 run failure / refused run directory /
failed checkpoint load / unknown config key, 2 invalid command line or config, 143
SIGTERM, 130 SIGINT, -9 (killed) with ``FAKE_RL_DIE_IN_CHECKPOINT_AT_STEP``.

Environment controls (unset or empty means off):

``FAKE_RL_STEP_SECONDS=float``
    Duration of one training step (default 0.05).
``FAKE_RL_CKPT_SECONDS=float``
    Time between a checkpoint's shards and its ``.metadata`` (default 0.02).
``FAKE_RL_FAIL_AT_STEP=k``
    At step k the trainer writes a Python traceback ending in
    ``RuntimeError: CUDA error: an illegal memory access was encountered`` to its log,
    the launcher prints ``ERROR: trainer process failed with exit code 1 at step k``
    (stdout and stderr) and exits 1. Steps are absolute (a resumed run counts on from
    its checkpoint).
``FAKE_RL_FAIL_AFTER_STEPS=k``
    Fail the same way after k steps counted from where this launch started (at step
    ``resume step + k + 1``), so every resumed attempt fails again.
``FAKE_RL_FAIL_BEFORE_STEP=1``
    Fail during startup, after ``All components started`` and before the first step:
    the orchestrator log gets a traceback ending in
    ``ModuleNotFoundError: No module named '<first env id, - as _>'``, the launcher prints
    ``ERROR: orchestrator process failed with exit code 1 before step <first step>``
    (stdout and stderr) and exits 1.
``FAKE_RL_DIE_IN_CHECKPOINT_AT_STEP=k``
    At step k's checkpoint (k must be a checkpoint step), write the orchestrator file and
    the trainer shards, then SIGKILL the launcher's whole process group before
    ``.metadata``, as a hard kill would. If the launcher does not lead its own process
    group, only it and its children are killed.
``FAKE_RL_SHUTDOWN_SECONDS=s``
    On SIGTERM/SIGINT the launcher and its children take s seconds to exit: after
    ``received SIG..., shutting down`` the launcher prints (and logs) ``waiting for
    components to shut down (<t>s left)`` every 0.25 s, then ``shutdown complete``, then
    stops its children and exits 143/130. Children signalled directly also live s
    seconds more.
``FAKE_RL_HANG=1``
    After startup (banner, logs, children) hang forever; SIGTERM/SIGINT still work.
``FAKE_RL_HANG_AT_STEP=k``
    Hang forever at the start of step k (after printing ``Starting step k``).
``FAKE_RL_FAST_LINES=N``
    Ignore everything else: write N lines ``line 000001 ...`` to stdout as fast as
    possible and exit 0 (for output-throughput benchmarks).
``FAKE_RL_IGNORE_SIGTERM=1``
    The launcher and its children ignore SIGTERM (the launcher notes it on stderr);
    only SIGINT or SIGKILL stop it.
``FAKE_RL_RECORD=path``
    Append one JSON object per invocation to ``path``: ``{"argv": [...], "env": [sorted
    names of the variables the launcher received, no values], "cwd": ..., "pid": ...,
    "time": ..., "prl_run_id": ..., "wandb_ids": ...}``. ``prl_run_id`` is the
    ``PRL_RUN_ID`` in effect for the launch (inherited, else generated in the current
    dialect; null in 2025-10 when not inherited); ``wandb_ids`` is, in the 2025-10
    dialect, ``{"trainer": ..., "orchestrator": ...}`` from ``--trainer.wandb.id`` /
    ``--orchestrator.wandb.id`` (null when not given), and null in the current dialect
    or when the argv cannot be parsed. No other variable's value is recorded. Written
    first, even for invocations that then fail.
``FAKE_RL_CHILDREN=0``
    Do not spawn the per-component child processes.
``FAKE_RL_ORPHAN_LINGER=seconds``
    How long a child lives on after its launcher died without terminating it
    (default 30), so orphans are observable but do not leak forever.
"""

import json
import math
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

USAGE = (
    "usage: rl [@ CONFIG.toml ...] [--trainer @ T.toml --orchestrator @ O.toml "
    "--inference @ I.toml] [--section.key VALUE ...] [--resume [--resume.step N]] "
    "[--clean] [--dry-run]"
)
COMPONENTS = ("inference", "orchestrator", "trainer")
SECTIONS = ("trainer", "orchestrator", "inference")
CONTROL_KEYS = ("resume", "clean", "dry_run")
DEFAULT_MAX_STEPS = 10
DEFAULT_STEP_SECONDS = 0.05
DEFAULT_CKPT_SECONDS = 0.02
DEFAULT_GPUS_PER_NODE = 8
# prime-rl 2025-10: the shared [ckpt] table's interval default, applied to both components.
LEGACY_CKPT_INTERVAL = 50
# prime-rl 2025-10: the only keys its shared --ckpt.* / --wandb.* tables know.
LEGACY_SHARED_KEYS = {
    "ckpt": ("interval", "resume_step", "keep"),
    "wandb": ("project", "name", "offline"),
}
# prime-rl's config (dialect current) as far as the fake models it: each table listed
# here refuses the keys it does not name (None: a table or value not modelled, where any
# key passes). Keys from prime-rl's RLConfig, TrainerConfig, its optimizer configs
# (AdamW, SGD, Muon) and SharedCheckpointConfig, plus the launcher's run/resume/clean.
_ANY = None
CURRENT_SCHEMA: dict[str, Any] = {
    **dict.fromkeys((
        "orchestrator", "inference", "teacher_inference", "output_dir", "clean_output_dir",
        "log", "wandb", "monitors", "model", "max_steps", "max_model_len", "seq_len",
        "max_async_level", "weight_broadcast", "bench", "deployment", "slurm",
        "env_server_base_port", "run", *CONTROL_KEYS,
    ), _ANY),
    "trainer": {
        **dict.fromkeys((
            "model", "tokenizer", "data", "loss", "scheduler", "ckpt", "weight_broadcast",
            "rollout_transport", "log", "wandb", "output_dir", "max_steps", "max_async_level",
            "enable_router_replay", "memory_profiler_path", "bench", "trace_path",
            "dist_timeout_seconds", "heartbeat", "metrics_server", "max_concurrent_runs",
        ), _ANY),
        "optim": dict.fromkeys(("type", "lr", "weight_decay", "max_norm", "betas1", "betas2",
                                "momentum", "nesterov", "mu"), _ANY),
    },
    "ckpt": dict.fromkeys(("interval", "resume_step", "keep_last", "keep_interval"), _ANY),
}
# prime-rl's MultiNodeDeploymentConfig: under ``type = "multi_node"`` the single-node keys
# (num_train_gpus, num_infer_gpus) are extra inputs, refused like any unknown key.
MULTI_NODE_SCHEMA: dict[str, Any] = {
    **CURRENT_SCHEMA,
    "deployment": dict.fromkeys((
        "type", "gpus_per_node", "num_train_nodes", "num_infer_nodes", "num_infer_replicas",
        "nodes_per_fsdp_group", "orchestrator_on_inference",
    ), _ANY),
}
DEPLOYMENT_TYPES = ("single_node", "multi_node")
WEIGHT_BROADCAST_TYPES = ("filesystem", "nccl")
# The ports prime-rl's multi-node template gives its processes.
ROUTER_PORT = 8000
BACKEND_PORT = 8100
MASTER_PORT = 29500
POLL_SECONDS = 0.02
CHILD_GRACE_SECONDS = 0.25
SHUTDOWN_LOG_SECONDS = 0.25
PROGRESS_SHARDS = 4
PROGRESS_REDRAW_SECONDS = 0.01
PROGRESS_LABEL = "Loading safetensors checkpoint shards"
CUDA_ERROR = "RuntimeError: CUDA error: an illegal memory access was encountered"
DCP_METADATA = ".metadata"
VENV = "/app/.venv/lib/python3.12/site-packages"

INT_RE = re.compile(r"[+-]?(0|[1-9](_?\d)*)")
FLOAT_RE = re.compile(r"[+-]?(\d(_?\d)*)(\.\d(_?\d)*)?([eE][+-]?\d(_?\d)*)?")
STEP_DIR_RE = re.compile(r"step_(\d+)")
ATTEMPT_DIR_RE = re.compile(r"attempt_(\d+)")

# Idle stand-in for a component process. It reports "ready" once its signal dispositions are
# set, dies on SIGTERM/SIGINT like a real one (or, with FAKE_RL_SHUTDOWN_SECONDS, that long
# after the first one) and, if its launcher dies without reaping it, lingers as an orphan
# for a while.
CHILD_SOURCE = """\
import os, signal, sys, time
shutdown = float(os.environ.get("FAKE_RL_SHUTDOWN_SECONDS") or 0)
exit_at = []
def slow_exit(signum, frame):
    if not exit_at:
        exit_at.append(time.monotonic() + shutdown)
signal.signal(signal.SIGINT, slow_exit if shutdown > 0 else signal.SIG_DFL)
if os.environ.get("FAKE_RL_CHILD_IGNORE_SIGTERM") == "1":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
elif shutdown > 0:
    signal.signal(signal.SIGTERM, slow_exit)
os.write(1, b"ready\\n")
os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
parent = os.getppid()
linger = float(os.environ.get("FAKE_RL_ORPHAN_LINGER") or 30)
orphaned_at = None
while True:
    time.sleep(0.02 if exit_at else 0.1)
    if exit_at and time.monotonic() >= exit_at[0]:
        sys.exit(0)
    if orphaned_at is None:
        if os.getppid() != parent:
            orphaned_at = time.monotonic()
    elif time.monotonic() - orphaned_at > linger:
        sys.exit(0)
"""


class UsageError(Exception):
    """Invalid command line or configuration: exit 2 before writing anything."""


class ConfigError(Exception):
    """pydantic refused the merged config: pydantic-config's box on stderr, exit 1."""

    def __init__(self, unknown: list[tuple[list[str], Any]]) -> None:
        super().__init__(f"{len(unknown)} unknown key(s)")
        self.unknown = unknown

    def box(self) -> list[str]:
        count = len(self.unknown)
        body = ["Failed to validate config:", "─" * 76,
                f"{count} validation error{'s' if count != 1 else ''} for RLConfig"]
        for path, value in self.unknown:
            got = "" if isinstance(value, dict | list) else f" (got {value!r})"
            body += ["--" + ".".join(p.replace("_", "-") for p in path),
                     f"Extra inputs are not permitted{got}"]
        title = "─ Config file error "
        return [f"╭{title}{'─' * (78 - len(title))}╮",
                *(f"│ {line:<76} │" for line in body), f"╰{'─' * 78}╯"]


def unknown_keys(cfg: dict[str, Any], schema: dict[str, Any],
                 prefix: tuple[str, ...] = ()) -> list[tuple[list[str], Any]]:
    """Every key of ``cfg`` that ``schema`` does not name, with its value, depth first."""
    found: list[tuple[list[str], Any]] = []
    for key, value in cfg.items():
        if key not in schema:
            found.append(([*prefix, key], value))
        elif isinstance(schema[key], dict) and isinstance(value, dict):
            found += unknown_keys(value, schema[key], (*prefix, key))
    return found


class LaunchError(Exception):
    """The run cannot start (refused run directory, missing checkpoint): exit 1."""


class Stopped(Exception):
    """A SIGTERM/SIGINT arrived; unwinds the main loop."""


class ComponentFailed(Exception):
    """A component process died during startup: exit 1."""


# --------------------------------------------------------------------------- argv


@dataclass
class ParsedArgs:
    files: list[tuple[tuple[str, ...], Path]] = field(default_factory=list)
    overrides: list[tuple[list[str], Any]] = field(default_factory=list)

    @property
    def dialect(self) -> str:
        return "2025-10" if any(sec == ("trainer",) for sec, _ in self.files) else "current"


def parse_value(token: str) -> Any:
    """A TOML-ish literal: int, float, bool, JSON list/table, quoted or bare string."""
    if token in ("true", "false"):
        return token == "true"
    if INT_RE.fullmatch(token):
        return int(token.replace("_", ""))
    if FLOAT_RE.fullmatch(token) and any(c in token for c in ".eE"):
        return float(token.replace("_", ""))
    if token[:1] in ("[", "{"):
        try:
            return json.loads(token)
        except json.JSONDecodeError:
            return token
    if len(token) >= 2 and token[0] == token[-1] and token[0] in ("'", '"'):
        return token[1:-1]
    return token


def key_path(flag: str) -> list[str]:
    parts = flag.split(".")
    if not all(parts):
        raise UsageError(f"invalid option: --{flag}")
    return [part.replace("-", "_") for part in parts]


def parse_argv(argv: Sequence[str]) -> ParsedArgs:
    parsed = ParsedArgs()
    i = 0
    while i < len(argv):
        token = argv[i]
        if token == "@" or (token.startswith("@") and len(token) > 1):
            path, i = _file_operand(argv, i)
            parsed.files.append(((), path))
            continue
        if not token.startswith("--") or token == "--":
            raise UsageError(f"unrecognized arguments: {token}")
        flag = token[2:]
        inline: str | None = None
        if "=" in flag:
            flag, inline = flag.split("=", 1)
        i += 1
        if inline is None and i < len(argv) and argv[i].startswith("@"):
            path, i = _file_operand(argv, i)
            parsed.files.append((tuple(key_path(flag)), path))
            continue
        values: list[str] = [] if inline is None else [inline]
        while inline is None and i < len(argv) and not _is_option(argv[i]):
            values.append(argv[i])
            i += 1
        if not values:
            if flag.startswith("no-"):
                parsed.overrides.append((key_path(flag[3:]), False))
            else:
                parsed.overrides.append((key_path(flag), True))
        elif len(values) == 1:
            parsed.overrides.append((key_path(flag), parse_value(values[0])))
        else:
            parsed.overrides.append((key_path(flag), [parse_value(v) for v in values]))
    return parsed


def _is_option(token: str) -> bool:
    return token.startswith("@") or (token.startswith("--") and len(token) > 2)


def _file_operand(argv: Sequence[str], i: int) -> tuple[Path, int]:
    """Parse ``@ FILE`` or ``@FILE`` at argv[i]; return the path and the next index."""
    if argv[i] != "@":
        return Path(argv[i][1:]), i + 1
    if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
        raise UsageError("expected a config file after '@'")
    return Path(argv[i + 1]), i + 2


# --------------------------------------------------------------------------- config


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def set_nested(cfg: dict[str, Any], path: Sequence[str], value: Any) -> None:
    node = cfg
    for key in path[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            # e.g. `--resume` (true) followed by `--resume.step 5`
            child = {}
            node[key] = child
        node = child
    leaf = path[-1]
    if value is True and isinstance(node.get(leaf), dict) and node[leaf]:
        return  # `--resume.step 5 --resume`: keep the table, it already means "on"
    node[leaf] = value


def get_nested(cfg: dict[str, Any], dotted: str, default: Any = None) -> Any:
    node: Any = cfg
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return default
        node = node[key]
    return node


def load_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise UsageError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise UsageError(f"config file is a directory: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"invalid TOML in {path}: {exc}") from None


def build_config(parsed: ParsedArgs) -> dict[str, Any]:
    cfg: dict[str, Any] = {}
    for section, path in parsed.files:
        loaded: dict[str, Any] = load_toml(path)
        for key in reversed(section):
            loaded = {key: loaded}
        cfg = deep_merge(cfg, loaded)
    for path_keys, value in parsed.overrides:
        set_nested(cfg, path_keys, value)
    return cfg


# --------------------------------------------------------------------------- plan


@dataclass
class Plan:
    dialect: str
    config: dict[str, Any]
    run_dir: Path
    run_name: str
    max_steps: int
    ckpt_interval: int | None
    inference_gpus: list[int]
    trainer_gpus: list[int]
    tp: int
    dp: int
    gpus_per_node: int | None
    lr: float
    wandb_project: str | None
    wandb_name: str | None
    resume: bool
    resume_step: int | None
    clean: bool
    dry_run: bool
    multi_node: "MultiNode | None" = None

    @property
    def attempt_logs(self) -> bool:
        return self.dialect == "current"


@dataclass(frozen=True)
class MultiNode:
    """A ``type = "multi_node"`` deployment: nodes of ``gpus_per_node`` GPUs each."""

    train_nodes: int
    infer_nodes: int
    gpus_per_node: int
    tp: int
    weight_broadcast: str
    job_name: str | None


def _int(value: Any, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise UsageError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise UsageError(f"{name} must be >= {minimum}, got {value}")
    return value


def _gpu_ids(value: Any, name: str) -> list[int]:
    items: list[Any]
    if isinstance(value, str):
        items = [part for part in re.split(r"[,\s]+", value.strip()) if part]
        items = [parse_value(part) for part in items]
    elif isinstance(value, list):
        items = value
    else:
        items = [value]
    ids = [_int(item, name, minimum=0) for item in items]
    if not ids:
        raise UsageError(f"{name} must not be empty")
    if len(set(ids)) != len(ids):
        raise UsageError(f"{name} contains duplicates: {ids}")
    return ids


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _output_dir(cfg: dict[str, Any]) -> Path:
    value = cfg.setdefault("output_dir", "outputs")
    if not isinstance(value, str) or not value:
        raise UsageError(f"output_dir must be a single path, got {value!r}")
    return Path(value)


def _auto_run_name(cfg: dict[str, Any]) -> str:
    """``<envs>--<model>--<8hex>`` like prime-rl when ``run.name`` is unset."""
    envs = get_nested(cfg, "orchestrator.env", [])
    if isinstance(envs, dict):
        envs = [envs]
    env_ids = [str(e.get("id", "")) for e in envs if isinstance(e, dict) and e.get("id")]
    model = get_nested(cfg, "model.name") or get_nested(cfg, "trainer.model.name")
    parts = ["-".join(env_ids), str(model).rsplit("/", 1)[-1] if model else ""]
    parts = [re.sub(r"[^A-Za-z0-9._-]+", "-", p).lower() for p in parts if p]
    return "--".join([*(parts or ["run"]), secrets.token_hex(4)])


def _common(cfg: dict[str, Any]) -> dict[str, Any]:
    max_steps = cfg.get("max_steps")
    if max_steps is None:
        max_steps = get_nested(cfg, "orchestrator.max_steps")
    if max_steps is None:
        max_steps = get_nested(cfg, "trainer.max_steps", DEFAULT_MAX_STEPS)
    lr = get_nested(cfg, "trainer.optim.lr", 1e-6)
    if isinstance(lr, bool) or not isinstance(lr, int | float):
        raise UsageError(f"trainer.optim.lr must be a number, got {lr!r}")
    return {
        "max_steps": _int(max_steps, "max_steps", minimum=0),
        "dry_run": cfg.get("dry_run") is True,
        "lr": float(lr),
    }


def _current_controls(cfg: dict[str, Any]) -> dict[str, Any]:
    """Checkpoint interval, resume and clean as the ``current`` dialect reads them."""
    interval = get_nested(cfg, "ckpt.interval")
    if interval is None:
        interval = get_nested(cfg, "trainer.ckpt.interval")
    if interval is None:
        interval = get_nested(cfg, "orchestrator.ckpt.interval")
    resume = cfg.get("resume", False)
    resume_step = resume.get("step") if isinstance(resume, dict) else None
    controls: dict[str, Any] = {
        "ckpt_interval": None if interval is None else _int(interval, "ckpt.interval"),
        "resume": resume is True or isinstance(resume, dict),
        "resume_step": None if resume_step is None else _int(resume_step, "resume.step", 0),
        "clean": cfg.get("clean") is True,
    }
    if controls["resume"] and controls["clean"]:
        raise UsageError("--resume and --clean are mutually exclusive")
    return controls


def _reject_unknown_legacy_flags(cfg: dict[str, Any]) -> None:
    """prime-rl 2025-10 parses flags strictly: keys its config lacks are argparse errors."""
    if "resume" in cfg:
        raise UsageError(
            "unrecognized arguments: --resume (this dialect resumes with --ckpt.resume-step N)"
        )
    if "dry_run" in cfg:
        raise UsageError("unrecognized arguments: --dry-run")
    for table, known in LEGACY_SHARED_KEYS.items():
        value = cfg.get(table)
        if not isinstance(value, dict):
            continue
        for key in value:
            if key not in known:
                raise UsageError(f"unrecognized arguments: --{table}.{key.replace('_', '-')}")


def _legacy_controls(cfg: dict[str, Any]) -> dict[str, Any]:
    """Checkpoint interval, resume and clean as the ``2025-10`` dialect reads them.

    Any ``--ckpt.*`` flag creates the shared [ckpt] table, and prime-rl then copies its
    interval (default 50) over the trainer's and orchestrator's own: a resume flag alone
    changes the checkpoint interval. A resume step of 0 means no resume (a truthiness test).
    """
    shared = cfg.get("ckpt")
    if isinstance(shared, dict):
        interval: Any = _int(shared.get("interval") or LEGACY_CKPT_INTERVAL, "ckpt.interval")
        resume_step = shared.get("resume_step") or get_nested(cfg, "trainer.ckpt.resume_step")
    else:
        interval = get_nested(cfg, "trainer.ckpt.interval")
        if interval is None:
            interval = get_nested(cfg, "orchestrator.ckpt.interval")
        if interval is not None:
            interval = _int(interval, "ckpt.interval")
        resume_step = get_nested(cfg, "trainer.ckpt.resume_step")
    step = _int(resume_step, "ckpt.resume_step", 0) if resume_step is not None else 0
    for section in ("trainer", "orchestrator"):
        if interval is not None:
            set_nested(cfg, [section, "ckpt", "interval"], interval)
        if step:
            set_nested(cfg, [section, "ckpt", "resume_step"], step)
    clean = cfg.get("clean", True)
    if not isinstance(clean, bool):
        raise UsageError(f"clean must be a boolean, got {clean!r}")
    return {
        "ckpt_interval": interval,
        "resume": step > 0,
        "resume_step": step or None,
        "clean": clean,
    }


def resolve_current(cfg: dict[str, Any]) -> Plan:
    deployment_type = get_nested(cfg, "deployment.type", "single_node")
    multi = deployment_type == "multi_node"
    unknown = unknown_keys(cfg, MULTI_NODE_SCHEMA if multi else CURRENT_SCHEMA)
    if unknown:
        raise ConfigError(unknown)
    deployment = cfg.setdefault("deployment", {})
    if not isinstance(deployment, dict):
        raise UsageError("deployment must be a table")
    if deployment_type not in DEPLOYMENT_TYPES:
        raise UsageError(
            f"deployment.type must be one of {DEPLOYMENT_TYPES}, got {deployment_type!r}"
        )
    nodes = _multi_node(cfg, deployment) if multi else None
    split = _node_split(nodes) if nodes else _single_node_split(cfg, deployment)
    output_dir = _output_dir(cfg)
    run_name = _run_name(cfg)
    return Plan(
        dialect="current",
        config=cfg,
        run_dir=output_dir / run_name,
        run_name=run_name,
        wandb_project=_optional_str(get_nested(cfg, "monitors.wandb.project")),
        wandb_name=_optional_str(get_nested(cfg, "monitors.wandb.name")),
        multi_node=nodes,
        **split,
        **_common(cfg),
        **_current_controls(cfg),
    )


def _single_node_split(cfg: dict[str, Any], deployment: dict[str, Any]) -> dict[str, Any]:
    """One node's GPUs between inference (low ids) and trainer, as prime-rl's launcher maps
    them; also settles inference.vllm's tp and dp in ``cfg``."""
    num_train = _int(deployment.setdefault("num_train_gpus", 1), "deployment.num_train_gpus")
    num_infer = _int(deployment.setdefault("num_infer_gpus", 1), "deployment.num_infer_gpus")
    per_node = _int(
        deployment.setdefault("gpus_per_node", DEFAULT_GPUS_PER_NODE), "deployment.gpus_per_node"
    )
    if num_train + num_infer > per_node:
        raise UsageError(
            f"Total number of GPUs (num_train_gpus={num_train} + num_infer_gpus={num_infer}) "
            f"exceeds the number of GPUs per node ({per_node})"
        )
    tp = _int(
        get_nested(cfg, "inference.vllm.tensor_parallel_size", 1),
        "inference.vllm.tensor_parallel_size",
    )
    dp = _int(
        get_nested(cfg, "inference.vllm.data_parallel_size", 1), "inference.vllm.data_parallel_size"
    )
    if num_infer % tp != 0:
        raise UsageError(
            "Number of inference GPUs must be divisible by the tensor parallel size "
            f"(num_infer_gpus={num_infer}, tensor_parallel_size={tp})"
        )
    if dp * tp != num_infer:
        dp = num_infer // tp
    set_nested(cfg, ["inference", "vllm", "tensor_parallel_size"], tp)
    set_nested(cfg, ["inference", "vllm", "data_parallel_size"], dp)
    return {
        "inference_gpus": list(range(num_infer)),
        "trainer_gpus": list(range(num_infer, num_infer + num_train)),
        "tp": tp,
        "dp": dp,
        "gpus_per_node": per_node,
    }


def _multi_node(cfg: dict[str, Any], deployment: dict[str, Any]) -> MultiNode:
    """A multi-node deployment as prime-rl's RLConfig validates it: only under SLURM (a
    ``[slurm]`` table or any ``--slurm.*`` flag), node counts required."""
    if not isinstance(cfg.get("slurm"), dict):
        raise UsageError("Must use SLURM for multi-node deployment.")
    for key in ("num_train_nodes", "num_infer_nodes"):
        if key not in deployment:
            raise UsageError(f"deployment.{key}: Field required")
    per_node = _int(
        deployment.setdefault("gpus_per_node", DEFAULT_GPUS_PER_NODE), "deployment.gpus_per_node"
    )
    tp = get_nested(cfg, "inference.vllm.tensor_parallel_size")
    if tp is None:  # prime-rl's own multi-node examples set [inference.parallel] tp
        tp = get_nested(cfg, "inference.parallel.tp", 1)
    tp = _int(tp, "inference.vllm.tensor_parallel_size")
    set_nested(cfg, ["inference", "vllm", "tensor_parallel_size"], tp)
    if per_node % tp:
        raise UsageError(
            f"deployment.gpus_per_node ({per_node}) must be divisible by the tensor parallel "
            f"size ({tp}): every inference node runs gpus_per_node / tp engines"
        )
    broadcast = get_nested(cfg, "weight_broadcast.type", "filesystem")
    if broadcast not in WEIGHT_BROADCAST_TYPES:
        raise UsageError(f"weight_broadcast.type must be one of {WEIGHT_BROADCAST_TYPES}, "
                         f"got {broadcast!r}")
    return MultiNode(
        train_nodes=_int(deployment["num_train_nodes"], "deployment.num_train_nodes"),
        infer_nodes=_int(deployment["num_infer_nodes"], "deployment.num_infer_nodes"),
        gpus_per_node=per_node,
        tp=tp,
        weight_broadcast=broadcast,
        job_name=_optional_str(get_nested(cfg, "slurm.job_name")),
    )


def _node_split(nodes: MultiNode) -> dict[str, Any]:
    """Per node: every trainer node's GPUs train, every inference node's serve."""
    gpus = list(range(nodes.gpus_per_node))
    return {
        "inference_gpus": gpus,
        "trainer_gpus": gpus,
        "tp": nodes.tp,
        "dp": nodes.gpus_per_node // nodes.tp,
        "gpus_per_node": nodes.gpus_per_node,
    }


def _run_name(cfg: dict[str, Any]) -> str:
    run_name = get_nested(cfg, "run.name")
    if run_name is None or run_name == "":
        run_name = _auto_run_name(cfg)
    if isinstance(run_name, bool) or not isinstance(run_name, str | int):
        raise UsageError(f"run.name must be a single name, got {run_name!r}")
    run_name = str(run_name)
    set_nested(cfg, ["run", "name"], run_name)
    if "/" in run_name or run_name in (".", ".."):
        raise UsageError(f"run.name must be a plain directory name, got {run_name!r}")
    return run_name


def resolve_2025_10(cfg: dict[str, Any]) -> Plan:
    _reject_unknown_legacy_flags(cfg)
    trainer_ids = _gpu_ids(cfg.setdefault("trainer_gpu_ids", [0]), "--trainer-gpu-ids")
    inference_ids = _gpu_ids(cfg.setdefault("inference_gpu_ids", [1]), "--inference-gpu-ids")
    cfg["trainer_gpu_ids"], cfg["inference_gpu_ids"] = trainer_ids, inference_ids
    overlap = sorted(set(trainer_ids) & set(inference_ids))
    if overlap:
        raise UsageError(f"Trainer and inference GPU ids overlap: {overlap}")
    dp = _int(get_nested(cfg, "inference.parallel.dp", 1), "inference.parallel.dp")
    tp = _int(get_nested(cfg, "inference.parallel.tp", 1), "inference.parallel.tp")
    if len(inference_ids) != dp * tp:
        raise UsageError(
            f"Number of inference GPU ids ({len(inference_ids)}) must equal "
            f"inference.parallel.dp * inference.parallel.tp ({dp} * {tp} = {dp * tp})"
        )
    set_nested(cfg, ["inference", "parallel", "dp"], dp)
    set_nested(cfg, ["inference", "parallel", "tp"], tp)
    output_dir = _output_dir(cfg)
    wandb_name = _optional_str(get_nested(cfg, "wandb.name"))
    return Plan(
        dialect="2025-10",
        config=cfg,
        run_dir=output_dir,
        run_name=wandb_name or output_dir.name,
        inference_gpus=inference_ids,
        trainer_gpus=trainer_ids,
        tp=tp,
        dp=dp,
        gpus_per_node=None,
        wandb_project=_optional_str(get_nested(cfg, "wandb.project")),
        wandb_name=wandb_name,
        **_common(cfg),
        **_legacy_controls(cfg),
    )


def sub_configs(plan: Plan) -> dict[str, dict[str, Any]]:
    """The resolved config files written to ``<run>/configs/``."""
    cfg = plan.config
    launcher_only = (*SECTIONS, *CONTROL_KEYS, "deployment", "trainer_gpu_ids", "inference_gpu_ids")
    shared = {k: v for k, v in cfg.items() if k not in launcher_only}
    files = {"rl": cfg}
    for section in SECTIONS:
        own = cfg.get(section, {})
        files[section] = deep_merge(shared, own if isinstance(own, dict) else {})
    return files


def node_configs(plan: Plan, resume_from: int) -> dict[str, dict[str, Any]]:
    """The sub-configs a multi-node dry run writes as ``configs/<name>.toml``: what each
    process of prime-rl's template reads, with the launcher's resolved values (output
    directory, max steps, checkpoint interval, the resume step) filled in."""
    files = sub_configs(plan)
    ckpt = _table(plan.config, "ckpt")
    ckpt.pop("resume_step", None)
    if plan.ckpt_interval:
        ckpt["interval"] = plan.ckpt_interval
    if resume_from:
        ckpt["resume_step"] = resume_from
    resolved = {"output_dir": str(plan.run_dir.resolve()), "max_steps": plan.max_steps,
                "ckpt": ckpt}
    out = {name: {k: v for k, v in files[name].items() if k not in ("slurm", "run", "ckpt")}
           for name in SECTIONS}
    for name in ("trainer", "orchestrator"):
        out[name].update(resolved)
    assert plan.multi_node is not None
    out["orchestrator"]["weight_broadcast"] = {
        **_table(plan.config, "weight_broadcast"), "type": plan.multi_node.weight_broadcast,
    }
    # as prime-rl's write_subconfigs: the vLLM server gets no launcher-only keys
    out["inference"].pop("output_dir", None)
    return out


def _table(cfg: dict[str, Any], key: str) -> dict[str, Any]:
    """A copy of ``cfg[key]`` when it is a table, else an empty one."""
    value = cfg.get(key)
    return dict(value) if isinstance(value, dict) else {}


def write_node_configs(plan: Plan, resume_from: int) -> Path:
    config_dir = plan.run_dir / "configs"
    config_dir.mkdir(parents=True, exist_ok=True)
    for name, data in node_configs(plan, resume_from).items():
        (config_dir / f"{name}.toml").write_text(toml_dumps(data), encoding="utf-8")
    return config_dir


def toml_dumps(data: dict[str, Any]) -> str:
    """TOML text of ``data`` (nested tables as [headers], lists and tables inside lists
    inline, None left out as TOML has no null); stdlib has a TOML reader only."""
    lines: list[str] = []
    _toml_table(data, [], lines)
    return "\n".join(lines) + "\n"


def _toml_table(table: dict[str, Any], path: list[str], lines: list[str]) -> None:
    values = {k: v for k, v in table.items() if v is not None and not isinstance(v, dict)}
    tables = {k: v for k, v in table.items() if isinstance(v, dict)}
    if path and (values or not tables):
        lines.append(f"[{'.'.join(map(_toml_key, path))}]")
    lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in values.items()]
    for key, sub in tables.items():
        _toml_table(sub, [*path, key], lines)


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _toml_value(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)  # Python's inf and nan are TOML's too
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value if v is not None) + "]"
    if isinstance(value, dict):
        items = (f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items() if v is not None)
        return "{" + ", ".join(items) + "}"
    # a JSON string is a TOML basic string, but for DEL, which TOML wants escaped
    return json.dumps(str(value), ensure_ascii=False).replace("\x7f", "\\u007f")


def render_job_script(plan: Plan, config_dir: Path) -> str:
    """A stand-in for the job script prime-rl renders from multi_node_rl.sbatch.j2: the
    same variables, no commands (nothing ever submits it)."""
    nodes = plan.multi_node
    assert nodes is not None
    run_dir = plan.run_dir.resolve()
    return "\n".join([
        "#!/bin/bash",
        "# Rendered by the fake prime-rl from its stand-in for multi_node_rl.sbatch.j2.",
        f"#SBATCH --job-name={nodes.job_name or plan.run_name}",
        f"#SBATCH --nodes={nodes.train_nodes + nodes.infer_nodes}",
        "#SBATCH --ntasks-per-node=1",
        f"#SBATCH --gres=gpu:{nodes.gpus_per_node}",
        f"#SBATCH --output={run_dir}/job_%j.log",
        f"export NUM_TRAIN_NODES={nodes.train_nodes}",
        f"export NUM_INFER_NODES={nodes.infer_nodes}",
        f"export GPUS_PER_NODE={nodes.gpus_per_node}",
        f"export INFERENCE_TP={nodes.tp}",
        f"export ROUTER_PORT={ROUTER_PORT}",
        f"export BACKEND_PORT={BACKEND_PORT}",
        f"export MASTER_PORT={MASTER_PORT}",
        f"export USE_NCCL_BROADCAST={int(nodes.weight_broadcast == 'nccl')}",
        f"export CONFIG_DIR={config_dir.resolve()}",
        f"export OUTPUT_DIR={run_dir}",
        "",
    ])


def multi_node_dry_run(plan: Plan) -> int:
    """What prime-rl's rl_slurm does with --dry-run: write the sub-configs and the job
    script, say how to submit it, start nothing."""
    resume_from = resume_point(plan)
    if resume_from:
        say(f"Resuming from checkpoint step {resume_from}")
    config_dir = write_node_configs(plan, resume_from)
    say(f"Wrote subconfigs to {config_dir.resolve()}")
    script = plan.run_dir / "rl.sbatch"
    script.write_text(render_job_script(plan, config_dir), encoding="utf-8")
    say(f"Wrote SLURM script to {script.resolve()}")
    say("Dry run complete. To submit manually:")
    say("")
    say(f"  sbatch {script.resolve()}")
    return 0


# --------------------------------------------------------------------------- env


@dataclass
class Settings:
    step_seconds: float
    ckpt_seconds: float
    shutdown_seconds: float
    fail_at: int | None
    fail_after: int | None
    fail_before: bool
    die_in_ckpt_at: int | None
    hang: bool
    hang_at: int | None
    ignore_sigterm: bool
    children: bool


def env_flag(name: str, default: bool = False) -> bool:
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return default
    return value not in ("0", "false", "no", "off")


def env_int(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"{name} must be an integer, got {value!r}") from None


def env_seconds(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    try:
        return max(0.0, float(raw)) if raw else default
    except ValueError:
        raise UsageError(f"{name} must be a number, got {raw!r}") from None


def read_settings() -> Settings:
    return Settings(
        step_seconds=env_seconds("FAKE_RL_STEP_SECONDS", DEFAULT_STEP_SECONDS),
        ckpt_seconds=env_seconds("FAKE_RL_CKPT_SECONDS", DEFAULT_CKPT_SECONDS),
        shutdown_seconds=env_seconds("FAKE_RL_SHUTDOWN_SECONDS", 0.0),
        fail_at=env_int("FAKE_RL_FAIL_AT_STEP"),
        fail_after=env_int("FAKE_RL_FAIL_AFTER_STEPS"),
        fail_before=env_flag("FAKE_RL_FAIL_BEFORE_STEP"),
        die_in_ckpt_at=env_int("FAKE_RL_DIE_IN_CHECKPOINT_AT_STEP"),
        hang=env_flag("FAKE_RL_HANG"),
        hang_at=env_int("FAKE_RL_HANG_AT_STEP"),
        ignore_sigterm=env_flag("FAKE_RL_IGNORE_SIGTERM"),
        children=env_flag("FAKE_RL_CHILDREN", default=True),
    )


@dataclass(frozen=True)
class Identity:
    """The run identity a launch's components see (what FAKE_RL_RECORD reports)."""

    prl_run_id: str | None
    wandb_ids: dict[str, str | None] | None


def run_identity(argv: Sequence[str]) -> Identity:
    """Set ``PRL_RUN_ID`` as prime-rl's current launcher does (``os.environ.setdefault`` with
    a fresh uuid4 hex, inherited by every child); the 2025-10 launcher sets none and takes
    W&B run ids per component from ``--trainer.wandb.id`` / ``--orchestrator.wandb.id``."""
    try:
        parsed = parse_argv(argv)
    except UsageError:
        return Identity(os.environ.get("PRL_RUN_ID"), None)
    if parsed.dialect == "current":
        return Identity(os.environ.setdefault("PRL_RUN_ID", uuid.uuid4().hex), None)
    ids: dict[str, str | None] = {"trainer": None, "orchestrator": None}
    for path, value in parsed.overrides:
        if len(path) == 3 and path[0] in ids and path[1:] == ["wandb", "id"]:
            ids[path[0]] = str(value)
    return Identity(os.environ.get("PRL_RUN_ID"), ids)


def record_invocation(argv: Sequence[str], env_names: list[str], identity: Identity) -> None:
    target = os.environ.get("FAKE_RL_RECORD")
    if not target:
        return
    entry = {
        "argv": list(argv),
        "env": env_names,
        "cwd": os.getcwd(),
        "pid": os.getpid(),
        "time": time.time(),
        "prl_run_id": identity.prl_run_id,
        "wandb_ids": identity.wandb_ids,
    }
    with open(target, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(entry) + "\n")


def fast_lines(count: int) -> int:
    out = sys.stdout.buffer
    chunk = 65536
    try:
        for start in range(1, count + 1, chunk):
            stop = min(start + chunk, count + 1)
            text = "".join([f"line {i:06d} fake prime-rl output\n" for i in range(start, stop)])
            out.write(text.encode())
        out.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 0


# --------------------------------------------------------------------------- signals


class StopFlag:
    """Set by SIGTERM/SIGINT handlers; the main loop polls it."""

    def __init__(self, ignore_sigterm: bool) -> None:
        self.signum: int | None = None
        signal.signal(signal.SIGINT, self._handle)
        if ignore_sigterm:
            signal.signal(signal.SIGTERM, self._ignore)
        else:
            signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum

    @staticmethod
    def _ignore(signum: int, frame: FrameType | None) -> None:
        # os.write: never re-enter a buffered stream the main code may be writing to
        os.write(2, b"received SIGTERM, ignoring it (FAKE_RL_IGNORE_SIGTERM=1)\n")

    def check(self) -> None:
        if self.signum is not None:
            raise Stopped

    def sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while True:
            self.check()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            time.sleep(min(POLL_SECONDS, remaining))

    def hang(self) -> None:
        while True:
            self.sleep(3600)


# --------------------------------------------------------------------------- run dir


def _emit(message: str, stream: TextIO) -> None:
    try:
        print(message, file=stream, flush=True)
    except BrokenPipeError:
        # The reader went away: keep running (like a launcher whose log tail was closed).
        os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())


def say(message: str) -> None:
    _emit(message, sys.stdout)


def say_raw(text: str) -> None:
    """Write ``text`` to stdout as is (no newline added), flushed on its own."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def warn(message: str) -> None:
    _emit(message, sys.stderr)


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")


def write_configs(plan: Plan) -> Path:
    config_dir = plan.run_dir / "configs"
    for name, data in sub_configs(plan).items():
        write_json(config_dir / f"{name}.json", data)
    return config_dir


def artifacts(run_dir: Path) -> list[str]:
    """Everything in the run directory except the (always rewritten) configs/."""
    if not run_dir.is_dir():
        return []
    return sorted(p.name for p in run_dir.iterdir() if p.name != "configs")


def numbered_dirs(parent: Path, pattern: re.Pattern[str]) -> dict[int, Path]:
    if not parent.is_dir():
        return {}
    found: dict[int, Path] = {}
    for entry in parent.iterdir():
        match = pattern.fullmatch(entry.name)
        if match and entry.is_dir() and not entry.is_symlink():
            found[int(match.group(1))] = entry
    return found


def prepare_run_dir(plan: Plan) -> int:
    """Check and clean the run directory; return the step to resume from (0: none)."""
    run_dir = plan.run_dir
    if run_dir.exists() and not run_dir.is_dir():
        raise LaunchError(f"Run directory {run_dir} exists and is not a directory")
    if plan.dialect == "current":
        _prepare_current(plan)
    elif plan.clean:
        _clean_legacy(plan)
    return resume_point(plan)


def resume_point(plan: Plan) -> int:
    """The step a launch resumes from (0: none): ``--resume.step N`` as named, bare
    ``--resume`` the highest step folder, complete or not, as prime-rl picks it."""
    if not plan.resume:
        return 0
    if plan.resume_step is not None:
        return plan.resume_step  # loaded as named, complete or not (see Launcher)
    run_dir = plan.run_dir
    checkpoints = numbered_dirs(run_dir / "checkpoints", STEP_DIR_RE)
    if not checkpoints:
        warn(
            f"WARNING: --resume given but no checkpoint found in {run_dir / 'checkpoints'}; "
            "starting from step 1"
        )
        say("No checkpoint found, starting from step 1")
        return 0
    return max(checkpoints)


def _prepare_current(plan: Plan) -> None:
    run_dir = plan.run_dir
    existing = artifacts(run_dir)
    if existing and not (plan.resume or plan.clean):
        raise LaunchError(
            f"Run directory {run_dir} already contains artifacts ({', '.join(existing)}). "
            "Pass --resume to continue from its latest checkpoint or --clean to delete them."
        )
    if plan.clean and run_dir.exists():
        resolved = run_dir.resolve()
        if resolved == Path(resolved.anchor) or resolved == Path.home().resolve():
            raise LaunchError(f"Refusing to --clean {resolved}")
        say(f"Cleaning run directory {run_dir}")
        shutil.rmtree(run_dir)


def _clean_legacy(plan: Plan) -> None:
    """prime-rl 2025-10's default clean: logs and rollouts always, checkpoints unless resuming."""
    doomed = ["logs", "rollouts"] if plan.resume else ["logs", "rollouts", "checkpoints"]
    for name in doomed:
        path = plan.run_dir / name
        if path.exists():
            say(f"Cleaning {path}")
            shutil.rmtree(path)


# --------------------------------------------------------------------------- logs


class ComponentLogs:
    """Open, line-buffered log files for each component (and trainer ranks)."""

    def __init__(self, plan: Plan) -> None:
        logs_dir = plan.run_dir / "logs"
        logs_dir.mkdir(parents=True, exist_ok=True)
        self.attempt: int | None = None
        if plan.attempt_logs:
            attempts = numbered_dirs(logs_dir, ATTEMPT_DIR_RE)
            self.attempt = max([len(attempts), *attempts]) + 1
            self.dir = logs_dir / f"attempt_{self.attempt}"
            self.dir.mkdir()
            tmp_link = logs_dir / f".latest.{os.getpid()}"
            tmp_link.unlink(missing_ok=True)
            os.symlink(self.dir.name, tmp_link)
            os.replace(tmp_link, logs_dir / "latest")
        else:
            self.dir = logs_dir
        # prime-rl 2025-10 (rl.py at 04c0010): each component's output goes to
        # logs/<component>.stdout, opened with "w" on every launch
        self.suffix, mode = (".log", "a") if plan.attempt_logs else (".stdout", "w")
        self.files: dict[str, TextIO] = {
            name: open(self.dir / f"{name}{self.suffix}", mode, buffering=1, encoding="utf-8")
            for name in COMPONENTS
        }
        self.ranks: list[tuple[TextIO, TextIO]] = []
        if plan.attempt_logs:
            for rank in range(len(plan.trainer_gpus)):
                rank_dir = self.dir / "trainer" / "torchrun" / str(rank)
                rank_dir.mkdir(parents=True)
                self.ranks.append(
                    (
                        open(rank_dir / "stdout.log", "a", buffering=1, encoding="utf-8"),
                        open(rank_dir / "stderr.log", "a", buffering=1, encoding="utf-8"),
                    )
                )

    def path(self, component: str) -> Path:
        return self.dir / f"{component}{self.suffix}"

    def write(self, component: str, *lines: str, raw: bool = False) -> None:
        prefix = "" if raw else time.strftime("%H:%M:%S ")
        fh = self.files[component]
        fh.write("".join(f"{prefix}{line}\n" for line in lines))
        fh.flush()

    def write_raw(self, component: str, text: str) -> None:
        fh = self.files[component]
        fh.write(text)
        fh.flush()

    def rank_write(self, rank: int, line: str, stderr: bool = False) -> None:
        fh = self.ranks[rank][1 if stderr else 0]
        fh.write(line + "\n")
        fh.flush()

    def everywhere(self, line: str) -> None:
        for component in COMPONENTS:
            self.write(component, f"[{component}] {line}")

    def close(self) -> None:
        for fh in self._all():
            fh.close()

    def _all(self) -> Iterator[TextIO]:
        yield from self.files.values()
        for out, err in self.ranks:
            yield out
            yield err


# --------------------------------------------------------------------------- launcher


@dataclass
class StepMetrics:
    step: int
    reward: float
    reward_std: float
    loss: float
    grad_norm: float
    entropy: float
    seq_len: float
    requests: int

    @classmethod
    def for_step(cls, step: int) -> "StepMetrics":
        rng = random.Random(step)
        reward = 0.15 + 0.7 * (1 - math.exp(-step / 8)) + rng.uniform(-0.03, 0.03)
        return cls(
            step=step,
            reward=round(min(1.0, max(0.0, reward)), 4),
            reward_std=round(0.25 + rng.uniform(-0.05, 0.05), 4),
            loss=round(0.9 * math.exp(-step / 12) + 0.05 + rng.uniform(0, 0.02), 4),
            grad_norm=round(0.5 + rng.uniform(0, 0.5), 4),
            entropy=round(1.2 * math.exp(-step / 30) + 0.1, 4),
            seq_len=round(120 + rng.uniform(-20, 20), 1),
            requests=64 + rng.randrange(8),
        )


def append_metrics(run_dir: Path, m: StepMetrics, lr: float) -> None:
    row = {
        "step": m.step,
        "time": time.time(),
        "reward/mean": m.reward,
        "reward/std": m.reward_std,
        "loss": m.loss,
        "grad_norm": m.grad_norm,
        "entropy": m.entropy,
        "seq_len/mean": m.seq_len,
        "lr": lr,
    }
    with (run_dir / "metrics.jsonl").open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(row) + "\n")


def cuda_traceback() -> list[str]:
    """What the trainer prints when a step dies on the GPU."""
    return [
        "Traceback (most recent call last):",
        '  File "/app/src/prime_rl/trainer/rl/train.py", line 412, in train',
        "    loss.backward()",
        f'  File "{VENV}/torch/_tensor.py", line 626, in backward',
        "    torch.autograd.backward(",
        f'  File "{VENV}/torch/autograd/__init__.py", line 347, in backward',
        "    _engine_run_backward(",
        CUDA_ERROR,
    ]


def dcp_load_traceback(missing: Path, rank: int = 0) -> list[str]:
    """A torch DCP load that finds ``missing`` absent: the step's ``.metadata`` (read first,
    by every rank) or one rank's shard (read after the load plan)."""
    dcp = f"{VENV}/torch/distributed/checkpoint"
    if missing.name == DCP_METADATA:
        failed = [
            f'  File "{dcp}/utils.py", line 171, in reduce_scatter',
            "    local_data = map_fun()",
            f'  File "{dcp}/state_dict_loader.py", line 161, in local_step',
            "    metadata = storage_reader.read_metadata()",
            f'  File "{dcp}/filesystem.py", line 693, in read_metadata',
            '    with self.fs.create_stream(path, "rb") as metadata_file:',
        ]
    else:
        failed = [
            f'  File "{dcp}/utils.py", line 226, in all_gather',
            "    result = map_fun()",
            f'  File "{dcp}/state_dict_loader.py", line 189, in read_data',
            "    all_reads = storage_reader.read_data(final_local_plan, planner)",
            f'  File "{dcp}/filesystem.py", line 652, in read_data',
            '    with self.fs.create_stream(new_path, "rb") as stream:',
        ]
    return [
        "Traceback (most recent call last):",
        '  File "/app/src/prime_rl/trainer/rl/train.py", line 168, in train',
        "    ckpt_manager.load(model, [optimizer], scheduler, progress, step=resume_step)",
        '  File "/app/src/prime_rl/trainer/ckpt.py", line 131, in load',
        "    dcp.load(state_dict, checkpoint_id=ckpt_path)",
        f'  File "{dcp}/state_dict_loader.py", line 176, in _load_state_dict',
        '    central_plan: LoadPlan = distW.reduce_scatter("plan", local_step, global_step)',
        f'  File "{dcp}/utils.py", line 198, in reduce_scatter',
        "    raise final_result",
        "torch.distributed.checkpoint.api.CheckpointException: "
        f"CheckpointException ranks:dict_keys([{rank}])",
        f"Traceback (most recent call last): (RANK {rank})",
        *failed,
        f"FileNotFoundError: [Errno 2] No such file or directory: '{missing}'",
    ]


def missing_env_traceback(orchestrator: dict[str, Any]) -> list[str]:
    """The orchestrator's failure to import its first environment (``env`` or
    ``train.env`` list or, in 2025-10, ``environment``)."""
    envs = orchestrator.get("env") or get_nested(orchestrator, "train.env")
    if isinstance(envs, list) and envs and isinstance(envs[0], dict):
        env_id = str(envs[0].get("id") or envs[0].get("name") or "environment")
    else:
        env_id = str(get_nested(orchestrator, "environment.id", "environment"))
    module = env_id.replace("-", "_")
    return [
        "Traceback (most recent call last):",
        '  File "/app/src/prime_rl/orchestrator/orchestrator.py", line 95, in orchestrate',
        "    env = load_environment(config.env)",
        f'  File "{VENV}/verifiers/utils/env_utils.py", line 23, in load_environment',
        "    module = importlib.import_module(module_name)",
        '  File "/usr/lib/python3.12/importlib/__init__.py", line 90, in import_module',
        "    return _bootstrap._gcd_import(name[level:], package, level)",
        f"ModuleNotFoundError: No module named '{module}'",
    ]


class Launcher:
    def __init__(self, plan: Plan, settings: Settings, stop: StopFlag, resume_from: int) -> None:
        self.plan = plan
        self.settings = settings
        self.stop = stop
        self.resume_from = resume_from
        self.children: list[subprocess.Popen[bytes]] = []
        self.logs: ComponentLogs | None = None

    def run(self) -> int:
        try:
            write_configs(self.plan)
            self.logs = ComponentLogs(self.plan)
            self._start()
            if self.settings.hang:
                self.stop.hang()
            if self.resume_from and not self._checkpoint_complete(self.resume_from):
                return self._fail_checkpoint_load(self.resume_from)
            if self.settings.fail_before:
                return self._fail_startup()
            fail_at = self._fail_step()
            for step in range(self.resume_from + 1, self.plan.max_steps + 1):
                say(f"Starting step {step}")
                if self.settings.hang_at == step:
                    self.stop.hang()
                self.stop.sleep(self.settings.step_seconds)
                if step == fail_at:
                    return self._fail(step)
                self._step(step)
            self._finish()
            return 0
        except Stopped:
            return self._shutdown()
        except ComponentFailed as exc:
            warn(f"ERROR: {exc}")
            return 1
        finally:
            self._terminate_children()
            if self.logs is not None:
                self.logs.close()

    # ---- phases

    def _start(self) -> None:
        plan, logs = self.plan, self._logs()
        ids = ",".join(map(str, plan.inference_gpus))
        trainer_ids = ",".join(map(str, plan.trainer_gpus))
        say(f"Fake prime-rl launcher (dialect {plan.dialect})")
        say(f"Run directory: {plan.run_dir.resolve()}")
        say(f"Run name: {plan.run_name}")
        if logs.attempt is not None:
            say(f"Attempt {logs.attempt}: logs in {logs.dir.resolve()}")
        else:
            say(f"Logs in {logs.dir.resolve()}")
        per_node = f" of {plan.gpus_per_node} GPUs per node" if plan.gpus_per_node else ""
        say(
            f"GPU split: {len(plan.trainer_gpus)} trainer + {len(plan.inference_gpus)} "
            f"inference{per_node}"
        )
        say(f"Inference GPU ids: {ids} (tp={plan.tp}, dp={plan.dp})")
        say(f"Trainer GPU ids: {trainer_ids}")
        interval = plan.ckpt_interval if plan.ckpt_interval else "off"
        say(f"Max steps: {plan.max_steps}; checkpoint interval: {interval}")
        if plan.wandb_project or plan.wandb_name:
            say(f"W&B: project={plan.wandb_project} name={plan.wandb_name}")
        warn(f"WARNING [inference] fake vLLM engine, no real GPUs used (GPU ids {ids})")
        logs.write(
            "inference",
            f"[inference] starting fake vLLM server on GPUs {ids} (tp={plan.tp}, dp={plan.dp})",
        )
        self._load_weights()
        logs.write("inference", "[inference] server ready on port 8000")
        logs.write("orchestrator", f"[orchestrator] starting, max_steps={plan.max_steps}")
        logs.write("trainer", f"[trainer] starting on GPUs {trainer_ids}, lr={plan.lr:g}")
        for rank in range(len(logs.ranks)):
            logs.rank_write(rank, f"[rank {rank}] initialised process group")
        self._spawn_children()
        if self.resume_from:
            say(f"Resuming from checkpoint step {self.resume_from}")
            logs.everywhere(f"resuming from checkpoint step {self.resume_from}")
        say("All components started")
        self.stop.check()

    def _load_weights(self) -> None:
        """A tqdm bar as vLLM draws it while loading weights: on stdout and in inference.log."""
        logs = self._logs()
        total = PROGRESS_SHARDS
        for done in range(total + 1):
            rate = " 1.50it/s" if done else "?it/s"
            left = f"00:{total - done:02d}" if done else "?"
            bar = (
                f"\r{PROGRESS_LABEL}: {100 * done // total:3d}% Completed | {done}/{total} "
                f"[00:{done:02d}<{left}, {rate}]"
            )
            say_raw(bar)
            logs.write_raw("inference", bar)
            self.stop.sleep(PROGRESS_REDRAW_SECONDS)
        say_raw("\n")
        logs.write_raw("inference", "\n")

    def _step(self, step: int) -> None:
        plan, logs = self.plan, self._logs()
        m = StepMetrics.for_step(step)
        logs.write(
            "inference",
            f"[inference] step {step}: served {m.requests} requests, "
            f"{int(m.requests * m.seq_len)} tokens generated",
        )
        logs.write(
            "orchestrator",
            f"[orchestrator] step {step}: generated {m.requests} rollouts, "
            f"seq_len/mean={m.seq_len}",
            f"[orchestrator] step {step}: reward/mean={m.reward:.4f} reward/std={m.reward_std:.4f}",
        )
        logs.write(
            "trainer",
            f"[trainer] step {step} loss={m.loss:.4f} grad_norm={m.grad_norm:.4f} "
            f"entropy={m.entropy:.4f} lr={plan.lr:g}",
        )
        for rank in range(len(logs.ranks)):
            logs.rank_write(rank, f"[rank {rank}] step {step} loss={m.loss:.4f}")
        self._write_rollouts(step, m)
        self._append_metrics(m)
        if plan.ckpt_interval and step % plan.ckpt_interval == 0:
            logs.write("trainer", f"[trainer] saving checkpoint for step {step}")
            self._checkpoint(step)
            logs.write("trainer", f"[trainer] saved checkpoint for step {step}")
            logs.write("orchestrator", f"[orchestrator] saved checkpoint for step {step}")
        if step % 5 == 0:
            warn(f"WARNING [orchestrator] step {step}: 1 rollout truncated at max_tokens")
        self.stop.check()

    def _finish(self) -> None:
        logs = self._logs()
        logs.everywhere("training finished, shutting down")
        done = self.plan.max_steps - self.resume_from
        say(f"Completed {max(done, 0)} step(s); last step {self.plan.max_steps}")
        say("Training finished")

    def _fail_step(self) -> int | None:
        """The absolute step this launch fails at, if any."""
        candidates = [self.settings.fail_at]
        if self.settings.fail_after is not None:
            candidates.append(self.resume_from + self.settings.fail_after + 1)
        return min((s for s in candidates if s is not None), default=None)

    def _fail(self, step: int) -> int:
        self._logs().write("trainer", f"[trainer] step {step}: error during backward pass")
        return self._component_failed("trainer", cuda_traceback(), f"at step {step}")

    def _fail_checkpoint_load(self, step: int) -> int:
        """A torch DCP load of a step folder without ``.metadata``, as the trainer hits it."""
        metadata = self._trainer_ckpt_dir(step).resolve() / DCP_METADATA
        self._logs().write("trainer", f"[trainer] loading checkpoint for step {step}")
        return self._component_failed("trainer", dcp_load_traceback(metadata),
                                      f"while loading checkpoint step {step}")

    def _fail_startup(self) -> int:
        """The orchestrator dies before the first step, e.g. its environment is not installed."""
        orchestrator = get_nested(self.plan.config, "orchestrator", {})
        traceback = missing_env_traceback(orchestrator if isinstance(orchestrator, dict) else {})
        when = f"before step {self.resume_from + 1}"
        return self._component_failed("orchestrator", traceback, when)

    def _component_failed(self, component: str, traceback: list[str], when: str) -> int:
        logs = self._logs()
        logs.write(component, *traceback, raw=True)
        if component == "trainer":
            for rank in range(len(logs.ranks)):
                logs.rank_write(rank, "\n".join(traceback), stderr=True)
        message = f"{component} process failed with exit code 1 {when}"
        for other in COMPONENTS:
            if other != component:
                logs.write(other, f"[{other}] {message}; shutting down")
        warn(f"ERROR: {message} (see {logs.path(component)})")
        say(f"ERROR: {message}")
        return 1

    def _shutdown(self) -> int:
        signum = self.stop.signum or signal.SIGTERM
        name = signal.Signals(signum).name
        message = f"received {name}, shutting down"
        say(message)
        if self.logs is not None:
            self.logs.everywhere(message)
        self._linger(self.settings.shutdown_seconds)
        return 128 + signum

    def _linger(self, seconds: float) -> None:
        """A slow shutdown (FAKE_RL_SHUTDOWN_SECONDS): keep logging until it is over."""
        if seconds <= 0:
            return
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            line = f"waiting for components to shut down ({remaining:.2f}s left)"
            say(line)
            if self.logs is not None:
                self.logs.everywhere(line)
            time.sleep(min(SHUTDOWN_LOG_SECONDS, remaining))
        say("shutdown complete")

    # ---- helpers

    def _logs(self) -> ComponentLogs:
        assert self.logs is not None
        return self.logs

    def _spawn_children(self) -> None:
        if not self.settings.children:
            return
        gpus = {
            "inference": self.plan.inference_gpus,
            "orchestrator": [],
            "trainer": self.plan.trainer_gpus,
        }
        for component in COMPONENTS:
            env = dict(os.environ)
            env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, gpus[component]))
            env["FAKE_RL_CHILD_IGNORE_SIGTERM"] = "1" if self.settings.ignore_sigterm else "0"
            child = subprocess.Popen(
                [sys.executable, "-S", "-c", CHILD_SOURCE, f"fake-prime-rl-{component}"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
            self.children.append(child)
        # Wait until every child has its signal handling in place, so that a signal sent
        # after "All components started" hits fully initialised processes.
        for component, child in zip(COMPONENTS, self.children, strict=True):
            assert child.stdout is not None
            ready = child.stdout.readline()
            child.stdout.close()
            self.stop.check()
            if ready != b"ready\n":
                raise ComponentFailed(f"{component} process exited during startup")
            self._logs().write(component, f"[{component}] process started (pid {child.pid})")

    def _terminate_children(self) -> None:
        alive = [c for c in self.children if c.poll() is None]
        for child in alive:
            child.terminate()
        deadline = time.monotonic() + CHILD_GRACE_SECONDS
        for child in alive:
            try:
                child.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()

    def _hard_kill(self) -> None:
        """SIGKILL everything, as a node loss or an expired grace period would."""
        if os.getpgrp() == os.getpid():
            os.killpg(0, signal.SIGKILL)
        else:  # the caller shares our process group: never kill the caller
            for child in self.children:
                child.kill()
            os.kill(os.getpid(), signal.SIGKILL)

    def _write_rollouts(self, step: int, m: StepMetrics) -> None:
        orchestrator = get_nested(self.plan.config, "orchestrator", {})
        envs = env_ids(orchestrator if isinstance(orchestrator, dict) else {})
        write_rollouts(self.plan.run_dir, step, m.reward, envs)

    def _append_metrics(self, m: StepMetrics) -> None:
        append_metrics(self.plan.run_dir, m, self.plan.lr)

    def _trainer_ckpt_dir(self, step: int) -> Path:
        return self.plan.run_dir / "checkpoints" / f"step_{step}" / "trainer"

    def _checkpoint_complete(self, step: int) -> bool:
        return (self._trainer_ckpt_dir(step) / DCP_METADATA).is_file()

    def _checkpoint(self, step: int) -> None:
        """Write ``checkpoints/step_N`` the way torch DCP does: shards first, ``.metadata``
        last, so a kill or a signal in between leaves the step folder incomplete."""
        trainer = self._trainer_ckpt_dir(step)
        step_dir = trainer.parent
        shutil.rmtree(step_dir, ignore_errors=True)
        orchestrator = step_dir / "orchestrator"
        orchestrator.mkdir(parents=True)
        (orchestrator / "progress.pt").write_bytes(f"fake progress step={step}\n".encode())
        trainer.mkdir()
        for rank in range(len(self.plan.trainer_gpus)):
            shard = f"fake DCP shard rank={rank} step={step} lr={self.plan.lr}\n"
            (trainer / f"__{rank}_0.distcp").write_bytes(shard.encode())
        if self.settings.die_in_ckpt_at == step:
            self._hard_kill()
        self.stop.sleep(self.settings.ckpt_seconds)
        tmp = trainer / f"{DCP_METADATA}.tmp"
        tmp.write_text(json.dumps({"step": step, "ranks": len(self.plan.trainer_gpus)}) + "\n")
        os.replace(tmp, trainer / DCP_METADATA)


# --------------------------------------------------------------------------- rollouts

# The episodes of one step, per env: ROLLOUT_EXAMPLES tasks, each sampled
# ROLLOUTS_PER_EXAMPLE times (a group: the group's mean reward is its episodes' baseline).
ROLLOUT_EXAMPLES = 3
ROLLOUTS_PER_EXAMPLE = 2
ROLLOUT_WORDS = ("hello", "world", "reinforcement", "learning", "policy", "gradient",
                 "reward", "token", "modal", "volume", "checkpoint", "orchestrator")
ROLLOUT_SYSTEM_PROMPT = "Reverse the text character by character."
ROLLOUT_TIMEOUT_SECONDS = 600
# Fixed clock of the records, so a step's file is the same on every launch.
ROLLOUT_EPOCH = 1_800_000_000.0


def env_ids(orchestrator: dict[str, Any]) -> list[str]:
    """The orchestrator's environment ids (``env`` or ``train.env`` list, or, in 2025-10,
    ``environment.id``); reverse-text when it names none."""
    envs = orchestrator.get("env") or get_nested(orchestrator, "train.env")
    if isinstance(envs, list):
        ids = [str(e.get("id") or e.get("name")) for e in envs
               if isinstance(e, dict) and (e.get("id") or e.get("name"))]
    else:
        ids = [str(get_nested(orchestrator, "environment.id", ""))]
    return [i for i in ids if i] or ["reverse-text"]


def write_rollouts(run_dir: Path, step: int, quality: float, envs: list[str]) -> None:
    """``rollouts/step_N/train/{all,effective}/traces.jsonl`` as prime-rl's file monitor
    writes them: one verifiers episode record (``Episode.to_record()``) a line; ``all``
    holds every episode, ``effective`` those that train (succeeded, and a reward off
    their group's mean: a non-zero advantage)."""
    episodes = [fake_episode(env, step, n, quality) for env in envs
                for n in range(ROLLOUT_EXAMPLES * ROLLOUTS_PER_EXAMPLE)]
    groups: dict[tuple[str, int], list[float]] = {}
    for e in episodes:
        if e["ok"]:
            groups.setdefault(_group(e), []).append(_reward(e))
    effective = [e for e in episodes if e["ok"]
                 and _reward(e) != sum(groups[_group(e)]) / len(groups[_group(e)])]
    for subset, records in (("all", episodes), ("effective", effective)):
        folder = run_dir / "rollouts" / f"step_{step}" / "train" / subset
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "traces.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def _group(episode: dict[str, Any]) -> tuple[str, int]:
    return episode["env"]["id"], episode["task"]["data"]["idx"]


def _reward(episode: dict[str, Any]) -> float:
    return sum(r["score"] * r["weight"] for r in episode["traces"][0]["rewards"].values())


def fake_episode(env: str, step: int, n: int, quality: float) -> dict[str, Any]:
    """Episode ``n`` of ``env`` at ``step``, the same on every call: a reverse-text task
    (system and user message, one sampled assistant reply, an ``lcs_ratio`` reward that
    is perfect with probability ``quality``), or, for one episode a step, a failure
    without trace content: a timeout (odd steps) or a provider error (even steps)."""
    example = n // ROLLOUTS_PER_EXAMPLE
    prompt_rng = random.Random(f"{env}:{step}:example{example}")
    idx = prompt_rng.randrange(10_000)
    text = " ".join(prompt_rng.sample(ROLLOUT_WORDS, prompt_rng.randint(2, 4)))
    rng = random.Random(f"{env}:{step}:{n}")
    start = ROLLOUT_EPOCH + step * 60 + n
    task = _fake_task(idx)
    record_id = uuid.UUID(int=rng.getrandbits(128)).hex
    trace_id = uuid.UUID(int=rng.getrandbits(128)).hex
    if n == step % (ROLLOUT_EXAMPLES * ROLLOUTS_PER_EXAMPLE):
        return _failed_episode(record_id, trace_id, env, task, step, start)
    target = text[::-1]
    wrong = 0 if rng.random() < quality else rng.randint(1, max(1, len(target) // 3))
    reply = list(target)
    for i in rng.sample(range(len(reply)), wrong):
        reply[i] = "x"
    score = round(1 - wrong / len(target), 3)
    nodes = [
        _fake_node(None, "system", ROLLOUT_SYSTEM_PROMPT, start + 0.001),
        _fake_node(0, "user", text, start + 0.002),
        _fake_node(1, "assistant", "".join(reply), start + 0.003, rng),
    ]
    trace = _fake_trace(trace_id, task, nodes, {"lcs_ratio": {"score": score, "weight": 1.0}},
                        {"lcs_ratio": score}, ok=True, start=start)
    return _fake_record(record_id, env, task, True, False, [], trace)


def _failed_episode(record_id: str, trace_id: str, env: str, task: dict[str, Any],
                    step: int, start: float) -> dict[str, Any]:
    if step % 2:
        error = {"type": "TimeoutError",
                 "message": f"episode exceeded its {ROLLOUT_TIMEOUT_SECONDS}s timeout"}
    else:
        error = {"type": "ProviderError",
                 "message": "503 Service Unavailable: inference engine overloaded",
                 "status_code": 503}
    trace = _fake_trace(trace_id, task, [], {}, {}, ok=False, start=start)
    return _fake_record(record_id, env, task, False, bool(step % 2), [error], trace)


def _fake_record(record_id: str, env: str, task: dict[str, Any], ok: bool, is_timeout: bool,
                 errors: list[dict[str, Any]], trace: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": record_id, "env": {"id": env}, "task": task, "ok": ok, "is_timeout": is_timeout,
        "errors": errors, "traces": [trace],
        "num_input_tokens": 0, "num_output_tokens": 0, "num_total_tokens": 0,
    }


def _fake_task(idx: int) -> dict[str, Any]:
    return {"type": "Task", "data": {
        "idx": idx, "skills": [], "network_allow": ["*"], "network_block": [], "artifacts": [],
        "artifact_max_bytes": 33554432, "timeout": {}, "resources": {},
    }}


def _fake_node(parent: int | None, role: str, content: str, timestamp: float,
               sampler: random.Random | None = None) -> dict[str, Any]:
    """A message node; a sampled one (``sampler`` given) carries a token and a logprob a
    character. The root has no ``parent`` key: records leave out what is None."""
    tokens = list(range(100, 100 + len(content))) if sampler else []
    node: dict[str, Any] = {} if parent is None else {"parent": parent}
    node.update({
        "semantic_parents": [], "message": {"role": role, "content": content},
        "sampled": sampler is not None, "timestamp": timestamp, "token_ids": tokens,
        "mask": [True] * len(tokens), "is_content": [],
        "logprobs": [round(-sampler.random(), 3) for _ in tokens] if sampler else [],
    })
    return node


def _fake_trace(trace_id: str, task: dict[str, Any], nodes: list[dict[str, Any]],
                rewards: dict[str, Any], metrics: dict[str, float], *, ok: bool,
                start: float) -> dict[str, Any]:
    """A verifiers trace record; a failed one never completed, so it has no
    ``stop_condition``."""
    span = {"start": 0.0, "end": 0.0}
    trace: dict[str, Any] = {
        "version": 1, "id": trace_id, "verifiers": {"version": "0.4.0"}, "task": task,
        "agent": {"config": {
            "runtime": {"allow": ["*"], "block": [], "type": "prime", "image": "python:3.11-slim",
                        "labels": [], "cpu": 1.0, "memory": 2.0, "disk": 5.0,
                        "idle_timeout": 3600.0},
            "timeout": {}, "retries": {"max_retries": 0, "rules": []}, "network_notice": True,
        }, "name": "agent", "trainable": True},
        "tools": [], "nodes": nodes, "calls": [], "mm_token_type_id_map": {},
        "request_rewrites": [], "response_rewrites": [], "rewards": rewards,
        "metrics": metrics, "info": {}, "extra_usage": [], "is_completed": ok, "ok": ok,
    }
    if ok:
        trace["stop_condition"] = "completed"
    trace.update({
        "is_timeout": False, "errors": [],
        "timing": {"start": start, "boot": span, "setup": span,
                   "agent": {**span, "model": {"duration": 0.0},
                             "harness": {"duration": 0.0}},
                   "finalize": span, "scoring": span},
        "num_input_tokens": 0, "num_output_tokens": 0, "num_total_tokens": 0,
    })
    return trace


# --------------------------------------------------------------------------- main


def resolve(argv: Sequence[str]) -> tuple[Plan, Settings]:
    parsed = parse_argv(argv)
    cfg = build_config(parsed)
    plan = resolve_current(cfg) if parsed.dialect == "current" else resolve_2025_10(cfg)
    return plan, read_settings()


def main(argv: Sequence[str]) -> int:
    received = sorted(os.environ)  # before PRL_RUN_ID is defaulted: what the caller passed
    record_invocation(argv, received, run_identity(argv))
    if "-h" in argv or "--help" in argv:
        say(USAGE)
        return 0
    try:
        fast = env_int("FAKE_RL_FAST_LINES")
        if fast is not None:
            return fast_lines(fast)
        stop = StopFlag(env_flag("FAKE_RL_IGNORE_SIGTERM"))
        plan, settings = resolve(argv)
    except UsageError as exc:
        warn(USAGE)
        warn(f"rl: error: {exc}")
        return 2
    except ConfigError as exc:
        for line in exc.box():
            warn(line)
        return 1
    if plan.dialect == "current":
        os.environ["PRL_RUN_NAME"] = plan.run_name
    if plan.multi_node and plan.dry_run:
        return multi_node_dry_run(plan)
    if plan.multi_node:
        warn("ERROR: sbatch failed: the fake prime-rl cannot submit a SLURM job; "
             "run the multi-node roles yourself (tests/fake_prime_rl/bin)")
        return 1
    if plan.dry_run:
        config_dir = write_configs(plan)
        say(f"Dry run OK: wrote resolved configs to {config_dir.resolve()}")
        return 0
    try:
        resume_from = prepare_run_dir(plan)
    except LaunchError as exc:
        warn(f"ERROR: {exc}")
        return 1
    return Launcher(plan, settings, stop, resume_from).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
