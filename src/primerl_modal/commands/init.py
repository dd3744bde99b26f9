"""`prm init`: write a commented starter profile that plans as written."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from primerl_modal.ui.options import JsonOption

if TYPE_CHECKING:
    from tomlkit.items import Table

DEFAULT_NAME = "my-experiment"
DEFAULT_GPU = "A100-40GB:2"
DEFAULT_CONFIG = "configs/basic/reverse-text/rl.toml"
_COMMENT_COLUMN = 30  # trailing comments line up here
_WIDTH = 100  # a comment that would go past this sits on the line above instead


def init(
    name: Annotated[
        str,
        typer.Argument(metavar="NAME",
                       help="Profile name: the file name and the run-id prefix "
                            "(lowercase letters, digits, dashes)."),
    ] = DEFAULT_NAME,
    from_config: Annotated[
        str | None,
        typer.Option("--from", metavar="PRIME_RL_CONFIG",
                     help="prime-rl rl.toml: a path inside prime-rl, or ./local.toml to upload "
                          f"(default: {DEFAULT_CONFIG})."),
    ] = None,
    gpu: Annotated[
        str, typer.Option("--gpu", metavar="TYPE:N", help="GPU type and count, e.g. H100:8.")
    ] = DEFAULT_GPU,
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite the profile if it exists.")
    ] = False,
    directory: Annotated[
        Path | None,
        typer.Option("--dir", metavar="DIR", help="Folder to write into (default: ./configs).",
                     show_default=False),
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Write a commented starter profile, ./configs/NAME.toml, that plans as written.

    Every key carries a comment saying what it does; edit the file, then check the plan
    with `prm run NAME --dry-run` before launching anything.

    Examples:

    \b
      prm init                                # ./configs/my-experiment.toml
      prm init math-8x --gpu H100:8 --from configs/basic/hendrycks-sanity/rl.toml
      prm init mine --from ./rl.toml          # a local prime-rl config, uploaded at launch
      prm init demo --force                   # start demo over
    """
    from primerl_modal.ui import console

    path, run_ref = write_profile(name, from_config=from_config, gpu=gpu, force=force,
                                  directory=directory)
    if json_out:
        console.print_json({"path": str(path)})
    err = console.err()
    err.print(f"wrote {_shown(path)}", markup=False)
    err.print(f"next: prm run {run_ref} --dry-run   # the plan; launches nothing", markup=False)
    err.print(f"      prm run {run_ref}", markup=False)


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def write_profile(name: str, *, from_config: str | None = None, gpu: str = DEFAULT_GPU,
                  force: bool = False, directory: Path | None = None) -> tuple[Path, str]:
    """Write the starter profile ``name`` and return its path and how `prm run` names it.

    Raises PrmError for a bad name or --from, an existing file without ``force``, or a
    profile that would not plan (nothing is written then).
    """
    import os
    import secrets

    from primerl_modal.commands.run import parse_gpu
    from primerl_modal.core.profile import find_profile, is_local_path, read_toml
    from primerl_modal.core.run_id import check_name
    from primerl_modal.errors import PrmError
    from primerl_modal.planning import plan_profile, search_path

    try:
        slug = check_name(name)
    except PrmError as e:
        raise PrmError(e.message.replace("experiment name", "profile name", 1),
                       "use lowercase letters, digits and dashes") from None
    if slug != name:
        raise PrmError(f"profile name {name!r} is not a valid run-id prefix",
                       f"use lowercase letters, digits and dashes, e.g. prm init {slug}")
    cwd = Path.cwd().resolve()
    folder = (cwd / (directory or Path("configs")).expanduser()).resolve()
    target = folder / f"{name}.toml"
    if target.is_dir():
        raise PrmError(f"{_shown(target)} is a folder", "choose another NAME or --dir")
    if target.exists() and not force:
        raise PrmError(f"{_shown(target)} already exists", "pass --force to overwrite it")

    settings = {s.key: s.value for s in parse_gpu(gpu)}
    gpu_type, gpu_count = settings["gpu.type"], settings.get("gpu.count", 2)
    config = from_config or DEFAULT_CONFIG
    if is_local_path(config):
        source = Path(config).expanduser()
        source = (cwd / source).resolve()
        if not source.is_file():
            raise PrmError(f"--from {config}: no such file ({source})",
                           "give a local prime-rl config (./rl.toml), or a path inside prime-rl "
                           f"such as {DEFAULT_CONFIG}")
        read_toml(source)  # a syntax error names file:line now, not at launch
        relative = Path(os.path.relpath(source, folder)).as_posix()
        config = relative if relative.startswith("../") else f"./{relative}"
    elif Path(config).is_file():
        from primerl_modal.ui.console import warn

        warn(f"--from {config} is read as a path inside prime-rl; write ./{config} to upload "
             "the local file instead")

    text = render(name, config=config, gpu_type=gpu_type, gpu_count=gpu_count)
    created = not folder.exists()
    scratch = folder / f".{name}.toml.prm-init-{secrets.token_hex(3)}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        scratch.write_text(text, encoding="utf-8")
    except OSError as e:
        if created and folder.is_dir():
            folder.rmdir()
        raise PrmError(f"cannot write {_shown(target)} ({e.strerror})",
                       "choose a --dir you can write to") from None
    try:
        plan_profile(str(scratch))  # what `prm run NAME --dry-run` will do
        os.replace(scratch, target)
    except BaseException:
        scratch.unlink(missing_ok=True)
        if created and not any(folder.iterdir()):
            folder.rmdir()
        raise
    try:
        found = find_profile(name, search_path(cwd)).resolve() == target
    except PrmError:
        found = False
    return target, name if found else _shown(target)


def _key(table: Table, section: str, key: str, value: Any, note: str | None = None) -> None:
    """``key = value`` with the schema's help text as its comment."""
    import tomlkit

    from primerl_modal.core.schema import BY_DOTTED

    text = note or BY_DOTTED[f"{section}.{key}"].help
    item = tomlkit.item(value)
    line = f"{key} = {item.as_string()}"
    pad = max(2, _COMMENT_COLUMN - len(line))
    if len(line) + pad + 2 + len(text) <= _WIDTH:
        item.comment(text)
        item.trivia.comment_ws = " " * pad
    else:
        table.add(tomlkit.comment(text))
    table.add(key, item)


def _example(table: Table, section: str, line: str, key: str | None = None) -> None:
    """A commented-out example line, with the key's help when it fits."""
    import tomlkit

    from primerl_modal.core.schema import BY_DOTTED

    text = BY_DOTTED[f"{section}.{key}"].help if key else ""
    pad = max(2, _COMMENT_COLUMN - len(line) - 2)
    if text and len(line) + 2 + pad + 2 + len(text) <= _WIDTH:
        table.add(tomlkit.comment(f"{line}{' ' * pad}# {text}"))
        return
    if text:
        table.add(tomlkit.comment(text))
    table.add(tomlkit.comment(line))


def render(name: str, *, config: str, gpu_type: str, gpu_count: int) -> str:
    """The starter profile's text: every section a run needs, each key commented."""
    import tomlkit

    from primerl_modal.core import schema

    doc = tomlkit.document()
    for line in (
        f'prm profile "{name}", written by `prm init`. Check the plan, then launch:',
        f"  prm run {name} --dry-run      # add --explain to see where each value comes from",
        f"  prm run {name}",
        "Flags override this file: --gpu H100:8, --trainer-ratio 0.25, --set max_steps=50.",
        'To share settings with a parent profile: extends = "base.toml" (relative to this file).',
    ):
        doc.add(tomlkit.comment(line))
    doc.add(tomlkit.nl())

    experiment = tomlkit.table()
    _key(experiment, "experiment", "name", name)
    _key(experiment, "experiment", "tags", tomlkit.array())
    doc.add("experiment", experiment)

    prime_rl = tomlkit.table()
    _key(prime_rl, "prime_rl", "ref", schema.PRIME_RL_REF)
    _key(prime_rl, "prime_rl", "config", config)
    _key(prime_rl, "prime_rl", "ckpt_interval", 10)
    _example(prime_rl, "prime_rl", 'local_code = "../prime-rl"', "local_code")
    doc.add("prime_rl", prime_rl)

    gpu = tomlkit.table()
    gpu.add(tomlkit.comment("trainer GPUs = round(count * trainer_ratio), at least 1; the rest "
                            "serve inference (vLLM)."))
    _key(gpu, "gpu", "type", gpu_type)
    _key(gpu, "gpu", "count", gpu_count)
    _key(gpu, "gpu", "trainer_ratio", 0.5)
    _key(gpu, "gpu", "tp", 1)
    doc.add("gpu", gpu)

    modal = tomlkit.table()
    _key(modal, "modal", "timeout", "6h")
    _key(modal, "modal", "retries", schema.BY_DOTTED["modal.retries"].default)
    _key(modal, "modal", "secrets", list(schema.BY_DOTTED["modal.secrets"].default))
    modal.add(tomlkit.comment("create them once: modal secret create wandb WANDB_API_KEY=..."))
    modal.add(tomlkit.comment("                  modal secret create huggingface HF_TOKEN=..."))
    _example(modal, "modal", 'region = "us-east"', "region")
    doc.add("modal", modal)

    wandb = tomlkit.table()
    _key(wandb, "wandb", "project", schema.BY_DOTTED["wandb.project"].default)
    _example(wandb, "wandb", 'entity = "my-team"', "entity")
    doc.add("wandb", wandb)

    env = tomlkit.table()
    env.add(tomlkit.comment("Plain environment variables for the run (never secrets: use "
                            "[modal] secrets or --env KEY)."))
    env.add(tomlkit.comment('HF_HUB_ENABLE_HF_TRANSFER = "1"'))
    doc.add("env", env)

    overrides = tomlkit.table()
    overrides.add(tomlkit.comment("Any prime-rl config key, rendered as --a.b-c flags; e.g.:"))
    overrides.add(tomlkit.comment("max_steps = 100"))
    overrides.add(tomlkit.comment("trainer.optim.lr = 3e-6"))
    doc.add("overrides", overrides)
    return tomlkit.dumps(doc)
