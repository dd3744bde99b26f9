"""Everything prm ships must plan: profiles, examples; and generated docs must be fresh."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from primerl_modal.core import profile_docs
from primerl_modal.paths import PACKAGED_PROFILES

ROOT = Path(__file__).resolve().parents[1]
PROFILES = sorted(p.stem for p in PACKAGED_PROFILES.glob("*.toml") if p.stem != "base")


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


@dataclass(frozen=True)
class Claim:
    """What an example says about its plan (in its comments, examples/README.md or the
    README), checked against the plan prm makes of it."""

    gpu: tuple[str, int, int, int, int, int]  # type, count, trainer, inference, tp, dp
    flags: dict[str, str]  # prime-rl flags and their values in the command line
    backend: str = "modal"
    dialect: str = "current"
    plan: dict[str, Any] = field(default_factory=dict)  # other keys of the plan's JSON


H100_8_TP2 = ("H100", 8, 2, 6, 2, 3)
A100_2 = ("A100-40GB", 2, 1, 1, 1, 1)
CLAIMS = {
    "math-8x.toml": Claim(H100_8_TP2, {
        "--ckpt.interval": "25", "--max-steps": "400", "--trainer.optim.lr": "3e-06"},
        plan={"timeout_s": 12 * 3600, "retries": 3}),
    "qwen3-4b-tp2.toml": Claim(H100_8_TP2, {
        "--deployment.num-train-gpus": "2", "--deployment.num-infer-gpus": "6",
        "--inference.vllm.tensor-parallel-size": "2", "--inference.vllm.data-parallel-size": "3",
        "--ckpt.interval": "25", "--max-steps": "200"},
        plan={"timeout_s": 12 * 3600, "retries": 3, "configs": {
            "config": "configs/basic/wiki-search/rl.toml"}}),
    "hendrycks-math-2025-10.toml": Claim(("H100", 8, 2, 6, 1, 6), {
        "--trainer-gpu-ids": "0,1", "--inference-gpu-ids": "2,3,4,5,6,7",
        "--inference.parallel.dp": "6", "--inference.parallel.tp": "1",
        "--ckpt.interval": "100"}, dialect="2025-10"),
    "local-code-dev.toml": Claim(A100_2, {"--ckpt.interval": "10", "--max-steps": "20"},
                                 plan={"timeout_s": 3600, "retries": 0}),
    "local-backend.toml": Claim(A100_2, {"--max-steps": "20"}, backend="local", plan={
        "launcher": ["uv", "run", "rl"], "workdir": str(ROOT.parent / "prime-rl"),
        "outputs_root": str(Path("~/rl-outputs").expanduser())}),
    "reverse-text-local-config.toml": Claim(A100_2, {"--ckpt.interval": "10",
                                                     "--max-steps": "40"}),
    "qwen3-30b-2node.toml": Claim(("H100", 8, 8, 8, 8, 1), {
        "--deployment.num-train-nodes": "1", "--deployment.num-infer-nodes": "1",
        "--deployment.gpus-per-node": "8", "--ckpt.interval": "100"},
        plan={"timeout_s": 24 * 3600, "retries": 3}),
}
SWEEPS = {"lr-sweep.toml"}
PRIME_RL_CONFIGS = {"reverse-text-rl.toml"}  # uploaded by reverse-text-local-config.toml


def test_every_example_is_checked():
    shipped = {p.name for p in (ROOT / "examples").glob("*.toml")}
    assert shipped == set(CLAIMS) | SWEEPS | PRIME_RL_CONFIGS


@pytest.mark.parametrize("name", sorted(CLAIMS))
def test_example_plans_as_it_says(prm, name):
    claim = CLAIMS[name]
    r = prm("run", str(ROOT / "examples" / name), "--dry-run", "--json")
    assert r.code == 0, r.err
    plan = r.json()
    assert plan["warnings"] == []
    assert (plan["backend"], plan["dialect"]) == (claim.backend, claim.dialect)
    g = plan["gpu"]
    assert (g["type"], g["count"], g["trainer"], g["inference"], g["tp"], g["dp"]) == claim.gpu
    argv = plan["argv"]
    assert {f: argv[argv.index(f) + 1] for f in claim.flags if f in argv} == claim.flags
    assert {k: plan[k] for k in claim.plan} == claim.plan


def test_the_uploaded_config_example_uploads_its_file(prm):
    plan = prm("run", str(ROOT / "examples" / "reverse-text-local-config.toml"), "--dry-run",
               "--json").json()
    (item,) = plan["inputs"]
    assert item["source"] == str(ROOT / "examples" / "reverse-text-rl.toml")
    assert plan["configs"] == {"config": item["path"]} and item["path"] in plan["argv"]


def test_the_lr_sweep_example_is_three_trials_two_at_once(prm):
    r = prm("sweep", str(ROOT / "examples" / "lr-sweep.toml"), "--dry-run", "--json")
    assert r.code == 0, r.err
    sweep = r.json()
    assert (sweep["method"], sweep["max_parallel"], sweep["metric"], sweep["goal"]) == (
        "grid", 2, "reward/mean", "max")
    assert [t["overrides"] for t in sweep["trials"]] == [
        {"trainer.optim.lr": lr} for lr in (1e-6, 3e-6, 1e-5)]


def test_the_readme_profile_is_the_shipped_example():
    """The profile a reader copies from the README is a file that plans (above), as is."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## A profile", 1)[1].split("```toml\n", 1)[1].split("```", 1)[0]
    assert block == (ROOT / "examples" / "math-8x.toml").read_text()


def test_the_quick_start_makes_a_virtual_environment_first():
    quick = (ROOT / "README.md").read_text().split("## Quick start", 1)[1].split("\n## ", 1)[0]
    venv = quick.index("python3 -m venv .venv && . .venv/bin/activate")
    assert venv < quick.index("pip install . && prm run --dry-run")  # .ci/run checks this one
    assert venv < quick.index('pip install ".[test]" && python -m pytest')


def test_configs_in_the_checkout_is_not_the_installed_package():
    """`./configs` is where a user's profiles go: saving one there from the checkout must not
    write into prm's own shipped profiles (it used to be a symlink to them)."""
    configs = ROOT / "configs"
    assert not configs.is_symlink()
    assert PACKAGED_PROFILES.resolve() not in (configs.resolve(), *configs.resolve().parents)


def test_profiles_doc_is_fresh():
    assert (ROOT / "docs" / "profiles.md").read_text() == profile_docs.render()
