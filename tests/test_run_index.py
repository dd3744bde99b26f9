from __future__ import annotations

import multiprocessing
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from primerl_modal.errors import PrmError
from primerl_modal.run_index import MIGRATIONS, RunIndex, RunRecord


def rec(run_id: str, created: float, status: str = "RUNNING", sweep: str | None = None):
    return RunRecord(run_id=run_id, name="x", profile="p", backend="local", status=status,
                     created_at=created, updated_at=created, gpu_type="H100", gpu_count=8,
                     trainer=2, inference=6, tp=1, dp=6, usd_per_gpu_hour=3.95, timeout_s=3600,
                     retries=3, outputs="/o", meta_dir=f"/o/_prm/{run_id}",
                     run_dir=f"/o/{run_id}", sweep_id=sweep)


def test_schema_is_versioned(tmp_path: Path):
    RunIndex(tmp_path / "i.db").close()
    db = sqlite3.connect(tmp_path / "i.db")
    assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_list_orders_newest_first_and_filters(tmp_path: Path):
    ix = RunIndex(tmp_path / "i.db")
    ix.upsert(rec("a-1", 1.0, "SUCCEEDED"))
    ix.upsert(rec("a-2", 2.0, "FAILED", sweep="s1"))
    ix.upsert(rec("b-3", 3.0, "RUNNING", sweep="s1"))
    assert [r.run_id for r in ix.list()] == ["b-3", "a-2", "a-1"]
    assert [r.run_id for r in ix.list(statuses=["FAILED", "SUCCEEDED"])] == ["a-2", "a-1"]
    assert [r.run_id for r in ix.list(sweep_id="s1", limit=1)] == ["b-3"]
    assert [r.run_id for r in ix.list(since=1.5)] == ["b-3", "a-2"]


def test_find_by_unique_prefix_and_ambiguity(tmp_path: Path):
    ix = RunIndex(tmp_path / "i.db")
    ix.upsert(rec("alpha-1", 1.0))
    ix.upsert(rec("alpha-2", 2.0))
    ix.upsert(rec("beta_1", 3.0))
    assert ix.find("alpha-1").run_id == "alpha-1"
    assert ix.find("b").run_id == "beta_1"
    with pytest.raises(PrmError, match="matches several runs: alpha-2, alpha-1"):
        ix.find("alpha")
    with pytest.raises(PrmError, match="no run 'beta%'"):
        ix.find("beta%")  # LIKE wildcards are taken literally


def test_update_changes_only_named_columns(tmp_path: Path):
    ix = RunIndex(tmp_path / "i.db")
    ix.upsert(rec("a", 1.0))
    ix.update("a", status="SUCCEEDED", step=7)
    r = ix.get("a")
    assert r is not None and (r.status, r.step, r.gpu_count) == ("SUCCEEDED", 7, 8)


def test_foreign_sqlite_file_is_refused_not_touched(tmp_path: Path):
    path = tmp_path / "i.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE mine (x)")
    db.commit()
    db.close()
    with pytest.raises(PrmError, match="not a prm index"):
        RunIndex(path)
    assert sqlite3.connect(path).execute("SELECT name FROM sqlite_master").fetchall() == [
        ("mine",)]


def test_newer_schema_asks_for_an_upgrade(tmp_path: Path):
    path = tmp_path / "i.db"
    RunIndex(path).close()
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 99")
    db.commit()
    db.close()
    with pytest.raises(PrmError, match="newer prm"):
        RunIndex(path)


def test_corrupt_file_is_a_clear_error(tmp_path: Path):
    path = tmp_path / "i.db"
    path.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(PrmError, match="unreadable"):
        RunIndex(path)


def test_concurrent_writers_lose_nothing(tmp_path: Path):
    path = tmp_path / "i.db"
    RunIndex(path).close()
    errors: list[BaseException] = []

    def writer(k: int) -> None:
        try:
            ix = RunIndex(path)
            for i in range(50):
                ix.upsert(rec(f"w{k}-{i}", float(i)))
            ix.close()
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(RunIndex(path).list()) == 400


def _open_and_write(path: str, barrier: Any, k: int) -> None:
    barrier.wait(timeout=120)
    ix = RunIndex(Path(path))
    ix.upsert(rec(f"p{k}", float(k)))
    ix.close()


def test_processes_creating_a_fresh_index_at_once_all_succeed(tmp_path: Path):
    """8 processes released together onto an index that does not exist yet: every one
    opens it and writes (no "not a prm index", no "database is locked"). One round meets
    the race only now and then, so there are many."""
    ctx = multiprocessing.get_context("fork")  # cheap to start: a round takes milliseconds
    for n in range(30):
        path = tmp_path / f"round-{n}" / "index.sqlite3"
        barrier = ctx.Barrier(8)
        procs = [ctx.Process(target=_open_and_write, args=(str(path), barrier, k))
                 for k in range(8)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=120)
        assert [p.exitcode for p in procs] == [0] * 8, f"round {n}: a process failed"
        assert sorted(r.run_id for r in RunIndex(path).list()) == [f"p{k}" for k in range(8)]
