"""The HTTP API of `agentflow serve` (agentflow/server/API.md), over FastAPI's TestClient on a real
SQLite file, with the in-process worker driving the NOC copilot (runbook model, policies/noc.yaml)
on a clock placed inside the 02:00-06:00 UTC maintenance window.

One module-scoped world (`parked`) holds runs that read-only tests look at: `east-1` parked on
its approval (alice asked; nobody ever decides it here, so every refused attempt of the
authorization matrix can be checked against it), `west-1` in another tenant, and `east-done`,
approved and finished, for the stream and the exports. Its runs park or finish while the fixture
is set up, so they never touch the network of a later test. Every test that changes a decision
builds its own world (a fresh store and network file; about 0.3 s).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from fastapi.testclient import TestClient

import agentflow.llm as llm
import agentflow_noc as noc
from agentflow import App
from agentflow.agent import Agent
from agentflow.approvals import Approvals
from agentflow.engine import SystemClock
from agentflow.policy import parse_pack
from agentflow.server import create_app
from agentflow.testing import TestClock, assert_eventually
from agentflow_noc.demo import copilot, make_model

WINDOW_START = datetime(2026, 1, 1, 2, 30, tzinfo=UTC).timestamp()  # inside 02:00-06:00 UTC
EAST, WEST = "noc-east", "noc-west"
# token key -> (operator name, tenant, roles). alice asks for the runs (the requester).
OPERATORS: dict[str, tuple[str, str, list[str]]] = {
    "alice": ("alice", EAST, ["noc-engineer"]),
    "bob": ("bob", EAST, ["noc-engineer"]),
    "erin": ("erin", EAST, ["noc-engineer"]),
    "carol": ("carol", EAST, ["viewer"]),
    "dave": ("dave", WEST, ["noc-engineer"]),
    # One operator name with a token in each tenant, and other roles in each (the tenant picker).
    "zoe@east": ("zoe", EAST, ["noc-engineer"]),
    "zoe@west": ("zoe", WEST, ["viewer"]),
}
NOBODY = "aft_" + "x" * 43  # well-formed, but nobody's token
FOREIGN_ORIGIN = "https://evil.example"
SAME_ORIGIN = "http://testserver"
TERMINAL = ("completed", "failed", "cancelled")


def task(site: str) -> str:
    return f"{site} drop rate is high since this morning, investigate and fix it."


# -- worlds --------------------------------------------------------------------------------------
@dataclass
class World:
    """An App served by a TestClient (whose lifespan runs a worker), its network and tokens."""

    app: App
    client: TestClient
    net: noc.Network | None
    db: Path
    tokens: dict[str, str]
    cards: dict[str, dict[str, Any]] = field(default_factory=dict)  # run id -> its first approval card
    started: dict[str, dict[str, Any]] = field(default_factory=dict)  # run id -> POST /api/runs answer

    def bearer(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"}

    def run(self, run_id: str, who: str = "alice") -> dict[str, Any]:
        got = self.client.get(f"/api/runs/{run_id}", headers=self.bearer(who))
        assert got.status_code == 200, got.text
        body: dict[str, Any] = got.json()
        return body

    def start(self, who: str, site: str, run_id: str) -> dict[str, Any]:
        sent = self.client.post("/api/runs", json={"task": task(site), "run_id": run_id}, headers=self.bearer(who))
        assert sent.status_code == 201, sent.text
        self.started[run_id] = sent.json()
        return self.started[run_id]

    def parked(self, run_id: str, who: str = "alice") -> dict[str, Any]:
        """Wait until `run_id` waits on an approval; return that approval's card."""

        def waiting() -> dict[str, Any] | None:
            run = self.run(run_id, who)
            assert run["status"] not in TERMINAL, run
            pending = [c for c in run["approvals"] if c["status"] == "pending"]
            return pending[0] if run["status"] == "waiting" and pending else None

        self.cards[run_id] = assert_eventually(waiting, timeout=30, message=f"{run_id} never waited on an approval")
        return self.cards[run_id]

    def finished(self, run_id: str, who: str = "alice") -> dict[str, Any]:
        return assert_eventually(
            lambda: (r := self.run(run_id, who))["status"] in TERMINAL and r, timeout=30, message=f"{run_id} not done"
        )

    def applies(self) -> list[dict[str, Any]]:
        assert self.net is not None
        return [e for e in self.net.effects() if e["kind"] == "apply"]


def window_clock() -> SystemClock:
    return SystemClock(offset=WINDOW_START - time.time())


@contextlib.contextmanager
def open_world(
    path: Path, *, sites: tuple[str, ...] = ("CS-101",), clock: Any = None, agent: Agent | None = None
) -> Iterator[World]:
    """A store and a network file in `path`, the agent registered, operators added, served."""
    configured = os.environ.get(noc.ENV)
    app = App(f"sqlite:///{path / 'wf.db'}", clock=clock or window_clock())
    try:
        (agent or copilot(make_model("runbook"))).register(app)
        net = None
        if sites:
            net = noc.configure(path / "net.db")  # the NOC tools of this process act on this file
            for site in sites:
                net.inject(site, "mis_set_handover")
        tokens = {
            key: Approvals.of(app).add_operator(name, tenant=tenant, roles=roles)[1]
            for key, (name, tenant, roles) in OPERATORS.items()
        }
        with TestClient(create_app(app)) as client:
            yield World(app, client, net, path / "wf.db", tokens)
    finally:
        app.close()
        if configured is None:  # the NOC tools of later tests act where they were told, not here
            os.environ.pop(noc.ENV, None)
        else:
            os.environ[noc.ENV] = configured


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    """A fresh world with an incident on CS-101 and nothing started."""
    with open_world(tmp_path) as w:
        yield w


@pytest.fixture
def parked_world(world: World) -> World:
    """A fresh world whose run `r1` (asked for by alice) waits on its approval."""
    world.start("alice", "CS-101", "r1")
    world.parked("r1")
    return world


@dataclass
class Session:
    cookie: str
    csrf: str

    def headers(self, *, csrf: str | None = "", origin: str | None = None) -> dict[str, str]:
        """The browser's headers: the cookie, the CSRF value (`""`: the right one), an Origin."""
        out = {"Cookie": f"af_session={self.cookie}"}
        if csrf is not None:
            out["X-CSRF-Token"] = csrf or self.csrf
        if origin is not None:
            out["Origin"] = origin
        return out


def sign_in(client: TestClient, token: str, *, keep: bool = False) -> Session:
    """POST /api/session; the cookie is returned (and left in the client's jar only if `keep`)."""
    sent = client.post("/api/session", json={"token": token, "tenant": None})
    assert sent.status_code == 200, sent.text
    session = Session(sent.cookies["af_session"], sent.json()["csrf"])
    if not keep:
        client.cookies.clear()
    return session


@dataclass
class Parked:
    world: World
    approval: dict[str, Any]  # east-1's card
    west_approval: dict[str, Any]
    bob: Session  # bob's browser session (the jar is left empty)


@pytest.fixture(scope="module")
def parked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Parked]:
    """The shared world: `east-1` (alice, CS-101) parked on its approval, `west-1` (dave,
    CS-107) parked in the other tenant, `east-done` (alice, CS-113) approved by bob and finished."""
    with open_world(tmp_path_factory.mktemp("parked"), sites=("CS-101", "CS-107", "CS-113")) as w:
        w.start("alice", "CS-101", "east-1")
        w.start("dave", "CS-107", "west-1")
        w.start("alice", "CS-113", "east-done")
        approval, west = w.parked("east-1"), w.parked("west-1", "dave")
        done = w.parked("east-done")
        sent = w.client.post(
            f"/api/approvals/{done['id']}/approve", json={"seen_hash": done["args_hash"]}, headers=w.bearer("bob")
        )
        assert sent.status_code == 200, sent.text
        assert w.finished("east-done")["status"] == "completed"
        yield Parked(w, approval, west, sign_in(w.client, w.tokens["bob"]))


@contextlib.contextmanager
def browser(w: World, **options: Any) -> Iterator[TestClient]:
    """Another client of `w`'s App with a cookie jar of its own (and no second worker)."""
    with TestClient(create_app(w.app, run_worker=False, **options)) as client:
        yield client


# -- what must not change ----------------------------------------------------------------------
def state(app: App) -> dict[str, Any]:
    """Everything a request may change, straight from the tables (the audit trail aside)."""
    q = app.store.backend.query
    return {
        "runs": q("SELECT id, status, tenant, input, output, meta, waiting_on, wake_at FROM af_runs ORDER BY id"),
        "steps": q("SELECT run_id, seq, status FROM af_steps ORDER BY run_id, seq"),
        "approvals": q(
            "SELECT id, status, args, args_hash, revision, expires_at, decided_at FROM af_approvals ORDER BY id"
        ),
        "votes": q(
            "SELECT approval_id, principal, decision, comment, revision, at FROM af_approval_votes ORDER BY 1, 2"
        ),
        "signals": q("SELECT id, run_id, name, payload FROM af_signals ORDER BY id"),
        "sessions": q("SELECT id_hash, operator, principals, tenant, revoked FROM af_sessions ORDER BY id_hash"),
        "principals": q("SELECT id, disabled FROM af_principals ORDER BY id"),
    }


def decision_view(app: App, approval_id: str, run_id: str) -> tuple[Any, ...]:
    """The request's status, revision, hash and votes (via the approvals service), and the run's status."""
    req = Approvals.of(app).get(approval_id)
    votes = [(v.principal, v.decision, v.revision) for v in req.votes]
    return req.status, req.revision, req.args_hash, votes, app.get_run(f"{req.tenant}:{run_id}").status


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """A refusal: `status` (4xx), JSON `{"error": {"code", "message", ...}}` with `code`."""
    assert response.status_code == status, (response.status_code, response.text)
    assert 400 <= response.status_code < 500
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}, body
    error: dict[str, Any] = body["error"]
    assert {"code", "message"} <= set(error) and isinstance(error["message"], str) and error["message"]
    assert error["code"] == code, error
    return error


def without_now(body: dict[str, Any]) -> dict[str, Any]:
    """A Session or Card without its `now` (the server's time), checked to be the App's clock:
    inside the maintenance window the worlds are placed in, not the wall clock."""
    rest = dict(body)
    now = rest.pop("now")
    assert isinstance(now, float) and WINDOW_START <= now < WINDOW_START + 3600, now
    return rest


# -- SSE ------------------------------------------------------------------------------------------
def sse(body: str) -> list[dict[str, Any]]:
    """Server-sent events: one dict per message with its `event`, `id`, decoded `data`, `retry`."""
    messages = []
    for block in body.split("\n\n"):
        fields: dict[str, Any] = {}
        for line in block.split("\n"):
            if not line or line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")
        if "data" in fields:
            fields["data"] = json.loads(fields["data"])
        if fields:
            messages.append(fields)
    return messages


# == 1. every endpoint on its happy path ============================================================
CARD_KEYS = {"id", "run_id", "tool", "target", "args", "args_hash", "diff", "rule", "requested_by", "status",
             "created_at", "expires_at", "quorum", "votes", "deciding_roles", "editable_args", "four_eyes",
             "revision", "can_decide", "why_not", "now"}  # fmt: skip
SUMMARY_KEYS = {"id", "status", "task", "agent", "requested_by", "tenant", "created_at", "updated_at", "waiting_on",
                "answer", "error", "outcome", "tokens", "cost_usd", "steps", "open_approvals"}  # fmt: skip
EVENT_KEYS = {"seq", "kind", "name", "status", "at", "title", "text", "untrusted", "data"}


def test_building_the_api_opens_no_database(tmp_path: Path) -> None:
    """`create_app` touches no store: a module that builds the ASGI app at import time opens no
    connection before a server forks its workers; the first request opens (and migrates) it."""
    db = tmp_path / "lazy.db"
    app = App(f"sqlite:///{db}")
    noc.configure(tmp_path / "noc.db")
    copilot(make_model("runbook")).register(app)
    api = create_app(app, run_worker=False)
    assert not db.exists()
    with TestClient(api) as client:
        assert client.post("/api/session", json={"token": "aft_wrong"}).status_code == 401
    assert db.exists()  # the refused sign-in was audited: the store was opened by the request
    app.close()


def test_sign_in_sets_an_httponly_strict_cookie_and_session_round_trips(parked: Parked) -> None:
    """POST /api/session sets `af_session` HttpOnly, SameSite=Strict, Path=/ (not Secure over
    plain HTTP) and answers the Session with a CSRF value; GET /api/session answers the same
    Session from the cookie; DELETE without the CSRF header is refused (403 csrf, still signed
    in), with it answers 204, clears the cookie and the cookie no longer works."""
    w = parked.world
    with browser(w) as client:
        sent = client.post("/api/session", json={"token": w.tokens["bob"], "tenant": EAST})
        assert sent.status_code == 200, sent.text
        (cookie,) = [c for c in sent.headers.get_list("set-cookie") if c.startswith("af_session=")]
        attributes = {a.strip().split("=")[0].lower(): a.strip() for a in cookie.split(";")[1:]}
        assert "httponly" in attributes and attributes["samesite"].lower() == "samesite=strict"
        assert attributes["path"] == "Path=/" and "secure" not in attributes
        session = without_now(sent.json())
        assert session == {"operator": "bob", "roles": ["noc-engineer"], "tenant": EAST, "tenants": [EAST],
                           "csrf": session["csrf"]}  # fmt: skip
        assert isinstance(session["csrf"], str) and len(session["csrf"]) >= 16
        assert without_now(client.get("/api/session").json()) == session
        secret = sent.cookies["af_session"]
        stored = w.app.store.backend.query("SELECT id_hash FROM af_sessions")
        assert (hashlib.sha256(secret.encode()).hexdigest(),) in stored and (secret,) not in stored

        assert_error(client.delete("/api/session"), 403, "csrf")
        assert client.get("/api/session").status_code == 200  # still signed in
        gone = client.delete("/api/session", headers={"X-CSRF-Token": session["csrf"]})
        assert gone.status_code == 204 and gone.content == b""
        assert any(c.startswith("af_session=") for c in gone.headers.get_list("set-cookie"))
        assert_error(client.get("/api/session"), 401, "not_signed_in")
        assert_error(client.get("/api/session", headers={"Cookie": f"af_session={secret}"}), 401, "session_expired")


def test_a_session_expires_after_its_ttl(parked: Parked) -> None:
    """A session lasts `session_ttl` seconds of wall-clock time: past it, the cookie answers 401
    session_expired (the cookie's Max-Age says the same to the browser)."""
    with browser(parked.world, session_ttl=0.05) as client:
        sent = client.post("/api/session", json={"token": parked.world.tokens["bob"]})
        cookie = sent.headers["set-cookie"]
        assert "max-age=0" in cookie.lower()
        secret = cookie.split(";")[0].removeprefix("af_session=")
        headers = {"Cookie": f"af_session={secret}"}
        assert_eventually(lambda: client.get("/api/session", headers=headers).status_code == 401, timeout=5)
        assert_error(client.get("/api/runs", headers=headers), 401, "session_expired")


def test_bearer_session_has_no_csrf(parked: Parked) -> None:
    """GET /api/session with a bearer token answers the token's operator and tenant, csrf null."""
    got = parked.world.client.get("/api/session", headers=parked.world.bearer("dave"))
    assert without_now(got.json()) == {"operator": "dave", "roles": ["noc-engineer"], "tenant": WEST, "tenants": [WEST],
                          "csrf": None}  # fmt: skip


def test_start_answers_201_with_the_run_summary(parked: Parked) -> None:
    """POST /api/runs answered 201 with a RunSummary of the new run: pending, the task, the
    copilot agent, requested_by = the caller, tenant = the caller's."""
    started = parked.world.started["east-1"]
    assert set(started) >= SUMMARY_KEYS
    assert {k: started[k] for k in ("id", "status", "task", "agent", "requested_by", "tenant", "answer")} == {
        "id": "east-1", "status": "pending", "task": task("CS-101"), "agent": "noc-copilot",
        "requested_by": "alice", "tenant": EAST, "answer": None,
    }  # fmt: skip
    assert parked.world.started["west-1"]["tenant"] == WEST and parked.world.started["west-1"]["requested_by"] == "dave"


def test_runs_list_is_the_current_tenants_newest_first(parked: Parked) -> None:
    """GET /api/runs lists the tenant's runs newest first (never another tenant's); `status`
    filters and `limit` caps."""
    w = parked.world
    listed = w.client.get("/api/runs", headers=w.bearer("bob")).json()["runs"]
    assert [r["id"] for r in listed] == ["east-done", "east-1"]
    assert all(set(r) >= SUMMARY_KEYS for r in listed)
    assert [r["created_at"] for r in listed] == sorted((r["created_at"] for r in listed), reverse=True)
    waiting = w.client.get("/api/runs", params={"status": "waiting"}, headers=w.bearer("bob")).json()["runs"]
    assert [(r["id"], r["open_approvals"]) for r in waiting] == [("east-1", 1)]
    assert [r["id"] for r in w.client.get("/api/runs?limit=1", headers=w.bearer("bob")).json()["runs"]] == ["east-done"]
    assert [r["id"] for r in w.client.get("/api/runs", headers=w.bearer("dave")).json()["runs"]] == ["west-1"]


def test_run_detail_and_events_after(parked: Parked) -> None:
    """GET /api/runs/{id} is the RunSummary plus every finished step as an Event (seq order)
    and the run's approval cards; GET .../events?after=N has the same events with seq > N."""
    w = parked.world
    detail = w.run("east-1", "bob")
    assert set(detail) >= SUMMARY_KEYS | {"events", "approvals"}
    assert (detail["status"], detail["open_approvals"], detail["outcome"]) == ("waiting", 1, None)
    seqs = [e["seq"] for e in detail["events"]]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs) and seqs
    assert all(set(e) == EVENT_KEYS for e in detail["events"])
    kinds = {e["kind"] for e in detail["events"]}
    assert {"model", "tool", "policy", "approval"} <= kinds
    gate = [e for e in detail["events"] if e["kind"] == "policy" and e["data"]["tool"] == "apply_change"]
    assert [(e["data"]["effect"], e["data"]["rule"]) for e in gate] == [("require_approval", "config-change-approval")]
    (card,) = detail["approvals"]
    assert set(card) >= CARD_KEYS and card["id"] == parked.approval["id"]
    assert (card["can_decide"], card["why_not"]) == (True, None)  # bob may decide

    middle = seqs[len(seqs) // 2]
    later = w.client.get("/api/runs/east-1/events", params={"after": middle}, headers=w.bearer("bob")).json()
    assert set(later) == {"run", "events", "approvals"}
    assert later["events"] == [e for e in detail["events"] if e["seq"] > middle]
    assert later["run"]["id"] == "east-1" and [c["id"] for c in later["approvals"]] == [card["id"]]


def test_stream_of_a_finished_run_sends_steps_in_order_then_approval_run_end(parked: Parked) -> None:
    """GET .../stream of a finished run: `step` messages with `id` = seq, in seq order, one per
    finished step (the same as the run's events), then the run's `approval` card(s), the `run`
    summary and a final `end` (completed); the server closes the stream."""
    w = parked.world
    detail = w.run("east-done")
    got = w.client.get("/api/runs/east-done/stream", headers=w.bearer("alice"))
    assert got.status_code == 200 and got.headers["content-type"].startswith("text/event-stream")
    assert got.headers["cache-control"] == "no-store"
    messages = sse(got.text)
    assert messages[0] == {"retry": "1000"}
    steps = [m for m in messages if m.get("event") == "step"]
    assert [int(m["id"]) for m in steps] == [m["data"]["seq"] for m in steps] == [e["seq"] for e in detail["events"]]
    assert [m["data"] for m in steps] == detail["events"]
    rest = [m for m in messages[1:] if m.get("event") != "step"]
    assert [m["event"] for m in rest] == ["approval", "run", "end"]
    assert rest[0]["data"]["status"] == "approved" and rest[0]["data"]["votes"][0]["principal"] == "bob"
    assert rest[1]["data"]["status"] == rest[2]["data"]["status"] == "completed"
    assert messages[-1]["event"] == "end" and messages.index(steps[-1]) < messages.index(rest[0])


@pytest.mark.parametrize("how", ["last-event-id", "after", "both"])
def test_stream_resumes_after_the_last_event_id(parked: Parked, how: str) -> None:
    """Reconnecting with `Last-Event-ID: N` (or `?after=N`; with both, the later one: an
    EventSource reconnects to its original URL) sends only the steps with seq > N (then
    approval, run, end as on any connect)."""
    w = parked.world
    seqs = [e["seq"] for e in w.run("east-done")["events"]]
    n = seqs[len(seqs) // 2]
    url, headers = "/api/runs/east-done/stream", w.bearer("alice")
    if how == "last-event-id":
        got = w.client.get(url, headers={**headers, "Last-Event-ID": str(n)})
    elif how == "after":
        got = w.client.get(f"{url}?after={n}", headers=headers)
    else:
        got = w.client.get(f"{url}?after={seqs[1]}", headers={**headers, "Last-Event-ID": str(n)})
    messages = sse(got.text)
    assert [int(m["id"]) for m in messages if m.get("event") == "step"] == [s for s in seqs if s > n]
    assert [m["event"] for m in messages if m.get("event") != "step" and "event" in m] == ["approval", "run", "end"]


def test_chat_status_why_and_help(parked: Parked) -> None:
    """POST .../messages: `status` says where the run stands and what approval it waits for,
    `why?` names the policy decision (rule) that staged the change, `help` (and any other text)
    lists the commands; none of them changes anything."""
    w = parked.world
    before = state(w.app)
    aid = parked.approval["id"]

    def say(text: str) -> dict[str, Any]:
        sent = w.client.post("/api/runs/east-1/messages", json={"text": text}, headers=w.bearer("bob"))
        assert sent.status_code == 200, sent.text
        body: dict[str, Any] = sent.json()
        assert set(body) == {"reply", "kind", "card"} and body["card"] is None
        return body

    status = say("status")
    assert status["kind"] == "status"
    assert "east-1 is waiting" in status["reply"] and f"Waiting for approval {aid}" in status["reply"]
    assert "config-change-approval" in status["reply"]
    for text in ("why?", "why"):
        why = say(text)
        assert why["kind"] == "why" and "apply_change" in why["reply"]
        assert "require_approval by rule config-change-approval" in why["reply"]
    for text in ("help", "hello there"):
        helped = say(text)
        assert (
            helped["kind"] == "help" and "approve [comment]" in helped["reply"] and "reject <reason>" in helped["reply"]
        )
    done = w.client.post("/api/runs/east-done/messages", json={"text": "status"}, headers=w.bearer("alice")).json()
    assert "east-done is completed" in done["reply"] and "Answer:" in done["reply"]
    assert state(w.app) == before


def test_trace_export_is_the_runs_json_lines(parked: Parked) -> None:
    """GET .../trace.jsonl is an attachment of JSON lines: the run first, then each of its steps
    (the same seqs as its events) and its approval."""
    w = parked.world
    got = w.client.get("/api/runs/east-done/trace.jsonl", headers=w.bearer("alice"))
    assert got.status_code == 200
    assert got.headers["content-type"].startswith("application/x-ndjson")
    assert got.headers["content-disposition"] == 'attachment; filename="east-done.jsonl"'
    records = [json.loads(line) for line in got.text.splitlines()]
    # The export is the store's record: the run under its key, qualified by its tenant (run ids are per tenant).
    assert records[0]["type"] == "run" and records[0]["run_id"] == "noc-east:east-done"
    assert records[0]["status"] == "completed"
    assert all(r["run_id"] == "noc-east:east-done" for r in records)
    step_seqs = {r["seq"] for r in records if r["type"] == "step"}
    assert {e["seq"] for e in w.run("east-done")["events"]} <= step_seqs
    assert [r["status"] for r in records if r["type"] == "approval"] == ["approved"]


def test_approvals_list_and_get_are_the_tenants_cards(parked: Parked) -> None:
    """GET /api/approvals lists the tenant's open cards (default `pending`), `approved` and `all`
    filter; each card says whether the caller may decide (bob yes, alice no: four-eyes); GET
    /api/approvals/{id} is the same card; another tenant sees only its own."""
    w = parked.world
    aid = parked.approval["id"]

    def ids(who: str, status: str | None = None) -> list[str]:
        got = w.client.get("/api/approvals", params={"status": status} if status else {}, headers=w.bearer(who))
        assert got.status_code == 200, got.text
        return [c["id"] for c in got.json()["approvals"]]

    done_id = w.cards["east-done"]["id"]
    assert ids("bob") == [aid] and ids("bob", "pending") == [aid]
    assert ids("bob", "approved") == [done_id] and ids("bob", "rejected") == []
    assert sorted(ids("bob", "all")) == sorted([aid, done_id])
    assert ids("dave") == [parked.west_approval["id"]]
    card = w.client.get(f"/api/approvals/{aid}", headers=w.bearer("bob")).json()
    assert set(card) >= CARD_KEYS
    assert {k: card[k] for k in ("run_id", "tool", "target", "rule", "requested_by", "status", "quorum", "votes",
                                 "deciding_roles", "editable_args", "four_eyes", "can_decide", "why_not")} == {
        "run_id": "east-1", "tool": "apply_change", "target": "CS-101", "rule": "config-change-approval",
        "requested_by": "alice", "status": "pending", "quorum": {"needed": 1, "have": 0}, "votes": [],
        "deciding_roles": ["noc-engineer"], "editable_args": ["value"], "four_eyes": True, "can_decide": True,
        "why_not": None,
    }  # fmt: skip
    assert card["args"] == {"site": "CS-101", "param": "hoA3Offset", "value": 3}
    assert card["diff"] == {"site": "CS-101", "param": "hoA3Offset", "from": 8, "to": 3}
    mine = w.client.get(f"/api/approvals/{aid}", headers=w.bearer("alice")).json()
    assert mine["can_decide"] is False and mine["why_not"].startswith("self_approval: ")
    viewer = w.client.get(f"/api/approvals/{aid}", headers=w.bearer("carol")).json()
    assert viewer["can_decide"] is False and viewer["why_not"].startswith("missing_role: ")


def test_openapi_lists_every_endpoint_of_the_contract(parked: Parked) -> None:
    """/openapi.json describes every path and method of API.md."""
    paths = parked.world.client.get("/openapi.json").json()["paths"]
    expected = {
        "/api/session": {"get", "post", "delete"},
        "/api/session/tenant": {"put"},
        "/api/runs": {"get", "post"},
        "/api/runs/{run_id}": {"get"},
        "/api/runs/{run_id}/events": {"get"},
        "/api/runs/{run_id}/stream": {"get"},
        "/api/runs/{run_id}/messages": {"post"},
        "/api/runs/{run_id}/trace.jsonl": {"get"},
        "/api/runs/{run_id}/timeline": {"get"},
        "/api/approvals": {"get"},
        "/api/approvals/{approval_id}": {"get"},
        "/api/approvals/{approval_id}/approve": {"post"},
        "/api/approvals/{approval_id}/reject": {"post"},
    }
    assert {p: set(paths[p]) for p in expected if p in paths} == expected


def test_the_page_is_served_with_a_content_security_policy(parked: Parked) -> None:
    """GET / serves the chat page (no credentials needed) with a CSP forbidding inline/remote
    script and framing, and nosniff."""
    got = parked.world.client.get("/")
    assert got.status_code == 200 and got.headers["content-type"].startswith("text/html")
    csp = got.headers["content-security-policy"]
    for directive in ("default-src 'self'", "object-src 'none'", "frame-ancestors 'none'", "base-uri 'none'"):
        assert directive in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert got.headers["x-content-type-options"] == "nosniff"


def test_chat_reject_with_a_reason_rejects_and_the_run_finishes_without_the_change(parked_world: World) -> None:
    """`reject <reason>` in the run's chat rejects its open approval with the reason as the
    comment (answered with the card); the run completes and the network is never changed."""
    w = parked_world
    sent = w.client.post(
        "/api/runs/r1/messages", json={"text": "reject not during the freeze"}, headers=w.bearer("bob")
    )
    assert sent.status_code == 200, sent.text
    body = sent.json()
    assert body["kind"] == "approval" and body["card"]["status"] == "rejected"
    assert [(v["principal"], v["decision"], v["comment"]) for v in body["card"]["votes"]] == [
        ("bob", "reject", "not during the freeze")
    ]
    assert w.finished("r1")["status"] == "completed"
    assert w.applies() == []


# == 2. the authorization matrix over the decision endpoints ======================================
ACTORS = {
    # actor -> how it calls: ("bearer", token key | None for nobody's), ("none",), ("cookie", csrf, origin)
    "requester": ("bearer", "alice"),
    "approver_with_role": ("bearer", "bob"),
    "operator_without_role": ("bearer", "carol"),
    "other_tenant_operator": ("bearer", "dave"),
    "bad_token": ("bearer", None),
    "no_credentials": ("none",),
    "cookie_without_csrf": ("cookie", None, None),
    "cookie_wrong_csrf": ("cookie", "not-the-csrf-value", None),
    "cookie_foreign_origin": ("cookie", "", FOREIGN_ORIGIN),
}
ENDPOINTS = ("approve", "reject", "chat_approve")
# (actor, endpoint) -> (status, error code or the request's new status, audit record added:
# (actor, action, outcome) or None when the request never reached the approvals service).
EXPECTED: dict[tuple[str, str], tuple[int, str, tuple[str, str, str] | None]] = {
    ("requester", "approve"): (403, "self_approval", ("alice", "approve", "refused")),
    ("requester", "reject"): (200, "rejected", ("alice", "reject", "done")),  # four-eyes guards approvals only
    ("requester", "chat_approve"): (403, "self_approval", ("alice", "approve", "refused")),
    ("approver_with_role", "approve"): (200, "approved", ("bob", "approve", "done")),
    ("approver_with_role", "reject"): (200, "rejected", ("bob", "reject", "done")),
    ("approver_with_role", "chat_approve"): (200, "approved", ("bob", "approve", "done")),
    ("operator_without_role", "approve"): (403, "missing_role", ("carol", "approve", "refused")),
    ("operator_without_role", "reject"): (403, "missing_role", ("carol", "reject", "refused")),
    ("operator_without_role", "chat_approve"): (403, "missing_role", ("carol", "approve", "refused")),
    # Other tenants' ids are not confirmed (API.md: 404), but the attempt is still audited.
    ("other_tenant_operator", "approve"): (404, "unknown", ("dave", "approve", "refused")),
    ("other_tenant_operator", "reject"): (404, "unknown", ("dave", "reject", "refused")),
    ("other_tenant_operator", "chat_approve"): (404, "unknown_run", None),
    ("bad_token", "approve"): (401, "bad_token", ("anonymous", "authenticate", "refused")),
    ("bad_token", "reject"): (401, "bad_token", ("anonymous", "authenticate", "refused")),
    ("bad_token", "chat_approve"): (401, "bad_token", ("anonymous", "authenticate", "refused")),
    ("no_credentials", "approve"): (401, "not_signed_in", None),
    ("no_credentials", "reject"): (401, "not_signed_in", None),
    ("no_credentials", "chat_approve"): (401, "not_signed_in", None),
    ("cookie_without_csrf", "approve"): (403, "csrf", None),
    ("cookie_without_csrf", "reject"): (403, "csrf", None),
    ("cookie_without_csrf", "chat_approve"): (403, "csrf", None),
    ("cookie_wrong_csrf", "approve"): (403, "csrf", None),
    ("cookie_wrong_csrf", "reject"): (403, "csrf", None),
    ("cookie_wrong_csrf", "chat_approve"): (403, "csrf", None),
    ("cookie_foreign_origin", "approve"): (403, "csrf", None),
    ("cookie_foreign_origin", "reject"): (403, "csrf", None),
    ("cookie_foreign_origin", "chat_approve"): (403, "csrf", None),
}


def test_the_matrix_covers_every_cell() -> None:
    """The expected table names every (actor, endpoint) pair, and nothing else."""
    assert set(EXPECTED) == {(a, e) for a in ACTORS for e in ENDPOINTS}


def decide(w: World, actor: str, endpoint: str, card: dict[str, Any], bob: Session | None) -> httpx.Response:
    """One decision attempt by `actor` through `endpoint` on `card`."""
    how = ACTORS[actor]
    if how[0] == "bearer":
        headers = {"Authorization": f"Bearer {w.tokens[how[1]] if how[1] else NOBODY}"}
    elif how[0] == "cookie":
        assert bob is not None
        headers = bob.headers(csrf=how[1], origin=how[2])
    else:
        headers = {}
    if endpoint == "approve":
        body = {"comment": "lgtm", "seen_hash": card["args_hash"]}
        return w.client.post(f"/api/approvals/{card['id']}/approve", json=body, headers=headers)
    if endpoint == "reject":
        return w.client.post(f"/api/approvals/{card['id']}/reject", json={"comment": "not now"}, headers=headers)
    return w.client.post(f"/api/runs/{card['run_id']}/messages", json={"text": "approve lgtm"}, headers=headers)


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("actor", list(ACTORS))
def test_authorization_matrix(actor: str, endpoint: str, request: pytest.FixtureRequest) -> None:
    """Who may decide, per endpoint: the answer's status and code equal the table's cell. A
    refused cell changes nothing (the request's status, revision, hash and votes; the run's
    status; every table) and adds exactly the audit record the table names (none when the
    request was stopped before the approvals service: no credentials, CSRF). An accepted cell
    answers the card in its new state, records one vote and wakes the run, which then finishes
    (with the change applied once if approved, never if rejected)."""
    status, outcome, audit = EXPECTED[(actor, endpoint)]
    if status == 200:  # a decision: a world of its own
        w: World = request.getfixturevalue("parked_world")
        card, bob = w.cards["r1"], None
    else:  # a refusal: the shared parked run, which nobody decides
        parked: Parked = request.getfixturevalue("parked")
        w, card, bob = parked.world, parked.approval, parked.bob
    before, view, audits = (
        state(w.app),
        decision_view(w.app, card["id"], card["run_id"]),
        len(Approvals.of(w.app).audit()),
    )

    answer = decide(w, actor, endpoint, card, bob)
    added = Approvals.of(w.app).audit()[audits:]

    if status != 200:
        assert_error(answer, status, outcome)
        assert decision_view(w.app, card["id"], card["run_id"]) == view, "a refused decision changed the request"
        assert state(w.app) == before, "a refused decision changed state"
        assert [(a.actor, a.action, a.outcome) for a in added] == ([audit] if audit else [])
        if audit and audit[1] != "authenticate":
            assert added[0].approval_id == card["id"] and added[0].reason.split(":")[0] in (outcome, "wrong_tenant")
        return
    assert answer.status_code == 200, answer.text
    decided = answer.json()["card"] if endpoint == "chat_approve" else answer.json()
    assert (decided["id"], decided["status"]) == (card["id"], outcome)
    voter, decision = audit[0], audit[1]
    assert [(v["principal"], v["decision"]) for v in decided["votes"]] == [(voter, decision)]
    assert [(a.actor, a.action, a.outcome) for a in added if a.approval_id == card["id"]] == [audit]
    assert Approvals.of(w.app).get(card["id"]).status == outcome
    assert w.finished("r1")["status"] == "completed"
    assert len(w.applies()) == (1 if outcome == "approved" else 0)


# == 3. bad input ======================================================================================
def test_wrong_or_missing_credentials_answer_401_json(parked: Parked) -> None:
    """A wrong bearer token (401 bad_token, audited), no credentials (401 not_signed_in), an
    unknown cookie (401 session_expired), on reads and writes: JSON errors; nothing started."""
    w = parked.world
    before, audits = state(w.app), len(Approvals.of(w.app).audit())
    for method, path, body in (("GET", "/api/runs", None), ("GET", "/api/approvals", None),
                               ("POST", "/api/runs", {"task": "hi"}), ("GET", "/api/session", None)):  # fmt: skip
        assert_error(w.client.request(method, path, json=body, headers={"Authorization": "Bearer aft_nope"}), 401,
                     "bad_token")  # fmt: skip
        assert_error(w.client.request(method, path, json=body), 401, "not_signed_in")
        assert_error(w.client.request(method, path, json=body, headers={"Cookie": "af_session=forged"}), 401,
                     "session_expired")  # fmt: skip
    assert_error(w.client.post("/api/session", json={"token": "aft_nope"}), 401, "bad_token")
    assert_error(w.client.post("/api/session", json={"token": w.tokens["bob"], "tenant": WEST}), 403, "wrong_tenant")
    assert state(w.app) == before
    added = [(a.actor, a.action, a.outcome) for a in Approvals.of(w.app).audit()[audits:]]
    assert added == [("anonymous", "authenticate", "refused")] * 5  # the four bearer attempts and the sign-in


def test_other_tenants_runs_answer_404_on_every_route(parked: Parked) -> None:
    """A run of another tenant is unknown on every run route (404 unknown_run, as for an id that
    does not exist: ids of other tenants are not confirmed), and nothing changes."""
    w = parked.world
    before = state(w.app)
    for run_id in ("west-1", "no-such-run"):
        for method, suffix, body in (("GET", "", None), ("GET", "/events", None), ("GET", "/stream", None),
                                     ("GET", "/trace.jsonl", None), ("GET", "/timeline", None),
                                     ("POST", "/messages", {"text": "status"}),
                                     ("POST", "/messages", {"text": "approve"})):  # fmt: skip
            got = w.client.request(method, f"/api/runs/{run_id}{suffix}", json=body, headers=w.bearer("alice"))
            error = assert_error(got, 404, "unknown_run")
            assert "west" not in error["message"].replace(run_id, "")  # the other tenant is not named
    assert state(w.app) == before


def test_other_tenants_approvals_answer_404_on_every_route(parked: Parked) -> None:
    """An approval of another tenant answers 404 `unknown` on GET, approve and reject, exactly
    like an approval id that does not exist (not 403: the id is not confirmed); nothing changes."""
    w = parked.world
    before = state(w.app)
    west = parked.west_approval
    for aid in (west["id"], "apr_" + "0" * 20):
        assert_error(w.client.get(f"/api/approvals/{aid}", headers=w.bearer("bob")), 404, "unknown")
        for verb, body in (("approve", {"seen_hash": west["args_hash"]}), ("reject", {"comment": "no"})):
            got = w.client.post(f"/api/approvals/{aid}/{verb}", json=body, headers=w.bearer("bob"))
            assert_error(got, 404, "unknown")
    assert state(w.app) == before


def test_invalid_decisions_are_refused_and_change_nothing(parked: Parked) -> None:
    """On the parked request: a stale seen_hash (409 stale_args), an edit of a non-editable
    argument (422 not_editable), a reject without comment or with an empty one (422 invalid naming
    `comment`), an unknown body field (422 invalid naming it), malformed JSON (400 bad_request),
    chat `reject` without a reason (422 invalid), an unknown status filter (422): JSON errors,
    nothing changed; the service's refusals are audited."""
    w = parked.world
    card = parked.approval
    url = f"/api/approvals/{card['id']}"
    bob = w.bearer("bob")
    before, view, audits = state(w.app), decision_view(w.app, card["id"], "east-1"), len(Approvals.of(w.app).audit())

    assert_error(w.client.post(f"{url}/approve", json={"seen_hash": "f" * 64}, headers=bob), 409, "stale_args")
    edited = {**card["args"], "site": "CS-102"}
    assert_error(w.client.post(f"{url}/approve", json={"args": edited, "seen_hash": card["args_hash"]}, headers=bob),
                 422, "not_editable")  # fmt: skip
    added = Approvals.of(w.app).audit()[audits:]
    assert [(a.actor, a.outcome, a.reason.split(":")[0]) for a in added] == [
        ("bob", "refused", "stale_args"),
        ("bob", "refused", "not_editable"),
    ]
    for body in ({}, {"comment": ""}):
        error = assert_error(w.client.post(f"{url}/reject", json=body, headers=bob), 422, "invalid")
        assert "comment" in error["message"] and any("comment" in d["loc"] for d in error["details"])
    error = assert_error(w.client.post(f"{url}/approve", json={"comment": "ok", "sneaky": 1}, headers=bob), 422,
                         "invalid")  # fmt: skip
    assert "sneaky" in error["message"]
    malformed = w.client.post(f"{url}/approve", content=b'{"comment": "ok",', headers={**bob, "Content-Type":
                              "application/json"})  # fmt: skip
    assert_error(malformed, 400, "bad_request")
    assert_error(w.client.post("/api/runs/east-1/messages", json={"text": "reject"}, headers=bob), 422, "invalid")
    assert_error(w.client.get("/api/approvals?status=bogus", headers=bob), 422, "invalid")
    assert decision_view(w.app, card["id"], "east-1") == view
    assert state(w.app) == before


def test_a_body_that_is_not_utf8_json_is_a_bad_request(parked: Parked) -> None:
    """A body sent as JSON that is not even text (invalid UTF-8) is malformed JSON: 400
    `bad_request` like any other (API.md's table has no other 400 code for it); nothing starts."""
    w = parked.world
    before = state(w.app)
    headers = {**w.bearer("alice"), "Content-Type": "application/json"}
    assert_error(w.client.post("/api/runs", content=b'{"task": "\xff\xfe"}', headers=headers), 400, "bad_request")
    assert state(w.app) == before


def test_invalid_starts_are_refused_and_start_nothing(parked: Parked) -> None:
    """POST /api/runs with a task too long (422), empty (422), an unknown field (422), a bad
    run_id (422), a run_id already used (409 run_exists; the existing run is untouched), and
    GET /api/runs?limit=0 (422): JSON errors, no run started."""
    w = parked.world
    alice = w.bearer("alice")
    before = state(w.app)
    for body in ({"task": "x" * 4001}, {"task": ""}, {"task": "hi", "tenant": WEST}, {"task": "hi", "run_id": "a/b"}):
        error = assert_error(w.client.post("/api/runs", json=body, headers=alice), 422, "invalid")
        assert error["details"], error
    assert_error(w.client.post("/api/runs", json={"task": "again", "run_id": "east-1"}, headers=alice), 409,
                 "run_exists")  # fmt: skip
    assert_error(w.client.get("/api/runs?limit=0", headers=alice), 422, "invalid")
    assert_error(w.client.get("/api/runs?limit=abc", headers=alice), 422, "invalid")
    assert_error(w.client.get("/api/nothing-here", headers=alice), 404, "not_found")
    assert state(w.app) == before


def test_a_double_clicked_approve_counts_once_quorum_1(parked_world: World) -> None:
    """Two approvals sent at once by the same operator on a quorum-1 rule: one answers 200
    approved, the other 409 already_decided (audited); one vote, and the change is pushed once."""
    w = parked_world
    card = w.cards["r1"]

    def click() -> httpx.Response:
        return w.client.post(f"/api/approvals/{card['id']}/approve", json={"seen_hash": card["args_hash"]},
                             headers=w.bearer("bob"))  # fmt: skip

    with ThreadPoolExecutor(2) as pool:
        answers = sorted((f.result() for f in [pool.submit(click), pool.submit(click)]), key=lambda r: r.status_code)
    assert [a.status_code for a in answers] == [200, 409], [a.text for a in answers]
    assert answers[0].json()["status"] == "approved"
    assert_error(answers[1], 409, "already_decided")
    req = Approvals.of(w.app).get(card["id"])
    assert [(v.principal, v.decision) for v in req.votes] == [("bob", "approve")]
    assert [(a.outcome, a.reason.split(":")[0]) for a in Approvals.of(w.app).audit(approval_id=card["id"])
            if a.actor == "bob"] == [("done", "approved (1/1)"), ("refused", "already_decided")]  # fmt: skip
    assert w.finished("r1")["status"] == "completed"
    assert len(w.applies()) == 1 and w.net is not None and w.net.duplicate_keys() == []


def quorum_2_copilot() -> Agent:
    """The NOC copilot under the NOC pack, with the change approval needing two engineers."""
    raw = yaml.safe_load(noc.policy_path().read_text())
    (rule,) = [r for r in raw["rules"] if r["id"] == "config-change-approval"]
    rule["approval"]["quorum"] = 2
    return dataclasses.replace(copilot(make_model("runbook")), policies=parse_pack(json.dumps(raw)))


def test_a_double_clicked_approve_counts_once_quorum_2(tmp_path: Path) -> None:
    """Two approvals sent at once by the same operator on a quorum-2 rule both answer 200 with
    the same card (pending, 1/2): the vote is counted once; a second operator's approval
    completes the quorum and the change is pushed once."""
    with open_world(tmp_path, agent=quorum_2_copilot()) as w:
        w.start("alice", "CS-101", "r1")
        card = w.parked("r1")
        assert card["quorum"] == {"needed": 2, "have": 0}

        def click() -> httpx.Response:
            return w.client.post(f"/api/approvals/{card['id']}/approve", json={"seen_hash": card["args_hash"]},
                                 headers=w.bearer("bob"))  # fmt: skip

        with ThreadPoolExecutor(2) as pool:
            answers = [f.result() for f in [pool.submit(click), pool.submit(click)]]
        assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
        assert [(a.json()["status"], a.json()["quorum"]) for a in answers] == [
            ("pending", {"needed": 2, "have": 1})
        ] * 2
        req = Approvals.of(w.app).get(card["id"])
        assert (req.status, [(v.principal, v.decision) for v in req.votes]) == ("pending", [("bob", "approve")])
        assert sorted(a.reason for a in Approvals.of(w.app).audit(approval_id=card["id"]) if a.actor == "bob") == [
            "approval 1/2",
            "repeated decision: counted once",
        ]
        assert w.run("r1")["status"] == "waiting"
        done = w.client.post(f"/api/approvals/{card['id']}/approve", json={"seen_hash": card["args_hash"]},
                             headers=w.bearer("erin"))  # fmt: skip
        assert (done.status_code, done.json()["status"], done.json()["quorum"]["have"]) == (200, "approved", 2)
        assert w.finished("r1")["status"] == "completed"
        assert len(w.applies()) == 1 and w.net is not None and w.net.duplicate_keys() == []


def test_an_edited_requests_card_shows_a_diff_that_matches_its_arguments(tmp_path: Path) -> None:
    """Quorum 2: bob edits `value` 3 -> 4 and approves (1/2 of revision 2). The card the second
    approver is shown must not contradict what they approve: its `diff` (which the page and the
    terminal chat display as "from -> to") is the edited change or absent, never the original
    one. Approving with the hash seen before the edit is 409 stale_args; with the new one, the
    edited value is pushed once."""
    with open_world(tmp_path, agent=quorum_2_copilot()) as w:
        w.start("alice", "CS-101", "r1")
        card = w.parked("r1")
        assert (card["args"]["value"], card["diff"]["to"]) == (3, 3)
        url = f"/api/approvals/{card['id']}/approve"
        edited = {**card["args"], "value": 4}
        sent = w.client.post(url, json={"args": edited, "seen_hash": card["args_hash"]}, headers=w.bearer("bob"))
        assert sent.status_code == 200, sent.text
        assert (sent.json()["status"], sent.json()["revision"], sent.json()["quorum"]["have"]) == ("pending", 2, 1)
        stale = w.client.post(url, json={"seen_hash": card["args_hash"]}, headers=w.bearer("erin"))
        assert_error(stale, 409, "stale_args")
        shown = w.client.get(f"/api/approvals/{card['id']}", headers=w.bearer("erin")).json()
        assert shown["args"] == edited and shown["can_decide"] is True
        assert shown["diff"] is None or shown["diff"].get("to") == 4, f"the card shows {shown['diff']} for {edited}"
        done = w.client.post(url, json={"seen_hash": shown["args_hash"]}, headers=w.bearer("erin"))
        assert (done.status_code, done.json()["status"]) == (200, "approved")
        assert w.finished("r1")["status"] == "completed"
        assert [e["detail"]["value"] for e in w.applies()] == [4]


def test_an_expired_request_answers_410_and_changes_nothing(tmp_path: Path) -> None:
    """Past its expiry a request refuses approve and reject with 410 expired (audited), before
    and after the run has noticed; no vote is recorded and the change is never pushed."""
    clock = TestClock(start=WINDOW_START, skip=False)  # time moves only when the test says
    with open_world(tmp_path, clock=clock) as w:
        w.start("alice", "CS-101", "r1")
        card = w.parked("r1")
        clock.advance(card["expires_at"] - clock.now() + 1)
        url = f"/api/approvals/{card['id']}"
        answer = w.client.post(f"{url}/approve", json={"seen_hash": card["args_hash"]}, headers=w.bearer("bob"))
        assert_error(answer, 410, "expired")
        assert Approvals.of(w.app).expire(card["id"]).status == "expired"
        run = w.finished("r1")
        assert run["status"] == "completed" and w.applies() == []
        before, audits = state(w.app), len(Approvals.of(w.app).audit())
        assert_error(w.client.post(f"{url}/approve", json={}, headers=w.bearer("bob")), 410, "expired")
        assert_error(w.client.post(f"{url}/reject", json={"comment": "late"}, headers=w.bearer("erin")), 410, "expired")
        assert_error(w.client.post("/api/runs/r1/messages", json={"text": "approve"}, headers=w.bearer("bob")), 404,
                     "unknown")  # nothing open any more  # fmt: skip
        assert state(w.app) == before
        assert [(a.actor, a.outcome, a.reason.split(":")[0]) for a in Approvals.of(w.app).audit()[audits:]] == [
            ("bob", "refused", "expired"),
            ("erin", "refused", "expired"),
        ]
        assert Approvals.of(w.app).get(card["id"]).votes == []


def test_editing_the_editable_value_bumps_the_revision_and_the_edited_change_is_pushed(parked_world: World) -> None:
    """Approving with `args` that change only `value` (editable) answers 200: the revision is
    bumped, the hash is the new arguments', and the run pushes exactly the edited value once."""
    w = parked_world
    card = w.cards["r1"]
    edited = {**card["args"], "value": 4}
    sent = w.client.post(f"/api/approvals/{card['id']}/approve",
                         json={"args": edited, "seen_hash": card["args_hash"], "comment": "a bit less"},
                         headers=w.bearer("bob"))  # fmt: skip
    assert sent.status_code == 200, sent.text
    body = sent.json()
    assert (body["revision"], body["args"], body["status"]) == (card["revision"] + 1, edited, "approved")
    assert body["args_hash"] != card["args_hash"]
    assert w.finished("r1")["status"] == "completed"
    assert [(e["site"], e["detail"]["param"], e["detail"]["value"]) for e in w.applies()] == [
        ("CS-101", "hoA3Offset", 4)
    ]


# == 4. sessions survive a restart; sign-out and disabled operators ==================================
def test_a_session_survives_a_server_restart_and_sign_out_revokes_it(tmp_path: Path) -> None:
    """The session lives in the database: after the server (client and App) is closed and a new
    App and server are built on the same file, the same cookie answers the same Session and may
    act with its CSRF value; signing out revokes it (401 afterwards, also after another restart)."""
    with open_world(tmp_path, sites=()) as w:
        bob = sign_in(w.client, w.tokens["bob"])
        first = without_now(w.client.get("/api/session", headers=bob.headers()).json())
        assert first["operator"] == "bob"
    app = App(f"sqlite:///{tmp_path / 'wf.db'}", clock=window_clock())
    try:
        copilot(make_model("runbook")).register(app)
        with TestClient(create_app(app, run_worker=False)) as client:
            assert without_now(client.get("/api/session", headers=bob.headers()).json()) == first
            assert client.get("/api/runs", headers=bob.headers()).json()["runs"] == []
            gone = client.delete("/api/session", headers=bob.headers())
            assert gone.status_code == 204
            assert_error(client.get("/api/session", headers=bob.headers()), 401, "session_expired")
            assert_error(client.delete("/api/session", headers=bob.headers()), 401, "session_expired")
        with TestClient(create_app(app, run_worker=False)) as client:
            assert_error(client.get("/api/runs", headers=bob.headers()), 401, "session_expired")
    finally:
        app.close()


def test_a_disabled_operator_is_refused_on_the_next_request(world: World) -> None:
    """An operator disabled in the database (af_principals.disabled = 1) is refused at once: the
    live session cookie and the bearer token both answer 401 operator_disabled, nothing is started."""
    w = world
    bob = sign_in(w.client, w.tokens["bob"])
    assert w.client.get("/api/session", headers=bob.headers()).status_code == 200
    with contextlib.closing(sqlite3.connect(w.db)) as conn:
        conn.execute("UPDATE af_principals SET disabled = 1 WHERE name = 'bob'")
        conn.commit()
    assert_error(w.client.get("/api/session", headers=bob.headers()), 401, "operator_disabled")
    assert_error(
        w.client.post("/api/runs", json={"task": task("CS-101")}, headers=bob.headers()), 401, "operator_disabled"
    )
    assert_error(w.client.get("/api/runs", headers=w.bearer("bob")), 401, "operator_disabled")
    assert_error(w.client.post("/api/session", json={"token": w.tokens["bob"]}), 401, "operator_disabled")
    assert w.app.store.backend.query("SELECT count(*) FROM af_runs")[0][0] == 0


# == 5. the tenant picker =============================================================================
def test_the_tenant_picker(parked: Parked) -> None:
    """One operator name with a token in each tenant signs in twice: the session lists both
    tenants and acts in the last one signed in to (with that tenant's roles); PUT
    /api/session/tenant switches, and runs and approvals follow the current tenant (the other's
    answer 404); switching to a tenant not signed in to is 403 wrong_tenant (nothing changes);
    another operator's token replaces the session (the old one is revoked) instead of merging."""
    w = parked.world
    with browser(w) as client:
        east = client.post("/api/session", json={"token": w.tokens["zoe@east"]}).json()
        assert (east["tenant"], east["tenants"], east["roles"]) == (EAST, [EAST], ["noc-engineer"])
        first = client.cookies["af_session"]
        both = client.post("/api/session", json={"token": w.tokens["zoe@west"], "tenant": WEST}).json()
        # Issue 13 hole 4: the sign-in made a new session; the cookie of the first one is dead.
        assert client.cookies["af_session"] != first and both["csrf"] != east["csrf"]
        assert_error(client.get("/api/session", headers={"Cookie": f"af_session={first}"}), 401, "session_expired")
        assert (both["operator"], both["tenant"], both["tenants"], both["roles"]) == ("zoe", WEST, [EAST, WEST],
                                                                                      ["viewer"])  # fmt: skip
        csrf = {"X-CSRF-Token": both["csrf"]}
        assert [r["id"] for r in client.get("/api/runs").json()["runs"]] == ["west-1"]
        assert [c["id"] for c in client.get("/api/approvals").json()["approvals"]] == [parked.west_approval["id"]]
        assert_error(client.get("/api/runs/east-1"), 404, "unknown_run")
        assert_error(client.get(f"/api/approvals/{parked.approval['id']}"), 404, "unknown")

        switched = client.put("/api/session/tenant", json={"tenant": EAST}, headers=csrf)
        assert switched.status_code == 200, switched.text
        assert (switched.json()["tenant"], switched.json()["roles"]) == (EAST, ["noc-engineer"])
        assert client.get("/api/session").json()["tenant"] == EAST
        assert [r["id"] for r in client.get("/api/runs").json()["runs"]] == ["east-done", "east-1"]
        assert [c["id"] for c in client.get("/api/approvals").json()["approvals"]] == [parked.approval["id"]]
        assert_error(client.get("/api/runs/west-1"), 404, "unknown_run")

        before = state(w.app)
        assert_error(client.put("/api/session/tenant", json={"tenant": "noc-south"}, headers=csrf), 403,
                     "wrong_tenant")  # fmt: skip
        assert_error(client.put("/api/session/tenant", json={"tenant": WEST}), 403, "csrf")
        assert state(w.app) == before and client.get("/api/session").json()["tenant"] == EAST

        zoes = client.cookies["af_session"]
        other = client.post("/api/session", json={"token": w.tokens["bob"]}).json()
        assert (other["operator"], other["tenants"]) == ("bob", [EAST]) and other["csrf"] != both["csrf"]
        assert client.get("/api/session").json()["operator"] == "bob" and client.cookies["af_session"] != zoes
        assert_error(client.get("/api/session", headers={"Cookie": f"af_session={zoes}"}), 401, "session_expired")
        assert_error(client.put("/api/session/tenant", json={"tenant": WEST}, headers={"X-CSRF-Token": other["csrf"]}),
                     403, "wrong_tenant")  # fmt: skip


def test_a_planted_cookie_gains_nothing_when_its_victim_signs_in(parked: Parked) -> None:
    """Issue 13 hole 4 (session fixation): an attacker plants the cookie of a session they hold
    (zoe@west) in a browser; the victim signs in there as zoe@east. The attacker's cookie is
    revoked by that sign-in and never reaches the east tenant; the victim's new cookie does."""
    w = parked.world
    with browser(w) as attacker:
        planted = sign_in(attacker, w.tokens["zoe@west"])
    with browser(w) as victim:
        signed = victim.post("/api/session", json={"token": w.tokens["zoe@east"]},
                             headers={"Cookie": f"af_session={planted.cookie}"})  # fmt: skip
        assert signed.status_code == 200 and signed.json()["tenant"] == EAST
        fresh = Session(signed.cookies["af_session"], signed.json()["csrf"])
        assert fresh.cookie != planted.cookie and fresh.csrf != planted.csrf
        victim.cookies.clear()
        assert [r["id"] for r in victim.get("/api/runs", headers=fresh.headers()).json()["runs"]] == ["east-done",
                                                                                                       "east-1"]  # fmt: skip
    with browser(w) as attacker:
        assert_error(attacker.get("/api/runs", headers=planted.headers()), 401, "session_expired")
        assert_error(attacker.put("/api/session/tenant", json={"tenant": EAST}, headers=planted.headers()), 401,
                     "session_expired")  # fmt: skip


# == 6. injection: the API marks, it does not sanitise ================================================
PAYLOAD = '<img src=x onerror=alert(1)><script>alert("owned")</script>'


@llm.tool(side_effect="none", target="site")
def read_site_notes(site: str) -> str:
    """Read the free-text notes field of a cell site."""
    return PAYLOAD


def test_tool_and_model_text_come_back_literally_marked_untrusted(tmp_path: Path) -> None:
    """A tool whose output is markup (`<img onerror>`, `<script>`): the tool event's `text` is
    that exact string with `untrusted: true`, and so is the model's answer echoing it (event
    and RunSummary); the JSON and the stream carry it unchanged (the page escapes, the API
    does not rewrite)."""
    model = llm.LangChainChat(
        llm.ScriptedChatModel(
            responses=[{"tool_calls": [{"name": "read_site_notes", "args": {"site": "CS-101"}}]}, f"Notes: {PAYLOAD}"]
        )
    )
    agent = Agent(name="notes-reader", model=model, tools=[read_site_notes])
    with open_world(tmp_path, sites=(), agent=agent) as w:
        w.start("alice", "CS-101", "inj")
        run = w.finished("inj")
        assert (run["status"], run["answer"]) == ("completed", f"Notes: {PAYLOAD}")
        (tool,) = [e for e in run["events"] if e["kind"] == "tool"]
        assert (tool["name"], tool["text"], tool["untrusted"]) == ("read_site_notes", PAYLOAD, True)
        answer = [e for e in run["events"] if e["kind"] == "model"][-1]
        assert (answer["text"], answer["untrusted"]) == (f"Notes: {PAYLOAD}", True)
        assert all(e["untrusted"] for e in run["events"] if e["text"] is not None)
        streamed = [m["data"] for m in sse(w.client.get("/api/runs/inj/stream", headers=w.bearer("alice")).text)
                    if m.get("event") == "step"]  # fmt: skip
        assert streamed == run["events"]


# == 7. end to end through the API only ==============================================================
def test_a_run_resolves_end_to_end_through_the_api(world: World) -> None:
    """alice (browser session) starts the copilot on CS-101; the run parks on its approval;
    alice cannot approve her own run; bob approves in his browser session (CSRF value, same
    Origin) with the hash he was shown; the run completes with the incident resolved, and the
    network's ledger shows exactly one push of the change and no duplicate."""
    w = world
    with browser(w) as alice_browser:
        alice = sign_in(alice_browser, w.tokens["alice"], keep=True)
        started = alice_browser.post("/api/runs", json={"task": task("CS-101"), "run_id": "inc-1"},
                                     headers={"X-CSRF-Token": alice.csrf, "Origin": SAME_ORIGIN})  # fmt: skip
        assert started.status_code == 201, started.text
        assert (started.json()["requested_by"], started.json()["tenant"]) == ("alice", EAST)
    card = w.parked("inc-1")
    assert (card["tool"], card["args"]["site"], card["requested_by"]) == ("apply_change", "CS-101", "alice")
    url = f"/api/approvals/{card['id']}/approve"
    own = w.client.post(url, json={"seen_hash": card["args_hash"]}, headers=alice.headers(origin=SAME_ORIGIN))
    assert_error(own, 403, "self_approval")
    bob = sign_in(w.client, w.tokens["bob"])
    sent = w.client.post(url, json={"seen_hash": card["args_hash"], "comment": "go"},
                         headers=bob.headers(origin=SAME_ORIGIN))  # fmt: skip
    assert sent.status_code == 200, sent.text
    assert (sent.json()["status"], sent.json()["votes"][0]["principal"]) == ("approved", "bob")
    run = w.finished("inc-1")
    assert (run["status"], run["outcome"], run["open_approvals"]) == ("completed", "answered", 0)
    assert "resolved" in (run["answer"] or "")
    applies = w.applies()
    assert [(e["site"], e["detail"]["value"]) for e in applies] == [("CS-101", 3)]
    assert w.net is not None and w.net.duplicate_keys() == []
