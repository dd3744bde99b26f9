"""Options shared by commands (kept free of heavy imports: every command module loads it)."""

from __future__ import annotations

from typing import Annotated

import typer

from primerl_modal.ui import complete

JsonOption = Annotated[
    bool, typer.Option("--json", help="Print machine-readable JSON instead of a table.")
]

RunArg = Annotated[
    str, typer.Argument(help="Run id (or a unique prefix).", autocompletion=complete.run_ids)
]
