"""`prm init` writes a commented profile that plans; `prm doctor` reports each check as ok,
problem (with its fix) or not checked, offline and against the fake Modal server."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest
import typer
from conftest import SENTINEL

from primerl_modal import cli
from primerl_modal.commands.doctor import doctor
from primerl_modal.commands.init import init
from primerl_modal.commands.run import run
from primerl_modal.core.schema import BY_DOTTED
from primerl_modal.paths import PACKAGED_PROFILES
from primerl_modal.planning import plan_profile

SRC = Path(__file__).resolve().parents[1] / "src"
BASE = PACKAGED_PROFILES / "base.toml"

# The same wiring cli.py does, for a subprocess (and for this module, in the fixture below).
WIRED = (
    "import sys, typer\n"
    "from primerl_modal import cli\n"
    "from primerl_modal.commands.doctor import doctor\n"
    "from primerl_modal.commands.init import init\n"
    "app = typer.Typer(pretty_exceptions_enable=False, rich_markup_mode=None)\n"
    "app.command()(doctor)\n"
    "app.command()(init)\n"
    "cli.app = app\n"
    "sys.exit(cli.run_cli(sys.argv[1:]))\n"
)


@pytest.fixture(autouse=True)
def wired(monkeypatch: pytest.MonkeyPatch) -> None:
    """prm's error boundary (cli.run_cli) over an app with doctor, init and run."""
    app = typer.Typer(pretty_exceptions_enable=False, rich_markup_mode=None)
    app.command()(doctor)
    app.command()(init)
    app.command(no_args_is_help=False)(run)
    monkeypatch.setattr(cli, "app", app)


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    """No Modal token anywhere, and a server address where nothing answers."""
    import modal.config

    for key in list(os.environ):
        if key.startswith("MODAL_"):
            monkeypatch.delenv(key)
    env = {"MODAL_CONFIG_PATH": str(tmp_path / "no-such-modal.toml"),
           "MODAL_SERVER_URL": "http://127.0.0.1:9"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(modal.config, "_user_config", {})  # read at import: forget any file
    return env


def rows(result: Any) -> dict[str, dict[str, Any]]:
    return {c["check"]: c for c in result.json()}


# ---------------------------------------------------------------------------------- init


def test_init_writes_a_profile_that_plans(prm):
    r = prm("init", "demo")
    assert r.code == 0, r.err
    assert "configs/demo.toml" in r.err and "prm run demo --dry-run" in r.err
    plan, profile = plan_profile("demo")
    assert profile.path == (Path.cwd() / "configs" / "demo.toml").resolve()
    assert plan.gpu.modal_gpu == "A100-40GB:2" and plan.run_id.startswith("demo-")
    assert plan.secrets == ("wandb", "huggingface") and not plan.warnings
    r = prm("run", "demo", "--dry-run", "--json")
    assert r.code == 0, r.err
    assert r.json()["configs"]["config"] == "configs/basic/reverse-text/rl.toml"


def test_init_refuses_to_overwrite_without_force(prm):
    assert prm("init", "demo").code == 0
    path = Path("configs/demo.toml")
    path.write_text(path.read_text() + "# my edit\n")
    r = prm("init", "demo", "--gpu", "H100:8")
    assert r.code == 1
    assert "configs/demo.toml" in r.err and "--force" in r.err
    assert len(r.err.strip().splitlines()) == 1 and "Traceback" not in r.err
    assert "# my edit" in path.read_text()
    r = prm("init", "demo", "--gpu", "H100:8", "--force", "--json")
    assert r.code == 0, r.err
    assert r.json() == {"path": str(path.resolve())}
    assert "# my edit" not in path.read_text()
    data = tomllib.loads(path.read_text())
    assert data["gpu"]["type"] == "H100" and data["gpu"]["count"] == 8
    assert plan_profile("demo")[0].gpu.modal_gpu == "H100:8"


def test_init_comments_every_key_from_the_schema(prm):
    assert prm("init").code == 0
    text = Path("configs/my-experiment.toml").read_text()
    lines = text.splitlines()
    assert any("trainer_ratio" in line and "# " in line for line in lines)
    assert BY_DOTTED["gpu.trainer_ratio"].help in text  # the schema's help text
    assert "# max_steps = 100" in text
    data = tomllib.loads(text)
    assert data["prime_rl"]["ref"] == "559b44772e471d1538537b8805cc77f3824a5e64"
    assert data["experiment"]["name"] == "my-experiment"
    assert data["env"] == {} and data["overrides"] == {}
    assert set(data) == {"experiment", "prime_rl", "gpu", "modal", "wandb", "env", "overrides"}


def test_init_from_a_local_file(prm):
    r = prm("init", "demo", "--from", "./missing.toml")
    assert r.code == 1 and "missing.toml" in r.err
    assert not Path("configs").exists()  # nothing written, not even the folder
    Path("mine").mkdir()
    Path("mine/rl.toml").write_text("max_steps = 30\n")
    r = prm("init", "demo", "--from", "./mine/rl.toml")
    assert r.code == 0, r.err
    assert tomllib.loads(Path("configs/demo.toml").read_text())["prime_rl"]["config"] == (
        "../mine/rl.toml")
    plan, _ = plan_profile("demo")
    (item,) = plan.inputs
    assert item.text == "max_steps = 30\n"


def test_init_rejects_bad_input_and_writes_nothing(prm):
    assert prm("init", "My Exp").code == 1
    r = prm("init", "demo", "--gpu", "H100:1")  # one GPU cannot hold trainer and inference
    assert r.code == 1 and "Traceback" not in r.err
    assert not Path("configs").exists()
    r = prm("init", "demo", "--dir", "elsewhere")
    assert r.code == 0, r.err
    assert Path("elsewhere/demo.toml").is_file()
    assert "prm run elsewhere/demo.toml --dry-run" in r.err


# -------------------------------------------------------------------------------- doctor


def test_doctor_offline_without_a_token_is_quick_and_says_why(prm_home, offline):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODAL_")}
    env |= offline | {"PRM_HOME": str(prm_home), "PYTHONPATH": str(SRC)}
    started = time.monotonic()
    r = subprocess.run([sys.executable, "-c", WIRED, "doctor", "--json"], env=env,
                       capture_output=True, text=True, timeout=30)
    elapsed = time.monotonic() - started
    assert elapsed < 5, elapsed
    assert r.returncode == 1, r.stderr
    checks = {c["check"]: c for c in json.loads(r.stdout)}
    token = checks["modal token"]
    assert token["status"] == "problem" and "modal setup" in token["fix"]
    for name in ("modal server", "volume prime-rl-outputs", "volume prime-rl-cache",
                 "secret wandb", "secret huggingface"):
        assert checks[name]["status"] == "skipped"
        assert checks[name]["detail"] == "not checked: no token"
    assert checks["modal client"]["status"] == "ok"
    assert [c for c in checks.values() if c["status"] == "problem"] == [token]


def test_doctor_table(prm, offline):
    r = prm("doctor")
    assert r.code == 1
    assert "modal token" in r.out and "problem" in r.out and "not checked" in r.out
    assert "modal setup" in r.out
    assert "1 problem" in r.err


def test_doctor_gives_up_on_a_silent_server(prm_home, tmp_path):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)  # accepts connections (the kernel does) and never answers
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MODAL_")}
        env |= {"PRM_HOME": str(prm_home), "PYTHONPATH": str(SRC),
                "MODAL_CONFIG_PATH": str(tmp_path / "none.toml"),
                "MODAL_SERVER_URL": f"http://127.0.0.1:{listener.getsockname()[1]}",
                "MODAL_TOKEN_ID": "ak-test", "MODAL_TOKEN_SECRET": "as-test"}
        started = time.monotonic()
        r = subprocess.run([sys.executable, "-c", WIRED, "doctor", "--json", "--timeout", "1"],
                           env=env, capture_output=True, text=True, timeout=30)
        elapsed = time.monotonic() - started
    finally:
        listener.close()
    assert elapsed < 6, elapsed
    assert r.returncode == 1
    checks = {c["check"]: c for c in json.loads(r.stdout)}
    assert checks["modal token"]["status"] == "ok"
    assert "as-test" not in r.stdout and "ak-test" not in r.stdout
    assert checks["modal server"]["status"] == "problem"
    assert checks["secret wandb"]["status"] == "skipped"
    assert "Traceback" not in r.stderr


def test_doctor_names_a_missing_secret_with_the_command_that_creates_it(prm, modal_env):
    del modal_env.secrets["huggingface"]
    r = prm("doctor", "--json")
    assert r.code == 1
    checks = rows(r)
    secret = checks["secret huggingface"]
    assert secret["status"] == "problem"
    assert "modal secret create huggingface HF_TOKEN=..." in secret["fix"]
    assert checks["secret wandb"]["status"] == "ok"
    assert checks["modal server"]["status"] == "ok"
    assert [c["check"] for c in r.json() if c["status"] == "problem"] == ["secret huggingface"]


def test_doctor_names_a_volume_of_the_wrong_version_with_the_fix(prm, modal_env):
    from modal_proto import api_pb2

    modal_env.register_volume("prime-rl-cache", api_pb2.VOLUME_FS_VERSION_V1)
    r = prm("doctor", "--json")
    assert r.code == 1
    volume = rows(r)["volume prime-rl-cache"]
    assert volume["status"] == "problem" and "not a v2 volume" in volume["detail"]
    assert "modal volume create --version 2" in volume["fix"]
    assert rows(r)["volume prime-rl-outputs"]["status"] == "ok"


def test_doctor_against_a_healthy_account_passes(prm, modal_env):
    r = prm("doctor", "--json")
    assert r.code == 0, r.out
    checks = rows(r)
    assert all(c["status"] == "ok" for c in checks.values()), checks
    assert "first run" in checks["volume prime-rl-outputs"]["detail"]  # not created yet: fine
    modal_env.volume_path("prime-rl-cache").mkdir(parents=True)
    r = prm("doctor", "--profile", "reverse-text")
    assert r.code == 0, r.out
    assert SENTINEL not in r.out and "as-test" not in r.out
    r = prm("doctor", "--profile", "no-such-profile", "--json")
    assert r.code == 1
    assert rows(r)["profile no-such-profile"]["status"] == "problem"


def test_doctor_reports_a_broken_profile_by_name(prm, offline, prm_home):
    Path("configs").mkdir()
    Path("configs/broken.toml").write_text('[gpu]\ncount = "two"\n')
    Path("configs/base.toml").write_text(BASE.read_text())
    Path("configs/child.toml").write_text(
        'extends = "base.toml"\n[prime_rl]\nconfig = "configs/basic/reverse-text/rl.toml"\n')
    (prm_home / "profiles").mkdir()
    (prm_home / "profiles" / "mine.toml").write_text("[gpu]\ncount = 9\n")
    r = prm("doctor", "--json")
    assert r.code == 1
    checks = rows(r)
    broken = checks["profile broken (./configs)"]
    assert broken["status"] == "problem" and "count" in broken["detail"]
    assert checks["profile child (./configs)"]["status"] == "ok"
    assert checks["profile base (./configs)"]["status"] == "ok"  # a base: planned via child
    assert checks["profile mine ($PRM_HOME/profiles)"]["status"] == "problem"


def test_doctor_reports_a_corrupt_index_and_a_bad_price_table(prm, offline, prm_home):
    (prm_home / "index.sqlite3").write_bytes(b"this is not a database" * 100)
    (prm_home / "prices.toml").write_text("H100 = \n")
    r = prm("doctor", "--json")
    assert r.code == 1
    checks = rows(r)
    index = checks["run index"]
    assert index["status"] == "problem"
    assert "unreadable" in index["detail"] and "mv " in index["fix"]
    assert checks["price table"]["status"] == "problem"
    assert checks["prm home"]["status"] == "ok"
