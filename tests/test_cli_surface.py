"""The command tree as a whole: help, --json everywhere data is printed, lazy imports."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
import typer

from primerl_modal.cli import app

# Every command of the tree, by path, is one or the other: a new command must be placed.
DATA_COMMANDS = {"run", "ls", "logs", "show", "cost", "pull", "stop", "doctor", "init",
                 "rollouts", "metrics", "rm", "prune", "sweep start", "sweep ls",
                 "sweep show"}  # `prm sweep FILE` is `sweep start`
OTHER_COMMANDS = {"mcp"}  # serves MCP over stdio: prints no data of its own


def commands(group: Any, prefix: str = "") -> dict[str, Any]:
    """Every command under ``group``, hidden ones included, by its path below `prm`."""
    found: dict[str, Any] = {}
    for name, sub in group.commands.items():
        path = f"{prefix}{name}"
        if hasattr(sub, "commands"):
            found |= commands(sub, f"{path} ")
        else:
            found[path] = sub
    return found


def groups(group: Any, prefix: str = "") -> dict[str, Any]:
    """Every group under ``group`` (not itself), by its path below `prm`."""
    found: dict[str, Any] = {}
    for name, sub in group.commands.items():
        if hasattr(sub, "commands"):
            found |= {f"{prefix}{name}": sub, **groups(sub, f"{prefix}{name} ")}
    return found


TREE = commands(typer.main.get_command(app))


def test_every_command_is_known_and_every_data_command_has_json():
    assert set(TREE) == DATA_COMMANDS | OTHER_COMMANDS
    for path in sorted(DATA_COMMANDS):
        assert any("--json" in p.opts for p in TREE[path].params), f"prm {path} lacks --json"


@pytest.mark.parametrize("args", [
    ["ls"], ["sweep", "ls"], ["show", "nope"], ["logs", "nope"], ["pull", "nope"],
    ["stop", "nope"], ["rollouts", "nope"], ["metrics", "nope"], ["rm", "nope"],
    ["prune", "nope", "--keep-last", "1"], ["sweep", "show", "nope"], ["run", "--dry-run"],
    ["sweep", "reverse-text", "--grid", "max_steps=2,4", "--dry-run"], ["init", "demo"],
], ids=" ".join)
def test_every_data_command_answers_json_with_json(prm, args):
    """Through the CLI: data, or the error object, and nothing else on stdout."""
    r = prm(*args, "--json")
    data = r.json()
    assert (r.code == 0) != (isinstance(data, dict) and set(data) == {"error"}), (r.code, data)


def test_every_option_has_help_and_every_command_examples():
    root = typer.main.get_command(app)
    for path, sub in {**TREE, **groups(root)}.items():
        assert "Examples:" in (sub.help or ""), f"prm {path} has no Examples block"
        for p in sub.params:
            if p.param_type_name == "option":
                assert getattr(p, "help", None), f"prm {path} {p.opts} has no help"


def test_help_imports_nothing_heavy():
    code = ("import sys\nfrom primerl_modal.cli import run_cli\nrun_cli(['--help'])\n"
            "heavy = {'modal', 'asyncio', 'sqlite3', 'rich.console', 'primerl_modal.core.plan'}\n"
            "print(sorted(heavy & set(sys.modules)), file=sys.stderr)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert r.stderr.strip() == "[]", r.stderr


def test_every_help_prints_its_examples_one_per_line():
    """No command's --help shows a literal \\b or runs its examples together (a docstring
    whose \\b was escaped loses click's verbatim block)."""
    import re

    from primerl_modal import cli_docs

    for path, text in cli_docs.tree()[0]:
        assert "\\b" not in text, f"`{path} --help` shows a literal \\b"
        if "Examples:" not in text:
            continue
        block = text.split("Examples:", 1)[1].strip("\n").split("\n\n", 1)[0]
        for line in block.splitlines():
            assert line.startswith("    "), f"`{path} --help`: {line!r} is not verbatim"
            commands = re.findall(r"(?:^|\s)prm\s", line)
            assert len(commands) == 1, f"`{path} --help` runs examples together: {line!r}"

