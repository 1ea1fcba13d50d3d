"""Operators' tokens: revoked, expired or of a disabled operator, refused wherever a token is
checked (`Approvals.authenticate`, the server's bearer tokens, its web sessions, its sign-in),
with a code that says which and a message that says how to fix it; on SQLite and PostgreSQL.

Also: the upgrade from schema 0008 keeps existing tokens working; the operator statements name
their tenant; a chat command word is not a task for POST /api/runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from support.sql_trace import trace_sqlite

from agentflow import App
from agentflow.approvals import Approvals
from agentflow.chat import START_HELP
from agentflow.engine import SystemClock
from agentflow.errors import AuthenticationError, ConfigurationError
from agentflow.server import create_app
from agentflow.store import EventStore
from agentflow.store._schema import alembic_config
from agentflow_noc.demo import copilot, make_model

TENANT = "noc-east"
NAMES = ("bob", "carl", "dave", "erin", "fay")


@contextlib.contextmanager
def served(db_url: str) -> Iterator[tuple[App, TestClient]]:
    app = App(db_url)
    try:
        copilot(make_model("runbook")).register(app)
        with TestClient(create_app(app, run_worker=False)) as client:
            yield app, client
    finally:
        app.close()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def sign_in(client: TestClient, token: str) -> dict[str, str]:
    """The headers of a browser session signed in with `token` (its cookie and CSRF value)."""
    answer = client.post("/api/session", json={"token": token})
    assert answer.status_code == 200, answer.text
    cookie = answer.cookies["af_session"]
    client.cookies.clear()  # each session is sent explicitly
    return {"Cookie": f"af_session={cookie}", "X-CSRF-Token": answer.json()["csrf"]}


@contextlib.contextmanager
def migrated(db_url: str, revision: str, *, down: bool = False) -> Iterator[Any]:
    """A connection to `db_url` after alembic took its schema up (or down) to `revision`, in one
    transaction that commits when the block ends."""
    from alembic import command
    from sqlalchemy import create_engine

    from agentflow.store._postgres import sqlalchemy_url

    url = sqlalchemy_url(db_url) if db_url.startswith("postgresql") else db_url
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            (command.downgrade if down else command.upgrade)(alembic_config(url, conn), revision)
            yield conn
    finally:
        engine.dispose()


def refused(answer: httpx.Response, code: str, fix: str) -> None:
    assert answer.status_code == 401, answer.text
    error = answer.json()["error"]
    assert error["code"] == code and fix in error["message"], error


@pytest.mark.backends("sqlite", "postgresql")
def test_revoked_expired_and_disabled_tokens_are_refused_everywhere(db_url: str) -> None:
    """bob is active; carl's token expired; dave's tokens are revoked; erin is disabled; fay's
    token is rotated. Each refused token answers 401 with its code (token_expired,
    token_revoked, operator_disabled) and the command that fixes it, as a bearer token, at
    sign-in, and for the web session it opened before; fay's new token and bob's work. Enabling
    erin lets her token and session work again; `operators()` lists each status."""
    with served(db_url) as (app, client):
        approvals = Approvals.of(app)
        issued_earlier = Approvals(app.store, app.clock, wall=lambda: time.time() - 3600)
        tokens = {name: approvals.add_operator(name, tenant=TENANT, roles=["noc-engineer"])[1] for name in NAMES
                  if name != "carl"}  # fmt: skip
        tokens["carl"] = issued_earlier.add_operator("carl", tenant=TENANT, roles=["noc-engineer"],
                                                     expires_at=time.time() - 60)[1]  # fmt: skip
        sessions = {name: sign_in(client, tokens[name]) for name in ("bob", "dave", "erin", "fay")}
        approvals.revoke("dave")
        approvals.disable("erin", tenant=TENANT)
        _, fay_new = approvals.rotate("fay")

        rotate = "agentflow operators rotate {} --tenant noc-east"
        expected = {"carl": ("token_expired", rotate.format("carl")), "dave": ("token_revoked", rotate.format("dave")),
                    "erin": ("operator_disabled", "agentflow operators enable erin --tenant noc-east"),
                    "fay": ("token_revoked", rotate.format("fay"))}  # fmt: skip
        for name, (code, fix) in expected.items():
            refused(client.get("/api/runs", headers=bearer(tokens[name])), code, fix)
            refused(client.post("/api/session", json={"token": tokens[name]}), code, fix)
            if name in sessions:
                refused(client.get("/api/session", headers=sessions[name]), code, fix)
                refused(client.post("/api/runs", json={"task": "CS-101 is down"}, headers=sessions[name]), code, fix)
            with pytest.raises(AuthenticationError) as error:
                approvals.authenticate(tokens[name])
            assert error.value.code == code and error.value.tenant == TENANT
        assert client.get("/api/runs", headers=bearer(fay_new)).status_code == 200
        assert client.get("/api/session", headers=sessions["bob"]).json()["operator"] == "bob"
        statuses = {op.name: op.status for op in approvals.operators(tenant=TENANT)}
        assert statuses == {"bob": "active", "carl": "expired", "dave": "revoked", "erin": "disabled", "fay": "active"}
        assert [t.status for t in approvals.operator("fay").tokens] == ["revoked", "active"]

        approvals.enable("erin")
        assert client.get("/api/runs", headers=bearer(tokens["erin"])).status_code == 200
        assert client.get("/api/session", headers=sessions["erin"]).json()["operator"] == "erin"
        assert app.store.backend.query("SELECT count(*) FROM af_runs")[0][0] == 0  # nothing was started
        stored = str(app.store.backend.query("SELECT * FROM af_operator_tokens"))
        assert not any(token in stored or token[4:] in stored for token in [*tokens.values(), fay_new])
        admin = [(a.action, a.reason) for a in approvals.audit() if a.actor == "admin" and a.action != "operator_added"]
        assert admin == [("tokens_revoked", "dave"), ("operator_disabled", "erin"), ("token_rotated", "fay"),
                         ("operator_enabled", "erin")]  # fmt: skip


def test_expiry_rotation_and_bad_input(tmp_path: Path) -> None:
    """On a wall clock the test moves: a token works until its expiry and not from it on; a
    rotation without a new expiry gives the new token the old one's lifetime; an expiry in the
    past, an unknown operator and a name in two tenants without --tenant are ConfigurationErrors
    that say what to do."""
    now = [1_000_000.0]
    app = App(f"sqlite:///{tmp_path / 'wf.db'}")
    try:
        ops = Approvals(app.store, app.clock, wall=lambda: now[0])
        _, token = ops.add_operator("bob", tenant=TENANT, roles=["noc-engineer"], expires_at=now[0] + 3600)
        now[0] += 3599
        assert ops.authenticate(token).name == "bob"
        now[0] += 1
        with pytest.raises(AuthenticationError, match="expired at 1970-01-12 14:46 UTC") as error:
            ops.authenticate(token)
        assert error.value.code == "token_expired"
        assert ops.operator("bob").status == "expired" and ops.operator("bob").expires_at is None
        op, fresh = ops.rotate("bob")
        assert ops.authenticate(fresh).token_id == op.tokens[-1].id
        assert (op.status, op.expires_at) == ("active", now[0] + 3600)
        assert ops.rotate("bob", expires_at=None)[0].expires_at is None
        with pytest.raises(ConfigurationError, match="not in the future: give a later time"):
            ops.rotate("bob", expires_at=now[0])
        with pytest.raises(ConfigurationError, match="no operator 'zed': `agentflow operators list`"):
            ops.disable("zed")
        ops.add_operator("bob", tenant="noc-west", roles=["noc-engineer"])
        with pytest.raises(ConfigurationError, match=r"several tenants \(noc-east, noc-west\): name one with --tenant"):
            ops.revoke("bob")
        assert ops.revoke("bob", tenant="noc-west").status == "revoked"
        assert ops.operator("bob", tenant=TENANT).status == "active"
    finally:
        app.close()


@pytest.mark.backends("sqlite", "postgresql")
def test_an_0008_database_keeps_its_operators_tokens(empty_db_url: str) -> None:
    """A database at schema 0008 (one token hash per operator in af_principals) is upgraded:
    the token still signs its operator in, with no expiry, and an operator disabled before stays
    disabled."""
    from sqlalchemy import text

    with migrated(empty_db_url, "0008") as conn:
        for pid, name, disabled in (("p1", "bob", 0), ("p2", "eve", 1)):
            conn.execute(text("INSERT INTO af_principals (id, name, tenant, roles, token_hash, created_at, disabled) "
                              "VALUES (:id, :name, :tenant, '[\"noc-engineer\"]', :hash, 1.0, :disabled)"),
                         {"id": pid, "name": name, "tenant": TENANT, "hash": hashlib.sha256(
                             f"aft_old-{name}".encode()).hexdigest(), "disabled": disabled})  # fmt: skip
    store = EventStore(empty_db_url)
    try:
        from agentflow.engine import SystemClock

        approvals = Approvals(store, SystemClock())
        assert approvals.authenticate("aft_old-bob").name == "bob"
        with pytest.raises(AuthenticationError) as error:
            approvals.authenticate("aft_old-eve")
        assert error.value.code == "operator_disabled"
        bob = approvals.operator("bob")
        assert (bob.status, bob.expires_at, [t.id for t in bob.tokens]) == ("active", None, ["tok_p1"])
    finally:
        store.close()


@pytest.mark.backends("sqlite", "postgresql")
def test_a_web_session_from_before_0009_ends_when_its_token_is_revoked(empty_db_url: str) -> None:
    """A browser session opened on schema 0008 (before sessions recorded their token) is
    upgraded with its principal's token id: it still works, and revoking that token ends it
    (token_revoked), as it ends a session opened after the upgrade. A session left with no
    token id for its tenant is refused as signed out (session_expired), never let through
    unchecked."""
    from sqlalchemy import text

    cookies = {"bob": "old-browser-bob", "eve": "old-browser-eve"}
    with migrated(empty_db_url, "0008") as conn:
        for pid, name in (("p1", "bob"), ("p2", "eve")):
            conn.execute(text("INSERT INTO af_principals (id, name, tenant, roles, token_hash, created_at, disabled) "
                              "VALUES (:id, :name, :tenant, '[\"noc-engineer\"]', :hash, 1.0, 0)"),
                         {"id": pid, "name": name, "tenant": TENANT,
                          "hash": hashlib.sha256(f"aft_old-{name}".encode()).hexdigest()})  # fmt: skip
            conn.execute(text("INSERT INTO af_sessions (id_hash, operator, principals, tenant, csrf, created_at, "
                              "expires_at, revoked) VALUES (:id, :name, :principals, :tenant, 'c', 1.0, :expires, 0)"),
                         {"id": hashlib.sha256(cookies[name].encode()).hexdigest(), "name": name,
                          "principals": f'{{"{TENANT}": "{pid}"}}', "tenant": TENANT,
                          "expires": time.time() + 3600})  # fmt: skip
    with served(empty_db_url) as (app, client):
        old = {name: {"Cookie": f"af_session={cookie}"} for name, cookie in cookies.items()}
        assert client.get("/api/session", headers=old["bob"]).json()["operator"] == "bob"
        Approvals.of(app).revoke("bob")
        refused(client.get("/api/session", headers=old["bob"]), "token_revoked", "agentflow operators rotate bob")
        app.store.backend.write([("UPDATE af_sessions SET tokens = NULL WHERE operator = ?", ("eve",), False)])
        refused(client.get("/api/session", headers=old["eve"]), "session_expired", "sign in again")
        assert client.get("/api/runs", headers=bearer("aft_old-eve")).status_code == 200  # her token still works


def test_downgrading_0009_revives_no_expired_token(tmp_path: Path) -> None:
    """Back to schema 0008 (one token per operator, no expiry): an operator whose only live
    token expired gets none back (must be rotated after upgrading again); one with a live token
    keeps it."""
    db = f"sqlite:///{tmp_path}/wf.db"
    store = EventStore(db)
    try:
        approvals = Approvals(store, SystemClock())
        _, live = approvals.add_operator("bob", tenant=TENANT, roles=["noc-engineer"])
        issued_earlier = Approvals(store, SystemClock(), wall=lambda: time.time() - 3600)
        _, expired = issued_earlier.add_operator("carl", tenant=TENANT, roles=["noc-engineer"],
                                                 expires_at=time.time() - 60)  # fmt: skip
    finally:
        store.close()
    from sqlalchemy import text

    with migrated(db, "0008", down=True) as conn:
        hashes = {name: hashed for name, hashed in conn.execute(text("SELECT name, token_hash FROM af_principals"))}
    assert hashes["bob"] == hashlib.sha256(live.encode()).hexdigest()
    assert hashes["carl"] != hashlib.sha256(expired.encode()).hexdigest() and hashes["carl"].startswith("revoked:")


def test_operator_statements_name_their_tenant(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every statement on an agentflow table that the operator commands send for a tenant names
    it (`tenant = 'noc-east'`), except the sign-in lookup by token hash and the lookup by name
    alone when no tenant was given; none names the other tenant."""
    statements = trace_sqlite(monkeypatch)
    app = App(f"sqlite:///{tmp_path / 'wf.db'}")
    try:
        ops = Approvals.of(app)
        for tenant in ("noc-east", "noc-west"):
            ops.add_operator("bob", tenant=tenant, roles=["noc-engineer"])
        statements.clear()
        actions: list[Callable[[], Any]] = [
            lambda: ops.operators(tenant=TENANT), lambda: ops.disable("bob", tenant=TENANT),
            lambda: ops.enable("bob", tenant=TENANT), lambda: ops.rotate("bob", tenant=TENANT),
            lambda: ops.revoke("bob", tenant=TENANT),
        ]  # fmt: skip
        for action in actions:
            action()
        op = ops.operator("bob", tenant=TENANT)
        with pytest.raises(AuthenticationError):
            ops.principal(op.id, tenant=TENANT, token_id=op.tokens[-1].id)
        checked = [s for s in statements if re.search(r"\baf_(principals|operator_tokens|audit)\b", s)]
        assert len(checked) > 10
        for sql in checked:
            assert "noc-west" not in sql, sql
            if not sql.lstrip().upper().startswith(("BEGIN", "COMMIT")):
                assert "'noc-east'" in sql, sql
    finally:
        app.close()


def test_a_chat_command_word_is_not_a_task(tmp_path: Path) -> None:
    """POST /api/runs with the task `help` (or `?`, `/help`) starts nothing: 422 not_a_task whose
    message is the help; `help me fix CS-101` starts a run."""
    with served(f"sqlite:///{tmp_path / 'wf.db'}") as (app, client):
        _, token = Approvals.of(app).add_operator("bob", tenant=TENANT, roles=["noc-engineer"])
        for word in ("help", "?", "/help", "Help."):
            answer = client.post("/api/runs", json={"task": word}, headers=bearer(token))
            assert answer.status_code == 422 and answer.json()["error"]["code"] == "not_a_task", answer.text
            assert START_HELP in answer.json()["error"]["message"]
        assert app.store.backend.query("SELECT count(*) FROM af_runs")[0][0] == 0
        task = client.post("/api/runs", json={"task": "help me fix CS-101"}, headers=bearer(token))
        assert task.status_code == 201, task.text
