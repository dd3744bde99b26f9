"""The command tree as a whole: help, --json everywhere data is printed, lazy imports."""

from __future__ import annotations

import subprocess
import sys

import typer

from primerl_modal.cli import app

DATA_COMMANDS = {"run", "ls", "logs", "show", "pull", "stop", "doctor", "init"}


def test_every_data_command_has_json():
    command = typer.main.get_command(app)
    for name, sub in command.commands.items():  # type: ignore[attr-defined]
        if name in DATA_COMMANDS:
            assert any("--json" in p.opts for p in sub.params), f"prm {name} lacks --json"


def test_every_option_has_help_and_every_command_examples():
    command = typer.main.get_command(app)
    for name, sub in command.commands.items():  # type: ignore[attr-defined]
        assert "Examples:" in (sub.help or ""), f"prm {name} has no Examples block"
        for p in sub.params:
            if p.param_type_name == "option":
                assert getattr(p, "help", None), f"prm {name} {p.opts} has no help"


def test_help_imports_nothing_heavy():
    code = ("import sys\nfrom primerl_modal.cli import run_cli\nrun_cli(['--help'])\n"
            "heavy = {'modal', 'asyncio', 'sqlite3', 'rich.console', 'primerl_modal.core.plan'}\n"
            "print(sorted(heavy & set(sys.modules)), file=sys.stderr)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert r.stderr.strip() == "[]", r.stderr
