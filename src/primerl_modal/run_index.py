"""The run index: a SQLite file under $PRM_HOME that makes `prm ls` fast.

The outputs (volume or folder) stay the source of truth; the index can always be rebuilt
from them (`prm ls --all`), because every outputs location a run was recorded in is also
kept in a small file beside it (LOCATIONS_FILE) that outlives a broken index. Safe for
several prm processes at once (WAL, busy timeout), creating a fresh index included; schema
versioned through PRAGMA user_version with forward-only migrations, each upgrade one
transaction. Under a read-only $PRM_HOME the index is opened read-only: reads work, and
writes are skipped with one warning (a new run is refused). No sqlite3 error leaves this
module: each becomes a PrmError whose hint fits the cause.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from primerl_modal.errors import PrmError

FILE_NAME = "index.sqlite3"
LOCATIONS_FILE = "outputs-locations"  # "<backend> <outputs>" lines: see RunIndex._remember

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
    # what a live run's GPUs are doing, and what the run holds on its outputs
    """
    ALTER TABLE runs ADD COLUMN gpu_util REAL;
    ALTER TABLE runs ADD COLUMN size_bytes INTEGER
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
    gpu_util: float | None = None  # mean utilization % of the run's GPUs, last sample
    size_bytes: int | None = None  # the run's files on its outputs, last measured


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
        self.read_only = not _writable(path)
        self._told_read_only = False
        self._locations: set[str] | None = None  # lines of LOCATIONS_FILE, once read
        try:
            if self.read_only:
                self.db = self._open_read_only()
                self._check_version()
            else:
                self.db = self._open()
                self._migrate()
        except sqlite3.DatabaseError as e:
            raise self._error(e) from None

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA busy_timeout = 30000")
        # Changing the journal mode ignores the busy timeout: while another prm creates the
        # same fresh file, SQLite says "locked" at once. Wait for it as for any other lock.
        deadline = time.monotonic() + 30
        while True:
            try:
                db.execute("PRAGMA journal_mode = WAL")
                break
            except sqlite3.OperationalError as e:
                if _code(e) not in _BUSY or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        db.execute("PRAGMA synchronous = NORMAL")
        return db

    def _open_read_only(self) -> sqlite3.Connection:
        """The index as it is, for commands that only read (`$PRM_HOME` read-only)."""
        if not self.path.is_file():
            raise PrmError(f"there is no run index at {self.path}, and its folder cannot be "
                           "written", "set PRM_HOME to a folder you can write")
        uri = self.path.absolute().as_uri()
        try:
            db = sqlite3.connect(f"{uri}?mode=ro", uri=True, isolation_level=None)
            db.execute("PRAGMA user_version").fetchone()
        except sqlite3.OperationalError as e:
            if _code(e) != sqlite3.SQLITE_CANTOPEN:
                raise
            # A WAL index needs its -shm file, which a read-only folder cannot hold: read the
            # file as it stands (without what an unfinished writer has not checkpointed).
            db = sqlite3.connect(f"{uri}?mode=ro&immutable=1", uri=True, isolation_level=None)
        db.row_factory = sqlite3.Row
        return db

    def _error(self, e: sqlite3.DatabaseError) -> PrmError:
        """What went wrong with the index, and the fix that matches. Moving the file aside
        is advised only when its content is unreadable: a busy, read-only or full index is
        fine as it is."""
        code = _code(e)
        where = f"the run index {self.path}"
        if code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
            return self._broken(str(e))
        if code in _BUSY:
            return PrmError(f"{where} is busy: another prm kept it locked for 30 s",
                            "try again; if it persists, look for a stuck prm process")
        if code == sqlite3.SQLITE_READONLY:
            return PrmError(f"{where} is read-only ({e})",
                            "make it writable, or set PRM_HOME to a folder you can write")
        if code == sqlite3.SQLITE_FULL:
            return PrmError(f"{where} cannot grow: the disk is full", "free some space")
        return PrmError(f"cannot use {where} ({e})",
                        f"check that {self.path.parent} is readable and writable")

    def _broken(self, why: str) -> PrmError:
        folder = self.path.parent
        return PrmError(
            f"the run index {self.path} is unreadable ({why})",
            f"move it aside with the files beside it (mkdir {folder}/broken && "
            f"mv {self.path}* {folder}/broken/), then `prm ls --all` rebuilds it from your "
            "outputs, where the runs' files are untouched",
        )

    def _check_version(self) -> int:
        """The schema version. Raises PrmError for a newer prm's index or a foreign file."""
        # one statement, so one snapshot: never a version from before another prm's
        # migration with the tables from after it
        version, tables = self.db.execute(
            "SELECT (SELECT user_version FROM pragma_user_version), "
            "(SELECT count(*) FROM sqlite_master WHERE type = 'table')").fetchone()
        if version > len(MIGRATIONS):
            raise PrmError(
                f"the run index {self.path} was written by a newer prm (schema {version})",
                "upgrade prm (pip install -U primerl-modal)",
            )
        if version == 0 and tables:
            raise self._broken("it is not a prm index: it has tables prm did not create")
        if version < len(MIGRATIONS) and self.read_only:
            raise PrmError(f"the run index {self.path} needs an upgrade, and is read-only",
                           "run prm once with $PRM_HOME writable")
        return version

    def _migrate(self) -> None:
        if self.db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS):
            return  # up to date, and an index never goes back
        # From reading the version to the last migration, one write transaction: another
        # prm creating or upgrading the same index waits, then finds the work done.
        with self._transaction():
            for n in range(self._check_version(), len(MIGRATIONS)):
                for statement in filter(str.strip, MIGRATIONS[n].split(";")):
                    self.db.execute(statement)
                self.db.execute(f"PRAGMA user_version = {n + 1}")

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        if self.read_only:
            yield
            return
        self._write("BEGIN IMMEDIATE", {})
        try:
            yield
        except BaseException:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            raise
        self._write("COMMIT", {})

    def close(self) -> None:
        self.db.close()

    def upsert(self, record: RunRecord) -> None:
        """Add or update a run. Raises PrmError when the index is read-only and the run is
        new to it (a run prm cannot record must not start); a known run's update is
        skipped then (see _write)."""
        if self.read_only and self.get(record.run_id) is None:
            raise PrmError(f"cannot record {record.run_id}: the run index {self.path} is "
                           "read-only", "set PRM_HOME to a folder you can write")
        self._upsert("runs", "run_id", COLUMNS, asdict(record))
        self._remember(record.backend, record.outputs)

    def upsert_many(self, records: Sequence[RunRecord]) -> None:
        """All of ``records`` in one transaction (a sweep's trials)."""
        with self._transaction():
            for record in records:
                self.upsert(record)

    def upsert_sweep(self, sweep: SweepRecord) -> None:
        self._upsert("sweeps", "sweep_id", SWEEP_COLUMNS, asdict(sweep))

    def _upsert(self, table: str, key: str, columns: Sequence[str], data: dict[str, Any]) -> None:
        cols = ", ".join(columns)
        marks = ", ".join(f":{c}" for c in columns)
        update = ", ".join(f"{c} = excluded.{c}" for c in columns if c != key)
        self._write(f"INSERT INTO {table} ({cols}) VALUES ({marks}) "
                    f"ON CONFLICT({key}) DO UPDATE SET {update}", data)

    def _remember(self, backend: str, outputs: str) -> None:
        """Note a run's outputs location in LOCATIONS_FILE, beside the index and outliving
        it: an index moved aside as broken is rebuilt by `prm ls --all`, which searches
        every location named there (runs in a custom outputs folder too)."""
        line = f"{backend} {outputs}"
        if line in self._remembered() or not line.isprintable():
            return
        # A copy of what the index holds: never worth failing the index write for.
        with contextlib.suppress(OSError), open(self.path.parent / LOCATIONS_FILE, "a",
                                                 encoding="utf-8") as f:
            f.write(line + "\n")  # one short append: concurrent writers do not interleave
        self._remembered().add(line)

    def _remembered(self) -> set[str]:
        if self._locations is None:
            try:
                text = (self.path.parent / LOCATIONS_FILE).read_text(encoding="utf-8",
                                                                     errors="replace")
            except OSError:
                text = ""
            self._locations = set(text.splitlines())
        return self._locations

    def outputs_locations(self, backend: str) -> set[str]:
        """Every outputs location (folder or volume) of ``backend`` that holds a run of the
        index or ever held one prm recorded (LOCATIONS_FILE)."""
        rows = self._rows("SELECT DISTINCT outputs FROM runs WHERE backend = ?", (backend,))
        return {r[0] for r in rows} | {line.removeprefix(f"{backend} ")
                                       for line in self._remembered()
                                       if line.startswith(f"{backend} ")}

    def sweeps(self, limit: int | None = None) -> list[SweepRecord]:
        sql = "SELECT * FROM sweeps ORDER BY created_at DESC"
        if limit:
            sql += f" LIMIT {int(limit)}"
        return [SweepRecord(**{c: r[c] for c in SWEEP_COLUMNS}) for r in self._rows(sql)]

    def find_sweep(self, text: str) -> SweepRecord:
        """The sweep whose id is ``text`` or uniquely starts with it.

        Raises PrmError for none or an ambiguous prefix.
        """
        pattern = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        rows = self._rows(
            "SELECT * FROM sweeps WHERE sweep_id = ? OR sweep_id LIKE ? ESCAPE '\\' "
            "ORDER BY sweep_id = ? DESC, created_at DESC LIMIT 11", (text, pattern, text),
        )
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

    def require_writable(self, doing: str) -> None:
        """Raises PrmError when the index is read-only: for a change that must be saved
        (``doing`` says which), unlike the refreshes _write may skip."""
        if self.read_only:
            raise PrmError(f"cannot {doing}: the run index {self.path} is read-only",
                           "set PRM_HOME to a folder you can write")

    def delete(self, run_id: str) -> None:
        """Forget a run whose files are gone (`prm rm`). Raises PrmError when the index is
        read-only: a row left behind would list a run that no longer exists."""
        self.require_writable(f"forget {run_id}")
        self._write("DELETE FROM runs WHERE run_id = :run_id", {"run_id": run_id})

    def delete_sweep(self, sweep_id: str) -> None:
        """Forget a sweep (its trials are rows of their own). Raises PrmError as delete does."""
        self.require_writable(f"forget {sweep_id}")
        self._write("DELETE FROM sweeps WHERE sweep_id = :sweep_id", {"sweep_id": sweep_id})

    def _write(self, sql: str, params: dict[str, Any]) -> None:
        """Run one write. On a read-only index it is skipped, with one warning: a command
        that only reads never fails because what it learned cannot be saved."""
        if self.read_only:
            if not self._told_read_only:
                from primerl_modal.ui.console import warn

                warn(f"the run index {self.path} is read-only: fresh statuses are shown, "
                     "not saved")
                self._told_read_only = True
            return
        try:
            self.db.execute(sql, params)
        except sqlite3.DatabaseError as e:
            raise self._error(e) from None

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """Rows of a query. Raises PrmError, never sqlite3's errors (a damaged page)."""
        try:
            return self.db.execute(sql, params).fetchall()
        except sqlite3.DatabaseError as e:
            raise self._error(e) from None

    def get(self, run_id: str) -> RunRecord | None:
        rows = self._rows(f"SELECT {_COLS} FROM runs WHERE run_id = ?", (run_id,))
        return _record(rows[0]) if rows else None

    def find(self, text: str) -> RunRecord:
        """The run whose id is ``text`` or uniquely starts with it.

        Raises PrmError for none, or for an ambiguous prefix (listing candidates).
        """
        exact = self.get(text)
        if exact:
            return exact
        pattern = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        rows = self._rows(
            f"SELECT {_COLS} FROM runs WHERE run_id LIKE ? ESCAPE '\\' "
            "ORDER BY created_at DESC LIMIT 11",
            (pattern,),
        )
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
        return [_record(r) for r in self._rows(sql, params)]


def _record(row: sqlite3.Row) -> RunRecord:
    return RunRecord(*row)  # every query selects COLUMNS, in the dataclass's field order


def _code(e: sqlite3.Error) -> int:
    """SQLite's primary result code of an error (its extended code's low byte)."""
    return getattr(e, "sqlite_errorcode", sqlite3.SQLITE_ERROR) & 0xFF


_BUSY = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def _writable(path: Path) -> bool:
    """Whether prm may write the index: its folder (for the files SQLite keeps beside it)
    and the file itself, if there is one."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(path.parent, os.W_OK) and (not path.exists() or os.access(path, os.W_OK))


def open_index(home: Path | None = None) -> RunIndex:
    """The index under ``home`` (default: $PRM_HOME)."""
    if home is None:
        from primerl_modal import paths

        home = paths.prm_home()
    return RunIndex(home / FILE_NAME)
