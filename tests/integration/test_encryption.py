"""Encryption at rest (issue 13): a sealed tenant's payloads are stored as AES-GCM envelopes on
both backends and read back as if nothing happened; rotation keeps old keys for opening; a
missing or wrong key is a `StoreKeyError` that names the key id and changes nothing; a sealed
value moved to another run or tenant does not open; tenants outside the sealed set stay in clear;
a killed worker's run resumes under encryption."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import BaseMessage, HumanMessage
from typer.testing import CliRunner

import agentflow.llm as llm
from agentflow import App, Client, WorkflowContext, trace
from agentflow.agent import Agent, chat, usage
from agentflow.approvals import Approvals
from agentflow.chat import Chat, events
from agentflow.cli import app as cli
from agentflow.errors import ConfigurationError, StoreKeyError
from agentflow.store import Sealing
from agentflow.testing import TestClock

START = 1_700_000_000
K1 = base64.b64encode(bytes(range(32))).decode()
K2 = base64.b64encode(bytes(range(100, 132))).decode()
NOT_K1 = base64.b64encode(bytes(range(50, 82))).decode()

# Words that can only be in the store as a run's payload (none is a secret: redaction keeps them).
INPUT = "zebraInput7Q2"
ARG = "lynxArgument8R3"
TOOL_OUT = "walrusToolOut9K4"
ANSWER = "narwhalAnswer3M8"
SIGNAL = "ocelotSignal5T1"
COMMENT = "heronComment2P6"
LATER = "ibisLaterAnswer4W9"
PLAIN = (INPUT, ARG, TOOL_OUT, ANSWER, SIGNAL, COMMENT, LATER)


def sealing(*keys: tuple[str, str], tenants: set[str] | None = None) -> Sealing:
    """Keys in order, the first active."""
    return Sealing(keys=dict(keys), tenants=tenants)


@llm.tool(side_effect="idempotent", target="site")
def push_note(site: str, note: str) -> dict[str, Any]:
    """Attach a note to a site's configuration (needs approval)."""
    return {"applied": True, "site": site, "echo": TOOL_OUT}


def _agent() -> Agent:
    model = llm.LangChainChat(
        llm.ScriptedChatModel(
            responses=[
                {"tool_calls": [{"name": "push_note", "args": {"site": "CS-7", "note": ARG}}]},
                f"Pushed. {ANSWER}",
            ]
        )
    )
    return Agent(name="sealed", model=model, tools=[push_note])


def _talker() -> llm.LangChainChat:
    return llm.LangChainChat(llm.ScriptedChatModel(responses=[f"first {ANSWER}", f"later {LATER}"]))


def make_app(db_url: str, seal: Sealing | None, *, clock: TestClock | None = None) -> App:
    app = App(db_url, clock=clock or TestClock(start=START), sealing=seal)
    agent = _agent()

    @app.workflow(name="sealed.copilot")
    async def copilot(ctx: WorkflowContext, task: dict[str, Any]) -> dict[str, Any]:
        outcome = (await agent.run(ctx, task["ask"])).model_dump()
        note = await ctx.wait_signal("note")
        return {"agent": outcome, "note": note}

    @app.workflow(name="sealed.talk")
    async def talk(ctx: WorkflowContext, task: str) -> dict[str, Any]:
        """One model call, a signal, a model call over the whole conversation, a timer."""
        model = _talker()
        messages: list[BaseMessage] = [HumanMessage(task)]
        first = await chat(ctx, model, messages, [])
        messages += [first.message, HumanMessage(f"and {await ctx.wait_signal('go')}")]
        later = await chat(ctx, model, messages, [])
        await ctx.sleep(3600)
        return {"first": first.message.content, "later": later.message.content}

    return app


def stored_text(db_url: str) -> str:
    """Everything the database holds, as text: the SQLite file and its WAL, or every row of every
    agentflow table on PostgreSQL."""
    if db_url.startswith("sqlite"):
        db = Path(db_url.removeprefix("sqlite:///"))
        return b"".join(p.read_bytes() for p in db.parent.iterdir() if p.name.startswith(db.name)).decode("latin-1")
    import sqlalchemy as sa

    engine = sa.create_engine(db_url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as conn:
            tables = conn.execute(sa.text("SELECT tablename FROM pg_tables WHERE tablename LIKE 'af_%'")).scalars()
            return "\n".join(
                row
                for table in list(tables)
                for row in conn.execute(sa.text(f"SELECT t::text FROM {table} t")).scalars()
            )
    finally:
        engine.dispose()


def raw(app: App, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    return app.store.backend.query(sql, params)


def snapshot(app: App) -> dict[str, list[tuple[Any, ...]]]:
    """The payloads and histories a missing key must leave as they are."""
    return {
        "runs": raw(app, "SELECT id, input, output, error, meta, wake_at FROM af_runs ORDER BY id"),
        "steps": raw(app, "SELECT * FROM af_steps ORDER BY run_id, seq"),
        "blobs": raw(app, "SELECT * FROM af_blobs ORDER BY hash"),
        "signals": raw(app, "SELECT * FROM af_signals ORDER BY id"),
    }


def talk(app: App, task: str, run_id: str, tenant: str = "default") -> str:
    return app.start(app.workflow_named("sealed.talk"), task, run_id=run_id, tenant=tenant).run_id


def result(app: App, key: str) -> Any:
    return app.result_of(app.store.get_run(key))


def drive_copilot(app: App, tenant: str = "default") -> str:
    """Start the copilot, approve its staged call, send it a note: return the run's key."""
    wf = app.workflow_named("sealed.copilot")
    key = app.start(wf, {"ask": f"note CS-7 ({INPUT})"}, run_id="c1", tenant=tenant).run_id
    asyncio.run(app.worker().run_until_blocked(key, until_signal_wait=True))
    approvals = Approvals.of(app)
    alice = approvals.add_operator("alice", tenant=tenant, roles=["noc-engineer"])[0]
    approvals.approve(approvals.list(run_id=key)[0].id, by=alice, comment=f"fine by me {COMMENT}")
    asyncio.run(app.worker().run_until_blocked(key))
    app.signal(key, "note", {"text": SIGNAL})
    asyncio.run(app.worker().run_until_done(key))
    return key


@pytest.mark.backends("sqlite", "postgresql")
def test_a_sealed_run_reads_back_everywhere_and_is_stored_only_sealed(db_url: str) -> None:
    """Every read path opens what the store sealed (history, output, approvals, votes, audit,
    messages, usage sums, run tables, chat events, replay, fork), and none of the run's words is
    in the database, only envelopes naming the key."""
    app = make_app(db_url, sealing(("k1", K1)))
    try:
        key = drive_copilot(app)
        out = json.loads(app.get_run(key).output_json or "{}")
        assert ANSWER in out["agent"]["answer"] and out["note"] == {"text": SIGNAL}
        seen = {
            "history": json.dumps([dataclasses.asdict(s) for s in app.history(key)], default=str),
            "approvals": json.dumps([r.model_dump(mode="json") for r in Approvals.of(app).list(status=None)]),
            "audit": json.dumps([a.model_dump(mode="json") for a in Approvals.of(app).audit(run_id=key)]),
            "events": json.dumps(events(Chat.of(app), app.history(key)), default=str),
        }
        assert INPUT in app.store.get_run(key).input
        assert TOOL_OUT in seen["history"] and SIGNAL in seen["history"]
        assert ARG in seen["approvals"] and COMMENT in seen["approvals"] and COMMENT in seen["audit"]
        assert ANSWER in seen["events"]
        t = trace.load(app, key)
        assert INPUT in t.messages.to_json() and ANSWER in t.messages.to_json()
        assert t.replay(app).status == "completed"
        assert usage(app, run_id=key).calls == 2
        (row,) = trace.runs(app).to_dict("records")
        assert row["tokens"] == usage(app, run_id=key).input_tokens + usage(app, run_id=key).output_tokens > 0
        (totals,) = app.store.run_totals([key], tenant=app.store.get_run(key).tenant).values()  # the runs list's
        assert totals[1] == row["tokens"] and totals[2] == pytest.approx(usage(app, run_id=key).cost_usd)
        fork = t.fork(at_seq=1, run_id="c1-fork").run_id
        assert (
            app.history(fork)[0].result == app.history(key)[0].result
            and app.store.get_run(fork).input == app.store.get_run(key).input
        )
        t.close()
    finally:
        app.close()
    text = stored_text(db_url)
    assert [w for w in PLAIN if w in text] == []
    assert "af:enc:1:k1:" in text and "~k1~" in text  # payloads sealed, messages under locators


@pytest.mark.backends("sqlite", "postgresql")
def test_rotation_seals_with_the_new_key_and_opens_with_the_old(db_url: str) -> None:
    """A run recorded under k1 resumes after k2 becomes active (k1 kept): new payloads and
    messages are sealed under k2, the old ones still open, the replay of its k1 model call reads
    its k1 message. Without k1 every read names k1 and how to configure it."""
    before = make_app(db_url, sealing(("k1", K1)))
    key = talk(before, f"why {INPUT}?", "t1")
    asyncio.run(before.worker().run_until_blocked(key))
    before.close()

    after = make_app(db_url, sealing(("k2", K2), ("k1", K1)), clock=TestClock(start=START + 7200))
    try:
        after.signal(key, "go", SIGNAL)
        asyncio.run(after.worker().run_until_done(key))
        assert result(after, key) == {"first": f"first {ANSWER}", "later": f"later {LATER}"}
        messages = trace.load(after, key).messages.to_json()
        assert all(w in messages for w in (INPUT, ANSWER, SIGNAL, LATER))
    finally:
        after.close()
    text = stored_text(db_url)
    assert [w for w in PLAIN if w in text] == []
    assert all(mark in text for mark in ("af:enc:1:k1:", "af:enc:1:k2:", "~k1~", "~k2~"))

    without = make_app(db_url, sealing(("k2", K2)))
    try:
        with pytest.raises(StoreKeyError) as caught:
            without.store.get_run(key)
        assert caught.value.key_id == "k1" and "AGENTFLOW_ENCRYPTION_KEYS" in str(caught.value)
        assert K1 not in str(caught.value) and K2 not in str(caught.value)
        with pytest.raises(StoreKeyError, match="'k1'"):
            trace.load(without, key)
    finally:
        without.close()


@pytest.mark.backends("sqlite", "postgresql")
def test_a_worker_without_the_key_gives_the_run_back_untouched(db_url: str) -> None:
    """A worker that cannot open a run (its key was dropped) stops with StoreKeyError; the run
    is not failed and nothing recorded changes. With the key back, it completes."""
    first = make_app(db_url, sealing(("k1", K1)))
    key = talk(first, f"why {INPUT}?", "t1")
    asyncio.run(first.worker().run_until_blocked(key))
    first.signal(key, "go", SIGNAL)  # woken: the next worker to claim runs it
    kept = snapshot(first)
    first.close()

    keyless = make_app(db_url, sealing(("k2", K2)))
    try:
        with pytest.raises(StoreKeyError, match="'k1'"):
            asyncio.run(keyless.worker().run_forever(asyncio.Event()))
        assert raw(keyless, "SELECT epoch FROM af_runs WHERE id = ?", key)[0][0] == 2  # it was claimed
        assert snapshot(keyless) == kept
        assert raw(keyless, "SELECT status FROM af_runs WHERE id = ?", key)[0][0] in ("pending", "waiting")
    finally:
        keyless.close()

    fixed = make_app(db_url, sealing(("k2", K2), ("k1", K1)))
    try:
        asyncio.run(fixed.worker().run_until_done(key))
        assert result(fixed, key) == {"first": f"first {ANSWER}", "later": f"later {LATER}"}
    finally:
        fixed.close()


@pytest.mark.backends("sqlite", "postgresql")
def test_a_wrong_key_and_no_key_are_typed_errors(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same key id with other key material, or no keys at all, is a StoreKeyError: sealed
    text is never handed on as if it were the payload."""
    app = make_app(db_url, sealing(("k1", K1)))
    key = talk(app, f"why {INPUT}?", "t1")
    asyncio.run(app.worker().run_until_blocked(key))
    (digest,) = {json.loads(s.result or "{}")["message"] for s in app.history(key) if s.kind == "llm"}
    app.close()

    wrong = make_app(db_url, sealing(("k1", NOT_K1)))
    try:
        with pytest.raises(StoreKeyError, match="does not open with encryption key 'k1'"):
            wrong.store.get_run(key)
    finally:
        wrong.close()
    monkeypatch.delenv("AGENTFLOW_ENCRYPTION_KEYS", raising=False)
    keyless = make_app(db_url, None)
    try:
        with pytest.raises(StoreKeyError, match="no encryption keys: set AGENTFLOW_ENCRYPTION_KEYS='k1:"):
            keyless.store.get_run(key)
        with pytest.raises(StoreKeyError, match="'k1'"):
            keyless.store.get_blobs([digest])  # its message: sealed under a key this process lacks
        with Client(db_url) as client, pytest.raises(StoreKeyError):
            client.history(key)
    finally:
        keyless.close()


@pytest.mark.backends("sqlite", "postgresql")
def test_a_sealed_value_moved_to_another_run_or_tenant_does_not_open(db_url: str) -> None:
    """Each value is bound to its table, column, tenant and row: copied elsewhere, it fails
    its tag instead of being read as that row's payload."""
    app = make_app(db_url, sealing(("k1", K1)))
    try:
        runs = {
            name: talk(app, f"{name} {INPUT}", name, tenant)
            for name, tenant in (("a", "acme"), ("b", "acme"), ("c", "globex"))
        }
        for run in runs.values():
            asyncio.run(app.worker().run_until_blocked(run))
        a_input = raw(app, "SELECT input FROM af_runs WHERE id = ?", runs["a"])[0][0]
        a_step = raw(app, "SELECT result FROM af_steps WHERE run_id = ? AND seq = 1", runs["a"])[0][0]
        write = app.store.backend.write
        write([("UPDATE af_runs SET input = ? WHERE id IN (?, ?)", (a_input, runs["b"], runs["c"]), False)])
        write([("UPDATE af_steps SET result = ? WHERE run_id = ? AND seq = 1", (a_step, runs["b"]), False)])
        for moved in (runs["b"], runs["c"]):
            with pytest.raises(StoreKeyError, match="copied from another row or tenant"):
                app.store.get_run(moved)
        with pytest.raises(StoreKeyError):
            app.store.load_steps(runs["b"])
        assert f"a {INPUT}" in app.store.get_run(runs["a"]).input  # the original still opens
    finally:
        app.close()


@pytest.mark.backends("sqlite", "postgresql")
def test_only_the_sealed_tenants_are_sealed(db_url: str) -> None:
    """`tenants=` seals those tenants' rows; another tenant's rows (and messages) stay in clear,
    and both read back alike."""
    app = make_app(db_url, sealing(("k1", K1), tenants={"acme"}))
    try:
        keys = {}
        for tenant in ("acme", "globex"):
            keys[tenant] = talk(app, f"{tenant} {INPUT}", "t1", tenant)
            asyncio.run(app.worker().run_until_blocked(keys[tenant]))
        stored = dict(raw(app, "SELECT tenant, input FROM af_runs"))
        assert stored["acme"].startswith("af:enc:1:k1:") and INPUT not in stored["acme"]
        assert f"globex {INPUT}" in stored["globex"]
        results = dict(
            raw(app, "SELECT r.tenant, s.result FROM af_steps s JOIN af_runs r ON r.id = s.run_id WHERE s.seq = 1")
        )
        assert results["acme"].startswith("af:enc:1:k1:") and results["globex"].startswith("{")
        for tenant, key in keys.items():
            assert f"{tenant} {INPUT}" in app.store.get_run(key).input
            assert ANSWER in trace.load(app, key).messages.to_json()
    finally:
        app.close()
    text = stored_text(db_url)
    assert ANSWER in text  # globex's message, in clear under its plain hash
    assert text.count(f"acme {INPUT}") == 0 and f"globex {INPUT}" in text


#: Every column encryption at rest seals (table -> columns).
SEALED = {
    "af_runs": ("input", "output", "error", "meta"), "af_steps": ("args", "result", "error"),
    "af_step_attempts": ("error",), "af_signals": ("payload",), "af_approvals": ("args", "diff"),
    "af_approval_votes": ("comment",), "af_audit": ("reason",),
}  # fmt: skip


@pytest.mark.backends("sqlite", "postgresql")
def test_rotate_key_reseals_everything_so_the_old_key_can_go(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """`agentflow db rotate-key` re-seals every value and message under the active key, and
    seals what was written before encryption was turned on: afterwards the old key is not
    needed, and every run still reads back."""
    monkeypatch.delenv("AGENTFLOW_ENCRYPTION_KEYS", raising=False)
    clear = make_app(db_url, None)
    before = talk(clear, f"clear {INPUT}", "t0")
    asyncio.run(clear.worker().run_until_blocked(before))
    clear.signal(before, "go", SIGNAL)
    asyncio.run(clear.worker().run_until_done(before))
    clear.close()
    old = make_app(db_url, sealing(("k1", K1)))
    key = drive_copilot(old)
    old.close()

    monkeypatch.setenv("AGENTFLOW_ENCRYPTION_KEYS", f"k2:{K2},k1:{K1}")
    out = CliRunner().invoke(cli, ["db", "rotate-key", "--db", db_url])
    assert out.exit_code == 0 and "re-sealed under key 'k2'" in out.output and "still sealed" not in out.output

    new = make_app(db_url, sealing(("k2", K2)))
    try:
        for table, columns in SEALED.items():
            for column in columns:
                values = [r[0] for r in raw(new, f"SELECT {column} FROM {table} WHERE {column} IS NOT NULL")]
                assert all(v.startswith("af:enc:1:k2:") for v in values), (table, column, values[:3])
        assert all(h.startswith("~k2~") for (h,) in raw(new, "SELECT hash FROM af_blobs"))
        assert result(new, before) == {"first": f"first {ANSWER}", "later": f"later {LATER}"}
        assert ANSWER in result(new, key)["agent"]["answer"]
        for run in (before, key):
            assert INPUT in new.store.get_run(run).input and ANSWER in trace.load(new, run).messages.to_json()
        assert COMMENT in json.dumps([a.model_dump(mode="json") for a in Approvals.of(new).audit(run_id=key)])
        assert new.store.reseal()["left"] == 0  # nothing more to do
    finally:
        new.close()


@pytest.mark.slow
def test_a_killed_worker_resumes_a_sealed_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The crash-point scenario with keys from the environment: a worker killed after a step's
    result was recorded, then a plain worker, end with the uncrashed result; nothing in clear."""
    monkeypatch.setenv("AGENTFLOW_ENCRYPTION_KEYS", f"k1:{K1}")
    chaos = Path(__file__).resolve().parents[1] / "chaos"
    db = tmp_path / "wf.db"
    env = {k: v for k, v in os.environ.items() if k != "AGENTFLOW_CRASH_AT"}
    env.update(PYTHONPATH=os.pathsep.join(filter(None, [str(chaos), env.get("PYTHONPATH")])),
               AGENTFLOW_DB=f"sqlite:///{db}", AGENTFLOW_LEDGER=str(tmp_path / "ledger.db"))  # fmt: skip
    client = Client(f"sqlite:///{db}")
    run_id = client.start("chaos", 3, run_id="crash-sealed").run_id

    def worker(crash: str | None = None) -> int:
        extra = {"AGENTFLOW_CRASH_AT": crash} if crash else {}
        return subprocess.run(
            [sys.executable, "-m", "agentflow.cli", "worker", "--app", "crashapp:app", "--until-idle"],
            cwd=tmp_path, env={**env, **extra}, capture_output=True, text=True, timeout=60,
        ).returncode  # fmt: skip

    try:
        assert worker("after_result:2") == -9
        for _ in range(4):
            if client.get(run_id).status == "completed":
                break
            asyncio.run(asyncio.sleep(0.4))  # the run's 0.3 s timer
            assert worker() == 0
        result = json.loads(client.get(run_id).output_json or "{}")
        assert result == {
            "base": 30,
            "info": {"x": 30, "sq": 900},
            "charges": ["a:900", "b:30"],
            "receipt": "a:900+b:30",
        }
    finally:
        client.close()
    text = stored_text(f"sqlite:///{db}")
    assert "a:900" not in text and '"sq"' not in text and "af:enc:1:k1:" in text


# -- configuration -------------------------------------------------------------------------------
def test_keys_come_from_the_environment_first_key_active() -> None:
    found = Sealing.from_env(
        {"AGENTFLOW_ENCRYPTION_KEYS": f" k2:{K2}, k1:{K1} ", "AGENTFLOW_ENCRYPTION_TENANTS": "a,b"}
    )
    assert found is not None and found.active == "k2" and found.key_ids == ("k2", "k1")
    assert found.seals("a") and not found.seals("c") and not found.seals(None)
    assert K1 not in repr(found) and K2 not in repr(found)
    assert Sealing.from_env({}) is None
    everyone = Sealing.from_env({"AGENTFLOW_ENCRYPTION_KEYS": f"k1:{K1}"})
    assert everyone is not None and everyone.seals("any-tenant")


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"AGENTFLOW_ENCRYPTION_KEYS": "k1:not base64!"}, "not valid base64"),
        ({"AGENTFLOW_ENCRYPTION_KEYS": f"k1:{base64.b64encode(b'short').decode()}"}, "is 5 bytes"),
        ({"AGENTFLOW_ENCRYPTION_KEYS": K1}, "must read 'id:<base64 key>"),
        ({"AGENTFLOW_ENCRYPTION_KEYS": f"k1:{K1},k1:{K2}"}, "twice"),
        ({"AGENTFLOW_ENCRYPTION_KEYS": f"k 1:{K1}"}, "key id"),
        ({"AGENTFLOW_ENCRYPTION_TENANTS": "acme"}, "AGENTFLOW_ENCRYPTION_KEYS is not set"),
    ],
)
def test_bad_key_configuration_says_how_to_make_a_key(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message) as caught:
        Sealing.from_env(environ)
    if "base64" in message or "bytes" in message:
        assert "os.urandom(32)" in str(caught.value)


def test_clear_text_that_looks_sealed_is_stored_escaped_and_reads_back() -> None:
    """An operator's comment that starts like an envelope is never taken for one (it would make
    the approval unreadable): stored escaped, read back as typed, with or without keys."""
    from agentflow.store._seal import Sealer

    for sealer in (Sealer(None), Sealer(sealing(("k1", K1), tenants={"acme"}))):
        for text in ("af:enc:1:k9:bm90IHNlYWxlZA==", "af:raw:x", "plain"):
            stored = sealer.seal(text, "globex", "af_approval_votes.comment", "a1", "p1")
            assert sealer.open(stored, "globex", "af_approval_votes.comment", "a1", "p1") == text
