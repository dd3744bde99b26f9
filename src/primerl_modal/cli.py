"""The `prm` command: wires the commands and is the one boundary for errors."""

from __future__ import annotations

import os
import sys
from typing import Any

import typer

from primerl_modal.commands.cost import cost
from primerl_modal.commands.doctor import doctor
from primerl_modal.commands.init import init
from primerl_modal.commands.logs import logs
from primerl_modal.commands.ls import ls
from primerl_modal.commands.mcp import mcp
from primerl_modal.commands.metrics import metrics
from primerl_modal.commands.pull import pull
from primerl_modal.commands.rm import prune, rm
from primerl_modal.commands.rollouts import rollouts
from primerl_modal.commands.run import run
from primerl_modal.commands.show import show
from primerl_modal.commands.stop import stop
from primerl_modal.commands.sweep import app as sweep_app
from primerl_modal.errors import PrmError, UsageError
from primerl_modal.ui import console

# The click that typer runs on: the click package, or the copy newer typers carry inside
# (typer._click). Its errors are the ones to catch, so take them from where typer's come from.
_click_errors = sys.modules[typer.BadParameter.__module__]

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
    offline: bool = typer.Option(
        False, "--offline",
        help="Open no connection to plan: prices from the cache, prices.toml or the "
             "built-in table, no model look-ups, no billed figures (also PRM_OFFLINE=1).",
    ),
) -> None:
    """Run prime-rl reinforcement-learning experiments on Modal's serverless GPUs.

    Profiles (TOML) describe a run; prm plans the GPU split, builds the prime-rl
    command line, launches it on Modal, and keeps its logs and outputs.
    """
    if offline:
        from primerl_modal.prices import OFFLINE_ENV

        # the environment, not a flag: what prm starts (`prm mcp`'s runs) is offline too
        os.environ[OFFLINE_ENV] = "1"


app.command(no_args_is_help=False)(run)
app.command()(logs)
app.command()(metrics)
app.command()(rollouts)
app.command()(ls)
app.command()(show)
app.command()(cost)
app.command()(pull)
app.command()(stop)
app.command()(rm)
app.command()(prune)
app.add_typer(sweep_app, name="sweep")
app.command()(doctor)
app.command()(init)
app.command()(mcp)


def asks_for_json(args: list[str]) -> bool:
    """Whether the command line asks for ``--json`` (an option: before any ``--``)."""
    options = args[: args.index("--")] if "--" in args else args
    return "--json" in options


def run_cli(argv: list[str] | None = None) -> int:
    """Run prm with ``argv`` and return its exit code: the one boundary for errors.

    A PrmError becomes one line on stderr and exit 1 (usage errors 2); a command-line error
    found by click keeps click's usage text and exit 2. No user error shows a traceback.
    Under ``--json`` the error is also one object on stdout, ``{"error": {"kind",
    "message", "hint"}}``, where a program (``prm mcp``) reads the data; the stderr line
    stays, because stdout under ``--json`` is usually a pipe and the person at the terminal
    still needs to see what went wrong.
    """
    args = sys.argv[1:] if argv is None else list(argv)
    as_json = asks_for_json(args)
    try:
        # Not standalone: click's own errors come back here instead of exiting inside click.
        result = app(args=args, prog_name="prm", standalone_mode=False)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except _click_errors.ClickException as e:
        e.show()
        if as_json:
            console.print_json_error(_from_click(e))
        return e.exit_code
    except PrmError as e:
        if os.environ.get("PRM_TRACEBACK"):
            raise
        sys.stderr.write(f"prm: error: {e.one_line()}\n")
        if as_json:
            console.print_json_error(e)
        return e.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("prm: interrupted\n")
        return 130
    # typer.Exit(code) comes back as its code; a command that ends normally returns None.
    return result if isinstance(result, int) else 0


def _from_click(e: Any) -> PrmError:
    """A click error as prm's kind of error: a usage error names the help to read."""
    if isinstance(e, _click_errors.UsageError):
        hint = f"see `{e.ctx.command_path} --help`" if e.ctx else None
        return UsageError(e.format_message(), hint)
    return PrmError(e.format_message())


def main() -> None:
    sys.exit(run_cli())
