from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from primerl_modal.cli import run_cli
from primerl_modal.paths import PACKAGED_PROFILES

pytest_plugins = ["fake_modal.fixture"]  # the fake_modal fixture (tests/fake_modal)


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


@pytest.fixture(autouse=True)
def prm_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own $PRM_HOME and runs from an empty working directory."""
    home = tmp_path_factory.mktemp("prm-home")
    work = tmp_path_factory.mktemp("work")
    monkeypatch.setenv("PRM_HOME", str(home))
    monkeypatch.delenv("PRM_TRACEBACK", raising=False)
    # no test reaches the Hugging Face Hub: a model outside prm's table is looked up here
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    # nor a developer's own Modal account (the fake_modal fixture sets its own token)
    monkeypatch.setenv("MODAL_CONFIG_PATH", str(home / "no-modal-config.toml"))
    for name in ("MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET", "PRM_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(work)
    return home


@pytest.fixture
def prm(capsys: pytest.CaptureFixture[str]) -> Iterator[Any]:
    """Call prm in-process, through the same error boundary as the console script."""

    def call(*args: str) -> Result:
        capsys.readouterr()
        code = run_cli(list(args))
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    yield call


FAKE_RL = Path(__file__).parent / "fake_prime_rl" / "rl.py"


def wait_for(predicate: Any, timeout: float = 20.0, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout``."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A stand-in prime-rl checkout holding the configs the shipped profiles name."""
    root = tmp_path / "prime-rl"
    current = root / "configs" / "basic" / "reverse-text" / "rl.toml"
    current.parent.mkdir(parents=True)
    current.write_text("max_steps = 8\n")
    legacy = root / "configs" / "hendrycks_math" / "1b" / "rl"
    legacy.mkdir(parents=True)
    for name in ("train", "orch", "infer"):
        (legacy / f"{name}.toml").write_text("max_steps = 6\n" if name == "orch" else "")
    return root


@pytest.fixture
def fast_fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Quick fake steps, and a file where the fake launcher records each argv."""
    record = tmp_path / "launcher-calls.jsonl"
    monkeypatch.setenv("FAKE_RL_STEP_SECONDS", "0.03")
    monkeypatch.setenv("FAKE_RL_RECORD", str(record))
    return record


@pytest.fixture
def local_profile(tmp_path: Path, checkout: Path) -> Path:
    """A profile that runs reverse-text on the local backend with the fake launcher."""
    import sys

    path = tmp_path / "local-rt.toml"
    path.write_text(
        'extends = "{base}"\n'
        "[experiment]\nname = \"lrt\"\n"
        '[prime_rl]\nconfig = "configs/basic/reverse-text/rl.toml"\nckpt_interval = 2\n'
        '[gpu]\ntype = "H100"\ncount = 2\n'
        '[backend]\nkind = "local"\n'
        '[local]\nprime_rl_dir = "{checkout}"\noutputs_dir = "{outputs}"\n'
        'launcher = ["{python}", "{fake}"]\n'
        "[overrides]\nmax_steps = 8\n".format(
            base=PACKAGED_PROFILES / "base.toml",
            checkout=checkout, outputs=tmp_path / "outputs", python=sys.executable, fake=FAKE_RL,
        )
    )
    return path


SENTINEL = "wandb-sentinel-5f3c9a1e77"


@pytest.fixture
def modal_env(fake_modal: Any, checkout: Path, fast_fake: Path) -> Any:
    """A fake Modal account with the default secrets, and containers that run the fake
    launcher in the stand-in checkout."""
    fake_modal.secrets["wandb"] = {"WANDB_API_KEY": SENTINEL}
    fake_modal.secrets["huggingface"] = {"HF_TOKEN": "hf-not-a-real-token"}
    fake_modal.grace_s = 10
    fake_modal.mount_env = {"PRM_OUTPUTS_DIR": "/outputs"}
    fake_modal.extra_env = {
        "PRM_WORKDIR": str(checkout),
        "PRM_LAUNCHER": json.dumps([sys.executable, str(FAKE_RL)]),
        "FAKE_RL_STEP_SECONDS": "0.03",
        "FAKE_RL_RECORD": str(fast_fake),
    }
    return fake_modal


def only_function(fake: Any) -> Any:
    """The one function runs run on (the preflight's CPU function beside it aside)."""
    (fn,) = [f for f in fake.functions.values() if f["function_name"] != "preflight_remote"]
    return fn


def launched(prm: Any, *args: str) -> str:
    r = prm("run", *args, "--detach")
    assert r.code == 0, r.err
    return r.out.strip()


def finished(fake: Any, run_id: str) -> Any:
    from primerl_modal.run_index import open_index

    rec = open_index().get(run_id)
    fake.wait_call(rec.call_id, timeout=60)
    from primerl_modal.backends.modal_backend import ModalBackend

    (rec,) = ModalBackend(open_index()).refresh([rec])
    return rec


def follow_to_the_end(run_id: str, err_path: Path, now: Any) -> tuple[str, Any]:
    """`prm logs RUN -f --tail 0` in a process of its own: every line it prints, and what
    ``now()`` said right after its first line came (while the run still ran). A follow that
    never ends is killed after two minutes, failing the test instead of hanging it."""
    import subprocess
    import threading

    with err_path.open("w+") as err, subprocess.Popen(
            [sys.executable, "-m", "primerl_modal", "logs", run_id, "-f", "--tail", "0"],
            stdout=subprocess.PIPE, stderr=err, text=True) as proc:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # the stored lines were read: the rest is the live part
        then = now()
        watchdog = threading.Timer(120, proc.kill)
        watchdog.start()
        try:
            rest = proc.stdout.read()
        finally:
            watchdog.cancel()
        code = proc.wait(timeout=60)
        err.seek(0)
        assert code == 0, err.read()
    return first + rest, then


def local_trials_succeed(sweep: Any, count: int, timeout: float = 240.0) -> None:
    """Wait until every trial of a local sweep is SUCCEEDED, reading the trials' own status
    files (cheap, unlike a `prm ls` every 50 ms, which competes for the two cores with the
    trials themselves); a timeout says where each trial stands."""
    import time

    from primerl_modal.runner.state import read_json

    meta = Path(sweep.outputs) / "_prm"
    trials = [f"{sweep.sweep_id}-{i}" for i in range(count)]
    deadline = time.monotonic() + timeout
    while True:
        statuses = {t: read_json(meta / t / "status.json") or {} for t in trials}
        if all(s.get("status") == "SUCCEEDED" for s in statuses.values()):
            return
        if time.monotonic() > deadline:
            where = {t: (s.get("status"), (s.get("history") or [{}])[-1].get("note"))
                     for t, s in statuses.items()}
            raise AssertionError(f"trials not all SUCCEEDED after {timeout:g}s: {where}")
        time.sleep(0.5)
