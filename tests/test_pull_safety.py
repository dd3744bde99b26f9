"""`prm pull` never harms what it writes into: not the run's own folders, not files the user
changed in DEST, not the terminal; and every bad DEST or remote name is one line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from primerl_modal.run_index import open_index

MANIFEST = ".prm-pull.json"


def finished_run(prm, profile: Path, *args: str) -> str:
    r = prm("run", str(profile), *args)
    assert r.code == 0, r.err
    return open_index().list()[0].run_id


def tree(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every file under ``root``: (inode, size, mtime): a file rewritten in place or
    replaced by a rename shows."""
    return {p.relative_to(root).as_posix(): (p.stat().st_ino, p.stat().st_size,
                                             p.stat().st_mtime_ns)
            for p in root.rglob("*") if p.is_file()}


def files_in(dest: Path) -> set[str]:
    return {p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()}


def statuses(result) -> dict[str, str]:
    return {m["path"]: m["status"] for m in result.json()}


def one_line(err: str) -> str:
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


# --- the run's own folders ------------------------------------------------------------------

@pytest.fixture
def project(local_profile: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project folder whose profile keeps the local outputs in ./outputs, and prm run from
    there: pull's default DEST, ./outputs/RUN-ID, is then the run's own folder."""
    root = tmp_path / "project"
    root.mkdir()
    text = "".join('outputs_dir = "./outputs"\n' if line.startswith("outputs_dir") else line
                   for line in local_profile.read_text().splitlines(keepends=True))
    (root / "local.toml").write_text(text)
    monkeypatch.chdir(root)
    return root


@pytest.mark.parametrize("dest", ["", "outputs/{id}", "outputs/{id}/logs", "outputs",
                                  "outputs/_prm/{id}", "outputs/_prm", "link-to-run/x"])
def test_pull_into_the_runs_own_outputs_is_refused_and_writes_nothing(prm, project, fast_fake,
                                                                      dest):
    run_id = finished_run(prm, project / "local.toml")
    outputs = project / "outputs"
    assert (outputs / run_id / "metrics.jsonl").exists()
    (project / "link-to-run").symlink_to(outputs / run_id)
    before = tree(outputs)
    r = prm("pull", run_id, *([dest.format(id=run_id)] if dest else []))
    assert r.code == 1
    line = one_line(r.err)
    assert "the run's own outputs" in line and "pull into another folder" in line
    assert tree(outputs) == before  # not one file replaced, none added
    assert not (project / "link-to-run" / "x").exists()


def test_a_file_that_would_land_in_the_runs_own_folder_is_refused(prm, project, fast_fake):
    """DEST may hold the outputs (here the project folder holds ./outputs); a run file whose
    path under DEST leads into the run's own folder is refused, the rest is pulled."""
    run_id = finished_run(prm, project / "local.toml")
    outputs = project / "outputs"
    mirror = outputs / run_id / "outputs" / run_id / "metrics.jsonl"  # DEST/this = the run's
    mirror.parent.mkdir(parents=True)
    mirror.write_text("{}\n")
    before = tree(outputs)
    r = prm("pull", run_id, str(project), "--json")
    assert r.code == 1
    got = statuses(r)
    assert got[f"outputs/{run_id}/metrics.jsonl"] == "refused"
    assert got["metrics.jsonl"] == "downloaded"
    assert tree(outputs) == before
    assert f"refused: outputs/{run_id}/metrics.jsonl (it would write into the run's own " \
           "outputs" in r.err


# --- files changed in DEST ------------------------------------------------------------------

def test_a_file_edited_in_dest_is_kept_and_reported_until_overwrite(prm, local_profile,
                                                                    fast_fake, tmp_path):
    run_id = finished_run(prm, local_profile)
    run_dir = Path(open_index().get(run_id).run_dir)
    dest = tmp_path / "pulled"
    assert prm("pull", run_id, str(dest)).code == 0
    assert MANIFEST in files_in(dest)
    edited = dest / "metrics.jsonl"
    stat = edited.stat()
    mine = bytes(b ^ 1 for b in edited.read_bytes())  # same size, other bytes
    edited.write_bytes(mine)
    os.utime(edited, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # and the same mtime
    config = next(p for p in (dest / "configs").rglob("*") if p.is_file())
    config.write_text("my notes\n")
    log = next(p for p in (run_dir / "logs").rglob("*.log"))
    with log.open("a") as f:  # the run's copy changed: prm's copy is simply refreshed
        f.write("one more line\n")

    r = prm("pull", run_id, str(dest), "--json")
    assert r.code == 1
    got = statuses(r)
    config_key = config.relative_to(dest).as_posix()
    log_key = log.relative_to(run_dir).as_posix()
    assert got["metrics.jsonl"] == got[config_key] == "modified"
    assert got[log_key] == "downloaded"
    assert {s for k, s in got.items() if k not in ("metrics.jsonl", config_key, log_key)} == {
        "present"}
    assert MANIFEST not in got  # prm's own bookkeeping is not a run file
    assert edited.read_bytes() == mine and config.read_text() == "my notes\n"
    assert (dest / log_key).read_bytes() == log.read_bytes()
    assert "warning: modified locally: metrics.jsonl (changed in DEST since prm wrote it; " \
           "--overwrite replaces it)" in r.err
    assert ", 2 modified locally, " in r.err.strip().splitlines()[-1]

    r = prm("pull", run_id, str(dest), "--overwrite", "--json")
    assert r.code == 0, r.err
    got = statuses(r)  # only what was modified is fetched again
    assert {k for k, s in got.items() if s != "present"} == {"metrics.jsonl", config_key}
    assert got["metrics.jsonl"] == got[config_key] == "downloaded"
    assert edited.read_bytes() == (run_dir / "metrics.jsonl").read_bytes()
    assert config.read_bytes() == (run_dir / config_key).read_bytes()
    assert set(statuses(prm("pull", run_id, str(dest), "--json")).values()) == {"present"}


def test_files_prm_did_not_write_are_kept_unless_identical(prm, local_profile, fast_fake,
                                                           tmp_path):
    """No manifest entry (the user's own file, or a pull by an older prm): a file with the
    run's content is present, any other content is kept and reported."""
    run_id = finished_run(prm, local_profile)
    run_dir = Path(open_index().get(run_id).run_dir)
    dest = tmp_path / "pulled"
    dest.mkdir()
    (dest / "metrics.jsonl").write_bytes((run_dir / "metrics.jsonl").read_bytes())
    theirs = next(p for p in (run_dir / "configs").rglob("*") if p.is_file())
    mine = dest / theirs.relative_to(run_dir)
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"x" * theirs.stat().st_size)  # same size, other content
    os.utime(mine, (theirs.stat().st_atime, theirs.stat().st_mtime))
    r = prm("pull", run_id, str(dest), "--json")
    assert r.code == 1
    got = statuses(r)
    assert got["metrics.jsonl"] == "present"
    assert got[mine.relative_to(dest).as_posix()] == "modified"
    assert mine.read_bytes() == b"x" * theirs.stat().st_size
    assert "not written by prm" in r.err
    # Adopted once seen identical: the next pull finds it in the manifest.
    entries = json.loads((dest / MANIFEST).read_text())["files"]
    assert "metrics.jsonl" in entries and mine.relative_to(dest).as_posix() not in entries


def test_a_run_file_named_like_prms_own_files_in_dest_is_refused(prm, local_profile,
                                                                 fast_fake, tmp_path):
    run_id = finished_run(prm, local_profile)
    run_dir = Path(open_index().get(run_id).run_dir)
    (run_dir / MANIFEST).write_text('{"files": {}}')
    (run_dir / "metrics.jsonl.prm-part").write_text("x")
    dest = tmp_path / "pulled"
    r = prm("pull", run_id, str(dest), "--json")
    assert r.code == 1
    got = statuses(r)
    assert got[MANIFEST] == got["metrics.jsonl.prm-part"] == "refused"
    assert got["metrics.jsonl"] == "downloaded"
    assert json.loads((dest / MANIFEST).read_text())["files"]


# --- bad DEST, bad names --------------------------------------------------------------------

@pytest.mark.parametrize("case", ["file", "devnull", "under-a-file", "not-permitted",
                                  "locked", "locked-parent"])
def test_a_dest_that_cannot_be_a_folder_is_one_line(prm, local_profile, fast_fake, tmp_path,
                                                    case):
    run_id = finished_run(prm, local_profile)
    (tmp_path / "a-file").write_text("keep me")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    if os.access(locked, os.W_OK):  # root writes through file modes: a folder no one can
        locked = Path("/proc/1")  # write into, whoever asks
    dest, says = {
        "file": (str(tmp_path / "a-file"), "a-file exists and is not a folder"),
        "devnull": ("/dev/null", "/dev/null exists and is not a folder"),
        "under-a-file": (str(tmp_path / "a-file" / "sub"), "a-file is not a folder"),
        "not-permitted": ("/sys/prm-pull-test", "cannot make /sys/prm-pull-test"),
        "locked": (str(locked), "cannot write into"),
        "locked-parent": (str(locked / "sub"), "cannot make"),
    }[case]
    r = prm("pull", run_id, dest)
    if locked.is_relative_to(tmp_path):
        locked.chmod(0o700)
    assert r.code == 1
    assert says in one_line(r.err)
    assert (tmp_path / "a-file").read_text() == "keep me"
    assert not (locked / "sub").exists()


def test_names_too_long_for_dest_fail_alone_and_the_pull_goes_on(prm, local_profile,
                                                                 fast_fake, tmp_path):
    """A name that fits the run's folder but not with prm's .prm-part suffix; a path that
    fits under the run's folder but is too deep under a DEST of a longer path."""
    run_id = finished_run(prm, local_profile)
    run_dir = Path(open_index().get(run_id).run_dir)
    long_name = "n" * 250 + ".log"  # 254 bytes: fits, but not as NAME.prm-part
    (run_dir / long_name).write_text("long\n")
    dest = tmp_path / ("d" * 200) / ("e" * 200)
    room = 4000 - len(str(run_dir))  # the run's path stays under PATH_MAX (4096)...
    deep = "/".join(["f" * 99] * (room // 100))
    os.makedirs(run_dir / deep)
    (run_dir / deep / "x.txt").write_text("deep\n")  # ...its path under DEST does not
    assert len(str(dest / deep / "x.txt")) > 4096
    r = prm("pull", run_id, str(dest), "--json")
    assert r.code == 1, r.err
    got = {m["path"]: m for m in r.json()}
    assert got[long_name]["status"] == "failed"
    assert "name too long for the local filesystem (254 bytes" in got[long_name]["error"]
    assert got[f"{deep}/x.txt"]["status"] == "failed"
    assert "path too long for the local filesystem" in got[f"{deep}/x.txt"]["error"]
    assert got["metrics.jsonl"]["status"] == "downloaded"
    assert "Traceback" not in r.err and f"failed: {long_name} (name too long" in r.err


def test_two_run_names_for_one_local_path_are_refused_by_name(prm, local_profile, fast_fake,
                                                              tmp_path):
    """The run's folder and prm's _prm/ folder both land in DEST: a run folder that itself
    holds _prm/status.json meets prm's own status.json there."""
    run_id = finished_run(prm, local_profile)
    run_dir = Path(open_index().get(run_id).run_dir)
    (run_dir / "_prm").mkdir()
    (run_dir / "_prm" / "status.json").write_text("{}")
    r = prm("pull", run_id, str(tmp_path / "d"), "--json")
    assert r.code == 1
    refused = [m for m in r.json() if m["status"] == "refused"]
    first = str(run_dir / "_prm" / "status.json")
    assert [(m["path"], m["error"]) for m in refused] == [
        ("_prm/status.json", f"same local path as {first!r}, listed before it")]


# --- names printed to a terminal ------------------------------------------------------------

def test_remote_names_are_printed_with_control_characters_escaped(prm, local_profile,
                                                                  fast_fake, tmp_path):
    run_id = finished_run(prm, local_profile)
    run_dir = Path(open_index().get(run_id).run_dir)
    hostile = "evil\x1b[2J\x1b]0;owned\x07[bold]\r"
    (run_dir / f"{hostile}.txt").write_text("theirs")
    (run_dir / hostile).mkdir()
    (run_dir / hostile / "x").write_text("theirs")
    dest = tmp_path / "d"
    dest.mkdir()
    (dest / f"{hostile}.txt").write_text("mine!!")  # kept and reported: its name is printed
    (dest / hostile).symlink_to(tmp_path)  # refused: its name is printed
    r = prm("pull", run_id, str(dest), "--json")
    assert "\x1b" not in r.err and "\x07" not in r.err and "\r" not in r.err
    shown = "evil\\x1b[2J\\x1b]0;owned\\x07[bold]\\r"
    assert f"refused: {shown}/x (path would leave DEST)" in r.err
    assert f"modified locally: {shown}.txt (" in r.err
    assert r.code == 1
    got = statuses(r)  # JSON has the real names
    assert got[f"{hostile}.txt"] == "modified" and got[f"{hostile}/x"] == "refused"
    assert (dest / f"{hostile}.txt").read_text() == "mine!!"
