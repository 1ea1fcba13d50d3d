"""The SQLite event store: the embedded default.

Limits, stated plainly: one host, several processes; not on a network filesystem (SQLite's locks
do not hold there). One writer at a time: every write transaction is `BEGIN IMMEDIATE`, so writers
queue on the busy timeout instead of failing half-way with SQLITE_BUSY_SNAPSHOT.

Durability: WAL mode with `synchronous=FULL` by default, so a committed step survives a power
loss (each commit fsyncs the WAL). `synchronous=NORMAL` skips that fsync: a committed step
survives a process crash (SIGKILL, OOM) but the last commits may be lost on power loss or an OS
crash. NORMAL costs ~20 µs per step instead of an fsync (~0.3 ms or more, depending on the disk).
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from agentflow.errors import ConfigurationError, StoreBusyError, StoreError
from agentflow.store._backend import STEP_COLUMNS, ConnectionPerThread, Op, upsert_step_sql
from agentflow.store._constants import TERMINAL_SQL, VERSION_TABLE

__all__ = ["STEP_COLUMNS", "UPSERT_STEP", "Op", "SqliteStore", "sqlite_path"]

T = TypeVar("T")

# The default busy timeout is 0 in sqlite3 and 5 s in Python: both too short on a slow disk with
# several worker processes, where a checkpoint can hold the lock for seconds (DBOS uses 30 s).
DEFAULT_BUSY_TIMEOUT = 30.0
# 8 KiB pages: a step with a 1 KB payload is ~1.1 KB, and 4 KiB pages would hold only three of
# them (1.37 KB per step); 8 KiB pages hold seven (measured: 1.17 KB per step).
PAGE_SIZE = 8192

# One statement records a step (see `upsert_step_sql`): SQLite's writers are serialized, so the
# fence needs no row lock.
UPSERT_STEP = upsert_step_sql()
# Real time (seconds since the epoch) as SQLite sees it when the statement runs.
SQL_NOW = "((julianday('now') - 2440587.5) * 86400.0)"


def sqlite_path(url: str) -> str:
    """The file path of a `sqlite:///path` URL."""
    prefix = "sqlite:///"
    if not url.startswith(prefix):
        raise ConfigurationError(f"not a SQLite URL: {url!r}; use sqlite:///path/to/file.db")
    path = url[len(prefix) :]
    if not path or path == ":memory:":
        raise ConfigurationError(
            "an in-memory SQLite database cannot be shared by workers; use a file: sqlite:///agentflow.db"
        )
    return path


def translate_error(exc: sqlite3.Error, what: str) -> StoreError:
    text = str(exc)
    if isinstance(exc, sqlite3.OperationalError) and ("locked" in text or "busy" in text):
        return StoreBusyError(
            f"{what}: the database stayed locked past the busy timeout ({text}). Another process "
            "holds a long write transaction; nothing was lost, retry later (the run resumes where "
            "it stopped)."
        )
    if "disk is full" in text or "disk I/O error" in text:
        return StoreError(
            f"{what}: the database's disk is full or failing ({text}). Nothing recorded was lost: free "
            "space (or fix the disk) and start again; runs resume where they stopped."
        )
    return StoreError(f"{what}: {type(exc).__name__}: {text}")


class SqliteStore(ConnectionPerThread[sqlite3.Connection]):
    """The SQLite backend. One DBAPI connection per thread; writes are short transactions."""

    dialect = "sqlite"
    now_sql = SQL_NOW
    upsert_step_sql = UPSERT_STEP
    driver_error = sqlite3.Error

    def __init__(self, url: str, *, synchronous: str = "FULL", busy_timeout: float = DEFAULT_BUSY_TIMEOUT) -> None:
        super().__init__()
        synchronous = synchronous.upper()
        if synchronous not in ("FULL", "NORMAL"):
            raise ConfigurationError(
                "synchronous must be 'FULL' (survives power loss) or 'NORMAL' (survives process crashes)"
            )
        self.url = url
        self.path = self.where = sqlite_path(url)
        self.synchronous = synchronous
        self.busy_timeout = busy_timeout
        directory = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(directory):
            raise ConfigurationError(f"the directory of the database does not exist: {directory}")

    # -- connections -----------------------------------------------------------------------
    def connect_raw(self) -> sqlite3.Connection:
        """A new connection with the store's pragmas (used by migrations and benchmarks too)."""
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
        conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")  # only takes effect on a new file
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        return conn

    def translate_error(self, exc: Exception, what: str) -> StoreError:
        assert isinstance(exc, sqlite3.Error)
        return translate_error(exc, what)

    # -- transactions ----------------------------------------------------------------------
    def transact(
        self, body: Callable[[sqlite3.Connection], T], *, what: str = "writing the store", locks: Sequence[str] = ()
    ) -> T:
        """Run `body(conn)` in one IMMEDIATE transaction: committed when it returns, rolled back
        when it raises. Writers are serialized (whatever `locks` names: SQLite has one write
        lock), so a read-check-write in `body` is atomic (how approval quorums and policy limits
        hold across concurrent runs)."""
        conn = self.conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = body(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise translate_error(exc, what) from None
        return result

    # -- dialect ---------------------------------------------------------------------------
    def schema_revision(self) -> str | None:
        try:
            rows = self.query(f"SELECT version_num FROM {VERSION_TABLE}")
        except StoreError as exc:
            if "no such table" not in str(exc):
                raise
            return None
        return rows[0][0] if rows else None

    def db_time(self) -> float:
        return time.time()

    def json_num(self, column: str, path: str) -> str:
        return f"json_extract({column}, '$.{path}')"

    json_text = json_num

    # -- claiming runs ---------------------------------------------------------------------
    def claim(
        self, worker_id: str, *, now: float, lease_ttl: float, limit: int,
        root_id: str | None = None, workflows: Sequence[str] = (),
    ) -> list[tuple[str, int, bool]]:  # fmt: skip
        """Claim up to `limit` runnable runs: read the candidates, then a compare-and-set on each
        one's epoch (writers are serialized, so the set re-checks under the write lock)."""
        stale = time.time() - lease_ttl
        sql = (
            "SELECT r.id, r.epoch, r.status FROM af_runs r LEFT JOIN af_workers w ON w.id = r.owner "
            "WHERE (r.status = 'pending' OR (r.status = 'waiting' AND r.wake_at <= ?) "
            "OR (r.status = 'running' AND (w.id IS NULL OR w.dead = 1 OR w.heartbeat_at < "
            # Stale relative to the claimer's own last beat: after a stall of the whole database
            # (a long lock) every heartbeat is old at once, and nobody takes anybody's runs.
            "min(?, coalesce((SELECT m.heartbeat_at FROM af_workers m WHERE m.id = ?), ?) - ?)))) "
            # Never a run this worker owns: a heartbeat of its own that queued behind a lock must
            # not make it abandon (and re-run) what it is executing.
            "AND (r.owner IS NULL OR r.owner != ?) "
        )
        params: list[Any] = [now, stale, worker_id, stale + lease_ttl, lease_ttl, worker_id]
        if root_id is not None:
            sql += "AND r.root_id = ? "
            params.append(root_id)
        if workflows:
            sql += f"AND r.workflow IN ({','.join('?' * len(workflows))}) "
            params.extend(workflows)
        sql += "ORDER BY r.created_at, r.id LIMIT ?"
        params.append(limit)
        candidates = self.query(sql, tuple(params))
        if not candidates:
            return []
        take = (
            "UPDATE af_runs SET status = 'running', owner = ?, epoch = epoch + 1, "
            "updated_at = ? WHERE id = ? AND epoch = ? AND status NOT IN "
            f"{TERMINAL_SQL} "
            # Re-checked under the write lock: the owner may have renewed its lease
            # since the candidates were read (a live worker's run is never taken).
            "AND (status != 'running' OR owner IS NULL OR owner NOT IN (SELECT id FROM "
            f"af_workers WHERE dead = 0 AND heartbeat_at >= min({SQL_NOW}, coalesce("
            f"(SELECT m.heartbeat_at FROM af_workers m WHERE m.id = ?), {SQL_NOW})) - ?))"
        )
        # One transaction (one flush) for all of them: at FULL, one commit per claimed run made
        # a worker starting on 1,000 runs spend seconds on fsyncs before the last one began.
        counts = self.write(
            [(take, (worker_id, now, run_id, epoch, worker_id, lease_ttl), False) for run_id, epoch, _ in candidates]
        )
        return [
            (run_id, epoch + 1, status == "running")
            for (run_id, epoch, status), n in zip(candidates, counts, strict=True)
            if n == 1
        ]
