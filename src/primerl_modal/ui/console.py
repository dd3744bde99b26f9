"""The two consoles: data to stdout, everything else to stderr."""

from __future__ import annotations

import json
import sys
from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

    from primerl_modal.errors import PrmError


@cache
def out() -> Console:
    from rich.console import Console

    console = Console(highlight=False, soft_wrap=False)
    if not console.is_terminal:  # piped or captured: do not squeeze tables into 80 columns
        console.width = max(console.width, 200)
    return console


@cache
def err() -> Console:
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def print_json(data: Any) -> None:
    """Indented for a person at a terminal; compact (and faster) for a program in a pipe."""
    indent = 2 if sys.stdout.isatty() else None
    sys.stdout.write(json.dumps(data, indent=indent, default=str) + "\n")


def print_json_error(error: PrmError) -> None:
    """An error under ``--json``: ``{"error": {"kind", "message", "hint"}}`` on stdout, so a
    program finds it where it reads the data (and knows it from data by the one key)."""
    print_json({"error": error.to_json()})


def warn(message: str) -> None:
    err().print(f"[yellow]warning:[/] {message}", markup=True, highlight=False)
