"""PostgreSQL for the tests: one database per test, cloned from a template migrated once per
session, and gates that hold a transaction at a chosen statement so a race is played out, not
hoped for.

`PgDatabases` owns every database a pytest session makes on the server named by
`AGENTFLOW_TEST_PG` (default: the local test server). Names carry the session's pid
(`aft_<pid>_…`), so concurrent sessions on one server never touch each other's databases, and a
session that was killed leaves databases the next session on this host drops.

`Gate` makes a race deterministic. It installs a trigger that makes chosen writes wait on an
advisory lock the test holds; the test lets the other side of the race run until every party is
either at the gate or blocked by the database (a row lock, an advisory lock: whatever the backend
uses to serialize them), then opens the gate. A correct backend makes the second party wait for the
first (or fails and retries it); a naive one lets both read the same state and write.
"""

from __future__ import annotations

import itertools
import os
import re
import socket
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

from agentflow.store._store import pid_alive
from agentflow.testing import assert_eventually

ENV = "AGENTFLOW_TEST_PG"
DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"
PREFIX = "aft_"
# A key no product code uses: advisory locks are per database, and every test has its own.
GATE_KEY = 774_411


def admin_url() -> str:
    """The URL of a database on the test server where this session may create databases."""
    return os.environ.get(ENV) or DEFAULT_ADMIN_URL


def libpq_url(url: str) -> str:
    """The libpq form of a SQLAlchemy PostgreSQL URL (psycopg does not know `+psycopg`)."""
    return re.sub(r"^postgresql\+\w+://", "postgresql://", url)


def sqlalchemy_url(url: str) -> str:
    """The SQLAlchemy URL with the psycopg (3) driver (plain `postgresql://` means psycopg2)."""
    return re.sub(r"^postgresql(\+\w+)?://", "postgresql+psycopg://", url)


def unavailable() -> str | None:
    """Why no PostgreSQL server can be used for the tests, or None when one answers."""
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed (pip install -e '.[postgres]')"
    try:
        with psycopg.connect(libpq_url(admin_url()), connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        detail = " ".join(str(exc).split())
        return f"no PostgreSQL server answers at {admin_url()} ({type(exc).__name__}: {detail})"
    return None


class PgDatabases:
    """The databases of one pytest session: a migrated template and one clone per test."""

    def __init__(self, url: str | None = None) -> None:
        import psycopg

        self.url = url or admin_url()
        self._conn = psycopg.connect(libpq_url(self.url), autocommit=True)
        self._names = (f"{PREFIX}{os.getpid()}_{n}" for n in itertools.count(1))
        self._mine: list[str] = []
        self._template: str | None = None
        self._template_error: BaseException | None = None
        self._sweep_stale()

    def url_of(self, name: str) -> str:
        parts = urlsplit(self.url)
        return parts._replace(path=f"/{name}").geturl()

    def empty(self) -> str:
        """A new database without any table (to run the migrations on)."""
        name = next(self._names)
        self._conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        self._mine.append(name)
        return self.url_of(name)

    def clone(self) -> str:
        """A new database with the current schema (a copy of the template: ~30 ms, no migration)."""
        if self._template_error is not None:  # one failed migration says it all: don't retry per test
            raise RuntimeError(f"the template database could not be built: {self._template_error!r}")
        if self._template is None:
            try:
                self._template = self._migrated_template()
            except BaseException as exc:
                self._template_error = exc
                raise
        name = next(self._names)
        self._conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{self._template}"')
        self._mine.append(name)
        return self.url_of(name)

    def drop(self, url: str) -> None:
        """Drop a database of this session, ending the connections still open to it."""
        name = urlsplit(url).path.lstrip("/")
        assert name in self._mine, f"{name} is not a database of this session"
        self._conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self._mine.remove(name)

    def close(self) -> None:
        """Drop every database this session made (the template last) and disconnect."""
        try:
            for name in reversed(self._mine):
                self._conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            self._mine.clear()
        finally:
            self._conn.close()

    def _migrated_template(self) -> str:
        from agentflow.store import EventStore

        url = self.empty()
        # Opening a store runs the migrations; closing it must leave no connection behind, or
        # CREATE DATABASE … TEMPLATE refuses ("source database is being accessed by other users").
        EventStore(url).close()
        return urlsplit(url).path.lstrip("/")

    def _sweep_stale(self) -> None:
        """Drop the databases of killed sessions of this host (their pid is gone)."""
        if urlsplit(libpq_url(self.url)).hostname not in ("127.0.0.1", "localhost", "::1", socket.gethostname()):
            return  # a shared server: the pids in the names are another machine's
        rows = self._conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", (PREFIX + "%",)).fetchall()
        for (name,) in rows:
            m = re.fullmatch(rf"{PREFIX}(\d+)_\w+", name)
            if m and int(m.group(1)) != os.getpid() and not pid_alive(int(m.group(1)), ""):
                self._conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def execute(url: str, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """Run one statement (`?` placeholders) on its own connection, committed; rows if any.

    What another process does to the database behind the App's back (a takeover, a worker row)."""
    if url.startswith("sqlite:///"):
        import sqlite3
        from contextlib import closing

        with closing(sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None, timeout=10)) as conn:
            return conn.execute(sql, tuple(params)).fetchall()
    import psycopg

    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        cur = conn.execute(sql.replace("?", "%s"), tuple(params))
        return cur.fetchall() if cur.description else []


def _trigger_sql(table: str, timing: str, when: str | None) -> list[str]:
    fn = f"af_test_gate_{table}"
    return [
        f"CREATE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        # Shared: every party waits for the test, not for each other; released at commit.
        f"PERFORM pg_advisory_xact_lock_shared({GATE_KEY}); RETURN NEW; END $$",
        f"CREATE TRIGGER af_test_gate {timing} ON {table} FOR EACH ROW "
        f"{f'WHEN ({when}) ' if when else ''}EXECUTE FUNCTION {fn}()",
    ]


class Gate:
    """Hold writes to `table` (rows matching `when`) at the trigger until `open()`.

    Args:
        url: the test's PostgreSQL database.
        table: the table whose writes wait.
        timing: the trigger's timing and events, e.g. "BEFORE INSERT".
        when: the trigger's WHEN condition over OLD/NEW (None: every row).

    The gate is closed once: after `open()` every later write passes at once (a retried
    transaction does not wait again).
    """

    def __init__(self, url: str, table: str, *, timing: str = "BEFORE INSERT", when: str | None = None) -> None:
        import psycopg

        self.url = url
        self._conn = psycopg.connect(libpq_url(url), autocommit=True)
        self._closed = True
        try:
            self._conn.execute("SELECT pg_advisory_lock(%s)", (GATE_KEY,))
            for sql in _trigger_sql(table, timing, when):
                self._conn.execute(sql)
        except BaseException:
            self._conn.close()
            raise

    def at_gate(self) -> int:
        """How many transactions wait at the gate now."""
        return self._count(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND objid = %s "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            (GATE_KEY,),
        )

    def blocked(self) -> int:
        """How many transactions of this database wait for a lock (at the gate or elsewhere)."""
        return self._count(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
        )

    def activity(self) -> str:
        """The other sessions of this database, for assertion messages."""
        rows = self._conn.execute(
            "SELECT pid, state, wait_event_type, wait_event, left(query, 160) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() ORDER BY pid"
        ).fetchall()
        return "\n".join(map(str, rows))

    def wait_at_gate(self, n: int = 1, *, failed: Callable[[], object] | None = None, timeout: float = 30.0) -> None:
        """Wait until `n` transactions wait at the gate (`failed()`: a party's error, if any)."""
        self.wait(lambda: self.at_gate() >= n, f"fewer than {n} transaction(s) reached the gate", failed, timeout)

    def wait_blocked(self, n: int, *, failed: Callable[[], object] | None = None, timeout: float = 30.0) -> None:
        """Wait until `n` transactions wait for a lock: every party of the race is either at the
        gate or held by the backend's own serialization."""
        what = f"fewer than {n} transaction(s) are at the gate or blocked"
        self.wait(lambda: self.blocked() >= n, what, failed, timeout)

    def wait(
        self, done: Callable[[], bool], what: str, failed: Callable[[], object] | None = None, timeout: float = 30.0
    ) -> None:
        """Poll `done` until true; fail with `what` and the database's sessions if it stays false
        or `failed()` reports a party's error."""

        def check() -> bool:
            error = failed() if failed is not None else None
            if error:
                raise AssertionError(f"a party of the race failed before the gate opened: {error!r}")
            return done()

        try:
            assert_eventually(check, timeout=timeout)
        except AssertionError as exc:
            raise AssertionError(f"{what}: {exc}\nsessions of the database:\n{self.activity()}") from None

    def scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """One value read on the gate's own connection (reads never wait for the held writes)."""
        row = self._conn.execute(sql.replace("?", "%s"), tuple(params)).fetchone()
        return None if row is None else row[0]

    def open(self) -> None:
        if self._closed:
            self._conn.execute("SELECT pg_advisory_unlock(%s)", (GATE_KEY,))
            self._closed = False

    def close(self) -> None:
        try:
            self.open()
        finally:
            self._conn.close()

    def __enter__(self) -> Gate:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _count(self, sql: str, params: Sequence[Any] = ()) -> int:
        return int(self.scalar(sql, params))
