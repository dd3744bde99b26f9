"""Exact command lines for both prime-rl dialects (PRIME_RL.md)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from primerl_modal.core.cmdline import override_args, wandb_run_id
from primerl_modal.core.gpus import catalogue
from primerl_modal.core.plan import Layout, build_plan, plan_from_json
from primerl_modal.core.profile import SearchPath, Setting, parse_set, resolve
from primerl_modal.errors import PlanError
from primerl_modal.paths import PACKAGED_PROFILES

NOW = datetime(2026, 11, 29, 10, 30, 5, tzinfo=UTC)


def plan_of(name: str, *settings: Setting, cwd: Path = Path("/nonexistent"), **kw):
    search = SearchPath(cwd, Path("/nonexistent"), PACKAGED_PROFILES)
    return build_plan(resolve(name, search, settings), catalogue(), now=NOW, token="beef", **kw)


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
        "/opt/prime-rl/.venv/bin/rl", "@", "configs/basic/hendrycks-sanity/rl.toml",
        "--deployment.num-train-gpus", "2", "--deployment.num-infer-gpus", "6",
        "--inference.vllm.tensor-parallel-size", "2", "--inference.vllm.data-parallel-size", "3",
        "--output-dir", "/outputs", "--run.name", rid,
        "--monitors.wandb.project", "prime-rl", "--monitors.wandb.name", rid,
        "--ckpt.interval", "25", "--ckpt.keep-last", "3",
        "--trainer.optim.lr", "1e-05", "--max-steps", "50",
    ]


def test_2025_10_argv_exact():
    plan = plan_of("hendrycks-math-1b-2025-10")
    rid = "hendrycks-math-1b-261129-103005-beef"
    assert list(plan.argv) == [
        "/opt/prime-rl/.venv/bin/rl",
        "--trainer", "@", "configs/hendrycks_math/1b/rl/train.toml",
        "--orchestrator", "@", "configs/hendrycks_math/1b/rl/orch.toml",
        "--inference", "@", "configs/hendrycks_math/1b/rl/infer.toml",
        "--trainer-gpu-ids", "0,1", "--inference-gpu-ids", "2,3,4,5,6,7",
        "--inference.parallel.dp", "6", "--inference.parallel.tp", "1",
        "--output-dir", f"/outputs/{rid}",
        "--wandb.project", "prime-rl", "--wandb.name", rid,
        "--trainer.wandb.id", wandb_run_id(rid, "trainer"),
        "--orchestrator.wandb.id", wandb_run_id(rid, "orchestrator"),
        "--ckpt.interval", "100", "--ckpt.keep", "3",
    ]
    assert plan.warnings == ()
    assert "PRL_RUN_ID" not in plan.env  # that launcher does not read it


def test_2025_10_a_ref_that_is_not_a_commit_is_still_a_warning():
    plan = plan_of("hendrycks-math-1b-2025-10", Setting("prime_rl.ref", "main", "--ref"))
    assert any("not a commit" in w for w in plan.warnings)


def test_2025_10_wandb_entity_and_group_travel_as_environment():
    plan = plan_of("hendrycks-math-1b-2025-10", parse_set("wandb.entity=team"),
                   parse_set("wandb.group=math"))
    assert not any(a.startswith(("--wandb.entity", "--wandb.group")) for a in plan.argv)
    assert plan.env["WANDB_ENTITY"] == "team" and plan.env["WANDB_RUN_GROUP"] == "math"


def test_current_wandb_entity_and_group_are_flags():
    plan = plan_of("reverse-text", parse_set("wandb.entity=team"), parse_set("wandb.group=g"))
    argv = list(plan.argv)
    assert argv[argv.index("--monitors.wandb.entity") + 1] == "team"
    assert argv[argv.index("--monitors.wandb.group") + 1] == "g"
    assert "WANDB_ENTITY" not in plan.env


def test_wandb_ids_are_stable_per_run_distinct_per_component_and_hex():
    a, b = wandb_run_id("run-1"), wandb_run_id("run-2")
    assert a == wandb_run_id("run-1") and a != b
    assert len({a, wandb_run_id("run-1", "trainer"), wandb_run_id("run-1", "orchestrator")}) == 3
    assert len(a) == 32 and set(a) <= set("0123456789abcdef")


def test_current_run_gets_a_prl_run_id_that_a_resume_keeps():
    plan = plan_of("reverse-text")
    assert plan.env["PRL_RUN_ID"] == wandb_run_id(plan.run_id)
    again = plan_from_json(plan.to_json(with_input_texts=True))
    assert again.env["PRL_RUN_ID"] == plan.env["PRL_RUN_ID"]


def test_env_may_not_set_the_run_id_prm_derives():
    with pytest.raises(PlanError, match="PRL_RUN_ID is set by prm"):
        plan_of("reverse-text", parse_set("env.PRL_RUN_ID=x"))


def test_env_overrides_the_backends_defaults():
    plan = plan_of("reverse-text", parse_set("env.HF_HOME=/cache/hf"))
    assert plan.env["HF_HOME"] == "/cache/hf" and plan.env["UV_NO_SYNC"] == "1"


def test_2025_10_ckpt_override_needs_ckpt_interval():
    with pytest.raises(PlanError, match="resets the config files' \\[ckpt\\] interval"):
        plan_of("hendrycks-math-1b-2025-10", parse_set("prime_rl.ckpt_interval=0"),
                parse_set("ckpt.something=2"))
    plan = plan_of("hendrycks-math-1b-2025-10", parse_set("prime_rl.ckpt_keep_last=2"))
    assert plan.argv[-4:] == ("--ckpt.interval", "100", "--ckpt.keep", "2")


def test_2025_10_without_ckpt_interval_warns_that_a_resume_changes_it():
    plan = plan_of("hendrycks-math-1b-2025-10", parse_set("prime_rl.ckpt_interval=0"))
    assert "--ckpt.interval" not in plan.argv
    assert any("--ckpt.resume-step" in w for w in plan.warnings)


@pytest.mark.parametrize("key", ["trainer.wandb.id", "orchestrator.wandb.id",
                                 "ckpt.resume_step", "ckpt.keep"])
def test_2025_10_keys_prm_manages_are_refused(key):
    with pytest.raises(PlanError, match="is set by prm"):
        plan_of("hendrycks-math-1b-2025-10", parse_set(f"{key}=1"))


def test_local_backend_keeps_uv_run_in_the_users_checkout():
    plan = plan_of("reverse-text", layout=Layout("local", "/tmp/out", "/tmp/prime-rl"))
    assert plan.argv[:3] == ("uv", "run", "rl") and plan.workdir == "/tmp/prime-rl"
    assert (plan.cpu, plan.memory_mb) == (None, None)
    assert set(plan.env) == {"PRL_RUN_ID"}
    assert plan.cost.cpu_per_hour_usd == plan.cost.memory_per_hour_usd == 0


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
    assert plan.argv[1:3] == ("@", item.path)


def test_missing_local_config_is_a_plan_error(tmp_path):
    (tmp_path / "exp.toml").write_text('[prime_rl]\nconfig = "./missing.toml"\n')
    with pytest.raises(PlanError, match="cannot be read"):
        plan_of(str(tmp_path / "exp.toml"))


def test_cost_per_hour_and_worst_case():
    plan = plan_of("hendrycks-sanity", Setting("modal.timeout", "6h", "--timeout"))
    gpu, cpu, memory = 8 * 3.95, 32 * 0.04716, 128 * 0.007992  # 4 cores + 16 GiB per GPU
    assert (plan.cpu, plan.memory_mb) == (32.0, 128 * 1024)
    assert plan.cost.gpu_per_hour_usd == pytest.approx(gpu, abs=1e-4)
    assert plan.cost.cpu_per_hour_usd == pytest.approx(cpu, abs=1e-4)
    assert plan.cost.memory_per_hour_usd == pytest.approx(memory, abs=1e-4)
    assert plan.cost.per_hour_usd == pytest.approx(gpu + cpu + memory, abs=1e-4)
    assert plan.cost.max_usd == pytest.approx((gpu + cpu + memory) * 6 * 4, abs=0.01)


def test_modal_cpu_and_memory_override_the_per_gpu_defaults():
    plan = plan_of("reverse-text", parse_set("modal.cpu=12"), parse_set("modal.memory=65536"))
    assert (plan.cpu, plan.memory_mb) == (12.0, 65536)
    assert plan.cost.cpu_per_hour_usd == pytest.approx(12 * 0.04716, abs=1e-4)
    assert plan.cost.memory_per_hour_usd == pytest.approx(64 * 0.007992, abs=1e-4)
    with pytest.raises(PlanError, match="must be positive"):
        plan_of("reverse-text", parse_set("modal.cpu=0"))


def test_plan_json_round_trips_and_reads_plans_of_earlier_versions():
    plan = plan_of("reverse-text", parse_set("prime_rl.image=ghcr.io/x/prime-rl:commit-"
                                             + "a" * 40 + "-amd64"))
    data = plan.to_json(with_input_texts=True)
    assert plan_from_json(data) == plan
    old = {**data, "cost": {"per_hour_usd": 4.2, "max_usd": 33.6},
           "image": {"base": plan.base_image, "repo": plan.repo, "ref": plan.ref,
                     "local_code": None}}
    back = plan_from_json(old)
    assert back.prebuilt_image is None and back.uv_version == plan.uv_version
    assert (back.cost.per_hour_usd, back.cost.gpu_per_hour_usd, back.cost.max_usd) == (
        4.2, 4.2, 33.6)
