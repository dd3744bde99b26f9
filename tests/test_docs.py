"""The documentation stays true: the generated command reference matches the live CLI,
every link points at a file that exists, and every example plans."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import typer

from primerl_modal import cli_docs
from primerl_modal.cli import app

ROOT = Path(__file__).resolve().parents[1]
CLI_MD = ROOT / "docs" / "cli.md"
EXAMPLES = ROOT / "examples"
MARKDOWN = sorted([ROOT / "README.md", ROOT / "CHANGELOG.md", *(ROOT / "docs").glob("*.md"),
                   *EXAMPLES.glob("*.md")])
_FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def test_cli_reference_is_fresh():
    assert CLI_MD.read_text(encoding="utf-8") == cli_docs.render(), (
        f"docs/cli.md is stale; regenerate it with `{cli_docs.REGENERATE}`")


def test_every_command_is_in_the_cli_reference():
    text = CLI_MD.read_text(encoding="utf-8")
    root = typer.main.get_command(app)
    ctx = root.context_class(root, info_name="prm")
    names = [n for n in root.list_commands(ctx) if not root.get_command(ctx, n).hidden]
    assert {"run", "logs", "ls", "show", "pull", "stop", "sweep"} <= set(names)
    for name in names:
        assert f"\n## prm {name}\n" in text, (
            f"prm {name} is missing from docs/cli.md; regenerate it with "
            f"`{cli_docs.REGENERATE}`")
    for path, _ in cli_docs.tree()[0]:
        assert f"\n## {path}\n" in text, f"{path} is missing from docs/cli.md"
    assert "\n## prm sweep ls\n" in text and "\n## prm sweep show\n" in text


def test_reference_matches_what_prm_prints(prm, monkeypatch):
    """Each section is byte for byte what `--help` prints in an 80+ column terminal."""
    monkeypatch.setenv("COLUMNS", "100")
    for path, text in cli_docs.tree()[0]:
        r = prm(*path.split()[1:], "--help")
        assert r.code == 0, r.err
        assert r.out == text + "\n", f"`{path} --help` differs from docs/cli.md"


def test_hidden_commands_are_left_out():
    parts, hidden = cli_docs.tree()
    assert "prm sweep start" in hidden
    assert all(path not in hidden for path, _ in parts)


def _links(path: Path) -> list[str]:
    text = _FENCE.sub("", path.read_text(encoding="utf-8"))
    text = re.sub(r"`[^`\n]*`", "", text)  # inline code is not a link
    return _LINK.findall(text)


@pytest.mark.parametrize("md", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_to_existing_files(md):
    broken = []
    for target in _links(md):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a URL (https:, mailto:) or an anchor in the same page
        file = target.split("#", 1)[0]
        if not (md.parent / file).exists():
            broken.append(target)
    assert not broken, f"{md.relative_to(ROOT)} links to missing files: {broken}"


def test_the_docs_map_links_every_doc():
    index = (ROOT / "docs" / "index.md").read_text(encoding="utf-8")
    for doc in (ROOT / "docs").glob("*.md"):
        if doc.name != "index.md":
            assert f"({doc.name})" in index, f"docs/index.md does not link {doc.name}"


def _kind(path: Path) -> str:
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    if "extends" in data or "experiment" in data:  # math-8x.toml stands alone: no extends
        return "profile"
    if "profile" in data:
        return "sweep"
    return "input"


SWEEPS = sorted(p for p in EXAMPLES.glob("*.toml") if _kind(p) == "sweep")


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_example_sweep_plans(prm, path):
    r = prm("sweep", str(path), "--dry-run", "--json")
    assert r.code == 0, r.err
    assert r.json()["total"]["trials"] >= 1


def test_every_example_is_planned_somewhere():
    """Profiles (with extends or an [experiment]) plan in test_shipped, sweeps above; any
    other TOML must be a config file that an example profile uploads."""
    tomls = sorted(EXAMPLES.glob("*.toml"))
    assert SWEEPS, "examples/ should hold a sweep file"
    texts = "\n".join(p.read_text(encoding="utf-8") for p in tomls)
    for path in tomls:
        if _kind(path) == "input":
            assert f"./{path.name}" in texts, f"{path.name} is neither planned nor used"


def test_examples_readme_lists_every_example():
    readme = (EXAMPLES / "README.md").read_text(encoding="utf-8")
    for path in EXAMPLES.glob("*.toml"):
        assert f"({path.name})" in readme, f"examples/README.md does not list {path.name}"
