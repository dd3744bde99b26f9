"""The fake Modal server, exercised through the real modal client (nothing leaves 127.0.0.1)."""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

import modal
import modal.exception
import modal.types
import pytest
from fake_modal import FakeModal, sample_app
from fake_modal.fixture import (  # noqa: F401 - pytest fixtures
    _fake_modal_server,
    check_clean,
    fake_modal,
)

from primerl_modal.backends.modal_files import ModalSource
from primerl_modal.core.selection import RemoteFile

BLOCK = 8 * 1024 * 1024  # a volume block
BIG = BLOCK + 12345  # spans two blocks


@pytest.fixture
def fake(fake_modal: FakeModal) -> FakeModal:  # noqa: F811 - the fixture imported above
    fake_modal.secrets["wandb"] = {"WANDB_API_KEY": "wandb-secret"}
    return fake_modal


def spawn(fn: modal.Function, *args: object, **kwargs: object) -> modal.FunctionCall:
    """Launch like prm: a detached app that keeps running after the client leaves."""
    with modal.enable_output(), sample_app.app.run(detach=True):
        return fn.spawn(*args, **kwargs)


def wait_logged(fake: FakeModal, fc: modal.FunctionCall, text: str, timeout: float = 60) -> None:
    """Wait until the call printed ``text`` (its writes to a volume are not visible yet)."""

    def logged() -> bool:
        entries = fake.logs.get(fake.calls[fc.object_id]["app_id"], [])
        return any(e.function_call_id == fc.object_id and text in e.data for e in entries)

    fake.wait_until(logged, timeout)


def alive(pid: int) -> bool:
    """Whether a process runs (a zombie is dead: only its parent has not reaped it yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


@pytest.fixture
def pids() -> Iterator[list[int]]:
    """Processes a test started: killed at the end whatever happened."""
    started: list[int] = []
    yield started
    for pid in started:
        with suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def run_cli(fake: FakeModal, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODAL_")} | fake.env()
    return subprocess.run(
        [sys.executable, "-m", "modal", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


def test_spawn_detached_runs_body_and_records_the_launch(fake: FakeModal) -> None:
    fake.extra_env = {"EXTRA": "extra-value"}
    fake.mount_env = {"DATA_DIR": "/data"}

    def configured() -> modal.Function:  # a variant is bound to one app run: make one per launch
        return sample_app.write_files.with_options(
            gpu="A100-40GB:2",
            timeout=900,
            retries=modal.Retries(max_retries=3),
            secrets=[
                modal.Secret.from_name("wandb"),
                modal.Secret.from_dict({"INLINE_TOKEN": "t"}),
            ],
            env={"PRM_RUN": "r1"},
        )

    fc = spawn(configured(), "r1", count=2, commit=True)

    assert fc.object_id.startswith("fc-")
    result = fc.get(timeout=30)
    assert result["env"] == {
        "SAMPLE_ENV": "from-image",
        "WANDB_API_KEY": "wandb-secret",
        "INLINE_TOKEN": "t",
        "PRM_RUN": "r1",
        "EXTRA": "extra-value",
        "MODAL_IS_REMOTE": "1",
    }
    out = fake.volume_path("sample-data") / "r1"
    assert sorted(p.name for p in out.iterdir()) == ["file-0.txt", "file-1.txt"]
    # The container worked on a copy of its own, named by FAKE_MODAL_MOUNTS and mount_env.
    assert result["data_dir"] == result["mounts"]["/data"]
    assert Path(result["data_dir"]) != fake.volume_path("sample-data")
    assert not Path(result["data_dir"]).exists()  # gone with its container

    call = fake.calls[fc.object_id]
    assert call["status"] == "success"
    assert (call["args"], call["kwargs"]) == (("r1",), {"count": 2, "commit": True})
    assert [name for name, _ in fake.commits] == ["sample-data"]
    assert len(call["attempts"]) == 1 and call["attempts"][0]["exit_code"] == 0

    spec = fake.functions[call["function_id"]]
    assert spec["function_name"] == "write_files"
    assert spec["module_name"] == "fake_modal.sample_app"
    assert spec["gpu"] == "A100-40GB:2"
    assert (spec["timeout_s"], spec["retries"]) == (900, 3)
    assert spec["volumes"] == {"/data": "sample-data"}
    assert spec["secrets"] == ["wandb", "INLINE_TOKEN", "PRM_RUN"]
    assert spec["env"] == {"INLINE_TOKEN": "t", "PRM_RUN": "r1"}
    assert fake.functions[spec["base_function_id"]]["gpu"] is None

    app = fake.apps[call["app_id"]]
    assert app["description"] == "fake-modal-sample"
    assert app["tags"] == {"suite": "fake-modal"}
    assert call["function_id"] in app["function_ids"]
    # Detached: the app outlived its client, and stopped once its last call was done.
    assert app["disconnects"][0]["reason"] == "APP_DISCONNECT_REASON_ENTRYPOINT_COMPLETED"
    fake.wait_app_stopped(call["app_id"])

    commands = fake.image_commands(spec["image_id"])
    assert commands[0] == "FROM ubuntu:22.04"
    assert any("apt-get install" in c and "git" in c for c in commands)
    assert "RUN echo building sample image" in commands
    assert "ENV SAMPLE_ENV=from-image" in commands
    mounted = {name for m in spec["mount_ids"] for name in fake.mounts[m]["files"]}
    assert "/root/sample_data/greeting.txt" in mounted
    assert "/root/fake_modal/sample_app.py" in mounted
    assert "wrote file-1.txt\n" in fake.log_text(call["app_id"], "stdout")
    assert "a line on stderr\n" in fake.log_text(call["app_id"], "stderr")

    # A second identical launch asks for the very same image layers.
    first_requests = [r["dockerfile_commands"] for r in fake.image_requests]
    spawn(configured(), "r2").get(timeout=30)  # without a commit: its clean exit commits
    assert (fake.volume_path("sample-data") / "r2" / "file-1.txt").read_text() == "r2 1\n"
    second_requests = [r["dockerfile_commands"] for r in fake.image_requests[len(first_requests) :]]
    assert second_requests == first_requests
    assert (
        fake.functions[fake.calls[list(fake.calls)[-1]]["function_id"]]["image_id"]
        == spec["image_id"]
    )


def test_remote_call_streams_logs_to_the_launching_client(
    fake: FakeModal, capsys: pytest.CaptureFixture[str]
) -> None:
    with modal.enable_output(), sample_app.app.run():
        assert sample_app.sleep_and_record.remote("r", seconds=0.3, lines=2) == 1
    assert "tick 1" in capsys.readouterr().out
    (app,) = fake.apps.values()
    assert app["state"] == "stopped"  # an ephemeral app dies with its client


def test_logs_stream_live_and_can_be_fetched(fake: FakeModal) -> None:
    fc = spawn(sample_app.sleep_and_record, "logs", seconds=1.5, lines=3)
    seen: list[str] = []
    for entry in fc.logs.stream(timeout=20):
        if not seen:
            assert fake.calls[fc.object_id]["status"] == "running"  # arrived live
        seen.append(entry.message)
    assert ["tick 0\n", "tick 1\n", "tick 2\n"] == [m for m in seen if m.startswith("tick")]

    app_id = fake.calls[fc.object_id]["app_id"]
    tail = [entry.message for entry in modal.App.lookup(app_id).logs.tail(2)]
    assert tail == ["tick 1\n", "tick 2\n"]
    last = fake.logs[app_id][-1]
    assert (last.fd, last.function_call_id) == ("stdout", fc.object_id)


def test_cancel_terminating_containers_kills_at_once(fake: FakeModal) -> None:
    fake.grace_s = 120  # never waited: the test would time out first
    fc = spawn(sample_app.sleep_and_record, "cancel", seconds=60)
    wait_logged(fake, fc, "tick 0")

    with pytest.raises(TimeoutError):
        modal.FunctionCall.from_id(fc.object_id).get(timeout=0)
    modal.FunctionCall.from_id(fc.object_id).cancel(terminate_containers=True)
    call = fake.wait_call(fc.object_id, timeout=60)

    assert call["status"] == "cancelled"
    assert call["cancel_requests"] == [{"terminate_containers": True}]
    (attempt,) = call["attempts"]
    assert (attempt["killed"], attempt["exit_code"]) == (True, -signal.SIGKILL)
    # No signal handler ran, and what the killed container wrote was never committed.
    assert not (fake.volume_path("sample-data") / "cancel").exists()
    fake.wait_app_stopped(call["app_id"])  # its client had left: nothing left to run
    with pytest.raises(modal.exception.RemoteError, match="cancelled"):
        fc.get(timeout=5)


def test_cancel_raises_input_cancellation_and_returns_at_once(
    fake: FakeModal, tmp_path: Path
) -> None:
    fake.grace_s = 120
    release = tmp_path / "release"
    fc = spawn(sample_app.wait_for_cancel, "soft", str(release))
    wait_logged(fake, fc, "started")

    modal.FunctionCall.from_id(fc.object_id).cancel(terminate_containers=False)
    wait_logged(fake, fc, "cancelled")  # InputCancellation reached the function...
    assert fake.calls[fc.object_id]["status"] == "running"  # ...which has not ended yet
    release.touch()
    call = fake.wait_call(fc.object_id, timeout=60)

    assert call["status"] == "cancelled"
    (attempt,) = call["attempts"]
    assert (attempt["output"], attempt["killed"]) == ("cancelled", False)
    # It ended by itself: what it wrote while cancelled was committed at shutdown.
    marker = fake.volume_path("sample-data") / "soft" / f"cancelled-{attempt['task_id']}"
    assert marker.exists()
    with pytest.raises(modal.exception.RemoteError, match="cancelled"):
        fc.get(timeout=5)


def test_a_cancelled_input_still_running_after_the_grace_is_killed(
    fake: FakeModal, tmp_path: Path
) -> None:
    fake.grace_s = 1.0
    fc = spawn(sample_app.wait_for_cancel, "stuck", str(tmp_path / "never"))
    wait_logged(fake, fc, "started")
    modal.FunctionCall.from_id(fc.object_id).cancel(terminate_containers=False)
    call = fake.wait_call(fc.object_id, timeout=60)
    assert call["status"] == "cancelled"
    (attempt,) = call["attempts"]
    assert (attempt["killed"], attempt["output"]) == (True, None)
    assert "cancelled\n" in fake.log_text(call["app_id"], "stdout")


def test_app_lookup_tags_info_and_stop(fake: FakeModal) -> None:
    fc = spawn(sample_app.sleep_and_record, "stop", seconds=60)
    app_id = fake.calls[fc.object_id]["app_id"]
    app = modal.App.lookup(app_id)
    assert app.get_tags() == {"suite": "fake-modal"}
    app.set_tags({"prm-run": "abc"})
    assert app.get_tags() == {"prm-run": "abc"} == fake.apps[app_id]["tags"]
    assert app.info().description == "fake-modal-sample"

    fake.wait_until(lambda: fake.calls[fc.object_id]["attempts"] != [])
    app.stop()
    assert fake.calls[fc.object_id]["status"] == "terminated"
    assert fake.apps[app_id]["state"] == "stopped"
    assert fake.apps[app_id]["stopped_at"] is not None
    assert app.info(refresh=True).lifecycle.stopped_at is not None
    with pytest.raises(modal.exception.NotFoundError):
        modal.App.lookup("ap-" + "x" * 22).get_tags()


def test_preemption_sends_sigint_and_restarts_the_input_with_its_retry_count(
    fake: FakeModal,
) -> None:
    fake.preempt_after(seconds=1.0, times=1)  # applies to the next spawned call only
    flaky = sample_app.sleep_and_record.with_options(
        retries=modal.Retries(max_retries=1, initial_delay=1.0)
    )
    with sample_app.app.run(detach=True):
        timed = sample_app.sleep_and_record.spawn("timed", seconds=3, resume=True)
        manual = flaky.spawn("manual", seconds=60, resume=True, fail_first=True)
    wait_logged(fake, manual, "tick 0")  # the retry of its failed first start is sleeping
    fake.preempt(manual.object_id)

    assert manual.get(timeout=60) == 3  # the third start found the second one's progress
    failed, preempted, resumed = fake.calls[manual.object_id]["attempts"]
    assert [a["retry_count"] for a in (failed, preempted, resumed)] == [0, 1, 1]
    assert [a["preempted"] for a in (failed, preempted, resumed)] == [False, True, False]
    # SIGINT, and its handler's exit within the grace committed what it had written.
    assert (preempted["exit_code"], preempted["killed"]) == (128 + signal.SIGINT, False)
    out = fake.volume_path("sample-data") / "manual"
    assert (out / f"sigint-{preempted['task_id']}").exists()
    assert not list(out.glob("sigterm-*"))

    assert timed.get(timeout=60) in (1, 2)  # 1 if preempted before its body even started
    assert [a["preempted"] for a in fake.calls[timed.object_id]["attempts"]] == [True, False]
    assert [a["retry_count"] for a in fake.calls[timed.object_id]["attempts"]] == [0, 0]
    assert "preemption" in fake.log_text(fake.calls[timed.object_id]["app_id"], "system")


def test_max_containers_queues_extra_inputs(fake: FakeModal) -> None:
    fn = sample_app.sleep_and_record.with_options(max_containers=1)
    with sample_app.app.run(detach=True):
        calls = [fn.spawn(f"serial-{i}", seconds=0.3) for i in range(3)]
    for fc in calls:
        fake.wait_call(fc.object_id)
    function_id = fake.calls[calls[0].object_id]["function_id"]
    assert {fake.calls[fc.object_id]["function_id"] for fc in calls} == {function_id}
    assert fake.functions[function_id]["max_containers"] == 1
    assert fake.max_concurrent_by_function[function_id] == 1
    spans = sorted(
        (a["started"], a["ended"]) for fc in calls for a in fake.calls[fc.object_id]["attempts"]
    )
    assert all(end <= start for (_, end), (start, _) in itertools.pairwise(spans))


def test_missing_named_secret_fails_like_modal(fake: FakeModal) -> None:
    fn = sample_app.write_files.with_options(secrets=[modal.Secret.from_name("no-such-secret")])
    with sample_app.app.run(detach=True):
        with pytest.raises(modal.exception.NotFoundError, match="no-such-secret"):
            fn.spawn("never")
    assert fake.calls == {}


def test_failures_surface_and_are_retried(fake: FakeModal) -> None:
    retried = sample_app.fail.with_options(retries=modal.Retries(max_retries=1, initial_delay=0.0))
    with sample_app.app.run(detach=True):
        raising = sample_app.fail.spawn("raise")
        exiting = retried.spawn("exit")
    with pytest.raises(ValueError, match="boom: raise"):
        raising.get(timeout=30)
    with pytest.raises(modal.exception.RemoteError, match="exited with code 3"):
        exiting.get(timeout=30)
    assert fake.calls[raising.object_id]["status"] == "failure"
    assert [a["exit_code"] for a in fake.calls[exiting.object_id]["attempts"]] == [3, 3]


def test_retries_follow_the_policy_with_scaled_delays(fake: FakeModal) -> None:
    assert fake.retry_delay_scale == 0.01  # the fixture's: a 10 s delay takes 0.1 s
    policy = modal.Retries(
        max_retries=2, initial_delay=10.0, backoff_coefficient=2.0, max_delay=15.0
    )
    failing = sample_app.fail.with_options(retries=policy)
    timing_out = sample_app.sleep_and_record.with_options(
        timeout=1, retries=modal.Retries(max_retries=1, initial_delay=1.0)
    )
    with sample_app.app.run(detach=True):
        fc = failing.spawn("raise")
        slow = timing_out.spawn("slow", seconds=60)
    with pytest.raises(ValueError, match="boom: raise"):
        fc.get(timeout=60)
    call = fake.calls[fc.object_id]
    assert [a["retry_count"] for a in call["attempts"]] == [0, 1, 2]
    gaps = [b["started"] - a["ended"] for a, b in itertools.pairwise(call["attempts"])]
    assert gaps[0] >= 0.09 and gaps[1] >= 0.14  # 10 s, then 20 s capped at 15 s, scaled
    system = fake.log_text(call["app_id"], "system")
    assert "Retrying input in 0.10s (retry 1 of 2)" in system
    assert "Retrying input in 0.15s (retry 2 of 2)" in system

    # A timeout is retried like a failure; a timed-out container's writes are lost.
    with pytest.raises(modal.exception.FunctionTimeoutError):
        slow.get(timeout=60)
    attempts = fake.calls[slow.object_id]["attempts"]
    assert [(a["retry_count"], a["killed"]) for a in attempts] == [(0, True), (1, True)]
    assert fake.calls[slow.object_id]["status"] == "timeout"
    assert not (fake.volume_path("sample-data") / "slow").exists()


def test_large_payloads_and_serialized_functions(fake: FakeModal) -> None:
    big = "y" * (3 * 1024 * 1024)  # over 2 MiB: argument and result both travel as blobs
    with sample_app.app.run(detach=True):
        fc = sample_app.echo.spawn(big)
        assert sample_app.square.remote(7) == 49  # serialized=True: the body is unpickled
    assert fc.get(timeout=30) == big
    assert {"BlobCreate", "BlobGet"} <= set(fake.requests)
    square = next(f for f in fake.functions.values() if f["function_name"] == "square")
    assert square["serialized"]


def test_volume_listing_and_reads(fake: FakeModal, tmp_path: Path) -> None:
    root = fake.volume_path("ckpts")
    (root / "run-1" / "step-2").mkdir(parents=True)
    (root / "run-1" / "config.toml").write_text("lr = 0.1\n")
    big = os.urandom(BIG)
    (root / "run-1" / "step-2" / "model.bin").write_bytes(big)

    vol = modal.Volume.from_name("ckpts", version=2)
    assert [(e.path, e.type) for e in vol.listdir("/")] == [
        ("run-1", modal.types.FileEntryType.DIRECTORY)
    ]
    entries = {e.path: e for e in vol.iterdir("run-1", recursive=True)}
    assert set(entries) == {"run-1/config.toml", "run-1/step-2", "run-1/step-2/model.bin"}
    assert entries["run-1/step-2/model.bin"].size == BIG
    assert b"".join(vol.read_file("run-1/config.toml")) == b"lr = 0.1\n"

    buffer = io.BytesIO()
    assert vol.read_file_into_fileobj("run-1/step-2/model.bin", buffer) == BIG
    assert hashlib.sha256(buffer.getvalue()).digest() == hashlib.sha256(big).digest()
    with pytest.raises(FileNotFoundError):
        b"".join(vol.read_file("nope.txt"))

    local = tmp_path / "upload.txt"
    local.write_text("uploaded\n")
    with vol.batch_upload() as batch:
        batch.put_file(local, "/run-1/notes/upload.txt")
    assert (root / "run-1" / "notes" / "upload.txt").read_text() == "uploaded\n"
    vol.remove_file("run-1/notes", recursive=True)
    assert not (root / "run-1" / "notes").exists()
    with pytest.raises(modal.exception.NotFoundError):
        modal.Volume.from_name("no-such-volume").listdir("/")


def test_cli_volume_get_and_app_list(fake: FakeModal, tmp_path: Path) -> None:
    root = fake.volume_path("outputs")
    files = {"run-1/metrics.jsonl": b'{"step": 1}\n', "run-1/ckpt/model.bin": os.urandom(BIG)}
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    fc = spawn(sample_app.write_files, "listed", count=1)
    fc.get(timeout=30)

    dest = tmp_path / "dest"
    dest.mkdir()
    run_cli(fake, "volume", "get", "outputs", "run-1", str(dest), cwd=tmp_path)
    for name, data in files.items():
        assert (dest / name).read_bytes() == data

    listed = json.loads(run_cli(fake, "app", "list", "--json", cwd=tmp_path).stdout)
    (row,) = listed
    assert row["app_id"] == fake.calls[fc.object_id]["app_id"]
    assert (row["description"], row["state"], row["tasks"]) == ("fake-modal-sample", "stopped", "0")


def test_unimplemented_rpcs_fail_loudly(fake: FakeModal) -> None:
    with pytest.raises(modal.exception.UnimplementedError, match="DictGetOrCreate"):
        modal.Dict.from_name("some-dict").hydrate()
    assert fake.unimplemented == ["DictGetOrCreate"]
    # The fixture's teardown check fails the test, once.
    with pytest.raises(pytest.fail.Exception, match="unimplemented RPC: DictGetOrCreate"):
        check_clean(fake)
    assert (fake.errors, fake.unimplemented) == ([], [])
    check_clean(fake)


def test_a_killed_container_loses_what_it_did_not_commit(fake: FakeModal) -> None:
    fake.grace_s = 120
    fc = spawn(sample_app.write_commit_write, "kill")
    wait_logged(fake, fc, "written")
    out = fake.volume_path("sample-data") / "kill"
    assert (out / "committed.txt").read_text() == "committed\n"
    assert not (out / "uncommitted.txt").exists()  # written in the container only

    modal.FunctionCall.from_id(fc.object_id).cancel(terminate_containers=True)
    assert fake.wait_call(fc.object_id, timeout=60)["attempts"][0]["killed"]
    assert sorted(p.name for p in out.iterdir()) == ["committed.txt"]


def test_a_container_sees_another_ones_commit_only_after_a_reload(
    fake: FakeModal, tmp_path: Path
) -> None:
    release = tmp_path / "release"
    with sample_app.app.run(detach=True):
        peeker = sample_app.peek_then_reload.spawn("shared", "file-0.txt", str(release))
        wait_logged(fake, peeker, "ready")  # its copy of the volume is made
        writer = sample_app.write_files.spawn("shared", count=1, commit=True)
    writer.get(timeout=60)
    out = fake.volume_path("sample-data") / "shared"
    assert (out / "file-0.txt").exists()
    assert not (out / "mine.txt").exists()  # the peeker has not committed anything yet

    release.touch()
    assert peeker.get(timeout=60) == {"before": False, "after": True, "mine": True}
    assert sorted(p.name for p in out.iterdir()) == ["file-0.txt", "mine.txt"]


def test_every_process_of_a_container_dies_with_it(
    fake: FakeModal, tmp_path: Path, pids: list[int]
) -> None:
    fake.grace_s = 120
    returned, lingering = tmp_path / "returned.pid", tmp_path / "lingering.pid"
    with sample_app.app.run(detach=True):
        ends = sample_app.spawn_grandchild.spawn(str(returned), linger=False)
        killed = sample_app.spawn_grandchild.spawn(str(lingering), linger=True)
    fake.wait_call(ends.object_id, timeout=60)  # its main process returned: the container ends
    fake.wait_until(lingering.exists, timeout=60)
    modal.FunctionCall.from_id(killed.object_id).cancel(terminate_containers=True)
    fake.wait_call(killed.object_id, timeout=60)
    pids += [int(pid_file.read_text()) for pid_file in (returned, lingering)]
    fake.wait_until(lambda: not any(alive(pid) for pid in pids), timeout=10)


def test_blocks_come_without_trailing_zeros_and_read_back_whole(
    fake: FakeModal, tmp_path: Path
) -> None:
    """Modal's block server leaves out each block's trailing zero bytes; both modal's reader
    and prm's lean one pad them back, for a file of several blocks."""
    def noise(n: int) -> bytes:
        # random bytes ending non-zero: a zero last byte is a trailing zero too, which the
        # server leaves out, and the lengths below would be one off (a CI flake, 1 run in ~100)
        return os.urandom(n - 1) + b"\x01"

    data = (
        noise(BLOCK - 1000)
        + bytes(1000)
        + noise(BLOCK - 5000)
        + bytes(5000)
        + noise(4096)
        + bytes(300)
    )
    (fake.volume_path("blocks") / "run").mkdir(parents=True)
    (fake.volume_path("blocks") / "run" / "big.bin").write_bytes(data)
    vol = modal.Volume.from_name("blocks", version=2)

    buffer = io.BytesIO()
    assert vol.read_file_into_fileobj("run/big.bin", buffer) == len(data)
    assert buffer.getvalue() == data

    source = ModalSource(vol)
    dest = tmp_path / "big.bin"
    with dest.open("wb") as out:
        item = RemoteFile("run/big.bin", "big.bin", len(data), 0.0)
        source.run(lambda: source.fetch(item, out, lambda advance: None))
    assert dest.read_bytes() == data

    # One block-URL call per read (prm's reader would make a second one to fall back on
    # modal's), and three blocks each time, every one sent without its trailing zeros.
    assert fake.requests.count("VolumeGetFile2") == 2
    sent = [(0, BLOCK - 1000), (BLOCK, BLOCK - 5000), (2 * BLOCK, 4096)]
    assert sorted(fake.block_reads("blocks", "run/big.bin")) == sorted(sent * 2)
