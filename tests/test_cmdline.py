"""Exact command lines for both prime-rl dialects (PRIME_RL.md)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from primerl_modal.core.cmdline import override_args
from primerl_modal.core.gpus import catalogue
from primerl_modal.core.plan import build_plan
from primerl_modal.core.profile import SearchPath, Setting, parse_set, resolve
from primerl_modal.errors import PlanError
from primerl_modal.paths import PACKAGED_PROFILES

NOW = datetime(2026, 11, 29, 10, 30, 5, tzinfo=UTC)


def plan_of(name: str, *settings: Setting, cwd: Path = Path("/nonexistent")):
    search = SearchPath(cwd, Path("/nonexistent"), PACKAGED_PROFILES)
    return build_plan(resolve(name, search, settings), catalogue(), now=NOW, token="beef")


def test_current_argv_exact():
    plan = plan_of(
        "hendrycks-sanity",
        Setting("gpu.count", 8, "--gpus"), Setting("gpu.trainer_ratio", 0.25, "--trainer-ratio"),
        Setting("gpu.tp", 2, "--tp"),
        parse_set("trainer.optim.lr=1e-5"), parse_set("max_steps=50"),
    )
    rid = "hendrycks-sanity-261129-103005-beef"
    assert plan.run_id == rid
    assert list(plan.argv) == [
        "uv", "run", "rl", "@", "configs/basic/hendrycks-sanity/rl.toml",
        "--deployment.num-train-gpus", "2", "--deployment.num-infer-gpus", "6",
        "--inference.vllm.tensor-parallel-size", "2", "--inference.vllm.data-parallel-size", "3",
        "--output-dir", "/outputs", "--run.name", rid,
        "--monitors.wandb.project", "prime-rl", "--monitors.wandb.name", rid,
        "--ckpt.interval", "25",
        "--trainer.optim.lr", "1e-05", "--max-steps", "50",
    ]


def test_2025_10_argv_exact():
    plan = plan_of("hendrycks-math-1b-2025-10")
    rid = "hendrycks-math-1b-261129-103005-beef"
    assert list(plan.argv) == [
        "uv", "run", "rl",
        "--trainer", "@", "configs/hendrycks_math/1b/train.toml",
        "--orchestrator", "@", "configs/hendrycks_math/1b/orch.toml",
        "--inference", "@", "configs/hendrycks_math/1b/infer.toml",
        "--trainer-gpu-ids", "0,1", "--inference-gpu-ids", "2,3,4,5,6,7",
        "--inference.parallel.dp", "6", "--inference.parallel.tp", "1",
        "--output-dir", f"/outputs/{rid}",
        "--wandb.project", "prime-rl", "--wandb.name", rid,
    ]
    assert any("not a commit" in w for w in plan.warnings)


def test_overrides_render_kebab_bool_and_lists():
    args = override_args(
        {"trainer": {"model": {"compile": False, "use_liger": True}},
         "orchestrator": {"env_ids": ["a", "b"], "batch_size": 128}},
        "current",
    )
    assert args == [
        "--no-trainer.model.compile", "--trainer.model.use-liger",
        "--orchestrator.env-ids", '["a","b"]', "--orchestrator.batch-size", "128",
    ]


@pytest.mark.parametrize("key", ["deployment.num_train_gpus", "run.name", "output_dir", "clean"])
def test_overriding_a_key_prm_manages_is_refused_with_the_prm_key(key):
    with pytest.raises(PlanError, match="is set by prm"):
        plan_of("reverse-text", parse_set(f"{key}=1"))


def test_local_config_is_uploaded_into_the_runs_meta_dir(tmp_path):
    (tmp_path / "my.toml").write_text("max_steps = 5\n")
    (tmp_path / "exp.toml").write_text(
        f'extends = "{PACKAGED_PROFILES}/base.toml"\n[prime_rl]\nconfig = "./my.toml"\n'
    )
    plan = plan_of(str(tmp_path / "exp.toml"))
    (item,) = plan.inputs
    assert item.path == f"/outputs/_prm/{plan.run_id}/inputs/config.toml"
    assert item.text == "max_steps = 5\n"
    assert plan.argv[3:5] == ("@", item.path)


def test_missing_local_config_is_a_plan_error(tmp_path):
    (tmp_path / "exp.toml").write_text('[prime_rl]\nconfig = "./missing.toml"\n')
    with pytest.raises(PlanError, match="cannot be read"):
        plan_of(str(tmp_path / "exp.toml"))


def test_cost_per_hour_and_worst_case():
    plan = plan_of("hendrycks-sanity", Setting("modal.timeout", "6h", "--timeout"))
    assert plan.cost.per_hour_usd == pytest.approx(8 * 3.95)
    assert plan.cost.max_usd == pytest.approx(8 * 3.95 * 6 * 4)
