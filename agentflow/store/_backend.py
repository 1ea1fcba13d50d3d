"""What the event store needs of a database: the `Backend` protocol, what both backends share
(`ConnectionPerThread`), and `Records`, the base of the store's per-area statements.

Two backends implement it: `SqliteStore` (`sqlite:///path`, the embedded default) and
`PostgresStore` (`postgresql://...`, many hosts); `_urls.py` picks one by URL. SQL at the call
sites is written once, with `?` placeholders, in the subset both databases run; the few expressions that differ come from the
backend (`now_sql`, `json_num`, `json_text`), and each backend owns the statements whose
locking differs (the fenced step write, claiming runs).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Generic, Protocol, TypeVar

from agentflow.errors import LeaseLostError, StoreError
from agentflow.store._seal import Sealer

T = TypeVar("T")

Op = tuple[str, Sequence[Any], bool]
"""One statement of a write transaction: (sql, params, fenced). A fenced statement must change
a row, or the transaction is rolled back with LeaseLostError."""

Write = tuple[list[Op], str | None, tuple[str, Sequence[Any]] | None]
"""One run's write in a batch (`Backend.write_batch`): (ops, run id, the check of `write_unless`
or None)."""

STEP_COLUMNS = (
    "run_id, seq, kind, name, digest, status, attempt, args, result, error, started_at, finished_at, wake_at, "
    "epoch, delivery"
)


# A step row already recorded is updated (intent, retry, result), never once it is final.
UPSERT_CONFLICT = (
    "ON CONFLICT (run_id, seq) DO UPDATE SET status = excluded.status, "
    "attempt = excluded.attempt, result = excluded.result, error = excluded.error, "
    "finished_at = excluded.finished_at, wake_at = excluded.wake_at, epoch = excluded.epoch, "
    "delivery = excluded.delivery "
    "WHERE af_steps.status NOT IN ('completed', 'failed')"
)


def upsert_step_sql(fence_lock: str = "") -> str:
    """The statement that records a step: inserted on first write, updated on later ones (intent,
    retry, result), never once it is final, and only while the writer holds the run's lease
    epoch. `fence_lock` locks the run row the fence reads (PostgreSQL: `FOR SHARE`), so a takeover
    waits for a write that already passed the fence instead of overtaking it."""
    return (
        f"INSERT INTO af_steps ({STEP_COLUMNS}) "
        "SELECT ?,?,?,?,?,?,?,?,?,?,?,?,?,?,? "
        f"WHERE EXISTS (SELECT 1 FROM af_runs WHERE id = ? AND epoch = ?{fence_lock}) " + UPSERT_CONFLICT
    )


#: The SQL types of a step row's values, in `STEP_COLUMNS` order (PostgreSQL types the values of
#: a multi-row statement from them: a column of NULLs would be text otherwise).
STEP_TYPES = (
    "text", "integer", "text", "text", "text", "text", "integer", "text", "text", "text",
    "double precision", "double precision", "double precision", "integer", "integer",
)  # fmt: skip


@functools.lru_cache(maxsize=64)
def upsert_steps_sql(rows: int, *, typed: bool = False, fence_lock: str = "") -> str:
    """`upsert_step_sql` for `rows` steps of several runs in one statement (a group commit's step
    writes): each row is written only while its run's lease epoch is its `epoch` column. The
    statement changes fewer rows than it has when a fence (or a final step) refused one.

    `typed` (PostgreSQL): the values are cast to their columns' types (a column of NULLs would be
    text otherwise) and named; SQLite names them column1..column15. (Not a `WITH` statement:
    Python's sqlite3 reports no rowcount for one.)"""
    if typed:
        row = "(" + ",".join(f"CAST(? AS {t})" for t in STEP_TYPES) + ")"
        source, run_id, epoch = f"AS v ({STEP_COLUMNS})", "v.run_id", "v.epoch"
    else:
        row = "(" + ",".join("?" * len(STEP_TYPES)) + ")"
        source, run_id, epoch = "AS v", "v.column1", f"v.column{STEP_COLUMNS.split(', ').index('epoch') + 1}"
    return (
        f"INSERT INTO af_steps ({STEP_COLUMNS}) SELECT * FROM (VALUES {','.join([row] * rows)}) {source} "
        f"WHERE EXISTS (SELECT 1 FROM af_runs r WHERE r.id = {run_id} AND r.epoch = {epoch}{fence_lock}) "
        + UPSERT_CONFLICT
    )


def step_chunks(n: int) -> list[int]:
    """`n` rows as multi-row statements of a few fixed sizes (each size is prepared once)."""
    out: list[int] = []
    for size in (256, 64, 16, 4, 1):
        while n >= size:
            out.append(size)
            n -= size
    return out


def lease_lost(run_id: str | None) -> LeaseLostError:
    """The error of a fenced statement that changed no row."""
    return LeaseLostError(
        f"run {run_id}: the write was refused: this worker's lease was taken over by another "
        "worker (or the step was already recorded final); it stops working on the run",
        run_id=run_id,
    )


class Cursor(Protocol):
    """The result of `Conn.execute` (a sqlite3 or psycopg cursor)."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Conn(Protocol):
    """A connection inside `Backend.transact` (or for reads): `execute` takes `?` placeholders."""

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Cursor: ...


class DriverConn(Conn, Protocol):
    """A backend's own connection type (sqlite3's, or `PgConn`)."""

    def close(self) -> None: ...


C = TypeVar("C", bound=DriverConn)


class Listener(Protocol):
    """What `Backend.listen` returns: stopped (and its thread joined) by `close()`."""

    def close(self) -> None: ...


class Backend(Protocol):
    """A database the event store runs on."""

    #: "sqlite" or "postgresql".
    dialect: str
    url: str
    #: The database file ("" when the store is not a file, e.g. PostgreSQL).
    path: str
    #: SQL for the database's real time now, in seconds since the epoch (a float).
    now_sql: str
    #: The fenced step write (see `upsert_step_sql`).
    upsert_step_sql: str

    @property
    def conn(self) -> Conn:
        """This thread's connection (reads outside a transaction see committed data)."""
        ...

    def close(self) -> None: ...

    def schema_revision(self) -> str | None:
        """The schema revision recorded in the database; None when it has no agentflow schema."""
        ...

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...

    def read(self, body: Callable[[Conn], T], *, what: str = "reading the store") -> T:
        """Run `body(conn)` on this thread's connection, outside a transaction (reads)."""
        ...

    def write(self, ops: Iterable[Op], *, run_id: str | None = None) -> list[int]:
        """Run `ops` in one transaction (one durable commit); return their rowcounts."""
        ...

    def write_unless(self, check: tuple[str, Sequence[Any]], ops: Iterable[Op], *, run_id: str) -> bool:
        """Like `write`, unless `check` returns a row: then nothing is written and False is returned.
        The run's row is locked for the check, so an event delivered concurrently (which updates
        that row) is either seen by the check or sees the write."""
        ...

    def listen(self, callback: Callable[[str], None]) -> Listener | None:
        """Call `callback(run_id)` whenever a run becomes runnable, from a thread of its own;
        None when the database cannot tell (SQLite: workers poll the file)."""
        ...

    def write_batch(self, writes: Sequence[Write]) -> list[list[int] | None]:
        """Several runs' writes in one transaction (one durable commit), each as `write` or (with
        a check) `write_unless` would run it; all or nothing: a fenced statement that changes no
        row raises `LeaseLostError` and nothing of the batch is written (see `GroupCommit`)."""
        ...

    def transact(self, body: Callable[[Conn], T], *, what: str = "writing the store", locks: Sequence[str] = ()) -> T:
        """Run `body(conn)` in one transaction, serialized with every other `transact` of the
        database that names one of the same `locks` (with none: with every other one without
        locks), so a read-check-write in `body` is atomic (approval quorums, policy limits)."""
        ...

    def claim(
        self, worker_id: str, *, now: float, lease_ttl: float, limit: int,
        root_id: str | None = None, workflows: Sequence[str] = (),
    ) -> list[tuple[str, int, bool]]:  # fmt: skip
        """Claim up to `limit` runnable runs; return (run_id, new epoch, was_running)."""
        ...

    def db_time(self) -> float:
        """The database's real time (PostgreSQL: the server's clock, shared by every host)."""
        ...

    def json_num(self, column: str, path: str) -> str:
        """SQL for the number at `path` ("a.b") in the JSON text of `column` (NULL if absent)."""
        ...

    def json_text(self, column: str, path: str) -> str:
        """SQL for the text at `path` ("a.b") in the JSON text of `column` (NULL if absent)."""
        ...


class ConnectionPerThread(Generic[C]):
    """What both backends share: one connection per thread (all closed by `close`), reads, and
    writes of `Op`s as one transaction. A backend supplies the driver's connection, error type
    and error translation, and `transact`."""

    #: The driver's base exception (sqlite3.Error, psycopg.Error).
    driver_error: type[Exception] = Exception
    #: What `conn` names when it cannot connect.
    where = ""
    #: The fenced step write (see `upsert_step_sql`) and the lock its fence takes.
    upsert_step_sql = ""
    fence_lock = ""
    #: Whether multi-row VALUES need their types spelled out (PostgreSQL).
    typed_values = False

    def __init__(self) -> None:
        self._local = threading.local()
        self._all: list[C] = []
        self._lock = threading.Lock()

    def connect_raw(self) -> C:
        raise NotImplementedError

    def translate_error(self, exc: Exception, what: str) -> StoreError:
        raise NotImplementedError

    def transact(self, body: Callable[[C], T], *, what: str = "writing the store", locks: Sequence[str] = ()) -> T:
        raise NotImplementedError

    def listen(self, callback: Callable[[str], None]) -> Listener | None:
        """No notifications (see `Backend.listen`): the backend's workers poll."""
        return None

    def usable(self, conn: C) -> bool:
        """Whether this thread's connection can still be used (not closed by a lost server)."""
        return True

    @property
    def conn(self) -> C:
        conn: C | None = getattr(self._local, "conn", None)
        if conn is None or not self.usable(conn):
            if conn is not None:
                self.forget(conn)
            try:
                conn = self.connect_raw()
            except self.driver_error as exc:
                raise self.translate_error(exc, f"opening {self.where}") from None
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def forget(self, conn: C) -> None:
        """Close a connection that failed; the thread opens a new one on its next use."""
        with self._lock:
            if conn in self._all:
                self._all.remove(conn)
        try:
            conn.close()
        except self.driver_error:
            pass

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                try:
                    conn.close()
                except self.driver_error:
                    pass
            self._all.clear()
        self._local = threading.local()

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            return self.conn.execute(sql, params).fetchall()
        except self.driver_error as exc:
            raise self.translate_error(exc, "reading the store") from None

    def read(self, body: Callable[[C], T], *, what: str = "reading the store") -> T:
        try:
            return body(self.conn)
        except self.driver_error as exc:
            raise self.translate_error(exc, what) from None

    def write(self, ops: Iterable[Op], *, run_id: str | None = None) -> list[int]:
        """Run `ops` in one transaction (one durable commit); return rowcounts."""
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
        return self.write_transaction(
            lambda conn: self._apply(conn, ops, run_id, unless),
            what=f"writing run {run_id}" if run_id else "writing the store",
        )

    def write_batch(self, writes: Sequence[Write]) -> list[list[int] | None]:
        """Several runs' writes in one transaction (see `Backend.write_batch`). The writes that
        are one step row each (most of them) go in a few multi-row statements: fewer statements,
        and fewer hand-overs of the GIL between the writer thread and the event loop."""

        def body(conn: C) -> list[list[int] | None]:
            out: list[list[int] | None] = [None] * len(writes)
            rows: list[Sequence[Any]] = []
            seen: set[tuple[Any, Any]] = set()
            for i, (ops, run_id, unless) in enumerate(writes):
                if unless is None and len(ops) == 1 and ops[0][0] is self.upsert_step_sql:
                    params = ops[0][1]
                    if (params[0], params[1]) in seen:  # the same step again: in order
                        self._upsert_steps(conn, rows)
                        rows, seen = [], set()
                    seen.add((params[0], params[1]))
                    rows.append(params[: len(STEP_TYPES)])
                    out[i] = [1]
                else:
                    out[i] = self._apply(conn, ops, run_id, unless)
            self._upsert_steps(conn, rows)
            return out

        return self.write_transaction(body, what=f"writing {len(writes)} runs' steps")

    def _upsert_steps(self, conn: C, rows: Sequence[Sequence[Any]]) -> None:
        start = 0
        for size in step_chunks(len(rows)):
            chunk = rows[start : start + size]
            start += size
            sql = upsert_steps_sql(size, typed=self.typed_values, fence_lock=self.fence_lock)
            if conn.execute(sql, [v for row in chunk for v in row]).rowcount != size:
                raise lease_lost(None)  # `GroupCommit` retries each write alone to find which

    def _apply(
        self, conn: C, ops: Iterable[Op], run_id: str | None, unless: tuple[str, Sequence[Any]] | None
    ) -> list[int] | None:
        if unless is not None and self.blocked(conn, unless, run_id):
            return None
        counts: list[int] = []
        for sql, params, fenced in ops:
            n = conn.execute(sql, params).rowcount
            if fenced and n == 0:
                raise lease_lost(run_id)
            counts.append(n)
        return counts

    def blocked(self, conn: C, check: tuple[str, Sequence[Any]], run_id: str | None) -> bool:
        """Whether `check` (of `write_unless`) returns a row, inside the write's transaction."""
        return conn.execute(*check).fetchone() is not None

    def write_transaction(self, body: Callable[[C], T], *, what: str) -> T:
        """The transaction `write` runs its ops in (default: `transact`)."""
        return self.transact(body, what=what)


class Records:
    """The statements of one kind of record over one connection. Reads run anywhere; writes only
    inside `EventStore.transaction` (`writable`), so a read-check-write cannot be split by
    mistake across autocommitted statements."""

    def __init__(
        self, conn: Conn, *, writable: bool = True, clean: Callable[[str], str] = str, seals: Sealer | None = None
    ) -> None:
        self.conn = conn
        self.writable = writable
        #: Masks secrets in free text written (comments, reasons): the store's redaction.
        self.clean = clean
        #: Seals the payloads written and opens those read (the store's encryption at rest).
        self.seals = seals if seals is not None else Sealer(None)

    def _write(self, sql: str, params: Sequence[Any]) -> None:
        if not self.writable:
            raise StoreError(
                f"{type(self).__name__}: a write inside store.read(...), which is not a transaction; "
                "write inside store.transaction(...)"
            )
        self.conn.execute(sql, params)
