"""State that must never break prm: a damaged index, a read-only $PRM_HOME, garbage in a
run's status.json or plan.json, huge failure lines. Through the CLI, as a user meets them."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import wait_for

from primerl_modal.backends.base import apply_status, record_from_stored
from primerl_modal.core.shapes import clean
from primerl_modal.core.status import ALL, FAILURE_LINES, LINE_CHARS
from primerl_modal.errors import PrmError
from primerl_modal.run_index import FILE_NAME, RunIndex, RunRecord, open_index

PRM = [sys.executable, "-m", "primerl_modal"]


def launch(prm, profile: Path, *args: str) -> str:
    r = prm("run", str(profile), *args)
    assert r.code == 0, r.err
    return open_index().list()[0].run_id


def checkpointed(index: Path) -> None:
    """Everything in the index's main file (nothing left in its WAL)."""
    db = sqlite3.connect(index)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()


def copy_run(run_id: str, new_id: str, status_json: str, plan_json: str | None = None,
             indexed: str = "RUNNING") -> str:
    """Another run in the index, ``indexed`` as far as the index knows, whose runner is gone
    (the one of ``run_id``, finished) and whose status.json (and plan.json) hold what is
    given."""
    index = open_index()
    record = index.get(run_id)
    meta = Path(record.meta_dir)
    shutil.copytree(meta, meta.parent / new_id)
    (meta.parent / new_id / "status.json").write_text(status_json)
    if plan_json is not None:
        (meta.parent / new_id / "plan.json").write_text(plan_json)
    record.run_id, record.meta_dir, record.status = new_id, str(meta.parent / new_id), indexed
    record.created_at += 1
    index.upsert(record)
    return new_id


GARBAGE = {
    "a-list": "[]",
    "empty": "{}",
    "not-json": "{\"status\": \"RUNN",
    "wrong-status-type": '{"status": 5}',
    "wrong-types-inside": json.dumps({"status": "RUNNING", "progress": [], "history": "x",
                                      "attempts": [1, {"n": "one"}], "attempt": "two",
                                      "runner": {"pid": "abc"}, "launcher_pid": [1]}),
}


def test_garbage_status_files_never_break_ls_and_dead_runners_become_lost(
        prm, local_profile, fast_fake):
    good = launch(prm, local_profile)
    bad = {copy_run(good, f"{good}-{name}", text): name for name, text in GARBAGE.items()}
    r = prm("ls", "--json")
    assert r.code == 0, r.err
    rows = {row["run_id"]: row for row in r.json()}
    assert rows[good]["status"] == "SUCCEEDED" and rows[good]["step"] == [8, 8]
    # unreadable and no runner: LOST, recorded in a status.json that now reads
    assert {run_id: rows[run_id]["status"] for run_id in bad} == dict.fromkeys(bad, "LOST")
    for run_id in bad:
        status = json.loads((Path(open_index().get(run_id).meta_dir) / "status.json")
                            .read_text())
        assert status["status"] == "LOST"
        assert any(h["status"] == "UNKNOWN" and "status.json unreadable" in h["note"]
                   for h in status["history"])
    table = prm("ls")
    assert table.code == 0 and good in table.out and "Traceback" not in table.err
    shown = prm("show", f"{good}-wrong-types-inside")
    assert shown.code == 0, shown.err
    assert "status.json unreadable" in shown.out and "LOST" in shown.out


def test_show_of_a_run_with_garbage_plan_and_status_is_one_screen_not_a_traceback(
        prm, local_profile, fast_fake):
    good = launch(prm, local_profile)
    plan = json.loads((Path(open_index().get(good).meta_dir) / "plan.json").read_text())
    plan["gpu"]["count"] = "eight"
    status = {"status": "SUCCEEDED", "history": [{"status": "[/bold]", "note": 5}, "x"],
              "attempts": [{"n": 1, "started_at": "today", "exit_code": "0"}],
              "failure": {"component": ["trainer"], "lines": "boom"}}
    copy_run(good, f"{good}-plan", json.dumps(status), json.dumps(plan))
    for args in (("show", f"{good}-plan"), ("show", f"{good}-plan", "--json")):
        r = prm(*args)
        assert r.code == 0, r.err
        assert "plan.json unreadable: gpu.count is a string, not an integer" in r.out
    copy_run(good, f"{good}-list", "[]", "[1, 2]")
    r = prm("show", f"{good}-list", "--json")
    assert r.code == 0, r.err
    assert r.json()["problems"] == ["plan.json unreadable: a list, not an object"]


def test_a_live_run_with_an_unreadable_status_is_unknown_with_a_note(
        prm, local_profile, fast_fake, monkeypatch):
    good = launch(prm, local_profile)
    monkeypatch.setenv("FAKE_RL_STEP_SECONDS", "30")  # stays running
    r = prm("run", str(local_profile), "--detach")
    assert r.code == 0, r.err
    live = r.out.strip()
    meta = Path(open_index().get(live).meta_dir)
    wait_for(lambda: json.loads((meta / "status.json").read_text())["status"] == "RUNNING",
             timeout=60, what="the run to start")
    runner = json.loads((meta / "status.json").read_text())["runner"]["pid"]
    os.kill(runner, signal.SIGSTOP)  # alive, but writes nothing over the garbage
    try:
        (meta / "status.json").write_text('{"status": "RUNNING", "progress": {"step": "3"}}')
        rows = {row["run_id"]: row for row in prm("ls", "--json").json()}
        assert rows[live]["status"] == "UNKNOWN" and rows[good]["status"] == "SUCCEEDED"
        table = prm("ls")
        assert re.search(rf"{live} is UNKNOWN: status.json unreadable: progress.step is a "
                         "string, not an integer", " ".join(table.err.split()))
        assert prm("ls", "--status", "unknown", "--json").json()[0]["run_id"] == live
        shown = prm("show", live)
        assert shown.code == 0 and "UNKNOWN" in shown.out and "progress.step" in shown.out
    finally:
        os.kill(runner, signal.SIGCONT)
    assert prm("stop", live).code == 0
    assert open_index().get(live).status == "STOPPED"


def test_failure_lines_are_bounded_in_status_json_and_in_show(prm, local_profile, tmp_path):
    """A launcher that dies after a 10 MB line: status.json keeps at most FAILURE_LINES
    lines of LINE_CHARS, and `prm show` prints them, not megabytes."""
    launcher = tmp_path / "huge.py"
    launcher.write_text("import sys\nfor i in range(200):\n    print('line', i)\n"
                        "print('Error: ' + 'x' * 10_000_000)\nsys.exit(3)\n")
    profile = re.sub(r"^launcher = .*$", f'launcher = ["{sys.executable}", "{launcher}"]',
                     local_profile.read_text(), flags=re.M)
    (tmp_path / "huge.toml").write_text(profile)
    r = prm("run", str(tmp_path / "huge.toml"), "--detach", "--no-preflight")
    assert r.code == 0, r.err
    meta = Path(open_index().get(r.out.strip()).meta_dir)
    status = wait_for(lambda: (s := json.loads((meta / "status.json").read_text()))["status"]
                      == "FAILED" and s, timeout=60, what="the run to fail")
    lines = status["failure"]["lines"]
    assert len(lines) == FAILURE_LINES and lines[-2] == "line 199"
    assert lines[-1].startswith("Error: xxx") and len(lines[-1]) < LINE_CHARS + 20
    # a status.json written before the bound (or by hand) is bounded when read
    status["failure"]["lines"] = ["Error: " + "y" * 3_000_000] * 3 + [f"l{i}" for i in range(99)]
    (meta / "status.json").write_text(json.dumps(status))
    shown = prm("show", r.out.strip())
    assert shown.code == 0, shown.err
    assert "l98" in shown.out and "l48" not in shown.out and len(shown.out) < 50_000
    data = prm("show", r.out.strip(), "--json").json()["status"]["failure"]["lines"]
    assert len(data) == FAILURE_LINES and data[-1] == "l98"


def test_ls_with_a_filter_that_matches_nothing_says_so(prm, local_profile, fast_fake):
    empty = prm("ls")
    assert empty.code == 0 and "no runs yet" in empty.err
    launch(prm, local_profile)
    for args in (("--status", "FAILED"), ("--since", "1s", "--status", "LOST")):
        r = prm("ls", *args)
        assert r.code == 0 and "no runs match" in r.err and "no runs yet" not in r.err


def test_a_damaged_index_page_is_one_line_and_moving_it_aside_loses_nothing(
        prm, prm_home, local_profile, fast_fake):
    """The runs are in a custom outputs folder: a fresh index finds them again all the same
    (every outputs location prm used is remembered outside the index)."""
    run_id = launch(prm, local_profile)
    assert not Path(open_index().get(run_id).outputs).is_relative_to(prm_home)
    index = prm_home / FILE_NAME
    checkpointed(index)
    data = bytearray(index.read_bytes())
    page = 4096
    data[page:] = b"\xa5" * (len(data) - page)  # every page after the first (the schema)
    index.write_bytes(bytes(data))
    for args in (("ls",), ("show", run_id), ("logs", run_id), ("ls", "--status", "failed")):
        r = prm(*args)
        assert r.code == 1, (args, r.err)
        assert len(r.err.strip().splitlines()) == 1 and "Traceback" not in r.err
        assert "is unreadable" in r.err and "move it aside" in r.err
    advice = re.search(r"\((mkdir .*?/broken/)\)", r.err)
    assert advice, r.err
    subprocess.run(advice.group(1), shell=True, check=True)  # as the user would
    assert not index.exists()
    rows = prm("ls", "--all", "--json").json()
    assert [(row["run_id"], row["status"]) for row in rows] == [(run_id, "SUCCEEDED")]


def test_discovery_skips_a_run_with_a_garbage_plan_and_finds_the_others(
        prm, prm_home, local_profile, fast_fake):
    run_id = launch(prm, local_profile)
    copy_run(run_id, f"{run_id}-bad", "{}", json.dumps({"backend": "local", "gpu": []}))
    (prm_home / FILE_NAME).unlink()
    for suffix in ("-wal", "-shm"):
        (prm_home / (FILE_NAME + suffix)).unlink(missing_ok=True)
    r = prm("ls", "--all", "--json")
    assert r.code == 0, r.err
    assert [row["run_id"] for row in r.json()] == [run_id]
    assert "skipped a run" in r.err and f"{run_id}-bad/plan.json unreadable" in r.err


# -- where status.json and plan.json meet the index: total over garbage -----------------

STATUS = {
    "run_id": "r", "status": "FAILED", "attempt": 2, "started_at": 1.0, "ended_at": 9.5,
    "updated_at": 9.5, "exit_code": 1, "launcher_pid": 123,
    "runner": {"pid": 5, "host": "h", "start": 77, "boot": "b", "heartbeat_at": 2.0},
    "progress": {"metric": "reward/mean", "max_steps": 8, "step": 3, "step_time": 2.0,
                 "value": 0.5, "ckpt_step": 2},
    "failure": {"component": "trainer", "exit_code": 1, "lines": ["Traceback", "Error"]},
    "history": [{"status": "PENDING", "at": 1.0, "attempt": 0, "note": "launched"},
                {"status": "FAILED", "at": 9.5, "attempt": 2, "note": "trainer failed"}],
    "attempts": [{"n": 1, "started_at": 1.0, "ended_at": 5.0, "outcome": "RECOVERING",
                  "exit_code": 1, "resumed": False, "resumed_from": None, "argv": ["rl"]},
                 {"n": 2, "started_at": 6.0, "ended_at": 9.5, "outcome": "FAILED",
                  "exit_code": 1, "resumed": True, "resumed_from": 2, "signal": "SIGTERM"}],
}
GARBAGE_VALUES = [None, 0, -1.5, True, "x", "", [], [1, "a"], {}, {"k": [None]}]


def every_path(value, path=()):
    yield path
    items = value.items() if isinstance(value, dict) else (
        enumerate(value) if isinstance(value, list) else ())
    for key, item in items:
        yield from every_path(item, (*path, key))


def replaced(doc, path, new):
    if not path:
        return new
    doc = copy.deepcopy(doc)
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = new
    return doc


def wrong_types(record: RunRecord) -> list[str]:
    found: list[str] = []
    clean(record, RunRecord, "", found)
    return found


@pytest.fixture
def plan_json(prm) -> dict:
    r = prm("run", "reverse-text", "--dry-run", "--json")
    assert r.code == 0, r.err
    return r.json()


def test_apply_status_is_total_over_garbage(plan_json):
    base = record_from_stored(plan_json, None, "vol", "plan.json")
    assert apply_status(copy.deepcopy(base), STATUS).status == "FAILED"
    for path in every_path(STATUS):
        for value in GARBAGE_VALUES:
            record = apply_status(copy.deepcopy(base), replaced(STATUS, path, value))
            assert record.status in ALL and not wrong_types(record), (path, value)
            if record.status == "UNKNOWN":
                assert record.note.startswith("status.json unreadable: ")


def test_show_renders_any_garbage_in_status_json(prm, local_profile, fast_fake):
    """A FAILED run (not refreshed: final) shows its failure lines, attempts and history
    whatever status.json holds in their place."""
    good = launch(prm, local_profile)
    run_id = copy_run(good, f"{good}-shown", "{}", indexed="FAILED")
    status_path = Path(open_index().get(run_id).meta_dir) / "status.json"
    (status_path.parent / "plan.json").unlink()  # no plan panel: a quicker show
    shown = ("progress", "failure", "history", "attempts")  # what show reads of the file
    for path in [p for p in every_path(STATUS) if p[:1] in [(k,) for k in shown]]:
        for value in (None, "[/bold]"):  # null; a string (and markup) in place of anything
            status_path.write_text(json.dumps(replaced(STATUS, path, value)))
            r = prm("show", run_id)
            assert r.code == 0 and run_id in r.out, (path, value, r.err)


def test_record_from_stored_is_a_record_or_one_clear_error_for_any_garbage(plan_json):
    assert record_from_stored(plan_json, STATUS, "vol", "p").step == 3
    for path in every_path(plan_json):
        for value in GARBAGE_VALUES:
            try:
                record = record_from_stored(replaced(plan_json, path, value), STATUS, "vol",
                                            "vol: _prm/r/plan.json")
            except PrmError as e:
                assert e.message.startswith("vol: _prm/r/plan.json unreadable: "), e.message
            else:
                assert not wrong_types(record), (path, value)


# -- a read-only $PRM_HOME ---------------------------------------------------------------

@pytest.fixture
def read_only(prm_home: Path) -> Iterator[list[str]]:
    """The command prefix that runs prm with $PRM_HOME read-only. Root writes through file
    modes, so for root the folder is made a read-only mount, in a mount namespace of that
    command alone."""
    if os.geteuid() != 0:
        modes = {p: p.stat().st_mode for p in [prm_home, *prm_home.rglob("*")]}
        for p, mode in modes.items():
            p.chmod(mode & ~0o222)
        yield []
        for p, mode in modes.items():
            p.chmod(mode)
        return
    probe = subprocess.run(["unshare", "--mount", "true"], capture_output=True, timeout=60) \
        if shutil.which("unshare") else None
    if probe is None or probe.returncode != 0:
        pytest.skip("running as root without mount namespaces: cannot make a read-only home")
    yield ["unshare", "--mount", "sh", "-c",
           'mount --bind "$0" "$0" && mount -o remount,ro,bind "$0" "$0" && exec "$@"',
           str(prm_home)]


def test_read_only_commands_work_on_a_read_only_home(prm, prm_home, local_profile, fast_fake,
                                                     read_only, tmp_path):
    run_id = launch(prm, local_profile)
    index = RunIndex(prm_home / FILE_NAME)
    index.update(run_id, status="RUNNING")  # the index has not seen the end: ls refreshes
    index.close()
    checkpointed(prm_home / FILE_NAME)
    for suffix in ("-wal", "-shm"):  # as after the last prm exits
        (prm_home / (FILE_NAME + suffix)).unlink(missing_ok=True)
    dest = tmp_path / "pulled"

    def ro(*args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([*read_only, *PRM, *args], capture_output=True, text=True,
                              timeout=120, env={**os.environ, "PRM_HOME": str(prm_home)})
        assert done.returncode == 0, (args, done.stderr)
        assert "Traceback" not in done.stderr and "move it aside" not in done.stderr
        return done

    listing = ro("ls", "--json")
    assert [(r["run_id"], r["status"]) for r in json.loads(listing.stdout)] == [
        (run_id, "SUCCEEDED")]
    assert listing.stderr.count("read-only") <= 1
    assert json.loads(ro("show", run_id, "--json").stdout)["run"]["status"] == "SUCCEEDED"
    assert "Training finished" in ro("logs", run_id, "--tail", "0").stdout
    ro("pull", run_id, str(dest), "--only", "logs")
    assert any(dest.rglob("*.log"))
    assert open_index().get(run_id).status == "RUNNING"  # nothing was written
