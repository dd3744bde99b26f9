"""Rich rendering of a Plan: the node's GPUs, the command line, image, resources, volumes,
cost."""

from __future__ import annotations

import shlex
from typing import Any

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from primerl_modal.core.durations import format_duration
from primerl_modal.core.gpu_plan import node_roles
from primerl_modal.core.gpus import default_resources
from primerl_modal.core.image_spec import image_spec
from primerl_modal.core.plan import Plan
from primerl_modal.core.profile import ResolvedProfile
from primerl_modal.core.retention import gb_each

_TRAINER = "bold white on magenta"
_INFERENCE = "bold black on cyan"


def gpu_picture(plan: Plan) -> Text:
    """One block per local GPU id, coloured by the role it serves (a cluster: one row per
    node)."""
    g = plan.gpu
    if g.nodes > 1:
        return node_picture(plan)
    roles = {i: "T" for i in g.trainer_gpu_ids} | {i: "I" for i in g.inference_gpu_ids}
    text = Text()
    for i in range(g.count):
        style = _TRAINER if roles[i] == "T" else _INFERENCE
        text.append(f" {i}:{roles[i]} ", style=style)
        text.append(" ")
    text.append("\n")
    text.append(" T ", style=_TRAINER)
    text.append(f" trainer {g.trainer} (FSDP)   ")
    text.append(" I ", style=_INFERENCE)
    text.append(f" inference {g.inference} = DP {g.dp} x TP {g.tp} (vLLM)")
    return text


def node_picture(plan: Plan) -> Text:
    """One row per node of a cluster: its rank, role, GPUs, and what it starts."""
    g = plan.gpu
    text = Text()
    for role in node_roles(g):
        trainer = role["role"] == "trainer"
        style, letter = (_TRAINER, "T") if trainer else (_INFERENCE, "I")
        text.append(f"node{role['rank']} ", style="bold")
        text.append(f" {letter} " * g.count, style=style)
        text.append("  " + ", ".join(_process(p) for p in role["starts"]) + "\n")
    text.append(" T ", style=_TRAINER)
    text.append(f" trainer {g.trainer_nodes} nodes = {g.trainer} GPUs (torchrun, FSDP)   ")
    text.append(" I ", style=_INFERENCE)
    text.append(f" inference {g.inference_nodes} nodes = DP {g.dp} x TP {g.tp} (vLLM)")
    return text


def _process(p: dict[str, Any]) -> str:
    name = p["process"]
    if name == "inference":
        dp = p["dp_ranks"]
        return f"vLLM dp{dp[0]}" + (f"-{dp[-1]}" if len(dp) > 1 else "") + f" x tp{p['tp']}"
    if name == "router":
        return f"router ({len(p['workers'])} servers)"
    if name == "torchrun":
        return f"torchrun {p['node_rank'] + 1}/{p['nnodes']}"
    return name.replace("_", " ")


def command_text(argv: tuple[str, ...]) -> Text:
    """The argv, one flag and its value per line, quoted as a shell would need."""
    lines: list[str] = []
    for word in argv:
        quoted = shlex.quote(word)
        if word.startswith("--") or not lines:
            lines.append(quoted)
        else:
            lines[-1] += " " + quoted
    return Text(" \\\n    ".join(lines), style="green")


def image_text(plan: Plan) -> str:
    """Which image runs, and whether launching it builds anything."""
    spec = image_spec(plan)
    if spec.prebuilt:
        text = f"prebuilt {spec.base}: nothing is built"
    else:
        text = (f"built from {plan.base_image}: {plan.repo} @ {plan.ref}, uv "
                f"{plan.uv_version}, {len(spec.build_steps())} build steps (reused while "
                "they are unchanged)")
    if plan.local_code:
        text += f"\n+ local code overlay from {plan.local_code}"
    return text


def resources_text(cpu: float, memory_mb: int, gpu_count: int) -> str:
    default = default_resources(gpu_count) == (cpu, memory_mb)
    return (f"{cpu:g} CPU cores, {memory_mb / 1024:g} GiB memory reserved"
            + (f" (default for {gpu_count} GPUs; [modal] cpu / memory override it)"
               if default else ""))


def cost_text(plan: Plan) -> str:
    c, g = plan.cost, plan.gpu
    # which prices: Modal's of a date, built-in, prices.toml (a plan written before: unknown)
    prices = f"\nprices: {c.source}" if c.source else ""
    if plan.backend != "modal":
        return (f"nothing billed: this machine's GPUs (on Modal, {g.count} x {g.type} alone "
                f"would cost ${g.count * g.usd_per_gpu_hour:,.2f}/h){prices}")
    parts = f"GPUs {g.count * g.nodes} x ${g.usd_per_gpu_hour:.2f}"
    if c.cpu_per_hour_usd or c.memory_per_hour_usd:
        parts += f" + CPU ${c.cpu_per_hour_usd:.2f} + memory ${c.memory_per_hour_usd:.2f}"
    if g.nodes > 1:
        parts += f", all {g.nodes} nodes"
    return (f"${c.per_hour_usd:,.2f}/h ({parts}); "
            f"at most ${c.max_usd:,.2f} if every attempt hits its timeout{prices}")


def preflight_text(plan: Plan) -> str:
    if not plan.preflight:
        why = ("prime-rl of the 2025-10 layout has no --dry-run" if plan.dialect != "current"
               else "a config error is found only once the GPUs run")
        return f"none: {why}"
    where = ("on a CPU container in the run's image" if plan.backend == "modal"
             else "in the checkout")
    return (f"prime-rl's rl --dry-run {where} before the GPUs start; a refusal launches "
            "nothing (--no-preflight skips it)")


def limits_text(plan: Plan) -> str:
    if plan.backend != "modal":
        return ("one attempt, no time limit, no retries; `prm run --resume RUN` continues a "
                "stopped or failed run from its latest checkpoint")
    n = plan.retries
    retries = ("no retries" if n == 0 else
               "1 retry (it resumes from the latest checkpoint)" if n == 1 else
               f"{n} retries (each resumes from the latest checkpoint)")
    return f"timeout {format_duration(plan.timeout_s)} per attempt, {retries}"


def checkpoints_text(plan: Plan) -> str:
    """How often prime-rl checkpoints, which checkpoints it keeps, and the volume space they
    hold (12-16 bytes a parameter each: weights and optimizer state)."""
    r = plan.retention
    if r is None:
        return "none written (set prime_rl.ckpt_interval so that a retry or resume continues)"
    text = f"every {plan.ckpt_interval} steps, keeping the newest {r.keep_last}"
    if r.keep_every:
        text += f" and every multiple of {r.keep_every} steps for good"
    each, total = gb_each(plan.params_b), r.gb(plan.params_b)
    if each is None:
        return text + "; space unknown (model size unknown)"
    about = f"{each[0]:,.1f}-{each[1]:,.1f} GB each ({plan.params_b:g}B params)"
    if total is None:
        return text + f"; {about}, growing with the steps kept for good"
    return text + f": up to {total[0]:,.1f}-{total[1]:,.1f} GB on the outputs, {about}"


def render(plan: Plan, title: str = "prm plan (dry run: nothing launched)") -> RenderableType:
    """The plan as a panel; a local run's plan shows only what a local run has (no image,
    volumes, secrets, Modal limits or Modal price)."""
    g = plan.gpu
    on_modal = plan.backend == "modal"
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    grid.add_row("run id", plan.run_id)
    grid.add_row("backend", plan.backend)
    grid.add_row("profile", f"{plan.profile}  ({plan.profile_path})")
    grid.add_row("dialect", plan.dialect)
    cluster = f"{g.nodes} nodes of " if g.nodes > 1 else ""
    grid.add_row("GPUs", f"{cluster}{g.type} x {g.count}  ({g.memory_gb} GB each)  "
                         f"Modal gpu={g.modal_gpu}"
                 if on_modal else f"{g.type} x {g.count} on this machine (launching checks "
                                  "their number, not their type)")
    grid.add_row("", gpu_picture(plan))
    grid.add_row("command", command_text(plan.argv))
    grid.add_row("workdir", plan.workdir)
    if on_modal:
        grid.add_row("image", Text(image_text(plan)))
    if plan.cpu is not None and plan.memory_mb is not None:
        per_node = " per node" if g.nodes > 1 else ""
        grid.add_row("resources",
                     Text(resources_text(plan.cpu, plan.memory_mb, g.count) + per_node))
    for item in plan.inputs:
        grid.add_row(f"upload {item.role}", f"{item.source} -> {item.path}")
    if on_modal:
        grid.add_row("volumes", "\n".join(f"{m} <- {v}" for m, v in plan.volumes.items()))
        grid.add_row("secrets", ", ".join(plan.secrets) or "none")
    else:
        grid.add_row("outputs", f"{plan.run_dir}\nprm's files: {plan.meta_dir}")
    if plan.env:
        grid.add_row("env", "\n".join(f"{k}={v}" for k, v in plan.env.items()))
    grid.add_row("W&B", f"{plan.wandb.project} / {plan.wandb.name}")
    grid.add_row("preflight", preflight_text(plan))
    grid.add_row("limits", limits_text(plan))
    grid.add_row("checkpoints", checkpoints_text(plan))
    grid.add_row("cost", cost_text(plan))
    grid.add_row("memory", plan.fit.summary())  # an estimate (docs/fit.md)
    parts: list[RenderableType] = [grid]
    for w in (*plan.warnings, *filter(None, [plan.fit.warning()])):
        parts.append(Text(f"warning: {w}", style="yellow"))
    return Panel(Group(*parts), title=title, title_align="left")


def explain(profile: ResolvedProfile) -> RenderableType:
    """Every resolved value and where it came from: default, a file, a flag or --set."""
    table = Table(title="resolved settings (later layers win)", title_justify="left")
    table.add_column("key", style="bold")
    table.add_column("value")
    table.add_column("source")
    for key, source in sorted(profile.sources.items()):
        table.add_row(key, repr(profile.get(key)), source)
    return table
