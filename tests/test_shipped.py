"""Everything prm ships must plan: profiles, examples; and generated docs must be fresh."""

from __future__ import annotations

from pathlib import Path

import pytest

from primerl_modal.core import profile_docs
from primerl_modal.paths import PACKAGED_PROFILES

ROOT = Path(__file__).resolve().parents[1]
PROFILES = sorted(p.stem for p in PACKAGED_PROFILES.glob("*.toml") if p.stem != "base")
EXAMPLES = sorted(p for p in (ROOT / "examples").glob("*.toml") if "extends" in p.read_text())


def test_the_issue_names_ship():
    assert set(PROFILES) >= {"reverse-text", "wiki-search", "wordle", "hendrycks-sanity",
                             "hendrycks-math-1b-2025-10"}


@pytest.mark.parametrize("name", PROFILES)
def test_shipped_profile_plans(prm, name):
    r = prm("run", name, "--dry-run", "--json")
    assert r.code == 0, r.err
    assert r.json()["profile"] == name
    assert r.json()["warnings"] == []  # every shipped ref is a full commit


def test_hendrycks_sanity_is_4_plus_4_on_8():
    from primerl_modal.planning import plan_profile

    g = plan_profile("hendrycks-sanity")[0].gpu
    assert (g.count, g.trainer, g.inference) == (8, 4, 4)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_plans(prm, path):
    r = prm("run", str(path), "--dry-run", "--json")
    assert r.code == 0, r.err
    assert r.json()["warnings"] == []


def test_configs_dir_is_the_shipped_profiles():
    assert (ROOT / "configs").resolve() == ROOT / "src" / "primerl_modal" / "profiles"
    shipped = {p.name: p.read_text() for p in PACKAGED_PROFILES.glob("*.toml")}
    assert shipped == {p.name: p.read_text() for p in (ROOT / "configs").glob("*.toml")}


def test_profiles_doc_is_fresh():
    assert (ROOT / "docs" / "profiles.md").read_text() == profile_docs.render()
