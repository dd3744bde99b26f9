"""`prm ls`, `prm logs`, `prm show`, `prm pull` for runs on (fake) Modal."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

import pytest
from conftest import finished, follow_to_the_end, launched, wait_for

from primerl_modal.backends.volume_reads import open_reader
from primerl_modal.run_index import RunRecord, open_index

PRM = [sys.executable, "-m", "primerl_modal"]


def test_ls_refreshes_modal_runs_from_the_volume(prm, modal_env):
    run_id = launched(prm, "reverse-text")
    rec = open_index().get(run_id)
    modal_env.wait_call(rec.call_id, timeout=60)
    (row,) = prm("ls", "--json").json()
    assert row["run_id"] == run_id and row["status"] == "SUCCEEDED"
    assert row["step"] == [8, 8] and row["gpu"] == "A100-40GB x2 1T/1I".replace(" x", "x")
    assert isinstance(row["metric_value"], float) and row["backend"] == "modal"


def test_ls_all_finds_a_run_that_exists_only_on_the_volume(prm, modal_env, tmp_path,
                                                          monkeypatch):
    run_id = launched(prm, "reverse-text")
    finished(modal_env, run_id)
    monkeypatch.setenv("PRM_HOME", str(tmp_path / "another-laptop"))
    assert prm("ls", "--json").json() == []
    rows = prm("ls", "--all", "--json").json()
    assert [(r["run_id"], r["status"]) for r in rows] == [(run_id, "SUCCEEDED")]
    assert open_index().get(run_id).app_id is None  # found on the volume, not launched here


def test_logs_of_a_finished_modal_run_come_from_the_volume(prm, modal_env):
    run_id = launched(prm, "reverse-text")
    finished(modal_env, run_id)
    out = prm("logs", run_id, "--tail", "0").out.splitlines()
    assert {x.split("]")[0] + "]" for x in out} == {
        "[runner]", "[launcher]", "[trainer]", "[orchestrator]", "[inference]"}
    only = prm("logs", run_id, "-c", "inference", "--tail", "0").out.splitlines()
    assert only and all(x.startswith("[inference] ") for x in only)


def test_logs_follow_streams_a_live_modal_run_until_it_ends(prm, modal_env):
    modal_env.extra_env["FAKE_RL_STEP_SECONDS"] = "0.25"
    run_id = launched(prm, "reverse-text", "--set", "max_steps=10")
    proc = subprocess.Popen([*PRM, "logs", run_id, "-f", "-c", "trainer"],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    first = proc.stdout.readline()
    call = modal_env.calls[open_index().get(run_id).call_id]
    running_then = call["status"]
    rest = proc.stdout.read()
    proc.wait(timeout=60)
    assert first.startswith("[trainer]") and running_then == "running"
    assert proc.returncode == 0
    lines = [first.rstrip("\n"), *rest.splitlines()]
    assert all(x.startswith("[trainer]") for x in lines)
    assert len(lines) == len(set(lines))  # no line twice
    assert any("step 10 " in x for x in lines)


def test_show_a_modal_run(prm, modal_env):
    run_id = launched(prm, "reverse-text")
    finished(modal_env, run_id)
    d = prm("show", run_id, "--json").json()
    assert d["plan"]["gpu"]["modal"] == "A100-40GB:2"
    assert d["paths"]["outputs"] == "prime-rl-outputs"
    assert d["status"]["attempts"][0]["outcome"] == "SUCCEEDED"


def test_pull_a_modal_run_byte_for_byte_and_refuse_a_hostile_entry(prm, modal_env, tmp_path):
    run_id = launched(prm, "reverse-text", "--set", "max_steps=6", "--set",
                      "prime_rl.ckpt_interval=2")
    finished(modal_env, run_id)
    volume = modal_env.volume_path("prime-rl-outputs")
    dest = tmp_path / "dest"
    r = prm("pull", run_id, str(dest), "--json")
    assert r.code == 0, r.err
    src = {p.relative_to(volume / run_id).as_posix(): p for p in (volume / run_id).rglob("*")
           if p.is_file() and not p.is_symlink()}
    src |= {"_prm/" + p.relative_to(volume / "_prm" / run_id).as_posix(): p
            for p in (volume / "_prm" / run_id).rglob("*") if p.is_file()}
    got = {p.relative_to(dest).as_posix(): p for p in dest.rglob("*")
           if p.is_file() and p.name != ".prm-pull.json"}
    assert set(got) == set(src)
    assert all(got[k].read_bytes() == src[k].read_bytes() for k in got)
    assert {k.split("/")[1] for k in got if k.startswith("checkpoints/")} == {
        "step_2", "step_4", "step_6"}
    latest = tmp_path / "latest"
    assert prm("pull", run_id, str(latest), "--only", "checkpoints", "--step", "latest").code == 0
    assert {p.relative_to(latest).parts[1] for p in latest.rglob("*")
            if p.is_file() and p.name != ".prm-pull.json"} == {"step_6"}

    modal_env.listing_aliases["prime-rl-outputs"] = {
        f"{run_id}/../../evil": f"{run_id}/metrics.jsonl"}
    hostile = tmp_path / "h" / "dest"
    r = prm("pull", run_id, str(hostile), "--json")
    assert r.code == 1
    statuses = {m["path"]: m["status"] for m in r.json()}
    assert statuses["../../evil"] == "refused"
    assert not (tmp_path / "evil").exists() and not (tmp_path / "h" / "evil").exists()
    assert (hostile / "metrics.jsonl").exists()
    assert "refused: ../../evil" in r.err


def _run_dir_only(modal_env, run_id: str, files: dict[str, bytes]) -> dict[str, bytes]:
    """A finished run whose only files are ``files`` in its run dir on the volume (no _prm/
    folder, as if copied there by hand), known to the index."""
    volume = modal_env.volume_path("prime-rl-outputs")
    for rel, body in files.items():
        (volume / run_id / rel).parent.mkdir(parents=True, exist_ok=True)
        (volume / run_id / rel).write_bytes(body)
    open_index().upsert(RunRecord(run_id, run_id.split("-")[0], "p", "modal", "SUCCEEDED", 1.0,
                                  1.0, "H100", 2, 1, 1, 1, 1, 3.95, 60, 0, "prime-rl-outputs",
                                  "", ""))
    return files


def test_pull_a_run_that_has_no_prm_folder(prm, modal_env, tmp_path):
    """A run dir on the volume without prm's _prm/ files (e.g. copied there by hand)."""
    _run_dir_only(modal_env, "bare-1", {"logs/x.log": b"hi\n"})
    r = prm("pull", "bare-1", str(tmp_path / "d"))
    assert r.code == 0, r.err
    assert (tmp_path / "d" / "logs" / "x.log").read_text() == "hi\n"


def test_pull_gets_past_failed_block_reads_and_never_keeps_a_corrupt_file(prm, modal_env,
                                                                           tmp_path):
    """Files take the lean reader; a failed or corrupt block sends the file through modal's
    own reader (with its retries). Files of one block, of two and of none arrive whole; a
    block that stays corrupt fails that file, and only it."""
    data = _run_dir_only(modal_env, "faulty-1", {
        "rollouts/step_1/flaky.bin": os.urandom(5000),
        "rollouts/step_1/bad.bin": os.urandom(300),
        "rollouts/step_1/empty.bin": b"",
        "checkpoints/step_1/weights.bin": os.urandom((9 << 20) + 123),  # two blocks
        "logs/run.log": b"line\n" * 1000})
    modal_env.fault_block_reads("prime-rl-outputs", "faulty-1/rollouts/step_1/flaky.bin",
                                "503", "corrupt")
    modal_env.fault_block_reads("prime-rl-outputs", "faulty-1/rollouts/step_1/bad.bin",
                                *["corrupt"] * 6)  # the lean read and all five of modal's
    modal_env.fault_block_reads("prime-rl-outputs", "faulty-1/checkpoints/step_1/weights.bin",
                                "corrupt")  # one of its two blocks, read in parallel
    dest = tmp_path / "dest"
    r = prm("pull", "faulty-1", str(dest), "--json")
    assert r.code == 1
    statuses = {m["path"]: m["status"] for m in r.json()}
    assert statuses == {**{k: "downloaded" for k in data}, "rollouts/step_1/bad.bin": "failed"}
    for rel, body in data.items():
        if rel != "rollouts/step_1/bad.bin":
            assert (dest / rel).read_bytes() == body, rel
    assert not (dest / "rollouts/step_1/bad.bin").exists()
    assert not [p for p in dest.rglob("*") if p.name.endswith(".prm-part")]
    assert "failed: rollouts/step_1/bad.bin" in r.err
    # One block-URL call per file, and a second one only for the three files whose lean read
    # failed: the lean reader served the rest, modal's reader took over for those three.
    assert modal_env.requests.count("VolumeGetFile2") == len(data) + 3


def test_without_the_client_internals_it_needs_the_lean_reader_steps_aside():
    async def attempt() -> object:
        return await open_reader(object(), asyncio.Semaphore(1), asyncio.Semaphore(1))

    assert asyncio.run(attempt()) is None


@pytest.mark.parametrize("broken", ["no internals", "private reader moved"])
def test_pull_works_on_modal_public_api_alone(prm, modal_env, tmp_path, monkeypatch, broken):
    """Should a modal release move the internals the fast path uses, a pull still works,
    through modal's public reader."""
    from primerl_modal.backends import modal_files, volume_reads

    data = _run_dir_only(modal_env, "pub-1", {
        "metrics.jsonl": b"{}\n" * 100, "checkpoints/step_1/w.bin": os.urandom(9 << 20)})
    if broken == "no internals":
        monkeypatch.setattr(modal_files, "client_internals", lambda volume: None)
    else:
        async def no_lean_reader(*args: object) -> None:
            return None

        from modal.volume import _Volume

        private = _Volume._read_file_into_fileobj

        def moved(self: object, *args: object, **kwargs: object) -> object:
            if "rpc_semaphore" in kwargs:  # the keywords prm passes are gone
                raise TypeError("_read_file_into_fileobj() got an unexpected keyword argument")
            return private(self, *args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(modal_files, "open_reader", no_lean_reader)
        monkeypatch.setattr(_Volume, "_read_file_into_fileobj", moved)
    assert volume_reads  # the lean reader is out of the way in both cases
    dest = tmp_path / "d"
    r = prm("pull", "pub-1", str(dest), "--json")
    assert r.code == 0, r.err
    assert {m["status"] for m in r.json()} == {"downloaded"}
    assert _complete(dest) == data


def _slow_run(modal_env, run_id: str) -> dict[str, bytes]:
    """A run on the volume whose last few files (one of them streamed, 2 MiB) hang when read."""
    data = _run_dir_only(modal_env, run_id, {
        **{f"rollouts/step_1/s{i:02d}.jsonl": os.urandom(4096) for i in range(30)},
        "checkpoints/step_1/weights.bin": os.urandom(2 << 20)})
    for rel in [*list(data)[:3], "checkpoints/step_1/weights.bin"]:
        modal_env.fault_block_reads("prime-rl-outputs", f"{run_id}/{rel}", "slow")
    return data


def _complete(dest) -> dict[str, bytes]:
    return {p.relative_to(dest).as_posix(): p.read_bytes() for p in dest.rglob("*")
            if p.is_file() and not p.name.endswith(".prm-part") and p.name != ".prm-pull.json"}


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "kill-9"])
def test_a_pull_killed_half_way_keeps_only_whole_files_and_a_rerun_fetches_the_rest(
        prm, modal_env, tmp_path, how):
    data = _slow_run(modal_env, "slow-1")
    dest = tmp_path / "dest"
    proc = subprocess.Popen([*PRM, "pull", "slow-1", str(dest)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    wait_for(lambda: dest.exists() and len(_complete(dest)) == 27, timeout=60,
             what="the 27 quick files")
    wait_for(lambda: (dest / "checkpoints/step_1/weights.bin.prm-part").exists(),
             what="the streamed file under its temporary name")
    proc.send_signal(how)
    _, err = proc.communicate(timeout=30)
    got = _complete(dest)
    assert len(got) == 27 and all(data[k] == v for k, v in got.items())  # whole, or absent
    if how == signal.SIGINT:  # a clean stop: one line, no traceback, nothing half-written
        assert proc.returncode == 130
        assert err.strip() == ("prm: interrupted after 27 of 31 files; the same command "
                               "fetches the rest")
        assert not list(dest.rglob("*.prm-part"))
    r = prm("pull", "slow-1", str(dest), "--json")
    assert r.code == 0, r.err
    statuses = [m["status"] for m in r.json()]
    assert statuses.count("present") == 27 and statuses.count("downloaded") == 4
    assert _complete(dest) == data and not list(dest.rglob("*.prm-part"))


def test_logs_follow_started_after_lines_were_stored_prints_each_line_once(prm, modal_env,
                                                                        tmp_path):
    """`prm logs -f` prints the lines already stored on the volume, then Modal's live stream
    of the call, which starts from the call's first line: the stored ones must be skipped
    there, each line printed exactly once, none lost."""
    modal_env.extra_env["FAKE_RL_STEP_SECONDS"] = "0.3"
    run_id = launched(prm, "reverse-text", "--set", "max_steps=24", "--set",
                      "prime_rl.ckpt_interval=2")  # a commit every checkpoint: stored lines
    call = modal_env.calls[open_index().get(run_id).call_id]
    log = modal_env.volume_path("prime-rl-outputs") / "_prm" / run_id / "logs" / "attempt_1.log"
    wait_for(lambda: log.exists() and "step 4 " in log.read_text(), timeout=60,
             what="trainer lines stored on the volume")
    stored_then = len(log.read_text().splitlines())
    followed_text, running_then = follow_to_the_end(run_id, tmp_path / "follow.err",
                                                 lambda: call["status"])
    assert running_then == "running"
    followed = [x for x in followed_text.splitlines() if not x.startswith("[modal]")]
    r = prm("logs", run_id, "--tail", "0")  # the run has ended: every line, from the volume
    assert r.code == 0, r.err
    every = r.out.splitlines()
    assert len(every) > stored_then > 0 and any("step 24 " in x for x in every)
    assert followed == every
