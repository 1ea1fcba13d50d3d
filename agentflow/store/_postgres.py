"""The PostgreSQL event store: many worker processes on many hosts share one database.

`pip install 'agentflow[postgres]'` (psycopg 3), then `App("postgresql://user:pw@host:5432/db")`
(`postgresql+psycopg://` works too). The schema is created and upgraded on first open, like
SQLite's; concurrent first opens wait for each other on an advisory lock.

Concurrency, at READ COMMITTED:

- A step write is fenced on the run's lease epoch like on SQLite; the fence takes a share lock on
  the run's row, so a takeover (which updates that row) waits for a step write that already passed
  the fence, and then loads a history that includes it.
- A park (`write_unless`) locks the run's row before checking for events, and every wake-up
  updates that row, so a signal either is seen by the check or wakes the parked run.
- Runs are claimed by one `UPDATE ... FROM (SELECT ... FOR UPDATE OF r SKIP LOCKED)`: workers
  never wait for each other's claims and never claim the same run.
- `transact` (approval decisions, policy decisions, sessions, forks) takes advisory locks: per
  key where the caller names what its read-check-write depends on (a policy decision: its
  tenant and its target; an approval decision: its tenant), else one for the whole database.
  Bodies that share a key are serialized as on SQLite; other tenants' go on in parallel.
- Lease times (heartbeats and staleness) use the database server's clock, shared by every host.

Durability: `synchronous="FULL"` is `synchronous_commit=on` (a commit is flushed to the server's
WAL before it returns); `"NORMAL"` is `synchronous_commit=off` (the server may lose its last
commits if it crashes). `busy_timeout` becomes `lock_timeout`: a lock waited for longer raises
`StoreBusyError`, as do deadlocks and a lost connection (the next call reconnects). A URL the
server refuses (no such database, no such user, a wrong password) is a `ConfigurationError`
naming the fix: retrying cannot cure it.

The SQL at call sites is SQLite's subset with `?` placeholders; each statement is translated to
psycopg's `%s` once (cached).
"""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import psycopg  # only imported for a PostgreSQL URL, once `backend_entry` found it installed
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict

from agentflow.errors import ConfigurationError, StoreBusyError, StoreError
from agentflow.store._backend import ConnectionPerThread, Op, lease_lost, upsert_step_sql
from agentflow.store._constants import TERMINAL_SQL, VERSION_TABLE
from agentflow.store._urls import redact_url

T = TypeVar("T")

DEFAULT_BUSY_TIMEOUT = 30.0
# agentflow never waits inside a transaction (no tool call, no await: statements and Python between
# them), so a session idle in one this long belongs to a frozen process (SIGSTOP, a paused VM)
# holding row locks: the server ends it, and the runs it locked can be taken over once their lease
# expires (claims skip locked rows). The frozen process finds its connection gone and hands back.
IDLE_IN_TRANSACTION_TIMEOUT = 2.0
# Advisory lock keys (per database): one serializes `transact` bodies, one the schema migration.
TRANSACT_LOCK = 0x6166_0001
MIGRATE_LOCK = 0x6166_0002
# Real time (seconds since the epoch) on the server when the expression is evaluated.
SQL_NOW = "(extract(epoch from clock_timestamp())::float8)"


@functools.lru_cache(maxsize=2048)
def translate(sql: str) -> str:
    """`?` placeholders to psycopg's `%s` (and a literal `%` to `%%`)."""
    return sql.replace("%", "%%").replace("?", "%s")


def libpq_url(url: str) -> str:
    """The URL psycopg connects to (SQLAlchemy's `+psycopg` driver suffix removed)."""
    return re.sub(r"^postgresql\+psycopg://", "postgresql://", url)


def sqlalchemy_url(url: str) -> str:
    """The URL SQLAlchemy (and so Alembic) opens with psycopg 3 (plain `postgresql://` means
    psycopg2 in SQLAlchemy 2.0)."""
    return re.sub(r"^postgresql(\+psycopg)?://", "postgresql+psycopg://", url)


class PgConn:
    """A psycopg connection that takes the store's `?` placeholders."""

    def __init__(self, raw: psycopg.Connection[Any]) -> None:
        self.raw = raw

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> psycopg.Cursor[Any]:
        return self.raw.execute(translate(sql), tuple(parameters))

    def close(self) -> None:
        self.raw.close()


def translate_error(exc: Exception, what: str) -> StoreError:
    text = str(exc).strip()
    if isinstance(exc, psycopg.OperationalError):
        # Lock timeouts, deadlocks, serialization failures, a lost connection or a server shut down.
        return StoreBusyError(
            f"{what}: the database was busy or unreachable ({type(exc).__name__}: {text}). Nothing was "
            "lost; retry later (the run resumes where it stopped)."
        )
    return StoreError(f"{what}: {type(exc).__name__}: {text}")


# What the server answers when the URL itself is wrong (not when it is busy or down): retrying
# cannot help, so these are configuration errors.
_NO_DATABASE = re.compile(r'database "([^"]*)" does not exist')
_BAD_LOGIN = re.compile(
    r'role "([^"]*)" does not exist|password authentication failed for user "([^"]*)"'
    r"|no password supplied|no pg_hba\.conf entry"
)


def refused_connection(url: str, exc: psycopg.OperationalError) -> ConfigurationError | None:
    """A ConfigurationError naming the fix when the server refused the URL's database or user
    (no such database, no such role, a wrong password); None for anything a retry may cure."""
    text = str(exc)
    try:
        params = conninfo_to_dict(libpq_url(url))
    except psycopg.ProgrammingError:
        params = {}
    where = f"{params.get('host') or 'localhost'}:{params.get('port') or 5432}"
    user = params.get("user") or "(the current OS user)"
    dbname = params.get("dbname") or user
    server = text.rsplit("FATAL:", 1)[-1].strip()
    if found := _NO_DATABASE.search(text):
        return ConfigurationError(
            f'the PostgreSQL database "{found.group(1)}" does not exist on {where} ({redact_url(url)}): create it '
            f'(createdb -h {params.get("host") or "localhost"} {found.group(1)}, or CREATE DATABASE "{found.group(1)}") '
            "or fix the database name in --db / $AGENTFLOW_DB"
        )
    if _BAD_LOGIN.search(text):
        return ConfigurationError(
            f'PostgreSQL on {where} refused user "{user}" for database "{dbname}" ({server}): fix the user or '
            "password in --db / $AGENTFLOW_DB (postgresql://user:password@host:port/dbname), or create the role "
            f'(CREATE ROLE "{user}" LOGIN PASSWORD ...; GRANT ALL ON DATABASE "{dbname}" TO "{user}")'
        )
    return None


class PostgresStore(ConnectionPerThread[PgConn]):
    """The PostgreSQL backend. One connection per thread; writes are short transactions."""

    dialect = "postgresql"
    path = ""
    now_sql = SQL_NOW
    fence_lock = " FOR SHARE"
    upsert_step_sql = upsert_step_sql(fence_lock)
    typed_values = True
    driver_error = psycopg.Error

    def __init__(self, url: str, *, synchronous: str = "FULL", busy_timeout: float = DEFAULT_BUSY_TIMEOUT) -> None:
        super().__init__()
        synchronous = synchronous.upper()
        if synchronous not in ("FULL", "NORMAL"):
            raise ConfigurationError(
                "synchronous must be 'FULL' (a commit is flushed to the server's WAL) or 'NORMAL' "
                "(synchronous_commit=off)"
            )
        self.url = url
        self.where = redact_url(url)
        self.synchronous = synchronous
        self.busy_timeout = busy_timeout

    # -- connections -----------------------------------------------------------------------
    def connect_raw(self) -> PgConn:
        """A new connection with the store's settings (autocommit; transactions are explicit)."""
        options = (
            f"-c lock_timeout={max(1, int(self.busy_timeout * 1000))} "
            f"-c idle_in_transaction_session_timeout={int(IDLE_IN_TRANSACTION_TIMEOUT * 1000)} "
            f"-c synchronous_commit={'on' if self.synchronous == 'FULL' else 'off'}"
        )
        try:
            raw = psycopg.connect(libpq_url(self.url), autocommit=True, options=options, application_name="agentflow")
        except psycopg.OperationalError as exc:
            raise refused_connection(self.url, exc) or exc from None
        return PgConn(raw)

    def usable(self, conn: PgConn) -> bool:
        return not (conn.raw.closed or conn.raw.broken)

    def translate_error(self, exc: Exception, what: str) -> StoreError:
        return translate_error(exc, what)

    # -- transactions ----------------------------------------------------------------------
    def write(self, ops: Iterable[Op], *, run_id: str | None = None) -> list[int]:
        """Run `ops` in one transaction; return rowcounts. A single statement (most step
        writes) is sent alone: it is a transaction of its own, one round trip instead of three."""
        ops = ops if isinstance(ops, list) else list(ops)
        if len(ops) != 1:
            # BEGIN, each statement, COMMIT. (A pipeline saving the round trips was slower on a
            # local server: psycopg's pipeline costs more CPU than the round trips it saves.)
            return super().write(ops, run_id=run_id)
        ((sql, params, fenced),) = ops
        try:
            n = self.conn.execute(sql, params).rowcount
        except psycopg.Error as exc:
            raise translate_error(exc, f"writing run {run_id}" if run_id else "writing the store") from None
        if fenced and n == 0:
            raise lease_lost(run_id)  # it changed nothing: there is nothing to roll back
        return [n]

    def blocked(self, conn: PgConn, check: tuple[str, Sequence[Any]], run_id: str | None) -> bool:
        # Every wake-up updates the run's row: it waits for this transaction, or this check sees
        # the event it delivered.
        conn.execute("SELECT 1 FROM af_runs WHERE id = ? FOR UPDATE", (run_id,))
        return conn.execute(*check).fetchone() is not None

    def write_transaction(self, body: Callable[[PgConn], T], *, what: str) -> T:
        return self._run(body, "BEGIN", what=what)  # no global lock: runs write in parallel

    def transact(self, body: Callable[[PgConn], T], *, what: str = "writing the store", locks: Sequence[str] = ()) -> T:
        """Run `body(conn)` in one transaction: committed when it returns, rolled back when it
        raises. It holds an advisory lock per name in `locks` (taken in sorted order, so two
        transactions never wait for each other crosswise), or one lock for the whole database
        when `locks` is empty; a read-check-write in `body` is atomic against every transaction
        naming one of its locks (how approval quorums and policy limits hold across hosts,
        while other tenants' decisions go on in parallel)."""
        if not locks:
            return self._run(body, f"BEGIN; SELECT pg_advisory_xact_lock({TRANSACT_LOCK})", what=what)

        def locked(conn: PgConn) -> T:
            for name in sorted(set(locks)):
                conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(?, 0))", (f"agentflow:{name}",))
            return body(conn)

        return self._run(locked, "BEGIN", what=what)

    def _run(self, body: Callable[[PgConn], T], begin: str, *, what: str) -> T:
        conn = self.conn
        try:
            conn.raw.execute(begin.encode())
            try:
                result = body(conn)
                conn.raw.execute(b"COMMIT")
            except BaseException:
                self._rollback(conn)
                raise
        except psycopg.Error as exc:
            raise translate_error(exc, what) from None
        return result

    def _rollback(self, conn: PgConn) -> None:
        if not self.usable(conn):
            self.forget(conn)
            return
        if conn.raw.info.transaction_status != pq.TransactionStatus.IDLE:
            try:
                conn.raw.execute(b"ROLLBACK")
            except psycopg.Error:
                self.forget(conn)

    # -- notifications -----------------------------------------------------------------------
    def listen(self, callback: Callable[[str], None]) -> RunListener:
        """Call `callback(run_id)` (on a thread of its own) whenever a run becomes runnable
        (created, handed back, woken by a signal, an approval, a child or a cancel): how idle
        workers learn of new work at once instead of polling. `callback("")` after (re)connecting:
        notifications sent while not listening are lost, so look at the table then."""
        return RunListener(self, callback)

    # -- dialect ---------------------------------------------------------------------------
    def schema_revision(self) -> str | None:
        (found,) = self.query("SELECT to_regclass(?)::text", (VERSION_TABLE,))[0]
        if found is None:
            return None
        rows = self.query(f"SELECT version_num FROM {VERSION_TABLE}")
        return rows[0][0] if rows else None

    def db_time(self) -> float:
        return float(self.query(f"SELECT {SQL_NOW}")[0][0])

    def json_text(self, column: str, path: str) -> str:
        return f"(({column})::jsonb #>> '{{{','.join(path.split('.'))}}}')"

    def json_num(self, column: str, path: str) -> str:
        return f"({self.json_text(column, path)})::float8"

    # -- claiming runs ---------------------------------------------------------------------
    def claim(
        self, worker_id: str, *, now: float, lease_ttl: float, limit: int,
        root_id: str | None = None, workflows: Sequence[str] = (),
    ) -> list[tuple[str, int, bool]]:  # fmt: skip
        """Claim up to `limit` runnable runs in one statement: candidates are locked with
        `SKIP LOCKED` (a run another worker is claiming, or whose owner is writing, is passed
        over) and re-checked on their latest version before the update."""
        scope = ""
        params: list[Any] = [now, worker_id, lease_ttl, worker_id]
        if root_id is not None:
            scope += "AND r.root_id = ? "
            params.append(root_id)
        if workflows:
            scope += f"AND r.workflow IN ({','.join('?' * len(workflows))}) "
            params.extend(workflows)
        params += [limit, worker_id, now]
        sql = (
            "WITH c AS (SELECT r.id, r.status, r.created_at FROM af_runs r "
            "LEFT JOIN af_workers w ON w.id = r.owner "
            "WHERE (r.status = 'pending' OR (r.status = 'waiting' AND r.wake_at <= ?) "
            "OR (r.status = 'running' AND (w.id IS NULL OR w.dead = 1 OR w.heartbeat_at < "
            # Stale relative to the claimer's own last beat, as on SQLite (a stalled database
            # makes every heartbeat old at once).
            f"LEAST({SQL_NOW}, coalesce((SELECT m.heartbeat_at FROM af_workers m WHERE m.id = ?), {SQL_NOW})) - ?))) "
            f"AND (r.owner IS NULL OR r.owner != ?) {scope}"
            "ORDER BY r.created_at, r.id LIMIT ? FOR UPDATE OF r SKIP LOCKED) "
            "UPDATE af_runs SET status = 'running', owner = ?, epoch = af_runs.epoch + 1, updated_at = ? "
            f"FROM c WHERE af_runs.id = c.id AND af_runs.status NOT IN {TERMINAL_SQL} "
            "RETURNING af_runs.id, af_runs.epoch, c.status = 'running', c.created_at"
        )
        try:
            rows = self.conn.execute(sql, params).fetchall()  # one statement: its own transaction
        except psycopg.Error as exc:
            raise translate_error(exc, "claiming runs") from None
        rows.sort(key=lambda r: (r[3], r[0]))
        return [(r[0], r[1], bool(r[2])) for r in rows]


#: The channel migration 0008's trigger notifies when a run becomes runnable.
RUNS_CHANNEL = "agentflow_runs"


class RunListener:
    """A thread that LISTENs on `RUNS_CHANNEL` on a connection of its own (see
    `PostgresStore.listen`). It reconnects (waiting longer each time, up to 5 s) while the
    server is unreachable; `close()` stops and joins it."""

    def __init__(self, store: PostgresStore, callback: Callable[[str], None]) -> None:
        self._url = libpq_url(store.url)
        self._callback = callback
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="agentflow-listen", daemon=True)
        self._thread.start()
        self._ready.wait(5.0)  # listening (or failing to) before the caller goes idle

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def _serve(self) -> None:
        backoff = 0.1
        while not self._stop.is_set():
            try:
                with psycopg.connect(
                    self._url, autocommit=True, application_name="agentflow-listen", connect_timeout=5
                ) as conn:
                    conn.execute(f"LISTEN {RUNS_CHANNEL}")
                    self._ready.set()
                    backoff = 0.1
                    self._callback("")  # anything sent while we were not listening
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=0.25):
                            self._callback(note.payload)
            except psycopg.Error:
                self._ready.set()
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
