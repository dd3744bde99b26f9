"""Pure pieces of logs and pull: filters, file selection, safe paths, the transfer engine."""

from __future__ import annotations

import asyncio
import json
import os
import re
from pathlib import Path

import pytest

from primerl_modal.core.logs import LogFilter, LogLine, parse_prefixed, parse_stored, tail
from primerl_modal.core.selection import (
    RemoteFile,
    category,
    parse_only,
    printable,
    safe_dest,
    select,
    too_long,
)
from primerl_modal.errors import PrmError, UsageError
from primerl_modal.pull_manifest import NAME as MANIFEST
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


def test_names_are_printed_escaped():
    assert printable("logs/trainer.log") == "logs/trainer.log"
    assert printable("a\x1b[31mb\x07\r\n\t\u202e\udc80 c") == \
        "a\\x1b[31mb\\x07\\r\\n\\t\\u202e\\udc80 c"


def test_length_limits_count_bytes_and_the_temporary_suffix():
    assert too_long("a/" + "n" * 246, 10, PART, 255, 4096) is None
    assert "(247 bytes; at most 246" in too_long("a/" + "n" * 247, 10, PART, 255, 4096)
    assert "(256 bytes" in too_long("é" * 128 + "/x", 10, PART, 255, 4096)  # a folder
    assert too_long("x" * 100, 4096 - 111, PART, 255, 4096) is None  # 4095 bytes in all
    assert "(4096 bytes with DEST; at most 4095)" in too_long("x" * 100, 4096 - 110, PART,
                                                               255, 4096)


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
    dest.mkdir()

    async def interrupted() -> None:
        task = asyncio.create_task(pull_files(MemorySource(data, stall_after=15), items, dest,
                                              lambda n: None, lambda o: None, workers=4))
        await asyncio.sleep(0.2)
        task.cancel()  # what a Ctrl-C or kill does to the pull
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(interrupted())
    complete = [p for p in dest.rglob("*") if p.is_file() and not p.name.endswith(PART)
                and p.name != MANIFEST]
    assert len(complete) == 15
    assert len(json.loads((dest / MANIFEST).read_text())["files"]) == 15  # recorded anyway
    for p in complete:
        assert p.read_bytes() == data[p.relative_to(dest).as_posix()]
    outcomes = asyncio.run(pull_files(MemorySource(data), items, dest, lambda n: None,
                                      lambda o: None))
    assert sum(o.status == "present" for o in outcomes) == 15
    assert sum(o.status == "downloaded" for o in outcomes) == 25
    for k, v in data.items():
        assert (dest / k).read_bytes() == v
    assert not list(dest.rglob(f"*{PART}"))


def pull(data: dict[str, bytes], items: list[RemoteFile], dest: Path, **options):
    dest.mkdir(parents=True, exist_ok=True)
    return asyncio.run(pull_files(MemorySource(data), items, dest, lambda n: None,
                                  lambda o: None, **options))


def test_hostile_paths_are_refused_and_nothing_lands_outside(tmp_path):
    data = {"ok.txt": b"fine", "x": b"evil"}
    items = [RemoteFile("ok.txt", "ok.txt", 4, 1.0), RemoteFile("x", "../../evil", 4, 1.0)]
    outcomes = pull(data, items, tmp_path / "a" / "b" / "dest")
    assert [o.status for o in outcomes] == ["downloaded", "refused"]
    assert not (tmp_path / "a" / "evil").exists() and not (tmp_path / "evil").exists()


def test_symlink_escape_is_refused_before_any_folder_is_made(tmp_path):
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "link").symlink_to(tmp_path)
    items = [RemoteFile("x", "link/escaped", 1, 1.0), RemoteFile("x", "link/new/escaped", 1, 1.0)]
    outcomes = pull({"x": b"!"}, items, dest)
    assert {o.status for o in outcomes} == {"refused"}
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "new").exists()


def test_files_landing_in_a_protected_folder_are_refused(tmp_path):
    dest = tmp_path / "dest"
    run = dest / "outputs" / "run-1"
    run.mkdir(parents=True)
    data = {"a": b"mine", "b": b"fine"}
    items = [RemoteFile("a", "outputs/run-1/a", 4, 1.0), RemoteFile("a", "outputs/run-1/new/a",
                                                                     4, 1.0),
             RemoteFile("b", "b", 4, 1.0)]
    outcomes = pull(data, items, dest, protected=[str(run)])
    assert [(o.status, o.error) for o in outcomes] == [
        ("refused", "it would write into the run's own outputs"),
        ("refused", "it would write into the run's own outputs"), ("downloaded", None)]
    assert os.listdir(run) == []


@pytest.mark.parametrize("names", [
    ("logs/a.log", "logs//./a.log"),  # the same file once '.' and empty parts go
    ("x", "x/y"),  # a file, then a folder of the same name
    ("x/y", "x"),  # a folder, then a file of the same name
    ("_prm/status.json", "_prm/status.json"),  # from the run's folder and prm's
])
def test_two_remote_names_for_one_local_path_are_refused_by_name(tmp_path, names):
    first, second = names
    data = {"1:" + first: b"one", "2:" + second: b"two"}
    items = [RemoteFile("1:" + first, first, 3, 1.0), RemoteFile("2:" + second, second, 3, 1.0)]
    outcomes = pull(data, items, tmp_path / "d")
    assert [o.status for o in outcomes] == ["downloaded", "refused"]
    assert repr("1:" + first) in outcomes[1].error and "listed before it" in outcomes[1].error
    assert (tmp_path / "d" / first).read_bytes() == b"one"


def test_a_file_in_dest_that_blocks_a_folder_fails_that_file_alone(tmp_path):
    dest = tmp_path / "d"
    dest.mkdir()
    (dest / "logs").write_text("mine")
    data = {"a": b"run", "b": b"run"}
    outcomes = pull(data, [RemoteFile("a", "logs/x.log", 3, 1.0),
                           RemoteFile("b", "metrics.jsonl", 3, 1.0)], dest)
    assert [o.status for o in outcomes] == ["failed", "downloaded"]
    assert outcomes[0].error.startswith("cannot make its folder: ")
    assert (dest / "logs").read_text() == "mine"


def test_a_same_size_same_mtime_edit_is_caught_and_a_large_file_too(tmp_path):
    big = os.urandom((1 << 20) + 10)  # past IN_MEMORY: written in place, hashed once whole
    data = {"s": b"small", "b": big}
    items = [RemoteFile("s", "s", 5, 5.0), RemoteFile("b", "b", len(big), 5.0)]
    dest = tmp_path / "d"
    assert [o.status for o in pull(data, items, dest)] == ["downloaded", "downloaded"]
    for name, body in (("s", b"SMALL"), ("b", big[:-1] + b"!")):
        stat = (dest / name).stat()
        (dest / name).write_bytes(body)
        os.utime(dest / name, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert [o.status for o in pull(data, items, dest)] == ["modified", "modified"]
    assert (dest / "s").read_bytes() == b"SMALL"
    assert [o.status for o in pull(data, items, dest, overwrite=True)] == ["downloaded"] * 2
    assert (dest / "b").read_bytes() == big
    (dest / MANIFEST).write_text("not json")  # lost: compared by content, found the same
    assert [o.status for o in pull(data, items, dest)] == ["present", "present"]
