"""Secrets are never stored or shown in clear (issue 13): canaries planted in a run's input, a
tool's arguments and output, a tool's error, the model's answers and the process's configuration
appear nowhere a person or a file could read them (the database file and its WAL, the logs, the
chat events, the trace tables and exports, the approval inbox, errors), while the tool that needs
a secret still gets it. The canary test runs with encryption at rest off and on: redaction comes
first either way, and sealing hides the rest of the run too."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any

import nbformat
import pytest
from fastapi.testclient import TestClient
from nbclient import NotebookClient

import agentflow.llm as llm
from agentflow import App, WorkflowContext, trace
from agentflow.agent import Agent
from agentflow.approvals import Approvals
from agentflow.chat import Chat, events
from agentflow.store import MASK, Redaction
from agentflow.testing import TestClock

# Each is recognisable only by where or how it appears: a configuration value, a secret field's
# value, a secret's shape. None of them is a word the masking could hit by chance.
CONFIG = "cfgQ7x3VnM2p9Lk"  # the value of $NOC_VAULT_TOKEN
FIELD = "fldW4r8TzY6u1Hj"  # a device password the model puts in a tool call
COMMUNITY = "cmnE5s2KdP8q3Bv"  # an SNMP community the model stages in a configuration
OUTPUT = "outJ9c4LmX7n2Rf"  # a session token a tool returns
SHAPE = "sk-proj-shpA1b2C3d4E5f6G7h8I9j0K"  # an API key the model writes out
CANARIES = (CONFIG, FIELD, COMMUNITY, OUTPUT, SHAPE)
RECEIVED: list[dict[str, Any]] = []


@llm.tool(side_effect="none", target="site")
def open_session(site: str, password: str = "") -> dict[str, Any]:
    """Log in to a site's element manager (the credentials come from the vault)."""
    RECEIVED.append({"tool": "open_session", "password": password})
    vault = os.environ["NOC_VAULT_TOKEN"]  # where a tool gets its secrets: its own configuration
    return {"site": site, "session": {"token": OUTPUT, "user": "noc"}, "note": f"vault {vault} used"}


@llm.tool(side_effect="none", target="site")
def read_snmp(site: str) -> str:
    """Poll a site over SNMP."""
    raise RuntimeError(f"SNMP auth failed at {site} with community from vault {os.environ['NOC_VAULT_TOKEN']}")


@llm.tool(side_effect="idempotent", target="site")
def push_config(site: str, fragment: dict[str, Any], reason: str) -> dict[str, Any]:
    """Push a configuration fragment to a site (needs approval)."""
    RECEIVED.append({"tool": "push_config", "fragment": fragment, "reason": reason})
    return {"applied": True, "site": site}


def _model() -> llm.LangChainChat:
    def push(fragment: dict[str, Any], reason: str) -> dict[str, Any]:
        args = {"site": "CS-101", "fragment": fragment, "reason": reason}
        return {"tool_calls": [{"name": "push_config", "args": args}]}

    return llm.LangChainChat(
        llm.ScriptedChatModel(
            responses=[
                {
                    "tool_calls": [
                        {"name": "open_session", "args": {"site": "CS-101", "password": FIELD}},
                        {"name": "read_snmp", "args": {"site": "CS-101"}},
                    ]
                },
                push({"community": COMMUNITY, "trapHost": "10.0.0.9"}, "rotate the community"),
                push({"trapHost": "10.0.0.9"}, f"move the trap host (vault {CONFIG})"),
                push({"trapHost": "10.0.0.9"}, "move the trap host"),
                f"Done. For the record the API key is {SHAPE} and the vault token {CONFIG}.",
            ]
        )
    )


def _leaks(text: str) -> list[str]:
    return [c for c in CANARIES if c in text]


@pytest.fixture
def planted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOC_VAULT_TOKEN", CONFIG)
    RECEIVED.clear()


#: Words of the run that are no secret: in the store in clear without encryption, sealed with it.
PLAIN = ("rotate CS-101", "SNMP auth failed", "trapHost")


SEALED_ENV = ("AGENTFLOW_ENCRYPTION_KEYS", "k1:" + base64.b64encode(bytes(range(32))).decode())


def _canary_run(db_url: str) -> App:
    """The run `r1` in `db_url`, driven to its end: the model puts the canaries everywhere it
    can, and an operator's approval comment quotes the configuration secret."""
    app = App(db_url, clock=TestClock(start=1_700_000_000))  # retries take no real time
    agent = Agent(name="noc", model=_model(), tools=[open_session, read_snmp, push_config])
    agent.register(app)  # what the server serves (the run below is started by its own workflow)

    @app.workflow(name="copilot.secrets")
    async def copilot(ctx: WorkflowContext, task: dict[str, Any]) -> dict[str, Any]:
        return (await agent.run(ctx, task["ask"])).model_dump()

    # The input carries a secret field and the configuration secret in free text.
    app.start(copilot, {"ask": f"rotate CS-101 (vault token {CONFIG})", "password": FIELD}, run_id="r1")
    asyncio.run(app.worker().run_until_blocked("r1", until_signal_wait=True))
    request = Approvals.of(app).list(run_id="r1")[0]
    assert request.args == {"site": "CS-101", "fragment": {"trapHost": "10.0.0.9"}, "reason": "move the trap host"}
    alice = Approvals.of(app).add_operator("alice", tenant="default", roles=["noc-engineer"])[0]
    Approvals.of(app).approve(request.id, by=alice, comment=f"ok, I checked with token {CONFIG}")
    asyncio.run(app.worker().run_until_done("r1"))
    return app


@pytest.mark.backends("sqlite", "postgresql")
@pytest.mark.parametrize("sealed", [False, True], ids=["clear", "sealed"])
def test_canaries_reach_the_tools_and_nothing_else(
    planted: None, backend: str, db_url: str, caplog: pytest.LogCaptureFixture, sealed: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    caplog.set_level(logging.DEBUG)
    if sealed:  # every surface below (the App, trace.load's own Client, the server) reads it
        monkeypatch.setenv(*SEALED_ENV)
    app = _canary_run(db_url)
    try:
        # A call that carried a secret never ran: the run only has it masked, and a tool acting
        # on the mask (logging in with it, pushing it as a community) would do harm. The tool
        # that needs one reads it from its configuration.
        assert RECEIVED == [
            {"tool": "push_config", "fragment": {"trapHost": "10.0.0.9"}, "reason": "move the trap host"}
        ]
        out = json.loads(app.get_run("r1").output_json or "{}")
        assert [(c["name"], c["status"], c["decision"]["rule"]) for c in out["tool_calls"]] == [
            ("open_session", "denied", "secret-in-arguments"),
            ("read_snmp", "error", "default:read-only"),
            ("push_config", "denied", "secret-in-arguments"),
            ("push_config", "denied", "secret-in-arguments"),
            ("push_config", "ok", "default:side-effect"),
        ]
        assert out["status"] == "answered" and MASK in out["answer"], out["answer"]
        seen: dict[str, str] = {
            "run output": json.dumps(out),
            "history": json.dumps([dataclasses.asdict(s) for s in app.history("r1")], default=str),
            "chat events": json.dumps(events(Chat.of(app), app.history("r1")), default=str),
            "approvals": json.dumps([r.model_dump(mode="json") for r in Approvals.of(app).list(status=None)]),
            "audit": json.dumps([a.model_dump(mode="json") for a in Approvals.of(app).audit(run_id="r1")]),
            "logs": caplog.text,
        }
        t = trace.load(db_url, "r1")
        try:
            for name in ("steps", "messages", "tool_calls", "decisions", "approvals", "audit"):
                seen[f"trace.{name}"] = getattr(t, name).to_json(default_handler=str, date_format="iso")
            seen["trace jsonl"] = t.jsonl()
            seen["otel spans"] = json.dumps(t.to_otel_spans(), default=str)
        finally:
            t.close()
        # An error that quotes a secret shows it masked.
        with TestClient(_server(app)) as http:
            bearer = {"Authorization": f"Bearer {_token(app)}"}
            answer = http.get(f"/api/runs/{SHAPE}", headers=bearer)
            # What a browser gets: the run page, its live stream (the run is over: it ends) and the inbox.
            for url in (
                "/api/runs/r1",
                "/api/runs/r1/stream",
                "/api/approvals?status=all",
                "/api/runs/r1/trace.jsonl",
                "/api/runs/r1/timeline",
            ):
                got = http.get(url, headers=bearer)
                assert got.status_code == 200, (url, got.text)
                seen[f"GET {url}"] = got.text
        assert "event: end" in seen["GET /api/runs/r1/stream"]
        assert answer.status_code == 404 and SHAPE not in answer.text and MASK in answer.text, answer.text
        assert {k: _leaks(v) for k, v in seen.items() if _leaks(v)} == {}
        # The step records and messages still say what happened, with the secret masked.
        assert "rotate CS-101" in seen["trace.messages"] and MASK in seen["trace.messages"]
        assert "SNMP auth failed" in seen["history"]
    finally:
        app.close()

    if backend == "sqlite":
        db = Path(db_url.removeprefix("sqlite:///"))
        files = [p for p in db.parent.iterdir() if p.name.startswith(db.name)]
        raw = b"".join(p.read_bytes() for p in files)
        assert [c for c in CANARIES if c.encode() in raw] == [], [p.name for p in files]
        stored = raw.decode("latin-1")
    else:
        assert _postgres_leaks(db_url, CANARIES) == []
        stored = " ".join(f"{t}:{c}" for t, c in _postgres_leaks(db_url, (*PLAIN, "af:enc:1:k1:")))
    # Sealed, the rest of the run is not in the store in clear either; in clear, it is.
    assert [w for w in PLAIN if w in stored] == ([] if sealed else list(PLAIN))
    assert ("af:enc:1:k1:" in stored) is sealed


def _server(app: App) -> Any:
    from agentflow.server import create_app

    return create_app(app, run_worker=False)


def _token(app: App) -> str:
    return Approvals.of(app).add_operator("viewer", tenant="default", roles=["viewer"])[1]


def _postgres_leaks(url: str, words: tuple[str, ...]) -> list[tuple[str, str]]:
    """Every word found in any column of any agentflow table (as text)."""
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            tables = [
                r[0] for r in conn.execute(sa.text("SELECT tablename FROM pg_tables WHERE tablename LIKE 'af_%'"))
            ]
            found = []
            for table in tables:
                rows = conn.execute(sa.text(f"SELECT t::text FROM {table} t")).scalars().all()
                found += [(table, c) for c in words for row in rows if c in row]
            return found
    finally:
        engine.dispose()


def test_redaction_masks_fields_shapes_and_configured_values() -> None:
    r = Redaction.from_environment({"RADIUS_SECRET": "rad1us-s3cret", "PATH": "/usr/bin/short", "X_KEY": "short"})
    assert r.values == ("rad1us-s3cret",)  # shorter than 8 characters is not taken: it would mask words
    data = {"Password": "p", "api-key": "k", "nested": [{"SNMP_Community": "c", "ok": "rad1us-s3cret here"}],
            "none": None, "token": None, "out": json.dumps({"access_token": "t", "n": 1})}  # fmt: skip
    assert r.data(data) == {
        "Password": MASK, "api-key": MASK, "nested": [{"SNMP_Community": MASK, "ok": f"{MASK} here"}],
        "none": None, "token": None, "out": json.dumps({"access_token": MASK, "n": 1}),
    }  # fmt: skip
    assert r.text("Authorization: Bearer abcdefghijklmnopqrstu and postgresql://u:hunter22@db/x") == (
        f"Authorization: Bearer {MASK} and postgresql://{MASK}@db/x"
    )
    assert r.json('{"a": 1}') == '{"a": 1}'  # nothing secret: the very same text, not re-encoded
    assert r.json('{"psk": "x"}') == json.dumps({"psk": MASK}, separators=(",", ":"))
    assert Redaction(enabled=False).data({"password": "p"}) == {"password": "p"}
    # A lone surrogate a model sent (escaped in the JSON) stays escaped: raw, no driver could store it.
    masked = r.json('{"password": "p", "note": "\\ud83d!"}')
    assert masked == '{"password":"[redacted]","note":"\\ud83d!"}' and masked.encode("utf-8")
    assert r.data({"out": '{"token": "t", "n": "\\ud83d"}'})["out"].encode("utf-8")


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("sealed", [False, True], ids=["clear", "sealed"])
def test_a_notebook_shows_the_run_without_its_canaries(
    planted: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sealed: bool
) -> None:
    """The canary run opened in a notebook on a real Jupyter kernel, as an SRE reviewing it
    would: the trace's HTML view, its tables, usage, JSON lines and a plot. Every output of
    every cell is free of the canaries, and the run's own words are there (the notebook shows
    the run, sealed or not)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTFLOW_")}
    if sealed:
        monkeypatch.setenv(*SEALED_ENV)
        env[SEALED_ENV[0]] = SEALED_ENV[1]
    db_url = f"sqlite:///{tmp_path / 'canary.db'}"
    _canary_run(db_url).close()
    cells = [
        f"from agentflow import trace\nt = trace.load({db_url!r}, 'r1')\nt",
        "t.steps", "t.messages", "t.tool_calls", "t.decisions", "t.approvals", "t.audit", "t.usage",
        "print(t.jsonl())", "t.plot()", "print(t.history)",
    ]  # fmt: skip
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    NotebookClient(nb, kernel_name="python3", timeout=120, resources={"metadata": {"path": str(tmp_path)}}).execute(
        env=env
    )
    outputs = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            assert output.get("output_type") != "error", output
            outputs.append(output.get("text", ""))
            outputs.extend(v for k, v in output.get("data", {}).items() if k.startswith("text/"))
    shown = "\n".join(outputs)
    assert "rotate CS-101" in shown and "SNMP auth failed" in shown and MASK in shown
    assert _leaks(shown) == []
