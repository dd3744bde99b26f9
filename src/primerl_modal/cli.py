"""The `prm` command: wires the commands and is the one boundary for errors."""

from __future__ import annotations

import os
import sys

import typer

from primerl_modal.commands.doctor import doctor
from primerl_modal.commands.init import init
from primerl_modal.commands.logs import logs
from primerl_modal.commands.ls import ls
from primerl_modal.commands.mcp import mcp
from primerl_modal.commands.pull import pull
from primerl_modal.commands.run import run
from primerl_modal.commands.show import show
from primerl_modal.commands.stop import stop
from primerl_modal.commands.sweep import app as sweep_app
from primerl_modal.errors import PrmError

app = typer.Typer(
    name="prm",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        from primerl_modal import __version__

        typer.echo(f"prm {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print prm's version."
    ),
) -> None:
    """Run prime-rl reinforcement-learning experiments on Modal's serverless GPUs.

    Profiles (TOML) describe a run; prm plans the GPU split, builds the prime-rl
    command line, launches it on Modal, and keeps its logs and outputs.
    """


app.command(no_args_is_help=False)(run)
app.command()(logs)
app.command()(ls)
app.command()(show)
app.command()(pull)
app.command()(stop)
app.add_typer(sweep_app, name="sweep")
app.command()(doctor)
app.command()(init)
app.command()(mcp)


def run_cli(argv: list[str] | None = None) -> int:
    """Run prm with ``argv`` and return its exit code. PrmError becomes one line on
    stderr and exit 1 (usage errors 2); no user error shows a traceback."""
    try:
        app(args=argv, prog_name="prm")
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except PrmError as e:
        if os.environ.get("PRM_TRACEBACK"):
            raise
        sys.stderr.write(f"prm: error: {e.one_line()}\n")
        return e.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("prm: interrupted\n")
        return 130
    return 0


def main() -> None:
    sys.exit(run_cli())
