"""Pure pieces of logs and pull: filters, file selection, safe paths, the transfer engine."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from primerl_modal.core.logs import LogFilter, LogLine, parse_prefixed, parse_stored, tail
from primerl_modal.core.selection import RemoteFile, category, parse_only, safe_dest, select
from primerl_modal.errors import PrmError, UsageError
from primerl_modal.transfer import PART, pull_files


def test_stored_and_streamed_lines_parse_alike():
    stored = parse_stored("1795950000.250 [trainer] step 3 loss=0.4", 2)
    assert stored == LogLine(1795950000.25, 2, "trainer", "step 3 loss=0.4")
    assert parse_prefixed("[env/wordle] hi", 5.0, 1).component == "env/wordle"
    assert parse_prefixed("Container started", 5.0, 1).component == "modal"


def test_filter_and_tail():
    lines = [LogLine(float(i), 1 + i // 5, c, f"{c} {i}")
             for i, c in enumerate(["trainer", "inference"] * 5)]
    keep = LogFilter(components=frozenset({"trainer"}), since=2.0, grep=re.compile(r"[68]"),
                     attempt=2)
    assert [x.text for x in keep.apply(lines)] == ["trainer 6", "trainer 8"]
    assert [x.text for x in tail(lines, 2)] == ["trainer 8", "inference 9"]
    assert len(tail(lines, 0)) == 10


def files(*paths: str) -> list[RemoteFile]:
    return [RemoteFile(p, p, 10, 1.0) for p in paths]


TREE = files("configs/rl.json", "logs/attempt_1/trainer.log", "metrics.jsonl",
             "checkpoints/step_5/trainer/a.bin", "checkpoints/step_10/trainer/a.bin",
             "checkpoints/step_15/orchestrator/b.json", "rollouts/step_1/r.jsonl",
             "broadcasts/step_15/w.bin", "_prm/plan.json", "_prm/logs/attempt_1.log",
             "_prm/status.json", "_prm/inputs/config.toml")


def test_categories():
    assert [category(f.dest) for f in TREE] == [
        "configs", "logs", "metrics", "checkpoints", "checkpoints", "checkpoints", "rollouts",
        "broadcasts", "configs", "logs", "metrics", "configs"]


def test_select_default_skips_broadcasts_and_step_latest_keeps_one_checkpoint():
    assert "broadcasts/step_15/w.bin" not in {f.dest for f in select(TREE, None, None)}
    chosen = select(TREE, parse_only("checkpoints"), "latest")
    assert [f.dest for f in chosen] == ["checkpoints/step_15/orchestrator/b.json"]
    assert [f.dest for f in select(TREE, parse_only("checkpoints"), "5")] == [
        "checkpoints/step_5/trainer/a.bin"]
    assert {f.dest for f in select(TREE, parse_only("logs,metrics"), None)} == {
        "logs/attempt_1/trainer.log", "metrics.jsonl", "_prm/logs/attempt_1.log",
        "_prm/status.json"}


def test_select_errors():
    with pytest.raises(UsageError, match="unknown category 'weights'"):
        parse_only("weights")
    with pytest.raises(PrmError) as e:
        select(TREE, None, "7")
    assert e.value.one_line() == "the run has no checkpoint step 7; it has: 5, 10, 15"
    with pytest.raises(PrmError, match="no checkpoint yet"):
        select(files("metrics.jsonl"), None, "latest")


@pytest.mark.parametrize("bad", ["../../evil", "/etc/passwd", "a/../../b", "", "a\\..\\b"])
def test_unsafe_destinations(bad):
    assert not safe_dest(bad)


class MemorySource:
    """Serves bytes from a dict; can stall forever after ``stall_after`` files."""

    def __init__(self, data: dict[str, bytes], stall_after: int | None = None) -> None:
        self.data = data
        self.stall_after = stall_after
        self.served = 0

    async def fetch(self, item, out, progress):
        if self.stall_after is not None and self.served >= self.stall_after:
            out.write(self.data[item.remote][:3])  # a partial write, then nothing more
            await asyncio.Event().wait()
        self.served += 1
        out.write(self.data[item.remote])
        progress(len(self.data[item.remote]))


def test_interrupted_pull_leaves_no_truncated_file_and_a_rerun_fetches_the_rest(tmp_path):
    data = {f"rollouts/{i:03d}.jsonl": f"row {i}\n".encode() * 50 for i in range(40)}
    items = [RemoteFile(k, k, len(v), 1000.0 + i) for i, (k, v) in enumerate(data.items())]
    dest = tmp_path / "dest"

    async def interrupted() -> None:
        task = asyncio.create_task(pull_files(MemorySource(data, stall_after=15), items, dest,
                                              lambda n: None, lambda o: None, workers=4))
        await asyncio.sleep(0.2)
        task.cancel()  # what a Ctrl-C or kill does to the pull
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(interrupted())
    complete = [p for p in dest.rglob("*") if p.is_file() and not p.name.endswith(PART)]
    assert len(complete) == 15
    for p in complete:
        assert p.read_bytes() == data[p.relative_to(dest).as_posix()]
    outcomes = asyncio.run(pull_files(MemorySource(data), items, dest, lambda n: None,
                                      lambda o: None))
    assert sum(o.status == "present" for o in outcomes) == 15
    assert sum(o.status == "downloaded" for o in outcomes) == 25
    for k, v in data.items():
        assert (dest / k).read_bytes() == v
    assert not list(dest.rglob(f"*{PART}"))


def test_hostile_paths_are_refused_and_nothing_lands_outside(tmp_path):
    data = {"ok.txt": b"fine", "x": b"evil"}
    items = [RemoteFile("ok.txt", "ok.txt", 4, 1.0), RemoteFile("x", "../../evil", 4, 1.0)]
    dest = tmp_path / "a" / "b" / "dest"
    outcomes = asyncio.run(pull_files(MemorySource(data), items, dest, lambda n: None,
                                      lambda o: None))
    assert [o.status for o in outcomes] == ["downloaded", "refused"]
    assert not (tmp_path / "a" / "evil").exists() and not (tmp_path / "evil").exists()


def test_symlink_escape_is_refused(tmp_path):
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "link").symlink_to(tmp_path)
    items = [RemoteFile("x", "link/escaped", 1, 1.0)]
    (outcome,) = asyncio.run(pull_files(MemorySource({"x": b"!"}), items, dest,
                                        lambda n: None, lambda o: None))
    assert outcome.status == "refused" and not Path(tmp_path / "escaped").exists()
