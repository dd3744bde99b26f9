"""The preflight: prime-rl's own `rl ... --dry-run` before any GPU is paid for. On Modal, a
CPU function in the run's app and image (the fake server's records say which functions
were called); locally, in the checkout before the runner is detached. The fake launcher
refuses unknown keys as prime-rl's pydantic configs do."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from conftest import finished, launched

from primerl_modal.run_index import open_index
from primerl_modal.runner.preflight import decisive, tail

TYPO = ("--set", "trainer.optim.lrr=1e-6")
REFUSED = "prm: error: preflight: prime-rl's `rl --dry-run` rejected this config (exit 1)"


def called(fake: Any) -> list[dict[str, Any]]:
    """The function of every call the fake server received, in call order."""
    calls = sorted(fake.calls.values(), key=lambda c: c["created_at"])
    return [fake.functions[c["function_id"]] for c in calls]


def launches(record: Path) -> list[list[str]]:
    return [json.loads(x)["argv"] for x in record.read_text().splitlines()]


def value_of(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def nothing_on_the_volume(fake: Any) -> bool:
    meta = fake.volume_path("prime-rl-outputs") / "_prm"
    return not meta.exists() or not any(meta.iterdir())


def test_a_typo_is_refused_on_a_cpu_container_and_no_gpu_function_is_called(
        prm, modal_env, fast_fake):
    r = prm("run", "reverse-text", *TYPO, "--detach")
    assert r.code == 1
    lines = r.err.strip().splitlines()
    assert lines[-3:-1] == ["[preflight] --trainer.optim.lrr",
                            "[preflight] Extra inputs are not permitted (got 1e-06)"]
    assert lines[-1].startswith(REFUSED) and "--no-preflight" in lines[-1]
    (check,) = called(modal_env)  # the dry run, and nothing else
    assert check["function_name"] == "preflight_remote" and check["gpu"] is None
    assert (check["cpu"], check["memory_mb"], check["timeout_s"]) == (2.0, 4096, 600)
    assert check["retries"] is None and check["secrets"] == [] and check["volumes"] == {}
    (app,) = modal_env.apps.values()
    assert app["tags"]["prm-run"].startswith("reverse-text-")
    assert modal_env.wait_app_stopped(app["app_id"])["state"] == "stopped"
    (argv,) = launches(fast_fake)
    assert argv[-1] == "--dry-run" and "--trainer.optim.lrr" in argv
    assert Path(value_of(argv, "--output-dir")).name.startswith("prm-preflight-")
    assert open_index().list() == [] and nothing_on_the_volume(modal_env)


def test_a_good_config_runs_one_cpu_call_then_the_gpu_run(prm, modal_env, fast_fake):
    run_id = launched(prm, "reverse-text")
    assert finished(modal_env, run_id).status == "SUCCEEDED"
    check, run = called(modal_env)
    assert check["function_name"] == "preflight_remote" and check["gpu"] is None
    assert run["function_name"] == "run_remote" and run["gpu"] == "A100-40GB:2"
    assert check["image_id"] == run["image_id"] and check["app_id"] == run["app_id"]
    dry, real = launches(fast_fake)  # recorded in order: the dry run first
    assert dry[-1] == "--dry-run" and "--dry-run" not in real
    # the same command line, its outputs in a scratch folder (gone since), not the run's
    scratch, outputs = value_of(dry, "--output-dir"), value_of(real, "--output-dir")
    assert [a.replace(scratch, outputs) for a in dry[:-1]] == real
    assert scratch != outputs and not Path(scratch).exists()


def test_no_preflight_launches_the_gpu_run_alone(prm, modal_env, fast_fake):
    plan = prm("run", "reverse-text", "--no-preflight", "--dry-run", "--json").json()
    assert plan["preflight"] is False
    assert prm("run", "reverse-text", "--dry-run", "--json").json()["preflight"] is True
    assert "none: a config error is found only once the GPUs run" in prm(
        "run", "reverse-text", "--no-preflight", "--dry-run").out
    # prime-rl of the 2025-10 layout has no dry run: no preflight, and the plan says why
    legacy = prm("run", "hendrycks-math-1b-2025-10", "--dry-run", "--json").json()
    assert legacy["preflight"] is False
    assert "no --dry-run" in prm("run", "hendrycks-math-1b-2025-10", "--dry-run").out
    run_id = launched(prm, "reverse-text", "--no-preflight")
    finished(modal_env, run_id)
    (run,) = called(modal_env)
    assert run["function_name"] == "run_remote"
    assert [fn["function_name"] for fn in modal_env.functions.values()] == ["run_remote"]
    assert all("--dry-run" not in argv for argv in launches(fast_fake))


def test_a_typo_inside_an_uploaded_config_file_is_refused_too(prm, modal_env, tmp_path):
    config = tmp_path / "mine.toml"
    config.write_text("max_steps = 3\n[trainer.optim]\nlrr = 3e-6\n")
    r = prm("run", "reverse-text", "--set", f"prime_rl.config={config}", "--detach", "--json")
    assert r.code == 1
    error = json.loads(r.out.strip().splitlines()[-1])["error"]
    assert error["kind"] == "preflight"
    assert error["message"].splitlines()[-2:] == [
        "--trainer.optim.lrr", "Extra inputs are not permitted (got 3e-06)"]
    assert len(called(modal_env)) == 1 and nothing_on_the_volume(modal_env)


def test_local_a_typo_is_refused_before_anything_is_written_or_detached(
        prm, local_profile, fast_fake, tmp_path):
    r = prm("run", str(local_profile), "--set", "trainer.max_step=100", "--detach")
    assert r.code == 1
    assert "[preflight] --trainer.max-step\n[preflight] Extra inputs are not permitted " \
           "(got 100)" in r.err  # as docs/modal.md shows it
    assert r.err.strip().splitlines()[-1].startswith(REFUSED)
    (argv,) = launches(fast_fake)  # the dry run only: no runner, no launch
    assert argv[-1] == "--dry-run"
    outputs = tmp_path / "outputs"
    assert not outputs.exists() or list(outputs.iterdir()) == []
    assert open_index().list() == []


def test_local_a_good_config_is_dry_run_in_the_checkout_then_launched(
        prm, local_profile, fast_fake, checkout):
    r = prm("run", str(local_profile))
    assert r.code == 0, r.err
    assert "preflight: prime-rl accepted the config" in r.err
    dry, real = launches(fast_fake)
    assert dry[-1] == "--dry-run" and "--dry-run" not in real
    cwd = [json.loads(x)["cwd"] for x in fast_fake.read_text().splitlines()]
    assert cwd == [str(checkout), str(checkout)]
    r = prm("run", str(local_profile), "--no-preflight")
    assert r.code == 0 and "preflight" not in r.err
    assert len(launches(fast_fake)) == 3


def test_what_a_refusal_shows_of_prime_rls_output():
    box = ["2026-11-30 INFO loading config", "\x1b[31m╭─ Config file error ──╮\x1b[0m",
           "│ Failed to validate config:  │", "│ ───────────────────  │",
           "│ 1 validation error for RLConfig │", "│ --trainer.optim.lrr │",
           "│ Extra inputs are not permitted (got '1e-06') │", "╰────────────╯"]
    assert decisive(tail("\n".join(box))) == [
        "Failed to validate config:", "1 validation error for RLConfig",
        "--trainer.optim.lrr", "Extra inputs are not permitted (got '1e-06')"]
    traceback = ["Traceback (most recent call last):", '  File "rl.py", line 1, in <module>',
                 "AssertionError: Number of inference GPUs must be divisible by the tensor "
                 "parallel size"]
    assert decisive(["starting", *traceback]) == traceback[-1:]
    assert decisive(tail(b"loading 10%\rloading 100%\nbad thing\n")) == [
        "loading 100%", "bad thing"]
