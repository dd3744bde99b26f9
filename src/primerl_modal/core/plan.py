"""From a resolved profile to a Plan: the pure, complete description of one run."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from primerl_modal.core import cmdline
from primerl_modal.core.cost import Cost, cost_from_json, estimate
from primerl_modal.core.durations import parse_duration
from primerl_modal.core.fit import Fit, fit_from_json, plan_fit
from primerl_modal.core.gpu_plan import GpuPlan, node_roles, plan_gpus, plan_nodes
from primerl_modal.core.gpus import Catalogue, default_resources
from primerl_modal.core.guard import Guard, guard_from, guard_from_json
from primerl_modal.core.image_spec import image_spec
from primerl_modal.core.profile import ResolvedProfile, is_local_path, not_utf8
from primerl_modal.core.retention import (
    Retention,
    max_steps_in,
    retention_from,
    retention_from_json,
)
from primerl_modal.core.run_id import make_run_id
from primerl_modal.core.schema import DIALECTS, UV_VERSION
from primerl_modal.errors import PlanError

MAX_TIMEOUT_S = 24 * 3600
MAX_RETRIES = 10
META_DIR = "_prm"  # prm's own files per run, beside (never inside) prime-rl's run dirs
MAX_INPUT_BYTES = 1 << 20
_COMMIT = re.compile(r"[0-9a-f]{7,40}")
_FULL_COMMIT = re.compile(r"[0-9a-f]{40}")
_PINNED_IMAGE = re.compile(r"@sha256:[0-9a-f]{64}$|:[^/@]*[0-9a-f]{7,40}[^/@]*$")
BUILD_WORKDIR = "/opt/prime-rl"
PREBUILT_WORKDIR = "/app"  # prime-rl's Dockerfile.cuda: WORKDIR /app, venv /app/.venv
RUN_ID_ENV = "PRL_RUN_ID"


@dataclass(frozen=True)
class Layout:
    """Where a backend puts things: the outputs root, the prime-rl checkout, how prime-rl
    is started there, and the environment every run of that backend gets."""

    backend: str
    outputs_root: str
    workdir: str
    launcher: tuple[str, ...] = cmdline.LAUNCHER
    env: Mapping[str, str] = field(default_factory=dict)

    def meta_dir(self, run_id: str) -> str:
        return f"{self.outputs_root}/{META_DIR}/{run_id}"


# Given to the run's function rather than baked into the image, so a prebuilt image needs
# no build step for them: caches on the /cache volume, prime-rl's Dockerfile's HF Hub
# timeouts, and no re-sync by any `uv run` prime-rl itself spawns.
MODAL_ENV = {
    "HF_HOME": "/cache/huggingface",
    "VLLM_CACHE_ROOT": "/cache/vllm",
    "TORCHINDUCTOR_CACHE_DIR": "/cache/torchinductor",
    "TRITON_CACHE_DIR": "/cache/triton",
    "HF_HUB_ETAG_TIMEOUT": "500",
    "HF_HUB_DOWNLOAD_TIMEOUT": "300",
    "PYTHONUNBUFFERED": "1",
    "UV_NO_SYNC": "1",
}
MODAL_LAYOUT = Layout(backend="modal", outputs_root="/outputs", workdir=BUILD_WORKDIR,
                      launcher=cmdline.venv_launcher(BUILD_WORKDIR), env=MODAL_ENV)


@dataclass(frozen=True)
class InputFile:
    """A local config file shipped with the run (written by the runner before launch)."""

    role: str
    source: str
    path: str  # where the launcher reads it
    sha256: str
    text: str


@dataclass(frozen=True)
class Plan:
    run_id: str
    backend: str
    profile: str
    profile_path: str
    dialect: str
    experiment: str
    tags: tuple[str, ...]
    metric: str
    gpu: GpuPlan
    argv: tuple[str, ...]
    launcher: tuple[str, ...]
    workdir: str
    outputs_root: str
    env: Mapping[str, str]
    secrets: tuple[str, ...]
    volumes: Mapping[str, str]
    timeout_s: int  # 0: no limit (a local run)
    retries: int
    cost: Cost
    repo: str
    ref: str
    base_image: str
    local_code: str | None
    configs: Mapping[str, str]  # role -> path the launcher reads
    inputs: tuple[InputFile, ...]
    wandb: cmdline.Wandb
    region: str | None = None
    cpu: float | None = None  # reserved on Modal (None: the backend does not reserve)
    memory_mb: int | None = None
    ckpt_interval: int | None = None
    prebuilt_image: str | None = None  # prime-rl's published image, used instead of a build
    uv_version: str = UV_VERSION
    pass_env: tuple[str, ...] = ()  # local variables sent as a per-run secret (names only)
    sweep_id: str | None = None
    guard: Guard = field(default_factory=Guard)
    fit: Fit = field(default_factory=Fit)  # will the model fit the GPUs (an estimate)
    # prime-rl's own `rl --dry-run` before the GPUs start (`prm run`; --no-preflight: off)
    preflight: bool = False
    retention: Retention | None = None  # which checkpoints prime-rl keeps (None: none written)
    warnings: tuple[str, ...] = ()
    sources: Mapping[str, str] = field(default_factory=dict)

    @property
    def run_dir(self) -> str:
        """prime-rl's run directory (output_dir/run.name, or output_dir in 2025-10)."""
        return f"{self.outputs_root}/{self.run_id}"

    @property
    def meta_dir(self) -> str:
        return f"{self.outputs_root}/{META_DIR}/{self.run_id}"

    @property
    def params_b(self) -> float | None:
        """The model's parameters (billions), when the fit estimate knows them."""
        spec = self.fit.model.spec
        return spec.params_b if spec else None

    def to_json(self, with_input_texts: bool = False) -> dict[str, Any]:
        """The plan as JSON; ``with_input_texts`` adds uploaded files' contents (for the
        runner, which writes them before launch)."""
        g = self.gpu
        return {
            "run_id": self.run_id,
            "backend": self.backend,
            "profile": self.profile,
            "profile_path": self.profile_path,
            "dialect": self.dialect,
            "experiment": self.experiment,
            "tags": list(self.tags),
            "metric": self.metric,
            "gpu": {
                "type": g.type, "count": g.count, "trainer": g.trainer, "inference": g.inference,
                "tp": g.tp, "dp": g.dp, "trainer_gpu_ids": list(g.trainer_gpu_ids),
                "inference_gpu_ids": list(g.inference_gpu_ids), "memory_gb": g.memory_gb,
                "usd_per_gpu_hour": g.usd_per_gpu_hour,
                "modal": g.modal_gpu if self.backend == "modal" else None,
                "nodes": g.nodes, "trainer_nodes": g.trainer_nodes,
                "inference_nodes": g.inference_nodes,
            },
            "roles": node_roles(g),
            "argv": list(self.argv),
            "launcher": list(self.launcher),
            "workdir": self.workdir,
            "outputs_root": self.outputs_root,
            "run_dir": self.run_dir,
            "meta_dir": self.meta_dir,
            "env": dict(self.env),
            "secrets": list(self.secrets),
            "volumes": dict(self.volumes),
            "timeout_s": self.timeout_s,
            "retries": self.retries,
            "cost": self.cost.to_json(),
            "image": self._image_json(),
            "configs": dict(self.configs),
            "inputs": [
                {"role": i.role, "source": i.source, "path": i.path, "sha256": i.sha256}
                | ({"text": i.text} if with_input_texts else {})
                for i in self.inputs
            ],
            "wandb": {"project": self.wandb.project, "name": self.wandb.name,
                      "entity": self.wandb.entity, "group": self.wandb.group},
            "region": self.region,
            "cpu": self.cpu,
            "memory_mb": self.memory_mb,
            "ckpt_interval": self.ckpt_interval,
            "pass_env": list(self.pass_env),
            "sweep_id": self.sweep_id,
            "guard": self.guard.to_json(),
            "fit": self.fit.to_json(),
            "preflight": self.preflight,
            "retention": self.retention.to_json(self.params_b) if self.retention else None,
            "warnings": list(self.warnings),
            "sources": dict(self.sources),
        }

    def _image_json(self) -> dict[str, Any]:
        """Which image runs and what building it takes (``steps``: none when prebuilt, or
        on a backend that runs its own checkout: source "checkout")."""
        spec = image_spec(self) if self.backend == "modal" else None
        return {"source": spec.source if spec else "checkout", "prebuilt": self.prebuilt_image,
                "base": self.base_image, "repo": self.repo, "ref": self.ref,
                "uv": self.uv_version, "local_code": self.local_code,
                "steps": spec.build_steps() if spec else []}


def _input(role: str, local: str, meta_dir: str, read_text: Callable[[Path], str]) -> InputFile:
    path = Path(local).expanduser()
    try:
        text = read_text(path)
    except OSError as e:
        raise PlanError(
            f"{role.replace('config', 'rl')} config file {local} cannot be read "
            f"({e.strerror or e})",
            "check the path; local config paths are relative to the profile that names them",
        ) from None
    except UnicodeDecodeError as e:
        raise PlanError(f"{role.replace('config', 'rl')} config file {local}: {not_utf8(e)}",
                        "save the file as UTF-8") from None
    if len(text.encode()) > MAX_INPUT_BYTES:
        raise PlanError(f"{role} config {local} is larger than 1 MiB", "is it really a config?")
    digest = hashlib.sha256(text.encode()).hexdigest()
    return InputFile(role, str(path), f"{meta_dir}/inputs/{role}.toml", digest, text)


def build_plan(
    profile: ResolvedProfile,
    catalogue: Catalogue,
    *,
    now: datetime,
    token: str,
    layout: Layout = MODAL_LAYOUT,
    read_text: Callable[[Path], str] = lambda p: p.read_text(encoding="utf-8"),
    pass_env: tuple[str, ...] = (),
    run_id: str | None = None,
    sweep_id: str | None = None,
) -> Plan:
    """The plan for one run of ``profile``; ``now`` and ``token`` make the run id (unless
    ``run_id`` is given, as for sweep trials).

    Raises PlanError for anything that would not launch: GPU split, dialect, missing
    configs, timeout, retries, names, overrides of keys prm manages.
    """
    tables = profile.data

    def g(dotted: str) -> Any:
        # one dict lookup per section.key: this runs for every trial of a sweep
        section, _, key = dotted.partition(".")
        table = tables.get(section)
        return table.get(key) if isinstance(table, dict) else None

    dialect = g("prime_rl.dialect")
    if dialect not in DIALECTS:
        raise PlanError(
            f"unknown prime_rl.dialect {dialect!r}", f"use one of: {', '.join(DIALECTS)}"
        )
    run_id = run_id or make_run_id(g("experiment.name"), now, token)
    on_modal = layout.backend == "modal"
    warnings = [] if on_modal else _modal_only_warnings(profile.sources, layout.backend)
    # A local run is one attempt with no time limit (`prm run --resume` starts the next)
    timeout_s, retries = (_limits(g("modal.timeout"), g("modal.retries")) if on_modal
                          else (0, 0))
    for name in pass_env:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise PlanError(f"--env {name!r} is not a variable name", "write --env HF_TOKEN")
    prebuilt = g("prime_rl.image")
    ref = g("prime_rl.ref")
    warnings += _image_warnings(layout.backend, prebuilt, ref)
    layout = _image_layout(layout, prebuilt)
    meta_dir = layout.meta_dir(run_id)
    roles = ("config",) if dialect == "current" else (
        "trainer_config", "orchestrator_config", "inference_config")
    configs: dict[str, str] = {}
    inputs: list[InputFile] = []
    for role in roles:
        value = g(f"prime_rl.{role}")
        if not value:
            raise PlanError(
                f"dialect {dialect} needs prime_rl.{role}",
                f"set it in the profile or pass --set prime_rl.{role}=PATH",
            )
        if is_local_path(value):
            item = _input(role.removesuffix("_config"), value, meta_dir, read_text)
            inputs.append(item)
            configs[role] = item.path
        else:
            configs[role] = value
    # before the GPU split: a config of the other kind is the first thing to fix
    _check_deployment(g("gpu.nodes"), configs.get("config"), inputs)
    gpus = _plan_gpus(g, catalogue, dialect, layout.backend)
    wandb = cmdline.Wandb(g("wandb.project"), run_id, g("wandb.entity"), g("wandb.group"))
    overrides = tables.get("overrides") or {}
    ckpt_interval = g("prime_rl.ckpt_interval")
    retention, kept = retention_from(g, dialect, max_steps_in(overrides))
    warnings += kept
    if gpus.nodes > 1:
        argv = cmdline.multi_node_argv(
            configs["config"], gpus, layout.outputs_root, run_id, wandb,
            ckpt_interval, overrides, layout.launcher, retention,
        )
    elif dialect == "current":
        argv = cmdline.current_argv(
            configs["config"], gpus, layout.outputs_root, run_id, wandb,
            ckpt_interval, overrides, layout.launcher, retention,
        )
    else:
        three = (configs["trainer_config"], configs["orchestrator_config"],
                 configs["inference_config"])
        argv = cmdline.legacy_argv(three, gpus, run_id, f"{layout.outputs_root}/{run_id}",
                                   wandb, ckpt_interval, overrides, layout.launcher,
                                   retention)
        if not ckpt_interval and retries:
            warnings.append(
                "prime_rl.ckpt_interval is not set: a retry resumes with --ckpt.resume-step, "
                "which resets the config files' [ckpt] interval to 50; set it to theirs"
            )
    env = _run_env(tables.get("env") or {}, layout, dialect, run_id, wandb)
    cpu, memory_mb = _resources(layout.backend, gpus.count, g("modal.cpu"), g("modal.memory"))
    return Plan(
        run_id=run_id,
        backend=layout.backend,
        profile=profile.name,
        profile_path=str(profile.path),
        dialect=dialect,
        experiment=g("experiment.name"),
        tags=tuple(g("experiment.tags") or ()),
        metric=g("experiment.metric"),
        gpu=gpus,
        argv=tuple(argv),
        launcher=layout.launcher,
        workdir=layout.workdir,
        outputs_root=layout.outputs_root,
        env=env,
        secrets=tuple(dict.fromkeys(g("modal.secrets") or ())) if on_modal else (),
        volumes=({"/outputs": g("modal.outputs_volume"), "/cache": g("modal.cache_volume")}
                 if on_modal else {}),
        timeout_s=timeout_s,
        retries=retries,
        # nothing is billed for this machine's GPUs (the view says what Modal would charge)
        cost=(_per_cluster(estimate(gpus, timeout_s, retries, catalogue, cpu, memory_mb),
                           gpus.nodes) if on_modal
              else Cost(0.0, 0.0, source=catalogue.source_of(gpus.type))),
        repo=g("prime_rl.repo"),
        ref=ref,
        base_image=g("modal.base_image"),
        local_code=g("prime_rl.local_code"),
        configs=configs,
        inputs=tuple(inputs),
        wandb=wandb,
        region=g("modal.region") if on_modal else None,
        cpu=cpu,
        memory_mb=memory_mb,
        ckpt_interval=ckpt_interval,
        prebuilt_image=prebuilt if layout.backend == "modal" else None,
        uv_version=g("prime_rl.uv_version"),
        pass_env=tuple(dict.fromkeys(pass_env)),
        sweep_id=sweep_id,
        guard=guard_from(g),
        fit=plan_fit(overrides, profile.sources,
                     [(i.role, i.source, i.text) for i in inputs], configs, gpus, catalogue),
        retention=retention,
        warnings=tuple(warnings),
        sources=dict(profile.sources),
    )


def _plan_gpus(g: Callable[[str], Any], catalogue: Catalogue, dialect: str,
               backend: str) -> GpuPlan:
    """One node's split, or a Modal cluster's (``[gpu] nodes`` over 1).

    Raises PlanError for a bad split, or a cluster anywhere but on Modal in dialect current.
    """
    nodes = g("gpu.nodes")
    if nodes == 1:
        return plan_gpus(
            catalogue, g("gpu.type"), g("gpu.count"), g("gpu.trainer_ratio"), g("gpu.tp"),
            trainer=g("gpu.trainer"), inference=g("gpu.inference"),
            trainer_first=dialect == "2025-10",
        )
    if nodes < 1:
        raise PlanError(f"gpu.nodes must be 1 or more, got {nodes}", "use --nodes 1")
    if backend != "modal":
        raise PlanError(f"{nodes} nodes need a Modal cluster: the {backend} backend runs on "
                        "this machine alone", "use --nodes 1, or --backend modal")
    if dialect != "current":
        raise PlanError(f"multi-node runs need prime_rl.dialect current, not {dialect}",
                        "use one rl.toml with a multi-node [deployment] (prime-rl's "
                        "examples/advanced/*)")
    return plan_nodes(catalogue, g("gpu.type"), g("gpu.count"), nodes,
                      g("gpu.trainer_ratio"), g("gpu.tp"),
                      trainer=g("gpu.trainer"), inference=g("gpu.inference"))


# Where prime-rl keeps its configs: configs/* (and examples/basic/*) are single-node,
# examples/advanced/* the multi-node ones (a [deployment] type = "multi_node" and a [slurm]).
_SINGLE_NODE_DIRS = ("configs/", "examples/basic/")
_MULTI_NODE_DIR = "examples/advanced/"


def _check_deployment(nodes: int, config: str | None, inputs: list[InputFile]) -> None:
    """The rl.toml's [deployment] agrees with ``nodes``: prime-rl refuses num_train_gpus
    under a multi-node deployment, and a multi-node one outside SLURM.

    Raises PlanError naming what to set (a config prm cannot place passes: the preflight
    or prime-rl's own dry run tells).
    """
    if config is None:
        return
    uploaded = next((i for i in inputs if i.role == "config"), None)
    if uploaded:
        config = uploaded.source  # the user's file, not where the runner writes it
        multi: bool | None = _uploaded_multi_node(uploaded.text)
    elif config.startswith(_MULTI_NODE_DIR):
        multi = True
    elif config.startswith(_SINGLE_NODE_DIRS):
        multi = False
    else:
        multi = None
    if nodes > 1 and multi is False:
        raise PlanError(
            f"{config} is a single-node prime-rl config: prime-rl refuses its num_train_gpus "
            "under a multi-node deployment",
            "use --nodes 1, or a multi-node config such as prime-rl's "
            "examples/advanced/qwen3-30b-a3b/math.toml (profile qwen3-30b-math)")
    if nodes == 1 and multi:
        raise PlanError(
            f"{config} is a multi-node prime-rl config ([deployment] type = \"multi_node\")",
            "set [gpu] nodes (or --nodes) to its node count, e.g. --nodes 4")


def _uploaded_multi_node(text: str) -> bool:
    """Whether an uploaded rl.toml's [deployment] is multi-node (parsed only when the text
    names multi_node at all, so a single-node plan pays nothing)."""
    if "multi_node" not in text:
        return False
    import tomllib

    try:
        deployment = tomllib.loads(text).get("deployment")
    except tomllib.TOMLDecodeError:
        return False  # prime-rl's own dry run (the preflight) names the syntax error
    return isinstance(deployment, dict) and deployment.get("type") == "multi_node"


def _per_cluster(cost: Cost, nodes: int) -> Cost:
    """A node's cost times its nodes: every container reserves the same GPUs, CPU, memory."""
    if nodes == 1:
        return cost
    return replace(cost, per_hour_usd=round(cost.per_hour_usd * nodes, 4),
                   max_usd=round(cost.max_usd * nodes, 2),
                   gpu_per_hour_usd=round(cost.gpu_per_hour_usd * nodes, 4),
                   cpu_per_hour_usd=round(cost.cpu_per_hour_usd * nodes, 4),
                   memory_per_hour_usd=round(cost.memory_per_hour_usd * nodes, 4))


def _limits(timeout: str | int, retries: int) -> tuple[int, int]:
    """A Modal attempt's time limit in seconds, and its retries.

    Raises PlanError for a timeout over Modal's 24h or retries out of range.
    """
    timeout_s = parse_duration(timeout, what="modal.timeout")
    if timeout_s > MAX_TIMEOUT_S:
        raise PlanError(
            f"timeout {timeout} is over Modal's 24h limit for one attempt",
            "use --timeout 24h or less; retries resume from checkpoints, so a run can go longer",
        )
    if not 0 <= retries <= MAX_RETRIES:
        raise PlanError(f"retries must be between 0 and {MAX_RETRIES}, got {retries}")
    return timeout_s, retries


def _modal_only_warnings(sources: Mapping[str, str], backend: str) -> list[str]:
    """Modal's limits given on this command line, which a run elsewhere does not have."""
    out = []
    for key, flag in (("modal.timeout", "--timeout"), ("modal.retries", "--retries")):
        label = sources.get(key)
        if label in (flag, "--set"):
            given = flag if label == flag else f"--set {key}"
            out.append(f"{given} is ignored: a {backend} run is one attempt with no time "
                       "limit (prm run --resume starts the next)")
    return out


def _image_warnings(backend: str, prebuilt: str | None, ref: str) -> list[str]:
    """What makes the image unreproducible, or what the image settings do not do.

    Raises PlanError for an abbreviated commit that Modal would have to fetch.
    """
    if backend != "modal":
        return [f"prime_rl.image {prebuilt!r} is ignored: the {backend} backend runs your "
                "own checkout"] if prebuilt else []
    if prebuilt:
        if re.search(r"\s", prebuilt):
            raise PlanError(f"prime_rl.image {prebuilt!r} is not an image reference",
                            "write it like ghcr.io/primeintellect-ai/prime-rl:commit-<sha>-amd64")
        if _PINNED_IMAGE.search(prebuilt):
            return []
        return [f"prime_rl.image {prebuilt!r} names no commit or digest: Modal keeps the image "
                "it pulled first, so runs are not reproducible; use a commit-<sha> tag"]
    if not _COMMIT.fullmatch(ref):
        return [f"prime_rl.ref {ref!r} is not a commit: the image follows whatever it points "
                "to when built, so runs are not reproducible; pin a commit hash"]
    if not _FULL_COMMIT.fullmatch(ref):
        raise PlanError(f"prime_rl.ref {ref!r} is an abbreviated commit, which git cannot "
                        "fetch shallow", "use the full 40-hex commit hash")
    return []


def _image_layout(layout: Layout, prebuilt: str | None) -> Layout:
    """prime-rl's published image has its checkout at /app, not where prm builds one."""
    if layout.backend != "modal" or not prebuilt:
        return layout
    return replace(layout, workdir=PREBUILT_WORKDIR,
                   launcher=cmdline.venv_launcher(PREBUILT_WORKDIR))


def _run_env(profile_env: Mapping[str, Any], layout: Layout, dialect: str, run_id: str,
             wandb: cmdline.Wandb) -> dict[str, str]:
    """The backend's environment, then [env], then the run's W&B identity (stable across
    retries, preemptions and `prm run --resume`, so all of them log to the same W&B runs).

    Raises PlanError when [env] sets the run id variable prm derives per run.
    """
    if RUN_ID_ENV in profile_env:
        raise PlanError(f"[env] {RUN_ID_ENV} is set by prm for every run (W&B continues "
                        "the same run with it)", f"remove {RUN_ID_ENV} from [env]")
    env = dict(layout.env)
    env.update((k, str(v).lower() if isinstance(v, bool) else str(v))
               for k, v in profile_env.items())
    if dialect == "current":
        # prime-rl's `rl` keeps a PRL_RUN_ID it inherits and makes it the W&B run id.
        env[RUN_ID_ENV] = cmdline.wandb_run_id(run_id)
    else:
        env.update(cmdline.legacy_wandb_env(wandb))
    return env


def _resources(backend: str, gpu_count: int, cpu: float | None,
               memory_mb: int | None) -> tuple[float | None, int | None]:
    """What a Modal run reserves: [modal] cpu / memory, else the per-GPU defaults.

    Raises PlanError for a reservation that is not positive.
    """
    if backend != "modal":
        return None, None
    if (cpu is not None and cpu <= 0) or (memory_mb is not None and memory_mb <= 0):
        raise PlanError("[modal] cpu and memory must be positive",
                        "or leave them out for the per-GPU defaults")
    default_cpu, default_memory = default_resources(gpu_count)
    return (default_cpu if cpu is None else float(cpu),
            default_memory if memory_mb is None else memory_mb)


def plan_from_json(data: Mapping[str, Any]) -> Plan:
    """A plan back from ``Plan.to_json(with_input_texts=True)`` (a run's plan.json)."""
    g = data["gpu"]
    gpus = GpuPlan(
        type=g["type"], count=g["count"], trainer=g["trainer"], inference=g["inference"],
        tp=g["tp"], dp=g["dp"], trainer_gpu_ids=tuple(g["trainer_gpu_ids"]),
        inference_gpu_ids=tuple(g["inference_gpu_ids"]), memory_gb=g["memory_gb"],
        usd_per_gpu_hour=g["usd_per_gpu_hour"],
        # plans written before clusters: one node
        nodes=g.get("nodes", 1), trainer_nodes=g.get("trainer_nodes", 1),
        inference_nodes=g.get("inference_nodes", 1),
    )
    w, image = data["wandb"], data["image"]
    return Plan(
        run_id=data["run_id"], backend=data["backend"], profile=data["profile"],
        profile_path=data["profile_path"], dialect=data["dialect"],
        experiment=data["experiment"], tags=tuple(data["tags"]), metric=data["metric"],
        gpu=gpus, argv=tuple(data["argv"]), launcher=tuple(data["launcher"]),
        workdir=data["workdir"], outputs_root=data["outputs_root"], env=data["env"],
        secrets=tuple(data["secrets"]), volumes=data["volumes"], timeout_s=data["timeout_s"],
        retries=data["retries"], cost=cost_from_json(data["cost"]), repo=image["repo"],
        ref=image["ref"], base_image=image["base"], local_code=image["local_code"],
        # plans written before prebuilt images and a pinned uv have neither key
        prebuilt_image=image.get("prebuilt"), uv_version=image.get("uv", UV_VERSION),
        configs=data["configs"],
        inputs=tuple(InputFile(i["role"], i["source"], i["path"], i["sha256"], i.get("text", ""))
                     for i in data["inputs"]),
        wandb=cmdline.Wandb(w["project"], w["name"], w["entity"], w["group"]),
        region=data["region"], cpu=data["cpu"], memory_mb=data["memory_mb"],
        ckpt_interval=data["ckpt_interval"], pass_env=tuple(data.get("pass_env", ())),
        sweep_id=data.get("sweep_id"), guard=guard_from_json(data.get("guard")),
        fit=fit_from_json(data.get("fit")),  # older plans: unknown
        preflight=bool(data.get("preflight", False)),  # older plans: none ran
        retention=retention_from_json(data.get("retention")),
        warnings=tuple(data["warnings"]), sources=data["sources"],
    )
