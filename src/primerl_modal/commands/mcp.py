"""`prm mcp`: serve prm's operations as MCP tools over stdio."""

from __future__ import annotations

from typing import Annotated

import typer


def mcp(
    max_usd: Annotated[
        float,
        typer.Option("--max-usd", metavar="USD", min=0.01,
                     help="The most one launch may cost at worst: a run over it is refused, "
                          "and every run and sweep is launched with a budget within it."),
    ] = 100.0,
) -> None:
    """Serve prm as an MCP server over stdio, for an assistant (Claude Desktop, an IDE, ...).

    Tools: plan_run, run, list_runs, show_run, logs, pull, stop, plan_sweep, sweep,
    sweep_status. Each runs this prm with --json and returns its JSON; an error is prm's
    one line. No tool blocks on a run: run and sweep return at once with an id. The server
    uses this environment (PRM_HOME, the Modal token) and speaks only MCP on stdout.
    Spending is capped: run refuses a plan whose worst case (every attempt to its timeout)
    is over --max-usd, and every launch carries guard.max_usd (a sweep, its max_usd) within
    it. See docs/mcp.md for a client configuration.

    Examples:

    \b
      prm mcp                      # started by an MCP client, not by hand
      prm mcp --max-usd 25         # no launch that could cost more than $25
      PRM_HOME=~/rl/prm prm mcp    # with another run index and profiles
    """
    try:
        from primerl_modal import mcp_server
    except ImportError as e:
        from primerl_modal.errors import PrmError

        raise PrmError(f"prm mcp needs the MCP Python SDK 2.x ({e})",
                       "pip install 'mcp>=2'") from None
    mcp_server.serve(max_usd)
