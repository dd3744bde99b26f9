"""`prm run`: resolve a profile, plan the GPUs, and launch (or, with --dry-run, show)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from primerl_modal.errors import PrmError, UsageError
from primerl_modal.ui import complete
from primerl_modal.ui.options import JsonOption

if TYPE_CHECKING:
    from primerl_modal.core.fit import Fit
    from primerl_modal.core.profile import Setting


def parse_gpu(spec: str) -> list[Setting]:
    """``--gpu H100:8`` (or just ``H100``) as gpu.type / gpu.count settings.

    Raises UsageError when the count is not a whole number.
    """
    from primerl_modal.core.profile import Setting

    kind, _, count = spec.partition(":")
    out = [Setting("gpu.type", kind.strip(), "--gpu")]
    if count:
        if not count.strip().isdigit():
            raise UsageError(f"--gpu {spec!r}: count must be a whole number", "e.g. --gpu H100:8")
        out.append(Setting("gpu.count", int(count), "--gpu"))
    return out


def cli_settings(
    *, gpu: str | None, gpus: int | None, gpu_type: str | None, trainer_ratio: float | None,
    tp: int | None, name: str | None, ref: str | None, local_code: str | None,
    use_local_code: bool, timeout: str | None, retries: int | None,
    trainer_config: str | None, orchestrator_config: str | None, inference_config: str | None,
    sets: list[str], nodes: int | None = None,
) -> list[Setting]:
    """CLI flags as settings (above the profile files), then `--set` items (above flags)."""
    from primerl_modal.core.profile import Setting, parse_set

    out: list[Setting] = parse_gpu(gpu) if gpu else []
    flags = [
        ("gpu.type", gpu_type, "--gpu-type"), ("gpu.count", gpus, "--gpus"),
        ("gpu.trainer_ratio", trainer_ratio, "--trainer-ratio"), ("gpu.tp", tp, "--tp"),
        ("gpu.nodes", nodes, "--nodes"),
        ("experiment.name", name, "--name"), ("prime_rl.ref", ref, "--ref"),
        ("prime_rl.local_code", local_code or ("." if use_local_code else None), "--local-code"),
        ("modal.timeout", timeout, "--timeout"), ("modal.retries", retries, "--retries"),
        ("prime_rl.trainer_config", trainer_config, "--trainer-config"),
        ("prime_rl.orchestrator_config", orchestrator_config, "--orchestrator-config"),
        ("prime_rl.inference_config", inference_config, "--inference-config"),
    ]
    out += [Setting(k, v, src) for k, v, src in flags if v is not None]
    if trainer_config or orchestrator_config or inference_config:
        # The original script's three-file flags only exist in the 2025-10 layout.
        out.append(Setting("prime_rl.dialect", "2025-10", "--trainer-config"))
    return out + [parse_set(item) for item in sets]


def run(
    profile: Annotated[
        str | None,
        typer.Argument(help="Profile name or path (default: reverse-text).", show_default=False,
                       autocompletion=complete.profiles),
    ] = None,
    gpu: Annotated[
        str | None, typer.Option("--gpu", help="GPU type and count, e.g. H100:8.")
    ] = None,
    gpus: Annotated[
        int | None, typer.Option("--gpus", "--gpu-count", help="GPUs on the node (2..8).")
    ] = None,
    gpu_type: Annotated[
        str | None, typer.Option("--gpu-type", help="GPU type, e.g. A100-80GB.")
    ] = None,
    trainer_ratio: Annotated[
        float | None,
        typer.Option("--trainer-ratio", "--trainer-gpu-ratio", help="Trainer share, in (0, 1)."),
    ] = None,
    tp: Annotated[int | None, typer.Option("--tp", help="Inference tensor parallel size.")] = None,
    nodes: Annotated[
        int | None,
        typer.Option("--nodes", help="Nodes of --gpus GPUs each (a Modal cluster; "
                                     "docs/multi-node.md)."),
    ] = None,
    name: Annotated[
        str | None,
        typer.Option("--name", "--experiment-name", help="Experiment name (run-id prefix)."),
    ] = None,
    ref: Annotated[
        str | None, typer.Option("--ref", help="prime-rl commit, tag or branch.")
    ] = None,
    local_code: Annotated[
        str | None, typer.Option("--local-code", help="Overlay this local prime-rl checkout.")
    ] = None,
    use_local_code: Annotated[
        bool, typer.Option("--use-local-code", help="Same as --local-code . (original flag).")
    ] = False,
    timeout: Annotated[
        str | None,
        typer.Option("--timeout", help="Modal attempt time limit, e.g. 6h (max 24h)."),
    ] = None,
    retries: Annotated[
        int | None,
        typer.Option("--retries", help="Retries on Modal after preemption or crash."),
    ] = None,
    trainer_config: Annotated[
        str | None, typer.Option("--trainer-config", help="Trainer TOML (2025-10 dialect).")
    ] = None,
    orchestrator_config: Annotated[
        str | None,
        typer.Option("--orchestrator-config", help="Orchestrator TOML (2025-10 dialect)."),
    ] = None,
    inference_config: Annotated[
        str | None, typer.Option("--inference-config", help="Inference TOML (2025-10 dialect).")
    ] = None,
    sets: Annotated[
        list[str] | None,
        typer.Option("--set", help="KEY=VALUE override (repeatable): prime-rl or prm keys."),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the plan; launch nothing.")
    ] = False,
    explain: Annotated[
        bool, typer.Option("--explain", help="With --dry-run: show where each value came from.")
    ] = False,
    force: Annotated[
        bool,
        typer.Option("--force", help="Launch even when the model's weights alone cannot fit "
                                     "the GPUs by prm's memory estimate."),
    ] = False,
    backend: Annotated[
        str | None,
        typer.Option("--backend", help="modal (default) or local (this machine's GPUs)."),
    ] = None,
    detach: Annotated[
        bool, typer.Option("--detach", "-d", help="Return once launched; do not follow logs.")
    ] = False,
    pass_env: Annotated[
        list[str] | None,
        typer.Option("--env", metavar="KEY",
                     help="Send this local environment variable to the run as a secret "
                          "(repeatable; never written anywhere)."),
    ] = None,
    no_preflight: Annotated[
        bool,
        typer.Option("--no-preflight",
                     help="Skip the preflight: prime-rl's own `rl ... --dry-run` of this "
                          "config, on a small CPU container (Modal) or in the checkout "
                          "(local), before any GPU starts."),
    ] = False,
    resume: Annotated[
        str | None,
        typer.Option("--resume", metavar="RUN", autocompletion=complete.run_ids,
                     help="Relaunch a FAILED/STOPPED/LOST run as a new attempt that resumes."),
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Plan a prime-rl run from a profile and launch it.

    Before the GPUs start, prime-rl's own `rl ... --dry-run` checks the whole config (a
    typo'd key, a wrong type, an impossible split) on a small CPU container in the run's
    image (locally: in the checkout); a refusal shows prime-rl's message and launches
    nothing (docs/modal.md, Preflight). `--no-preflight` skips it; `--resume` runs none
    (its plan was checked at the run's first launch).

    The plan estimates whether the model fits the GPUs (docs/fit.md) and suggests a node
    that would; a model whose weights alone cannot fit is refused unless `--force`.

    Examples:

    \b
      prm run --dry-run                       # the default reverse-text plan
      prm run hendrycks-sanity --gpus 8 --trainer-ratio 0.25 --tp 2 --dry-run
      prm run ./my-exp.toml --gpu H100:8 --set trainer.optim.lr=3e-6 --set max_steps=200
      prm run my-exp --dry-run --explain      # where every value came from
      prm run qwen3-30b-math --dry-run        # 4 nodes: 2 inference + 2 trainer
      prm run my-exp --backend local --detach # on this machine's GPUs, in the background
      prm run my-exp --no-preflight           # skip prime-rl's dry run before launching
      prm run --resume my-exp-261129          # continue a stopped run from its checkpoint
    """
    from dataclasses import replace

    from primerl_modal.planning import plan_profile

    if resume:
        if profile or dry_run:
            raise UsageError("--resume RUN takes no profile and no --dry-run",
                             "the run's own plan is reused")
        from primerl_modal.commands import launch

        launch.resume_run(resume, detach=detach, json_out=json_out)
        return
    settings = cli_settings(
        gpu=gpu, gpus=gpus, gpu_type=gpu_type, trainer_ratio=trainer_ratio, tp=tp, nodes=nodes,
        name=name,
        ref=ref, local_code=local_code, use_local_code=use_local_code, timeout=timeout,
        retries=retries, trainer_config=trainer_config,
        orchestrator_config=orchestrator_config, inference_config=inference_config,
        sets=sets or [],
    )
    if backend:
        from primerl_modal.core.profile import Setting

        settings.append(Setting("backend.kind", backend, "--backend"))
    if explain and not dry_run:
        raise UsageError("--explain goes with --dry-run", "add --dry-run")
    plan, resolved = plan_profile(profile, settings, pass_env=pass_env or (),
                                  prices="try" if dry_run else "launch")
    # prime-rl of the 2025-10 layout has no --dry-run (and checks its GPUs while validating)
    plan = replace(plan, preflight=not no_preflight and plan.dialect == "current")
    from primerl_modal.hub import plan_with_hub

    plan = plan_with_hub(plan)  # a model size prm's table does not know: the Hub, bounded
    require_pass_env(plan.pass_env)
    if dry_run:
        from primerl_modal.ui import console

        if json_out:
            console.print_json(plan.to_json())
            return
        from primerl_modal.ui.plan_view import explain as explain_view
        from primerl_modal.ui.plan_view import render

        console.out().print(render(plan))
        if explain:
            console.out().print(explain_view(resolved))
        return
    require_fit(plan.fit, force)
    for w in plan.warnings:
        from primerl_modal.ui.console import warn

        warn(w)
    from primerl_modal.commands import launch

    require_outputs(plan.backend, plan.outputs_root)
    launch.launch_plan(plan, detach=detach, json_out=json_out)


def require_fit(fit: Fit, force: bool) -> None:
    """Refuse a launch whose model's weights alone cannot fit the GPUs, unless ``force``;
    warn of any other doubt (the estimate is an estimate, docs/fit.md).

    Raises PlanError (the fit's refusal, with GPUs that would fit) without ``force``.
    """
    from primerl_modal.ui.console import warn

    refusal = fit.refusal()
    if refusal and not force:
        raise refusal
    warning = f"--force: launching anyway: {refusal.message}" if refusal else fit.warning()
    if warning:
        warn(f"memory: {warning}")


def require_pass_env(names: tuple[str, ...]) -> None:
    """Every `--env` variable is set here (a dry run says so too, not only a launch).

    Raises PrmError naming the first one that is not.
    """
    import os

    for name in names:
        if name not in os.environ:
            raise PrmError(f"--env {name}: {name} is not set in this shell",
                           f"export {name}=... first, or drop --env {name}")


def require_outputs(backend: str, outputs_root: str) -> None:
    """A local outputs folder exists or can be made, before anything of a run is written.

    Raises PrmError saying why it cannot.
    """
    if backend != "local":
        return
    import os
    from pathlib import Path

    fix = "set [local] outputs_dir to a folder you can write (or --set local.outputs_dir=PATH)"
    try:
        Path(outputs_root).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PrmError(f"outputs folder {outputs_root} cannot be created ({e.strerror})",
                       fix) from None
    if not os.access(outputs_root, os.W_OK | os.X_OK):
        raise PrmError(f"outputs folder {outputs_root} is not writable", fix)
