"""Bad input is one line on stderr, never a traceback, and prm never answers silently or
misleadingly: files that are not UTF-8 or are folders, folders that cannot be made, filters
that match nothing the run has, negative counts, a sweep that has already ended."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import typer
from conftest import wait_for

from primerl_modal.cli import app
from primerl_modal.run_index import open_index

LATIN1 = '[experiment]\nname = "caf\xe9"\n'.encode("latin-1")  # 0xe9 at offset 24, line 2


def one_line(r: Any, code: int = 1) -> str:
    """The error of a failed command, checked to be one line and no traceback."""
    assert r.code == code, (r.code, r.out, r.err)
    assert "Traceback" not in r.err
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("prm: error: "), r.err
    return lines[0]


def finished_local_run(prm: Any, profile: Path, *args: str) -> str:
    r = prm("run", str(profile), *args)
    assert r.code == 0, r.err
    (record,) = open_index().list()
    assert record.status == "SUCCEEDED"
    return record.run_id


# ------------------------------------------------------------------------- not UTF-8


def test_a_profile_that_is_not_utf8_is_named_with_the_byte_offset(prm):
    Path("latin.toml").write_bytes(LATIN1)
    line = one_line(prm("run", "./latin.toml", "--dry-run"))
    assert "latin.toml: not UTF-8 text: byte 0xe9 at offset 24 (line 2)" in line


def test_a_sweep_file_that_is_not_utf8_is_named_with_the_byte_offset(prm):
    Path("sweep.toml").write_bytes(b'profile = "reverse-text"\n# \xff\n')
    line = one_line(prm("sweep", "sweep.toml", "--dry-run"))
    assert "sweep.toml: not UTF-8 text: byte 0xff at offset 27 (line 2)" in line


def test_an_uploaded_config_that_is_not_utf8_is_named_with_the_byte_offset(prm):
    Path("local.toml").write_bytes(b"max_steps = 3 # \xff\n")
    Path("mine.toml").write_text('[prime_rl]\nconfig = "./local.toml"\n')
    line = one_line(prm("run", "./mine.toml", "--dry-run"))
    assert "local.toml: not UTF-8 text: byte 0xff at offset 16 (line 1)" in line
    assert open_index().list() == []


def test_doctor_gives_a_profile_that_is_not_utf8_a_row(prm, monkeypatch, tmp_path):
    import modal.config

    for key in ("MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET"):  # nothing remote is tried
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MODAL_CONFIG_PATH", str(tmp_path / "no-modal.toml"))
    monkeypatch.setattr(modal.config, "_user_config", {})
    Path("configs").mkdir()
    Path("configs/latin.toml").write_bytes(LATIN1)
    r = prm("doctor", "--json")
    assert r.code == 1 and "Traceback" not in r.err
    row = {c["check"]: c for c in r.json()}["profile latin (./configs)"]
    assert row["status"] == "problem"
    assert "not UTF-8 text: byte 0xe9 at offset 24" in row["detail"]


# ----------------------------------------------------------- folders, paths that cannot be


def test_a_profile_or_sweep_path_that_is_a_folder_says_so(prm):
    Path("exp").mkdir()
    Path("exp/a.toml").write_text("")
    for args in (["run", "./exp", "--dry-run"], ["run", "exp", "--dry-run"],
                 ["sweep", "exp", "--dry-run"], ["sweep", "exp", "--grid", "x=1", "--dry-run"]):
        line = one_line(prm(*args))
        assert "is a folder" in line and "exp/a.toml" in line, args


def test_init_into_a_folder_that_cannot_be_created(prm):
    Path("a-file").write_text("")
    line = one_line(prm("init", "demo", "--dir", "a-file/sub"))
    assert "cannot write a-file/sub/demo.toml (Not a directory)" in line and "--dir" in line
    assert not Path("configs").exists()


def test_a_local_outputs_dir_that_cannot_be_created_stops_the_launch(prm, local_profile,
                                                                      tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    line = one_line(prm("run", str(local_profile), "--detach",
                        "--set", f"local.outputs_dir={blocker}/out"))
    assert f"outputs folder {blocker}/out cannot be created" in line
    assert "local.outputs_dir" in line
    assert open_index().list() == []


# ------------------------------------------------------------------------------- --env


def test_env_that_is_not_set_is_an_error_in_a_dry_run_and_locally(prm, local_profile,
                                                                  monkeypatch):
    monkeypatch.delenv("PRM_TEST_UNSET", raising=False)
    for args in (["--dry-run"], ["--dry-run", "--json"], ["--detach"]):
        line = one_line(prm("run", str(local_profile), "--env", "PRM_TEST_UNSET", *args))
        assert "--env PRM_TEST_UNSET: PRM_TEST_UNSET is not set in this shell" in line
    assert open_index().list() == []
    monkeypatch.setenv("PRM_TEST_UNSET", "set now")
    r = prm("run", str(local_profile), "--env", "PRM_TEST_UNSET", "--dry-run", "--json")
    assert r.code == 0 and r.json()["pass_env"] == ["PRM_TEST_UNSET"]


# --------------------------------------------------------------------------- prm logs


def test_logs_of_a_component_or_attempt_the_run_does_not_have(prm, local_profile, fast_fake):
    run_id = finished_local_run(prm, local_profile)
    line = one_line(prm("logs", run_id, "-c", "trainr"))
    assert f"{run_id} has no trainr lines" in line
    assert "its components: " in line and "trainer" in line and "runner" in line
    line = one_line(prm("logs", run_id, "--attempt", "9"))
    assert f"{run_id} has no attempt 9" in line and "its attempts: 1" in line
    assert prm("logs", run_id, "-c", "trainer", "--attempt", "1").code == 0


def test_logs_keeps_a_carriage_return_inside_its_line(prm, local_profile, fast_fake):
    """A progress bar's "\\r" written by an older runner stays in its trainer line, with
    its time, rather than becoming a line of its own."""
    run_id = finished_local_run(prm, local_profile)
    log = Path(open_index().get(run_id).meta_dir) / "logs" / "attempt_1.log"
    with open(log, "ab") as f:
        f.write(f"{time.time():.3f} [trainer] bar  40%\rbar 100%\n".encode())
    r = prm("logs", run_id, "-c", "trainer", "--tail", "1")
    assert r.code == 0, r.err
    assert r.out == "[trainer] bar  40%\rbar 100%\n"
    (line,) = [json.loads(x) for x in
               prm("logs", run_id, "-c", "trainer", "--tail", "1", "--json").out.splitlines()]
    assert line["line"] == "bar  40%\rbar 100%" and line["t"] is not None


def _counting_options() -> list[tuple[list[str], str]]:
    """Every command with an option that counts things (--tail, --limit, --max-trials)."""
    found = []

    def walk(command: Any, path: list[str]) -> None:
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, [*path, name])
        for p in getattr(command, "params", []):
            for opt in p.opts:
                if opt in ("--tail", "--limit", "--max-trials"):
                    found.append((path, opt))

    walk(typer.main.get_command(app), [])
    return found


def test_negative_counts_are_usage_errors_on_every_command(prm):
    options = _counting_options()
    assert {opt for _, opt in options} == {"--tail", "--limit", "--max-trials"}
    for path, opt in options:
        r = prm(*path, opt, "-1", "x")
        assert r.code == 2, (path, opt, r.err)
        assert "-1 is not in the range x>=0" in r.err and "Traceback" not in r.err


# ------------------------------------------------------------------------- stop --sweep


def test_stop_of_a_sweep_that_has_ended_says_so(prm, local_profile, fast_fake, tmp_path):
    r = prm("sweep", str(local_profile), "--grid", "max_steps=2", "--max-parallel", "1")
    assert r.code == 0, r.err
    (sweep,) = open_index().sweeps()
    wait_for(lambda: [t["status"] for t in prm("ls", "--sweep", sweep.sweep_id, "--json").json()]
             == ["SUCCEEDED"], timeout=90, what="the sweep's one trial")
    r = prm("stop", "--sweep", sweep.sweep_id)
    assert r.code == 0, r.err
    assert f"sweep {sweep.sweep_id} has ended (1 SUCCEEDED); nothing to stop" in r.err
    (row,) = prm("stop", "--sweep", sweep.sweep_id, "--json").json()
    assert row["status"] == "SUCCEEDED" and "nothing to stop" in row["message"]
    stop_marker = Path(sweep.outputs) / "_prm" / "sweeps" / sweep.sweep_id / "stop-requested"
    assert not stop_marker.exists()


@pytest.mark.parametrize("text", ["x = []", "[parameters.trainer]\nlr = []"])
def test_an_empty_parameter_list_in_a_sweep_is_an_error(prm, text):
    Path("s.toml").write_text(f'profile = "reverse-text"\n[parameters]\nmax_steps = [1, 2]\n'
                              f"{text}\n")
    line = one_line(prm("sweep", "s.toml", "--dry-run"))
    assert "= [] has no values" in line


def test_a_prices_file_that_is_not_utf8_is_one_line(prm, prm_home):
    (prm_home / "prices.toml").write_bytes(b"H100 = 3.5 # \xe9\n")
    r = prm("run", "reverse-text", "--dry-run")
    assert r.code == 1 and r.err.count("\n") == 1 and "prices.toml" in r.err
    assert "Traceback" not in r.err
