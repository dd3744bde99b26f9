"""The run index: a SQLite file under $PRM_HOME that makes `prm ls` fast.

The outputs (volume or folder) stay the source of truth; the index can always be rebuilt
from them. Safe for several prm processes at once (WAL, busy timeout); schema versioned
through PRAGMA user_version with forward-only migrations.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from primerl_modal.errors import PrmError

FILE_NAME = "index.sqlite3"

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE runs (
        run_id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        profile TEXT NOT NULL,
        backend TEXT NOT NULL,
        status TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        started_at REAL,
        ended_at REAL,
        gpu_type TEXT NOT NULL,
        gpu_count INTEGER NOT NULL,
        trainer INTEGER NOT NULL,
        inference INTEGER NOT NULL,
        tp INTEGER NOT NULL,
        dp INTEGER NOT NULL,
        usd_per_gpu_hour REAL NOT NULL,
        timeout_s INTEGER NOT NULL,
        retries INTEGER NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        step INTEGER,
        max_steps INTEGER,
        metric TEXT,
        metric_value REAL,
        exit_code INTEGER,
        sweep_id TEXT,
        app_id TEXT,
        call_id TEXT,
        pid INTEGER,
        outputs TEXT NOT NULL,
        meta_dir TEXT NOT NULL,
        run_dir TEXT NOT NULL,
        note TEXT
    );
    CREATE INDEX runs_created ON runs (created_at DESC);
    CREATE INDEX runs_status ON runs (status, created_at DESC);
    CREATE INDEX runs_sweep ON runs (sweep_id, created_at DESC);
    """,
    """
    CREATE TABLE sweeps (
        sweep_id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        profile TEXT NOT NULL,
        method TEXT NOT NULL,
        backend TEXT NOT NULL,
        metric TEXT NOT NULL,
        goal TEXT NOT NULL,
        max_parallel INTEGER NOT NULL,
        trials INTEGER NOT NULL,
        fail_fast INTEGER NOT NULL,
        created_at REAL NOT NULL,
        outputs TEXT NOT NULL,
        app_id TEXT,
        call_id TEXT,
        pid INTEGER
    );
    CREATE INDEX sweeps_created ON sweeps (created_at DESC);
    """,
)


@dataclass(slots=True)
class RunRecord:
    """One row of the index: what `prm ls` shows, and how to find the run again."""

    run_id: str
    name: str
    profile: str
    backend: str
    status: str
    created_at: float
    updated_at: float
    gpu_type: str
    gpu_count: int
    trainer: int
    inference: int
    tp: int
    dp: int
    usd_per_gpu_hour: float
    timeout_s: int
    retries: int
    outputs: str  # the outputs volume name (modal) or folder (local)
    meta_dir: str
    run_dir: str
    started_at: float | None = None
    ended_at: float | None = None
    attempts: int = 0
    step: int | None = None
    max_steps: int | None = None
    metric: str | None = None
    metric_value: float | None = None
    exit_code: int | None = None
    sweep_id: str | None = None
    app_id: str | None = None
    call_id: str | None = None
    pid: int | None = None
    note: str | None = None


COLUMNS = tuple(f.name for f in fields(RunRecord))
_COLS = ", ".join(COLUMNS)


@dataclass
class SweepRecord:
    sweep_id: str
    name: str
    profile: str
    method: str
    backend: str
    metric: str
    goal: str
    max_parallel: int
    trials: int
    fail_fast: bool
    created_at: float
    outputs: str  # the outputs volume (modal) or folder (local)
    app_id: str | None = None  # the controller's app (modal)
    call_id: str | None = None  # the controller's call (modal)
    pid: int | None = None  # the controller's process (local)


SWEEP_COLUMNS = tuple(f.name for f in fields(SweepRecord))


class RunIndex:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(path, timeout=30, isolation_level=None)
            self.db.row_factory = sqlite3.Row
            self.db.execute("PRAGMA busy_timeout = 30000")
            self.db.execute("PRAGMA journal_mode = WAL")
            self.db.execute("PRAGMA synchronous = NORMAL")
            self._migrate()
        except sqlite3.DatabaseError as e:
            raise self._broken(str(e)) from None

    def _broken(self, why: str) -> PrmError:
        return PrmError(
            f"the run index {self.path} is unreadable ({why})",
            f"move it aside (mv {self.path} {self.path}.bak); prm starts a fresh index, and the "
            "runs' files in your outputs are untouched",
        )

    def _migrate(self) -> None:
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise PrmError(
                f"the run index {self.path} was written by a newer prm (schema {version})",
                "upgrade prm (pip install -U primerl-modal)",
            )
        if version == 0:
            tables = self.db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
            if tables:
                raise self._broken("it is not a prm index: it has tables prm did not create")
        for n in range(version, len(MIGRATIONS)):
            self.db.execute("BEGIN IMMEDIATE")
            try:
                if self.db.execute("PRAGMA user_version").fetchone()[0] == n:
                    for statement in filter(str.strip, MIGRATIONS[n].split(";")):
                        self.db.execute(statement)
                    self.db.execute(f"PRAGMA user_version = {n + 1}")
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise

    def close(self) -> None:
        self.db.close()

    def upsert(self, record: RunRecord) -> None:
        self._upsert("runs", "run_id", COLUMNS, asdict(record))

    def upsert_many(self, records: Sequence[RunRecord]) -> None:
        """All of ``records`` in one transaction (a sweep's trials)."""
        self._write("BEGIN IMMEDIATE", {})
        try:
            for record in records:
                self.upsert(record)
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self._write("COMMIT", {})

    def upsert_sweep(self, sweep: SweepRecord) -> None:
        self._upsert("sweeps", "sweep_id", SWEEP_COLUMNS, asdict(sweep))

    def _upsert(self, table: str, key: str, columns: Sequence[str], data: dict[str, Any]) -> None:
        cols = ", ".join(columns)
        marks = ", ".join(f":{c}" for c in columns)
        update = ", ".join(f"{c} = excluded.{c}" for c in columns if c != key)
        self._write(f"INSERT INTO {table} ({cols}) VALUES ({marks}) "
                    f"ON CONFLICT({key}) DO UPDATE SET {update}", data)

    def sweeps(self, limit: int | None = None) -> list[SweepRecord]:
        sql = "SELECT * FROM sweeps ORDER BY created_at DESC"
        if limit:
            sql += f" LIMIT {int(limit)}"
        return [SweepRecord(**{c: r[c] for c in SWEEP_COLUMNS}) for r in self.db.execute(sql)]

    def find_sweep(self, text: str) -> SweepRecord:
        """The sweep whose id is ``text`` or uniquely starts with it.

        Raises PrmError for none or an ambiguous prefix.
        """
        pattern = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        rows = self.db.execute(
            "SELECT * FROM sweeps WHERE sweep_id = ? OR sweep_id LIKE ? ESCAPE '\\' "
            "ORDER BY sweep_id = ? DESC, created_at DESC LIMIT 11", (text, pattern, text),
        ).fetchall()
        if not rows:
            raise PrmError(f"no sweep {text!r} in the index", "see `prm sweep ls`")
        if rows[0]["sweep_id"] != text and len(rows) > 1:
            shown = ", ".join(r["sweep_id"] for r in rows[:10])
            raise PrmError(f"{text!r} matches several sweeps: {shown}", "give more of the id")
        return SweepRecord(**{c: rows[0][c] for c in SWEEP_COLUMNS})

    def update(self, run_id: str, **values: Any) -> None:
        unknown = set(values) - set(COLUMNS)
        if unknown:
            raise ValueError(f"unknown columns {unknown}")
        values.setdefault("updated_at", time.time())
        sets = ", ".join(f"{c} = :{c}" for c in values)
        self._write(f"UPDATE runs SET {sets} WHERE run_id = :run_id", {**values, "run_id": run_id})

    def _write(self, sql: str, params: dict[str, Any]) -> None:
        try:
            self.db.execute(sql, params)
        except sqlite3.DatabaseError as e:
            raise self._broken(str(e)) from None

    def get(self, run_id: str) -> RunRecord | None:
        row = self.db.execute(f"SELECT {_COLS} FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return _record(row) if row else None

    def find(self, text: str) -> RunRecord:
        """The run whose id is ``text`` or uniquely starts with it.

        Raises PrmError for none, or for an ambiguous prefix (listing candidates).
        """
        exact = self.get(text)
        if exact:
            return exact
        pattern = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        rows = self.db.execute(
            f"SELECT {_COLS} FROM runs WHERE run_id LIKE ? ESCAPE '\\' "
            "ORDER BY created_at DESC LIMIT 11",
            (pattern,),
        ).fetchall()
        if len(rows) == 1:
            return _record(rows[0])
        if not rows:
            raise PrmError(f"no run {text!r} in the index",
                           "see `prm ls` (or `prm ls --all` for runs launched elsewhere)")
        shown = ", ".join(r["run_id"] for r in rows[:10])
        raise PrmError(f"{text!r} matches several runs: {shown}", "give more of the run id")

    def list(self, *, statuses: Sequence[str] = (), sweep_id: str | None = None,
             since: float | None = None, limit: int | None = None) -> list[RunRecord]:
        where: list[str] = []
        params: list[Any] = []
        if statuses:
            where.append(f"status IN ({', '.join('?' * len(statuses))})")
            params += list(statuses)
        if sweep_id:
            where.append("sweep_id = ?")
            params.append(sweep_id)
        if since is not None:
            where.append("created_at >= ?")
            params.append(since)
        sql = f"SELECT {_COLS} FROM runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC"
        if limit:
            sql += f" LIMIT {int(limit)}"
        return [_record(r) for r in self.db.execute(sql, params)]


def _record(row: sqlite3.Row) -> RunRecord:
    return RunRecord(*row)  # every query selects COLUMNS, in the dataclass's field order


def open_index(home: Path | None = None) -> RunIndex:
    """The index under ``home`` (default: $PRM_HOME)."""
    if home is None:
        from primerl_modal import paths

        home = paths.prm_home()
    return RunIndex(home / FILE_NAME)
