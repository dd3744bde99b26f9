"""`prm run --dry-run` through the CLI boundary: the issue's acceptance list."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from primerl_modal.core.run_id import is_run_id
from primerl_modal.core.schema import UV_VERSION


def test_default_profile_is_reverse_text_on_two_gpus(prm):
    r = prm("run", "--dry-run")
    assert r.code == 0, r.err
    assert "reverse-text-" in r.out and "A100-40GB:2" in r.out
    assert "nothing launched" in r.out


def test_json_plan_has_the_documented_keys(prm):
    plan = prm("run", "--dry-run", "--json").json()
    for key in ("run_id", "profile", "dialect", "gpu", "argv", "env", "secrets", "volumes",
                "timeout_s", "retries", "cost"):
        assert key in plan
    assert set(plan["gpu"]) >= {"type", "count", "trainer", "inference", "tp", "dp",
                                "trainer_gpu_ids", "inference_gpu_ids"}
    assert plan["gpu"]["trainer"] == 1 and plan["gpu"]["inference"] == 1
    assert plan["argv"][0] == "/opt/prime-rl/.venv/bin/rl"  # installed: no re-sync at start
    assert plan["secrets"] == ["wandb", "huggingface"]
    assert plan["volumes"] == {"/outputs": "prime-rl-outputs", "/cache": "prime-rl-cache"}
    assert set(plan["cost"]) == {"per_hour_usd", "max_usd", "per_hour_breakdown_usd", "source"}
    assert plan["cost"]["source"] == "built-in"  # no token here: no Modal rates
    assert is_run_id(plan["run_id"])


def test_reverse_text_installs_like_prime_rl_and_reserves_cpu_and_memory(prm):
    plan = prm("run", "reverse-text", "--dry-run", "--json").json()
    image = plan["image"]
    assert (image["source"], image["uv"], image["prebuilt"]) == ("build", UV_VERSION, None)
    assert re.fullmatch(r"\d+\.\d+\.\d+", image["uv"])
    assert f"RUN python -m pip install --no-cache-dir uv=={UV_VERSION}" in image["steps"]
    assert ("RUN cd /opt/prime-rl && uv sync --all-extras --all-packages --locked --no-dev"
            in image["steps"])
    sync = next(i for i, s in enumerate(image["steps"]) if "uv sync" in s)
    assert {"ENV UV_COMPILE_BYTECODE=1", "ENV UV_LINK_MODE=copy", "ENV UV_NO_CACHE=1"} <= set(
        image["steps"][:sync])
    assert (plan["cpu"], plan["memory_mb"]) == (8.0, 32768)  # 2 GPUs x (4 cores, 16 GiB)
    parts = plan["cost"]["per_hour_breakdown_usd"]
    assert parts == {"gpu": 4.2, "cpu": 0.3773, "memory": 0.2557}
    assert plan["cost"]["per_hour_usd"] == pytest.approx(sum(parts.values()), abs=1e-4)
    assert plan["env"]["HF_HUB_ETAG_TIMEOUT"] == "500"
    assert plan["env"]["HF_HUB_DOWNLOAD_TIMEOUT"] == "300"


def test_a_prebuilt_image_builds_nothing_and_runs_from_app(prm):
    tag = "ghcr.io/primeintellect-ai/prime-rl:commit-559b44772e471d1538537b8805cc77f3824a5e64-amd64"
    r = prm("run", "reverse-text", "--dry-run", "--json", "--set", f"prime_rl.image={tag}")
    assert r.code == 0, r.err
    plan = r.json()
    assert plan["image"]["source"] == "prebuilt" and plan["image"]["prebuilt"] == tag
    assert plan["image"]["steps"] == []
    assert plan["workdir"] == "/app" and plan["argv"][0] == "/app/.venv/bin/rl"
    assert plan["warnings"] == []
    text = prm("run", "reverse-text", "--dry-run", "--set", f"prime_rl.image={tag}").out
    assert "nothing is built" in text


def test_hendrycks_2025_10_pins_the_commit_its_three_files_come_from(prm):
    plan = prm("run", "hendrycks-math-1b-2025-10", "--dry-run", "--json").json()
    assert plan["image"]["ref"] == "376e295f4c6371a424e4ae5e018510488e4b0354"
    assert re.fullmatch(r"[0-9a-f]{40}", plan["image"]["ref"])
    assert plan["configs"] == {
        "trainer_config": "configs/hendrycks_math/1b/rl/train.toml",
        "orchestrator_config": "configs/hendrycks_math/1b/rl/orch.toml",
        "inference_config": "configs/hendrycks_math/1b/rl/infer.toml",
    }
    assert plan["warnings"] == []


@pytest.mark.parametrize(
    ("extra", "trainer", "inference", "tp", "dp"),
    [([], 2, 6, 1, 6), (["--tp", "2"], 2, 6, 2, 3), (["--trainer-ratio", "0.99"], 7, 1, 1, 1)],
)
def test_hendrycks_split(prm, extra, trainer, inference, tp, dp):
    args = ["run", "hendrycks-sanity", "--dry-run", "--json", "--gpus", "8",
            "--trainer-ratio", "0.25", *extra]
    if "0.99" in extra:
        args.remove("0.25")
        args.remove("--trainer-ratio")
    g = prm(*args).json()["gpu"]
    assert (g["trainer"], g["inference"], g["tp"], g["dp"]) == (trainer, inference, tp, dp)


def test_current_argv_carries_the_plan(prm):
    plan = prm("run", "hendrycks-sanity", "--dry-run", "--json", "--gpus", "8",
               "--trainer-ratio", "0.25", "--set", "trainer.optim.lr=1e-5",
               "--set", "max_steps=50").json()
    argv = plan["argv"]

    def after(flag: str) -> str:
        return argv[argv.index(flag) + 1]

    assert after("--deployment.num-train-gpus") == "2"
    assert after("--deployment.num-infer-gpus") == "6"
    assert after("--inference.vllm.tensor-parallel-size") == "1"
    assert after("--inference.vllm.data-parallel-size") == "6"
    assert after("--output-dir") == "/outputs"
    assert after("--run.name") == plan["run_id"]
    assert after("--trainer.optim.lr") in ("1e-05", "1e-5")
    assert after("--max-steps") == "50"


def test_original_script_flags_are_accepted(prm):
    plan = prm(
        "run", "--dry-run", "--json",
        "--trainer-config", "configs/hendrycks_math/1b/rl/train.toml",
        "--orchestrator-config", "configs/hendrycks_math/1b/rl/orch.toml",
        "--inference-config", "configs/hendrycks_math/1b/rl/infer.toml",
        "--gpu-count", "8", "--trainer-gpu-ratio", "0.25", "--gpu-type", "H100",
        "--experiment-name", "math-1", "--use-local-code",
    ).json()
    assert plan["dialect"] == "2025-10"
    argv = " ".join(plan["argv"])
    assert "--trainer-gpu-ids 0,1 --inference-gpu-ids 2,3,4,5,6,7" in argv
    assert "--inference.parallel.dp 6 --inference.parallel.tp 1" in argv
    assert plan["run_id"].startswith("math-1-")
    assert plan["gpu"]["type"] == "H100"
    assert plan["image"]["local_code"] == str(Path.cwd().resolve())


def test_explain_shows_where_values_came_from(prm):
    r = prm("run", "--dry-run", "--explain", "--gpus", "4", "--set", "max_steps=9")
    assert r.code == 0, r.err
    assert "--gpus" in r.out and "--set" in r.out and "base.toml" in r.out


def test_without_a_modal_token_run_says_modal_setup_fast(tmp_path):
    import os
    import subprocess
    import sys
    import time

    env = {k: v for k, v in os.environ.items() if not k.startswith("MODAL_")}
    env.update(MODAL_CONFIG_PATH=str(tmp_path / "no.toml"),
               MODAL_SERVER_URL="http://127.0.0.1:9")  # never a real server
    start = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "primerl_modal", "run"], env=env,
                       capture_output=True, text=True, timeout=30)
    elapsed = time.monotonic() - start
    assert r.returncode == 1
    assert "modal setup" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert elapsed < 2.0


@pytest.fixture
def profiles(tmp_path: Path) -> Path:
    d = Path.cwd() / "configs"
    d.mkdir()
    (d / "bad.toml").write_text("[gpu]\ncount = 8\ntype = H100\n")
    (d / "cyc-a.toml").write_text('extends = "cyc-b.toml"\n')
    (d / "cyc-b.toml").write_text('extends = "cyc-a.toml"\n')
    (d / "typo.toml").write_text("[moda]\ntimeout = '1h'\n")
    (d / "weird.toml").write_text('[experiment]\nname = "!!!"\n')
    return d


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["--gpu", "H1000:8"], 1, "unknown GPU type 'H1000'"),
        (["--gpu", "H1000:8"], 1, "known types: T4, L4, A10, L40S, A100-40GB"),
        (["--gpu", "H100:9"], 1, "do not fit on one node: at most 8"),
        (["--gpus", "1"], 1, "at least 2 GPUs"),
        (["--trainer-ratio", "1.5"], 1, "between 0 and 1"),
        (["--trainer-ratio", "0"], 1, "between 0 and 1"),
        (["hendrycks-sanity", "--trainer-ratio", "0.25", "--tp", "4"], 1,
         "valid --tp values: 1, 2, 3, 6"),
        (["--timeout", "25h"], 1, "over Modal's 24h limit"),
        (["--timeout", "soon"], 1, "cannot read duration 'soon'"),
        (["bad"], 1, "bad.toml:3:"),
        (["nope"], 1, "profile 'nope' not found (tried"),
        (["cyc-a"], 1, "extends cycle: cyc-a.toml -> cyc-b.toml -> cyc-a.toml"),
        (["typo"], 1, "unknown section [moda] (did you mean 'modal'?)"),
        (["--set", "trainer.optim.lr"], 1, "has no '='"),
        (["--set", "gpu.cnt=3"], 1, "unknown prm key 'gpu.cnt'"),
        (["weird"], 1, "no letters or digits to make a run id"),
        (["--name", "x" * 50], 1, "has room for 44"),
        (["--gpus", "eight"], 2, "Invalid value"),
        (["--no-such-flag"], 2, "No such option"),
    ],
)
def test_bad_input_is_one_line_no_traceback(prm, profiles, args, code, needle):
    r = prm("run", "--dry-run", *args)
    assert r.code == code
    assert needle in r.err
    assert "Traceback" not in r.err and r.out == ""
    if code == 1:
        assert len(r.err.strip().splitlines()) == 1


def test_prices_toml_overrides_cost(prm, prm_home):
    (prm_home / "prices.toml").write_text("A100-40GB = 1.0\nCPU = 0.5\nmemory = 0.25\n")
    plan = prm("run", "--dry-run", "--json").json()
    assert plan["cost"]["per_hour_breakdown_usd"] == {"gpu": 2.0, "cpu": 4.0, "memory": 8.0}
    assert plan["cost"]["per_hour_usd"] == 14.0


def test_profile_from_prm_home(prm, prm_home):
    (prm_home / "profiles").mkdir()
    (prm_home / "profiles" / "mine.toml").write_text(
        '[prime_rl]\nconfig = "configs/x/rl.toml"\n[gpu]\ntype = "H200"\ncount = 4\n'
    )
    plan = prm("run", "mine", "--dry-run", "--json").json()
    assert plan["gpu"]["type"] == "H200" and plan["profile"] == "mine"


MODAL_ONLY = ("retries", "retry", "image", "volumes", "secrets", "Modal gpu", "per attempt",
              "/outputs <-", "$/h")


def test_a_local_plan_claims_only_what_a_local_run_has(prm, local_profile, fast_fake):
    r = prm("run", str(local_profile), "--dry-run")
    assert r.code == 0, r.err
    plan_text = r.out.replace("no retries", "")
    for claim in MODAL_ONLY:
        assert claim not in plan_text, claim
    assert "one attempt, no time limit, no retries" in r.out
    assert "nothing billed: this machine's GPUs (on Modal, 2 x H100 alone would cost" in r.out
    plan = prm("run", str(local_profile), "--dry-run", "--json").json()
    assert (plan["retries"], plan["timeout_s"], plan["secrets"], plan["volumes"]) == (0, 0, [], {})
    assert (plan["cost"]["per_hour_usd"], plan["cost"]["max_usd"]) == (0, 0)
    assert (plan["image"]["source"], plan["image"]["steps"]) == ("checkout", [])
    assert plan["gpu"]["modal"] is None and plan["region"] is None
    r = prm("run", str(local_profile), "--dry-run", "--timeout", "3h", "--retries", "2")
    assert "--timeout is ignored: a local run is one attempt" in r.out
    assert "--retries is ignored" in r.out
    # prm show of the launched run shows the same local plan
    assert prm("run", str(local_profile)).code == 0
    (run_id,) = [r["run_id"] for r in prm("ls", "--json").json()]
    shown = prm("show", run_id)
    assert shown.code == 0, shown.err
    plan_part = shown.out.split("progress")[0].replace("no retries", "")
    for claim in MODAL_ONLY:
        assert claim not in plan_part, claim
    assert "cost      nothing billed: this machine's GPUs" in shown.out


@pytest.mark.parametrize(("args", "limits"), [
    (["--timeout", "24h", "--retries", "0"], "timeout 24h per attempt, no retries"),
    (["--retries", "1"], "1 retry (it resumes from the latest checkpoint)"),
    (["--timeout", "90m", "--retries", "3"],
     "timeout 1h30m per attempt, 3 retries (each resumes from the latest checkpoint)"),
])
def test_modal_limits_read_as_people_write_them(prm, args, limits):
    r = prm("run", "--dry-run", *args)
    assert r.code == 0, r.err
    assert limits in r.out

