"""Rich rendering of a Plan: the node's GPUs, the command line, image, resources, volumes,
cost."""

from __future__ import annotations

import shlex

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from primerl_modal.core.durations import format_duration
from primerl_modal.core.gpus import default_resources
from primerl_modal.core.image_spec import image_spec
from primerl_modal.core.plan import Plan
from primerl_modal.core.profile import ResolvedProfile

_TRAINER = "bold white on magenta"
_INFERENCE = "bold black on cyan"


def gpu_picture(plan: Plan) -> Text:
    """One block per local GPU id, coloured by the role it serves."""
    g = plan.gpu
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
    if plan.backend != "modal":
        return (f"nothing billed: this machine's GPUs (on Modal, {g.count} x {g.type} alone "
                f"would cost ${g.count * g.usd_per_gpu_hour:,.2f}/h)")
    parts = f"GPUs {g.count} x ${g.usd_per_gpu_hour:.2f}"
    if c.cpu_per_hour_usd or c.memory_per_hour_usd:
        parts += f" + CPU ${c.cpu_per_hour_usd:.2f} + memory ${c.memory_per_hour_usd:.2f}"
    return (f"${c.per_hour_usd:,.2f}/h ({parts}); "
            f"at most ${c.max_usd:,.2f} if every attempt hits its timeout")


def limits_text(plan: Plan) -> str:
    if plan.backend != "modal":
        return ("one attempt, no time limit, no retries; `prm run --resume RUN` continues a "
                "stopped or failed run from its latest checkpoint")
    n = plan.retries
    retries = ("no retries" if n == 0 else
               "1 retry (it resumes from the latest checkpoint)" if n == 1 else
               f"{n} retries (each resumes from the latest checkpoint)")
    return f"timeout {format_duration(plan.timeout_s)} per attempt, {retries}"


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
    grid.add_row("GPUs", f"{g.type} x {g.count}  ({g.memory_gb} GB each)  Modal gpu={g.modal_gpu}"
                 if on_modal else f"{g.type} x {g.count} on this machine (launching checks "
                                  "their number, not their type)")
    grid.add_row("", gpu_picture(plan))
    grid.add_row("command", command_text(plan.argv))
    grid.add_row("workdir", plan.workdir)
    if on_modal:
        grid.add_row("image", Text(image_text(plan)))
    if plan.cpu is not None and plan.memory_mb is not None:
        grid.add_row("resources", Text(resources_text(plan.cpu, plan.memory_mb, g.count)))
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
    grid.add_row("limits", limits_text(plan))
    grid.add_row("cost", cost_text(plan))
    parts: list[RenderableType] = [grid]
    for w in plan.warnings:
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
