"""`prm doctor`: check the Modal token, secrets, volumes, profiles and local state."""

from __future__ import annotations

from typing import Annotated

import typer

from primerl_modal.ui.options import JsonOption

_STATUS_TEXT = {"ok": "ok", "problem": "problem", "skipped": "not checked"}
_STATUS_STYLE = {"ok": "green", "problem": "bold red", "skipped": "yellow"}


def doctor(
    profile: Annotated[
        str | None,
        typer.Option("--profile", metavar="NAME",
                     help="Check this profile's volumes and secrets on Modal (default: every "
                          "profile found, plus reverse-text)."),
    ] = None,
    timeout: Annotated[
        float,
        typer.Option("--timeout", metavar="SECONDS", min=0.1,
                     help="Give up on Modal's answers after this long."),
    ] = 10.0,
    json_out: JsonOption = False,
) -> None:
    """Check that prm can run: the modal client and token, Modal's volumes and secrets,
    every profile in ./configs and $PRM_HOME/profiles, prices, $PRM_HOME and the run index.

    Each check says ok, what is wrong and how to fix it, or why it was not checked (no
    Modal token: nothing remote is tried). Exits 1 when any check finds a problem.

    Examples:

    \b
      prm doctor
      prm doctor --profile math-8x            # only that profile's volumes and secrets
      prm doctor --json | jq '.[] | select(.status == "problem")'
    """
    from primerl_modal.checks import run_all
    from primerl_modal.ui import console

    checks = run_all(profile, timeout)
    problems = sum(c.status == "problem" for c in checks)
    if json_out:
        console.print_json([c.to_json() for c in checks])
    else:
        from rich.table import Table
        from rich.text import Text

        table = Table(box=None, header_style="bold", pad_edge=False)
        table.add_column("check", no_wrap=True)
        table.add_column("status", no_wrap=True)
        table.add_column("detail", overflow="fold")
        table.add_column("fix", overflow="fold")
        for c in checks:
            detail = c.detail.removeprefix("not checked: ") if c.status == "skipped" else c.detail
            table.add_row(Text(c.check), Text(_STATUS_TEXT[c.status],
                                              style=_STATUS_STYLE[c.status]),
                          Text(detail), Text(c.fix or ""))  # Text: no markup in "[modal]"
        console.out().print(table)
        skipped = sum(c.status == "skipped" for c in checks)
        summary = (f"{problems} problem{'s' * (problems != 1)}" if problems
                   else "no problems")
        if skipped:
            summary += f", {skipped} not checked"
        console.err().print(summary)
    if problems:
        raise typer.Exit(1)
