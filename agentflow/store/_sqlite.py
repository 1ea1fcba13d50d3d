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
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from agentflow.errors import ConfigurationError, LeaseLostError, StoreBusyError, StoreError

T = TypeVar("T")

# The default busy timeout is 0 in sqlite3 and 5 s in Python: both too short on a slow disk with
# several worker processes, where a checkpoint can hold the lock for seconds (DBOS uses 30 s).
DEFAULT_BUSY_TIMEOUT = 30.0
# 8 KiB pages: a step with a 1 KB payload is ~1.1 KB, and 4 KiB pages would hold only three of
# them (1.37 KB per step); 8 KiB pages hold seven (measured: 1.17 KB per step).
PAGE_SIZE = 8192

Op = tuple[str, Sequence[Any], bool]
"""One statement of a write transaction: (sql, params, fenced). A fenced statement must change
a row, or the transaction is rolled back with LeaseLostError."""

STEP_COLUMNS = (
    "run_id, seq, kind, name, digest, status, attempt, args, result, error, started_at, finished_at, wake_at, "
    "epoch, delivery"
)
# One statement records a step: inserted on first write, updated on later ones (intent, retry,
# result), never once it is final, and only while the writer holds the run's lease epoch.
UPSERT_STEP = (
    f"INSERT INTO af_steps ({STEP_COLUMNS}) "
    "SELECT ?,?,?,?,?,?,?,?,?,?,?,?,?,?,? "
    "WHERE EXISTS (SELECT 1 FROM af_runs WHERE id = ? AND epoch = ?) "
    "ON CONFLICT (run_id, seq) DO UPDATE SET status = excluded.status, "
    "attempt = excluded.attempt, result = excluded.result, error = excluded.error, "
    "finished_at = excluded.finished_at, wake_at = excluded.wake_at, epoch = excluded.epoch, "
    "delivery = excluded.delivery "
    "WHERE af_steps.status NOT IN ('completed', 'failed')"
)


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
    return StoreError(f"{what}: {type(exc).__name__}: {text}")


class SqliteStore:
    """The SQLite backend. One DBAPI connection per thread; writes are short transactions."""

    dialect = "sqlite"

    def __init__(self, url: str, *, synchronous: str = "FULL", busy_timeout: float = DEFAULT_BUSY_TIMEOUT) -> None:
        synchronous = synchronous.upper()
        if synchronous not in ("FULL", "NORMAL"):
            raise ConfigurationError(
                "synchronous must be 'FULL' (survives power loss) or 'NORMAL' (survives process crashes)"
            )
        self.url = url
        self.path = sqlite_path(url)
        self.synchronous = synchronous
        self.busy_timeout = busy_timeout
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
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

    @property
    def conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = self.connect_raw()
            except sqlite3.Error as exc:
                raise translate_error(exc, f"opening {self.path}") from None
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                try:
                    conn.close()
                except sqlite3.Error:
                    pass
            self._all.clear()
        self._local = threading.local()

    # -- primitives ------------------------------------------------------------------------
    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            return self.conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise translate_error(exc, "reading the store") from None

    def write(self, ops: Iterable[Op], *, run_id: str | None = None) -> list[int]:
        """Run `ops` in one IMMEDIATE transaction (one durable commit); return rowcounts."""
        counts = self._transaction(ops, run_id, None)
        assert counts is not None
        return counts

    def write_unless(self, check: tuple[str, Sequence[Any]], ops: Iterable[Op], *, run_id: str) -> bool:
        """Like `write`, unless `check` (run in the same transaction) returns a row: then
        nothing is written and False is returned (a run parks unless an event already came in)."""
        return self._transaction(ops, run_id, check) is not None

    def _transaction(
        self, ops: Iterable[Op], run_id: str | None, unless: tuple[str, Sequence[Any]] | None
    ) -> list[int] | None:
        def body(conn: sqlite3.Connection) -> list[int] | None:
            if unless is not None and conn.execute(*unless).fetchone() is not None:
                return None
            counts: list[int] = []
            for sql, params, fenced in ops:
                n = conn.execute(sql, params).rowcount
                if fenced and n == 0:
                    raise LeaseLostError(
                        f"run {run_id}: the write was refused: this worker's lease was taken "
                        "over by another worker (or the step was already recorded final); it "
                        "stops working on the run",
                        run_id=run_id,
                    )
                counts.append(n)
            return counts

        return self.transact(body, what=f"writing run {run_id}" if run_id else "writing the store")

    def transact(self, body: Callable[[sqlite3.Connection], T], *, what: str = "writing the store") -> T:
        """Run `body(conn)` in one IMMEDIATE transaction: committed when it returns, rolled back
        when it raises. Writers are serialized, so a read-check-write in `body` is atomic (how
        approval quorums and policy limits hold across concurrent runs)."""
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

    def claim_sql(self) -> str:
        """Candidates for a claim: runnable runs (a compare-and-set on the epoch follows)."""
        return (
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
