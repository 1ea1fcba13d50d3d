"""Bad input fails loudly with a typed error that says what to do, and never loses what was
recorded: unknown ids, unregistered code, values that are not JSON, corrupt rows, a newer schema,
a locked database, an unsupported URL, wrong arguments."""

from __future__ import annotations

import asyncio
import json
import socket
import sqlite3
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from agentflow import ActivityError, App, RunFailedError, WorkflowContext
from agentflow.errors import (
    ConfigurationError,
    CorruptRecordError,
    NotRegisteredError,
    PayloadError,
    SchemaVersionError,
    StoreBusyError,
    StoreError,
    UnknownRunError,
)
from agentflow.store import EventStore
from agentflow.testing import assert_eventually


def drive(app: App, run_id: str) -> None:
    """Drive the run (and its children) in this thread until it has ended."""
    asyncio.run(app.worker(root_id=run_id).run_until_done(run_id))


def raw(db_url: str) -> sqlite3.Connection:
    """A plain sqlite3 connection to the store's file, outside agentflow."""
    return sqlite3.connect(db_url.removeprefix("sqlite:///"), isolation_level=None, timeout=5)


@pytest.fixture
def a_socket() -> Iterator[socket.socket]:
    s = socket.socket()
    yield s
    s.close()


# ------------------------------------------------------------------------------------------
# unknown ids, unregistered code
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda app: app.get_run("nope"), id="get_run"),
        pytest.param(lambda app: app.history("nope"), id="history"),
        pytest.param(lambda app: app.signal("nope", "approval", True), id="signal"),
        pytest.param(lambda app: app.cancel("nope"), id="cancel"),
    ],
)
def test_unknown_run_id_raises_unknown_run_error(app, call: Callable[[App], Any]) -> None:
    """Every API taking a run id raises `UnknownRunError` for an id that does not exist, naming
    the id and how to list the runs that do."""
    with pytest.raises(UnknownRunError) as info:
        call(app)
    assert info.value.run_id == "nope"
    assert "'nope'" in info.value.message
    assert "agentflow runs list" in info.value.message
    assert info.value.retryable is False


def test_unregistered_workflow_raises_not_registered(app, make_app) -> None:
    """Starting a workflow registered on another App, or asking for an unknown workflow name,
    raises `NotRegisteredError` (a `ConfigurationError`), listing what is registered."""
    other = make_app()

    @other.workflow(name="elsewhere")
    async def elsewhere(ctx: WorkflowContext) -> None:
        return None

    @app.workflow(name="here")
    async def here(ctx: WorkflowContext) -> None:
        return None

    with pytest.raises(NotRegisteredError, match=r"@app\.workflow"):
        app.start(elsewhere)
    with pytest.raises(NotRegisteredError, match=r"'elsewhere'.*registered: here"):
        app.workflow_named("elsewhere")
    assert issubclass(NotRegisteredError, ConfigurationError)
    assert app.list_runs() == []


def test_unregistered_activity_fails_the_run_with_not_registered(app, make_app) -> None:
    """Calling an activity registered on another App fails the run with `NotRegisteredError`;
    the activity is not executed."""
    other = make_app()
    calls: list[int] = []

    @other.activity(name="foreign")
    def foreign() -> None:
        calls.append(1)

    @app.workflow(name="calls_foreign")
    async def calls_foreign(ctx: WorkflowContext) -> None:
        await ctx.run(foreign)

    with pytest.raises(RunFailedError) as info:
        app.run(calls_foreign, run_id="r")
    assert info.value.error["type"] == "NotRegisteredError"
    assert "foreign" in info.value.error["message"]
    assert calls == []


def test_plain_function_passed_to_ctx_run_is_refused(app) -> None:
    """`ctx.run` takes only registered activities: a plain function raises TypeError saying to
    decorate it, and is not called."""
    calls: list[int] = []

    def plain() -> None:
        calls.append(1)

    @app.workflow(name="wf")
    async def wf(ctx: WorkflowContext) -> str:
        try:
            await ctx.run(plain)  # type: ignore[arg-type]
        except TypeError as exc:
            return str(exc)
        return "ran"

    assert "@app.activity" in app.run(wf, run_id="r")
    assert calls == []


# ------------------------------------------------------------------------------------------
# values that are not JSON
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [object(), "socket"], ids=["object", "socket"])
def test_unserializable_workflow_arguments_raise_payload_error(app, a_socket, value) -> None:
    """Workflow arguments that do not encode as JSON raise `PayloadError` at `start`, naming the
    workflow and the type, and no run is created."""
    value = a_socket if value == "socket" else value

    @app.workflow(name="takes_anything")
    async def takes_anything(ctx: WorkflowContext, thing: Any) -> None:
        return None

    with pytest.raises(PayloadError) as info:
        app.start(takes_anything, value, run_id="r")
    message = info.value.message
    assert "the arguments of workflow takes_anything" in message
    assert type(value).__name__ in message
    assert "JSON" in message
    assert app.list_runs() == []


def test_unserializable_activity_arguments_fail_the_run_and_keep_the_history(app, a_socket) -> None:
    """Activity arguments that do not encode raise `PayloadError` in the workflow; the activity
    is not executed and the steps recorded before it are kept as they were."""
    calls: list[str] = []

    @app.activity(name="first")
    def first() -> str:
        calls.append("first")
        return "kept"

    @app.activity(name="send")
    def send(conn: Any) -> None:
        calls.append("send")

    @app.workflow(name="wf")
    async def wf(ctx: WorkflowContext) -> None:
        await ctx.run(first)
        await ctx.run(send, a_socket)

    with pytest.raises(RunFailedError) as info:
        app.run(wf, run_id="r")
    assert info.value.error["type"] == "PayloadError"
    assert "the arguments of activity send" in info.value.error["message"]
    assert "socket" in info.value.error["message"]
    assert calls == ["first"]
    steps = app.history("r")
    assert [(s.seq, s.name, s.status, s.result) for s in steps] == [(1, "first", "completed", '"kept"')]


def test_unserializable_activity_result_fails_the_step_without_retry(app) -> None:
    """An activity result that does not encode is a non-retryable `PayloadError`: the step fails
    on the first attempt with that cause."""
    calls: list[int] = []

    @app.activity(name="returns_object")
    def returns_object() -> Any:
        calls.append(1)
        return object()

    @app.workflow(name="wf")
    async def wf(ctx: WorkflowContext) -> list[Any]:
        try:
            await ctx.run(returns_object)
        except ActivityError as exc:
            return [exc.cause_type, exc.attempts]
        return []

    assert app.run(wf, run_id="r") == ["PayloadError", 1]
    assert calls == [1]


def test_unserializable_signal_payload_raises_and_stores_nothing(app) -> None:
    """A signal payload that does not encode raises `PayloadError` and no signal is stored."""

    @app.workflow(name="waiter")
    async def waiter(ctx: WorkflowContext) -> Any:
        return await ctx.wait_signal("approval")

    app.start(waiter, run_id="r")
    with pytest.raises(PayloadError, match="signal 'approval'"):
        app.signal("r", "approval", object())
    assert app.store.backend.query("SELECT count(*) FROM af_signals") == [(0,)]


# ------------------------------------------------------------------------------------------
# corrupt rows, a newer schema
# ------------------------------------------------------------------------------------------
def test_corrupt_step_row_fails_the_run_and_is_left_untouched(app, db_url, worker_thread) -> None:
    """A recorded result that is not valid JSON fails the run with `CorruptRecordError` (naming
    the step) on replay; nothing is executed from it and the row is left as it is. After the row
    is repaired, `app.resume` finishes the run from its history."""
    calls: list[int] = []

    @app.activity(name="read")
    def read() -> int:
        calls.append(1)
        return 41

    @app.workflow(name="wf")
    async def wf(ctx: WorkflowContext) -> int:
        n = await ctx.run(read)
        await ctx.wait_signal("go")
        return n + 1

    app.start(wf, run_id="r")
    w = worker_thread(app)
    assert_eventually(lambda: app.get_run("r").status == "waiting")
    w.stop()

    conn = raw(db_url)
    conn.execute("UPDATE af_steps SET result = '{not json' WHERE run_id = 'r' AND seq = 1")
    app.signal("r", "go")
    drive(app, "r")

    info = app.get_run("r")
    assert info.status == "failed"
    assert info.error is not None
    assert info.error["type"] == "CorruptRecordError"
    assert info.error["seq"] == 1
    assert "does not decode" in info.error["message"]
    assert conn.execute("SELECT result, status FROM af_steps WHERE run_id = 'r' AND seq = 1").fetchall() == [
        ("{not json", "completed")
    ]
    assert calls == [1], "the step was executed again instead of failing on the corrupt record"

    conn.execute("UPDATE af_steps SET result = '41' WHERE run_id = 'r' AND seq = 1")
    conn.close()
    assert app.resume("r").status == "pending"
    drive(app, "r")
    assert app.result_of(app.store.get_run("r")) == 42
    assert calls == [1]


def test_corrupt_record_error_is_not_retryable() -> None:
    """`CorruptRecordError` is a `StoreError` that is not retryable: trying again reads the same
    bad row."""
    assert issubclass(CorruptRecordError, StoreError)
    assert CorruptRecordError("x").retryable is False


def test_newer_schema_is_refused(app, db_url) -> None:
    """A database whose schema revision this agentflow does not know (written by a newer one)
    raises `SchemaVersionError` on open, saying to upgrade agentflow, and is not changed."""
    app.store  # create the schema  # noqa: B018
    app.close()
    conn = raw(db_url)
    conn.execute("UPDATE af_alembic_version SET version_num = '9999'")

    with pytest.raises(SchemaVersionError) as info:
        EventStore(db_url)
    assert "'9999'" in info.value.message
    assert "Upgrade agentflow" in info.value.message
    with pytest.raises(SchemaVersionError):
        App(db_url).get_run("any")
    assert conn.execute("SELECT version_num FROM af_alembic_version").fetchall() == [("9999",)]
    conn.close()


# ------------------------------------------------------------------------------------------
# a locked database, an unsupported URL, wrong arguments
# ------------------------------------------------------------------------------------------
def test_locked_database_raises_retryable_store_busy_and_recovers(make_app, db_url) -> None:
    """A write that waits for the lock longer than `busy_timeout` raises `StoreBusyError` with
    `retryable` True; nothing is half-written, and once the lock is released the same start
    succeeds and the run completes."""
    app = make_app(busy_timeout=0.2)

    @app.workflow(name="wf")
    async def wf(ctx: WorkflowContext, n: int) -> int:
        return n * 2

    app.store  # migrate before another connection takes the write lock  # noqa: B018
    holder = raw(db_url)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StoreBusyError) as info:
            app.start(wf, 21, run_id="r")
        assert info.value.retryable is True
        assert "locked" in info.value.message
        assert app.list_runs() == []  # reads still work under a writer (WAL)
    finally:
        holder.execute("ROLLBACK")
        holder.close()

    handle = app.start(wf, 21, run_id="r")
    assert handle.created
    drive(app, "r")
    assert handle.result(timeout=5) == 42


@pytest.mark.parametrize("url", ["mysql://user:pw@localhost/agentflow", "postgres://localhost/db", "agentflow.db"])
def test_unsupported_database_url_raises_configuration_error(url: str) -> None:
    """A URL of another database (or no URL) is refused at once, naming the two that work, and
    without echoing a password."""
    with pytest.raises(ConfigurationError, match=r"sqlite:///.*postgresql://") as info:
        App(db=url)
    assert "pw" not in info.value.message


def test_postgresql_url_is_accepted_without_connecting() -> None:
    """A PostgreSQL URL is a store `App` takes (the database is opened on first use)."""
    for url in ("postgresql://user:pw@localhost/agentflow", "postgresql+psycopg://user@localhost/agentflow"):
        assert App(db=url).db == url


def test_postgresql_url_without_psycopg_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the driver, a PostgreSQL URL is a `ConfigurationError` naming the extra to install."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "psycopg" else real(name, *a))
    with pytest.raises(ConfigurationError, match=r"pip install 'agentflow\[postgres\]'") as info:
        App(db="postgresql://user:secret@localhost/agentflow")
    assert "secret" not in info.value.message


def test_in_memory_database_is_refused() -> None:
    """An in-memory SQLite database cannot be shared by workers: `ConfigurationError`."""
    with pytest.raises(ConfigurationError, match="in-memory"):
        App(db="sqlite:///:memory:").store  # noqa: B018


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        pytest.param((), {}, "missing a required argument", id="missing"),
        pytest.param((1, 2), {}, "too many positional arguments", id="too-many"),
        pytest.param((1,), {"colour": "red"}, "unexpected keyword argument", id="unknown-kwarg"),
    ],
)
def test_bad_workflow_arguments_raise_configuration_error(app, args, kwargs, match) -> None:
    """Arguments that do not fit the workflow's signature raise `ConfigurationError` at `start`
    naming the workflow, and no run is created."""

    @app.workflow(name="needs_site")
    async def needs_site(ctx: WorkflowContext, site: int) -> None:
        return None

    with pytest.raises(ConfigurationError, match=match) as info:
        app.start(needs_site, *args, **kwargs)
    assert "needs_site" in info.value.message
    assert app.list_runs() == []


def test_run_id_with_slash_is_refused(app) -> None:
    """'/' is reserved for child run ids: a run id containing it raises `ConfigurationError`."""

    @app.workflow(name="wf")
    async def wf(ctx: WorkflowContext) -> None:
        return None

    with pytest.raises(ConfigurationError, match="'/'"):
        app.start(wf, run_id="a/b")


def test_error_dicts_carry_structured_fields() -> None:
    """`to_dict()` of an agentflow error carries its type, message, ids and retryability."""
    err = StoreBusyError("busy", run_id="r", seq=3, tenant="t")
    assert err.to_dict() == {
        "type": "StoreBusyError",
        "message": "busy",
        "run_id": "r",
        "seq": 3,
        "tenant": "t",
        "retryable": True,
    }
    assert json.loads(json.dumps(err.to_dict())) == err.to_dict()
