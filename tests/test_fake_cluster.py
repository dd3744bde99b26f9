"""The fake Modal server runs clustered functions (``@modal.clustered``) as Modal does: N
containers started together, each with its rank and an address the others reach, the same
input to all, rank 0's result returned, and a failure, preemption or stop of one ending all."""

from __future__ import annotations

import functools
import json
import signal
from pathlib import Path
from typing import Any

import modal
import modal.exception
import pytest
from fake_modal import FakeModal, cluster_app


@pytest.fixture
def fake(fake_modal: FakeModal) -> FakeModal:  # the fixture of conftest's fake_modal plugin
    fake_modal.grace_s = 20  # a teardown's SIGTERM is handled at once: never waited out
    return fake_modal


def reports(shared: Path, cluster_id: str) -> list[dict[str, Any]]:
    """What every rank of a cluster reported of itself, by rank."""
    paths = sorted((shared / cluster_id).glob("report-*.json"))
    return [json.loads(p.read_text()) for p in paths]


def logged(fake: FakeModal, call_id: str, text: str, count: int) -> bool:
    """Whether `count` containers of the call printed `text`."""
    entries = fake.logs.get(fake.calls[call_id]["app_id"], [])
    tasks = {e.task_id for e in entries if e.function_call_id == call_id and text in e.data}
    return len(tasks) >= count


def only_rank_0_left(fake: FakeModal, call_id: str) -> bool:
    return [c["rank"] for c in fake.live_containers(call_id)] == [0]


def holding(fake: FakeModal, call_id: str, size: int) -> list[dict[str, Any]]:
    """Wait until all `size` containers of the call's attempt hold; return them by rank."""
    fake.wait_until(lambda: logged(fake, call_id, "holding", size), timeout=60)
    live = fake.live_containers(call_id)
    assert [c["rank"] for c in live] == list(range(size))
    assert len({c["pid"] for c in live}) == len({c["ipv4"] for c in live}) == size
    return live


def test_every_rank_learns_its_cluster_and_reaches_the_others(
    fake: FakeModal, tmp_path: Path
) -> None:
    shared, release = tmp_path / "shared", tmp_path / "release"
    with cluster_app.app.run(detach=True):
        pair = cluster_app.cluster_pair.spawn(str(shared), "pair", release=str(release))
        trio = cluster_app.cluster_trio.spawn(str(shared / "trio"), "trio", release=str(release))

    # The other ranks are done with their part and gone; rank 0 goes on until released.
    for call_id in (pair.object_id, trio.object_id):
        fake.wait_until(functools.partial(only_rank_0_left, fake, call_id), timeout=60)
    release.touch()
    calls = ((pair, 2, shared), (trio, 3, shared / "trio"))

    for fc, size, root in calls:
        result = fc.get(timeout=60)
        call = fake.calls[fc.object_id]
        (attempt,) = call["attempts"]
        tasks, cluster_id = attempt["tasks"], attempt["cluster_id"]
        cluster = fake.clusters[cluster_id]
        assert len(set(tasks)) == size and attempt["task_id"] == tasks[0]
        assert attempt["exit_codes"] == [0] * size  # the others ended by themselves first
        assert (result["rank"], result["task_id"]) == (0, tasks[0])  # rank 0's result
        by_rank = reports(root, cluster_id)
        assert [r["rank"] for r in by_rank] == list(range(size))
        ipv4s = cluster["ipv4"]
        prefix = ipv4s[0].rpartition(".")[0]
        assert ipv4s == [f"{prefix}.{rank + 1}" for rank in range(size)]
        assert not prefix.startswith("127.0.")
        for rank, report in enumerate(by_rank):
            assert report["cluster_id"] == cluster_id and report["task_id"] == tasks[rank]
            assert report["ipv4"] == ipv4s and report["env_ip"] == ipv4s[rank]
            assert report["ipv6"] == cluster["ipv6"] and report["container_ids"] == tasks
            assert report["cloud"] == "CLOUD_PROVIDER_AWS"
            # Every other rank connected to this one's address, from its own.
            assert report["heard"] == {str(p): ipv4s[p] for p in range(size) if p != rank}
            # Each container printed into the logs as itself.
            lines = [e.data for e in fake.logs[call["app_id"]] if e.task_id == tasks[rank]]
            assert f"rank {rank} of {size} at {ipv4s[rank]}\n" in lines
        # Each resolved i6pn.modal.local to its own address and said hello with it.
        assert cluster["hellos"] == dict(enumerate(cluster["ipv6"]))
        # A clean exit of every rank committed what each wrote into its own copy of the volume.
        written = fake.volume_path("cluster-data") / ("pair" if size == 2 else "trio")
        assert sorted(p.name for p in written.iterdir()) == [f"rank-{r}.txt" for r in range(size)]
        assert fake.leftover_pids(fc.object_id) == []
    assert fake.clusters[fake.calls[pair.object_id]["attempts"][0]["cluster_id"]]["ipv4"][0] != (
        fake.clusters[fake.calls[trio.object_id]["attempts"][0]["cluster_id"]]["ipv4"][0]
    )
    spec = fake.functions[fake.calls[trio.object_id]["function_id"]]
    assert (spec["cluster_size"], spec["gpu"]) == (3, "H100:8")


def test_max_containers_counts_every_container_of_a_cluster(
    fake: FakeModal, tmp_path: Path
) -> None:
    two = cluster_app.cluster_pair.with_options(max_containers=2)
    with cluster_app.app.run(detach=True):
        calls = [two.spawn(str(tmp_path / f"s{i}"), f"serial-{i}") for i in range(2)]
        with pytest.raises(modal.exception.InvalidError, match="multiple of the cluster size"):
            cluster_app.cluster_pair.with_options(max_containers=3).spawn(str(tmp_path), "never")
    for fc in calls:
        fake.wait_call(fc.object_id, timeout=60)
    function_id = fake.calls[calls[0].object_id]["function_id"]
    assert fake.max_concurrent_by_function[function_id] == 1  # one cluster of 2 at a time
    first, second = (fake.calls[fc.object_id]["attempts"][0] for fc in calls)
    assert first["ended"] <= second["started"] or second["ended"] <= first["started"]


def test_a_failing_rank_fails_the_attempt_and_the_retry_runs_a_new_cluster(
    fake: FakeModal, tmp_path: Path
) -> None:
    retried = cluster_app.cluster_pair.with_options(
        retries=modal.Retries(max_retries=1, initial_delay=0.0)
    )
    with cluster_app.app.run(detach=True):
        fc = retried.spawn(str(tmp_path), "fails", fail_rank=1)
    result = fc.get(timeout=60)

    failed, retry = fake.calls[fc.object_id]["attempts"]
    assert (failed["failed_rank"], retry["failed_rank"]) == (1, None)
    assert [a["retry_count"] for a in (failed, retry)] == [0, 1]  # a retry, not a restart
    assert failed["cluster_id"] != retry["cluster_id"] == result["cluster_id"]
    assert not set(failed["tasks"]) & set(retry["tasks"])
    # Rank 0 of the failed cluster was still waiting for rank 1: the fake ended it.
    assert (tmp_path / failed["cluster_id"] / "sigterm-0").exists()
    assert failed["killed"] and failed["exit_codes"][1] == 0  # rank 1 exited by itself
    system = fake.log_text(fake.calls[fc.object_id]["app_id"], "system")
    assert f"Container {failed['tasks'][1]} (cluster rank 1) failed" in system
    assert fake.leftover_pids(fc.object_id) == []


def test_preempting_one_rank_restarts_the_whole_cluster(fake: FakeModal, tmp_path: Path) -> None:
    with cluster_app.app.run(detach=True):
        fc = cluster_app.cluster_pair.spawn(str(tmp_path), "preempted", hold=True)
    first = holding(fake, fc.object_id, 2)
    fake.preempt(fc.object_id, rank=1)
    result = fc.get(timeout=60)

    preempted, restarted = fake.calls[fc.object_id]["attempts"]
    assert [c["task_id"] for c in first] == preempted["tasks"]
    assert (preempted["preempted"], restarted["preempted"]) == (True, False)
    assert [a["retry_count"] for a in (preempted, restarted)] == [0, 0]  # Modal's restart
    assert preempted["cluster_id"] != restarted["cluster_id"] == result["cluster_id"]
    # Every rank got SIGINT and exited within the grace, not only the preempted one.
    assert preempted["exit_codes"] == [128 + signal.SIGINT] * 2
    assert all((tmp_path / preempted["cluster_id"] / f"sigint-{r}").exists() for r in (0, 1))
    assert fake.leftover_pids(fc.object_id) == []


def test_cancel_stop_and_timeout_end_every_container_and_leave_no_process(
    fake: FakeModal, tmp_path: Path
) -> None:
    short = cluster_app.cluster_pair.with_options(timeout=3)
    with cluster_app.app.run(detach=True):
        cancelled = cluster_app.cluster_pair.spawn(str(tmp_path / "c"), "c", hold=True)
        stopped = cluster_app.cluster_pair.spawn(str(tmp_path / "s"), "s", hold=True)
        timed_out = short.spawn(str(tmp_path / "t"), "t", hold=True)
    for fc in (cancelled, stopped):
        holding(fake, fc.object_id, 2)
    children = [int(p.read_text()) for p in tmp_path.glob("*/*/child-*")]

    cancelled.cancel(terminate_containers=False)  # SIGUSR1 to every rank's main process
    call = fake.wait_call(cancelled.object_id, timeout=60)
    assert call["status"] == "cancelled"
    (attempt,) = call["attempts"]
    assert attempt["output"] == "cancelled"  # InputCancellation reached rank 0's function
    assert attempt["exit_codes"] == [0, 0]  # each rank ended by itself, cancelled

    with pytest.raises(modal.exception.FunctionTimeoutError):
        timed_out.get(timeout=60)
    assert fake.calls[timed_out.object_id]["attempts"][0]["killed"]

    app_id = fake.calls[stopped.object_id]["app_id"]
    modal.App.lookup(app_id).stop()  # SIGTERM to every container
    (attempt,) = fake.calls[stopped.object_id]["attempts"]
    assert fake.calls[stopped.object_id]["status"] == "terminated"
    assert attempt["exit_codes"] == [128 + signal.SIGTERM] * 2
    assert all((tmp_path / "s" / attempt["cluster_id"] / f"sigterm-{r}").exists() for r in (0, 1))

    for fc in (cancelled, stopped, timed_out):
        assert fake.live_containers(fc.object_id) == []
        assert fake.leftover_pids(fc.object_id) == []
    # Each container's grandchild, in a session of its own, died with its container.
    assert len(children) >= 4 and not [pid for pid in children if _alive(pid)]


def test_killing_one_container_fails_the_attempt(fake: FakeModal, tmp_path: Path) -> None:
    with cluster_app.app.run(detach=True):
        fc = cluster_app.cluster_pair.spawn(str(tmp_path), "killed", hold=True)
    holding(fake, fc.object_id, 2)
    fake.kill_container(fc.object_id, rank=1)
    with pytest.raises(modal.exception.RemoteError, match=r"rank 1\) was killed"):
        fc.get(timeout=60)

    call = fake.calls[fc.object_id]
    assert call["status"] == "failure"
    (attempt,) = call["attempts"]  # no retries: the failure is the call's
    assert attempt["failed_rank"] == 1
    assert attempt["exit_codes"] == [128 + signal.SIGTERM, -signal.SIGKILL]
    assert (tmp_path / attempt["cluster_id"] / "sigterm-0").exists()
    assert fake.leftover_pids(fc.object_id) == []


def _alive(pid: int) -> bool:
    """A zombie is dead: only its parent has not reaped it yet."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"
