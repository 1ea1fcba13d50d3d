"""The store on both backends (a real SQLite file, a PostgreSQL database): the migrations build
exactly the declared schema, a database from a newer agentflow is refused, starting a run is
idempotent; and, on SQLite, the storage settings the engine relies on."""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine
from sqlmodel import SQLModel
from support.pg import sqlalchemy_url

from agentflow import App, WorkflowContext
from agentflow.errors import ConfigurationError, SchemaVersionError
from agentflow.store import (
    SCHEMA_REVISION,
    EventStore,
    _models,  # noqa: F401  (registers the af_ tables on SQLModel.metadata)
)
from agentflow.store._constants import VERSION_TABLE
from agentflow.store._schema import KNOWN_REVISIONS, alembic_config

pytestmark = pytest.mark.backends("sqlite", "postgresql")


def _agentflow_tables(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
    if type_ == "table":
        return bool(name and name.startswith("af_") and name != VERSION_TABLE)
    return True


def _raw(db_url: str) -> sqlite3.Connection:
    return sqlite3.connect(db_url.removeprefix("sqlite:///"), isolation_level=None)


def test_migrations_build_exactly_the_sqlmodel_schema(empty_db_url) -> None:
    """Running the migrations on an empty database yields the tables, columns, types,
    nullability and indexes of the SQLModel models: Alembic's autogenerate finds nothing to
    change."""
    EventStore(empty_db_url).close()
    engine = create_engine(sqlalchemy_url(empty_db_url) if empty_db_url.startswith("postgresql") else empty_db_url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn,
                opts={"compare_type": True, "compare_server_default": True, "include_object": _agentflow_tables},
            )
            assert compare_metadata(context, SQLModel.metadata) == []
            tables = {t for t in SQLModel.metadata.tables if t.startswith("af_")}
            assert tables == {
                "af_runs", "af_steps", "af_step_attempts", "af_signals", "af_workers", "af_blobs",
                "af_principals", "af_approvals", "af_approval_votes", "af_audit", "af_policy_usage", "af_sessions",
                "af_settings", "af_operator_tokens", "af_events", "af_webhooks", "af_deliveries", "af_chat_links",
                "af_chat_cards",
            }  # fmt: skip
    finally:
        engine.dispose()


def test_known_revisions_match_alembic_heads(db_url) -> None:
    """`SCHEMA_REVISION` is the single head of the migration scripts, `KNOWN_REVISIONS` lists
    every script oldest first, and a migrated database records the head."""
    scripts = ScriptDirectory.from_config(alembic_config(db_url))
    assert scripts.get_heads() == [SCHEMA_REVISION]
    assert KNOWN_REVISIONS == tuple(reversed([s.revision for s in scripts.walk_revisions()]))
    assert KNOWN_REVISIONS[-1] == SCHEMA_REVISION

    store = EventStore(db_url)
    try:
        assert store.backend.query(f"SELECT version_num FROM {VERSION_TABLE}") == [(SCHEMA_REVISION,)]
    finally:
        store.close()


def test_opening_a_current_database_again_does_not_migrate(db_url, backend) -> None:
    """A second open of an up-to-date database keeps its data and its single version row; the
    store says which backend it runs on."""
    store = EventStore(db_url)
    assert store.backend.dialect == backend
    store.create_run(run_id="r", workflow="wf", tenant="t", input="[[],{}]", now=1.0)
    store.close()
    again = EventStore(db_url)
    assert again.get_run("r").tenant == "t"
    assert again.backend.query(f"SELECT count(*) FROM {VERSION_TABLE}") == [(1,)]
    again.close()


def test_too_new_schema_is_refused(db_url) -> None:
    """A database whose schema revision this agentflow does not know (written by a newer one)
    raises `SchemaVersionError` on open, saying to upgrade agentflow, and is left unchanged."""
    store = EventStore(db_url)
    store.create_run(run_id="r", workflow="wf", tenant="t", input="[[],{}]", now=1.0)
    store.backend.write([(f"UPDATE {VERSION_TABLE} SET version_num = '9999'", (), False)])
    store.close()
    with pytest.raises(SchemaVersionError, match=r"'9999'.*[Uu]pgrade agentflow"):
        EventStore(db_url)
    with pytest.raises(SchemaVersionError):
        App(db_url).get_run("any")
    check = EventStore(db_url, migrate=False)
    try:
        assert check.backend.query(f"SELECT version_num FROM {VERSION_TABLE}") == [("9999",)]
        assert [r[0] for r in check.backend.query("SELECT id FROM af_runs")] == ["r"]
    finally:
        check.close()


@pytest.mark.backends("sqlite")  # page size, WAL and WITHOUT ROWID are SQLite's
def test_storage_settings(db_url) -> None:
    """The file uses 8 KiB pages and WAL journaling, and the steps table is WITHOUT ROWID
    (clustered by (run_id, seq)) while the runs table is not."""
    EventStore(db_url).close()
    conn = _raw(db_url)
    try:
        assert conn.execute("PRAGMA page_size").fetchone() == (8192,)
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        without_rowid = dict(conn.execute("SELECT name, wr FROM pragma_table_list WHERE name LIKE 'af_%'").fetchall())
        assert without_rowid["af_steps"] == 1
        assert without_rowid["af_runs"] == 0
        (sql,) = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'af_steps'").fetchone()
        assert "WITHOUT ROWID" in sql.upper()
    finally:
        conn.close()


@pytest.mark.backends("sqlite")  # PRAGMA synchronous
@pytest.mark.parametrize(("synchronous", "expected"), [(None, 2), ("FULL", 2), ("NORMAL", 1)])
def test_synchronous_setting_reaches_the_connection(db_url, synchronous, expected) -> None:
    """The store's connections run with `PRAGMA synchronous` FULL (2) by default, so a committed
    step survives power loss, and NORMAL (1) when chosen."""
    app = App(db_url) if synchronous is None else App(db_url, synchronous=synchronous)
    try:
        assert app.store.backend.conn.execute("PRAGMA synchronous").fetchone() == (expected,)
    finally:
        app.close()


@pytest.mark.backends("sqlite")  # the setting of SQLite's fsync
def test_bad_synchronous_setting_is_refused(db_url) -> None:
    """A `synchronous` other than FULL or NORMAL raises `ConfigurationError` explaining both."""
    with pytest.raises(ConfigurationError, match=r"FULL.*NORMAL"):
        EventStore(db_url, synchronous="OFF")


def test_start_is_idempotent_on_run_id(app) -> None:
    """Starting with an existing run id returns that run (`created` False) and changes nothing:
    not its input, not its status; the run executes once."""
    calls: list[int] = []

    @app.activity(name="effect")
    def effect(n: int) -> int:
        calls.append(n)
        return n

    @app.workflow(name="wf")
    async def wf(ctx: WorkflowContext, n: int) -> int:
        return await ctx.run(effect, n)

    first = app.start(wf, 1, run_id="r")
    again = app.start(wf, 2, run_id="r")
    assert first.created is True
    assert again.created is False
    assert again.run_id == "r"
    assert app.store.get_run("r").input == "[[1],{}]"

    assert app.run(wf, 3, run_id="r") == 1  # attaches to the existing run
    assert app.start(wf, 1, run_id="r").created is False
    assert app.get_run("r").status == "completed"
    assert calls == [1]
    assert len(app.list_runs()) == 1


def test_start_with_existing_id_of_another_workflow_is_refused(app) -> None:
    """A run id that already belongs to another workflow raises `ConfigurationError` naming
    both workflows; the existing run is unchanged."""

    @app.workflow(name="first")
    async def first(ctx: WorkflowContext) -> None:
        return None

    @app.workflow(name="second")
    async def second(ctx: WorkflowContext) -> None:
        return None

    app.start(first, run_id="r")
    with pytest.raises(ConfigurationError, match=r"'r'.*'first'.*'second'"):
        app.start(second, run_id="r")
    run = app.get_run("r")
    assert (run.workflow, run.status) == ("first", "pending")


def test_writes_through_a_read_are_refused(app) -> None:
    """`store.read` is not a transaction: a write through its records raises (so a read-check-
    write cannot be split across autocommitted statements by mistake); `store.transaction`
    writes, and a refusal there leaves nothing behind."""
    from agentflow.errors import StoreError

    store = app.store

    def audit(tx: Any) -> None:
        tx.audit.add(
            at=1.0, tenant="t", actor="a", action="x", approval_id=None, run_id=None, outcome="done", reason=""
        )

    with pytest.raises(StoreError, match=r"store\.transaction"):
        store.read(audit)
    with pytest.raises(StoreError, match=r"store\.transaction"):
        store.read(lambda tx: tx.signal("r", "go", "null", 1.0))
    assert store.read(lambda tx: tx.audit.list()) == []
    store.transaction(audit)
    assert [a.actor for a in store.read(lambda tx: tx.audit.list())] == ["a"]

    def audit_then_fail(tx: Any) -> None:
        audit(tx)
        raise RuntimeError("refused half-way")

    with pytest.raises(RuntimeError):
        store.transaction(audit_then_fail)
    assert len(store.read(lambda tx: tx.audit.list())) == 1  # rolled back
