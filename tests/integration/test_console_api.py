"""What the web console reads from the JSON API (agentflow/server/API.md), over FastAPI's
TestClient on a real SQLite file with the in-process worker driving the NOC copilot: the runs
list's filters, counts and facets; an approval card's evidence (the agent's reason and
diagnosis, the reads it made, the rule in words) and blast radius (the pack's limits with what
the tenant has used, counted from the store); refusals in words."""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from support.sql_trace import trace_sqlite

from agentflow import App
from agentflow.approvals import Approvals
from agentflow.policy import ApprovalSpec, PolicyDecision
from agentflow.server import create_app
from agentflow_noc.demo import copilot, make_model
from integration.test_server_api import World, open_world

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """alice asks about CS-101 (a1, parks on its approval) and CS-104 (a2: healthy, completes
    with no change); bob asks about CS-102 (b1, parks)."""
    with open_world(tmp_path_factory.mktemp("console"), sites=("CS-101", "CS-102")) as w:
        w.start("alice", "CS-101", "a1")
        w.parked("a1")
        w.start("alice", "CS-104", "a2")
        w.finished("a2")
        w.start("bob", "CS-102", "b1")
        w.parked("b1", "bob")
        yield w


def listed(w: World, **params: Any) -> dict[str, Any]:
    got = w.client.get("/api/runs", params=params, headers=w.bearer("erin"))
    assert got.status_code == 200, got.text
    body: dict[str, Any] = got.json()
    return body


def ids(body: dict[str, Any]) -> set[str]:
    return {r["id"] for r in body["runs"]}


def test_the_runs_list_narrows_by_each_filter(world: World) -> None:
    """Status, site, tool, who asked, time and words each narrow the list; counts are per status
    over all the tenant's runs; facets name what the filters can take."""
    w = world
    every = listed(w)
    assert ids(every) == {"a1", "a2", "b1"} and every["matched"] == 3
    assert every["counts"]["waiting"] == 2 and every["counts"]["completed"] == 1
    assert {"CS-101", "CS-102", "CS-104"} <= set(every["facets"]["targets"])
    assert "apply_change" in every["facets"]["tools"] and every["facets"]["requested_by"] == ["alice", "bob"]
    assert ids(listed(w, status="waiting")) == {"a1", "b1"}
    assert ids(listed(w, target="CS-102")) == {"b1"}
    assert ids(listed(w, target="cs-104 ")) == {"a2"}  # a site as people type it
    assert ids(listed(w, requested_by="alice")) == {"a1", "a2"}
    assert ids(listed(w, tool="apply_change")) == {"a1", "b1"}  # asked for, approved or not
    assert ids(listed(w, q="CS-104 drop")) == {"a2"} and ids(listed(w, q="nothing-like-this")) == set()
    assert ids(listed(w, requested_by="alice", status="waiting")) == {"a1"}
    created = {r["id"]: r["created_at"] for r in every["runs"]}
    assert ids(listed(w, since=created["b1"])) == {"b1"} and ids(listed(w, until=created["a2"])) == {"a1"}
    narrowed = listed(w, status="completed")
    assert narrowed["counts"] == every["counts"]  # counts stay the tenant's: live, not the filtered page's
    (done,) = narrowed["runs"]
    assert done["outcome"] == "answered" and done["completed_at"] is not None
    assert done["duration_s"] == pytest.approx(done["completed_at"] - done["created_at"])
    assert done["targets"] == ["CS-104"] and "apply_change" not in done["tools"]
    bad = w.client.get("/api/runs", params={"status": "sleepy"}, headers=w.bearer("erin"))
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid"
    # another tenant lists none of these
    assert ids(listed_as(w, "dave")) == set()


@pytest.mark.parametrize(
    ("params", "named"),
    [({"since": "yesterday"}, "since"), ({"since": "nan"}, "since"), ({"until": "inf"}, "until"),
     ({"until": "-Infinity"}, "until"), ({"q": "x" * 201}, "q"), ({"limit": "0"}, "limit"),
     ({"status": "sleepy"}, "status"), ({"target": "CS-" * 100}, "target")],
)  # fmt: skip
def test_bad_filter_values_are_refused_saying_which(world: World, params: dict[str, str], named: str) -> None:
    """A filter the list cannot use is a 422 naming it, never a 500 and never ignored (a NaN
    time compared false with every run and so filtered nothing)."""
    got = world.client.get("/api/runs", params=params, headers=world.bearer("erin"))
    assert got.status_code == 422, got.text
    assert got.json()["error"]["code"] == "invalid" and named in got.json()["error"]["message"]


def listed_as(w: World, who: str) -> dict[str, Any]:
    body: dict[str, Any] = w.client.get("/api/runs", headers=w.bearer(who)).json()
    return body


def test_an_approval_card_carries_the_evidence_and_the_blast_radius(world: World) -> None:
    """The card of b1 (bob's CS-102 change): the agent's reason and diagnosis, its reads (the KPI
    series decoded), the rule in words, and the limits: once a1's change on CS-101 is applied,
    the region's blast radius has one site used and approving b1 makes it two."""
    w = world
    b1 = w.cards["b1"]
    before = w.client.get(f"/api/approvals/{b1['id']}", headers=w.bearer("erin")).json()
    ev = before["evidence"]
    assert "mis_set_handover" in ev["reason"] and "CS-102" in ev["reason"]
    assert {"field": "top_cause", "value": "mis_set_handover"}.items() <= ev["diagnosis"][0].items()
    reads = {r["tool"]: r for r in ev["reads"]}
    assert {"get_kpis", "detect_anomalies", "rank_root_causes"} <= set(reads)
    series = reads["get_kpis"]["result"]["series"]
    assert len(series) == 12 and {"t", "drop_rate_pct"} <= set(series[0])
    assert ev["target"] == "CS-102" and ev["region"] == "north"
    assert "four-eyes" in ev["rule"]["text"] and "noc-engineer" in ev["rule"]["text"]
    limits = {lim["rule"]: lim for lim in ev["limits"]}
    assert set(limits) == {"one-change-per-site", "region-blast-radius", "apply-rate"}
    radius_before = limits["region-blast-radius"]
    assert (radius_before["used"], radius_before["limit"], radius_before["after"]) == (0, 3, 1)

    approved = w.client.post(f"/api/approvals/{w.cards['a1']['id']}/approve", json={"comment": "go"},
                             headers=w.bearer("bob"))  # fmt: skip
    assert approved.status_code == 200, approved.text
    assert approved.json()["decided_at"] is not None and approved.json()["votes"][0]["comment"] == "go"
    w.finished("a1")
    after = w.client.get(f"/api/approvals/{b1['id']}", headers=w.bearer("erin")).json()["evidence"]
    radius = {lim["rule"]: lim for lim in after["limits"]}["region-blast-radius"]
    assert (radius["used"], radius["after"], radius["targets"]) == (1, 2, ["CS-101"])
    assert "1 of at most 3 sites in region north" in radius["text"]
    rate = {lim["rule"]: lim for lim in after["limits"]}["apply-rate"]
    assert (rate["used"], rate["limit"]) == (1, 10)


def test_refusals_are_in_words_and_the_inbox_keeps_the_decided(world: World) -> None:
    """bob may not approve his own run (four-eyes) and carol lacks the role: the cards say so in
    sentences (the machine code stays in `why_not` for programs); the inbox lists decided
    requests with who decided, when and their comment, without their evidence."""
    w = world
    b1 = w.cards["b1"]["id"]
    own = w.client.get(f"/api/approvals/{b1}", headers=w.bearer("bob")).json()
    assert own["why_not"].startswith("self_approval: ") and "four-eyes" in own["why_not_text"]
    assert "self_approval" not in own["why_not_text"]
    viewer = w.client.get(f"/api/approvals/{b1}", headers=w.bearer("carol")).json()
    assert viewer["why_not_text"] == "Deciding needs the role noc-engineer; you have viewer in noc-east."
    # a1 decided by bob (by the previous test when the module runs whole; here when run alone)
    decided = w.client.post(f"/api/approvals/{w.cards['a1']['id']}/approve", json={"comment": "go"},
                            headers=w.bearer("bob"))  # fmt: skip
    assert decided.status_code in (200, 409), decided.text
    everything = w.client.get("/api/approvals", params={"status": "all"}, headers=w.bearer("erin")).json()["approvals"]
    by_run = {c["run_id"]: c for c in everything}
    assert by_run["b1"]["evidence"] is not None  # open: shown with its evidence
    assert by_run["a1"]["status"] == "approved" and by_run["a1"]["evidence"] is None
    assert (by_run["a1"]["votes"][0]["principal"], by_run["a1"]["votes"][0]["comment"]) == ("bob", "go")
    assert by_run["a1"]["decided_at"] is not None
    assert json.dumps(everything).count("dave") == 0


def test_the_card_without_a_policy_pack_has_no_limits(tmp_path: Path) -> None:
    """An agent deciding with a policy function (no pack): the card still has its reason and
    reads, the rule in words from the request, and no limits to count."""
    from agentflow.agent import Agent, default_policy
    from agentflow_noc import NOC_TOOLS
    from agentflow_noc.demo import make_model

    agent = Agent(name="noc-copilot", model=make_model("runbook"), tools=NOC_TOOLS, policies=default_policy,
                  max_turns=16)  # fmt: skip
    with open_world(tmp_path, agent=agent) as w:
        w.start("alice", "CS-101", "p1")
        card = w.parked("p1")
        ev = w.client.get(f"/api/approvals/{card['id']}", headers=w.bearer("bob")).json()["evidence"]
        assert ev["limits"] == [] and ev["reads"] and "approval" in ev["rule"]["text"]


def test_a_tool_output_with_nan_and_infinity_is_valid_json_everywhere(tmp_path: Path) -> None:
    """A read tool whose output holds NaN and Infinity (a KPI computed as 0/0 or x/0; the agent
    records the output as `json.dumps` writes it, `NaN` and `Infinity` included): the live stream
    (its approval card with the evidence) sends valid JSON like every route, those values as null
    (JSON has no such numbers, and a browser's JSON.parse refuses the whole event); the card, the
    inbox, the timeline and the approve answer say null too, and approving works."""
    import dataclasses

    from agentflow.llm import tool
    from agentflow_noc import NOC_TOOLS
    from agentflow_noc.demo import copilot, make_model
    from agentflow_noc.env import network

    @tool(side_effect="none", target="site", tags=["read"])
    def get_kpis(site: str, window_minutes: int = 60) -> dict[str, Any]:
        """Read a cell site's KPIs as a 5-minute series over the last `window_minutes`."""
        kpis = network().kpis(site, window_minutes=window_minutes)
        return {**kpis, "jitter_ms": float("nan"), "peak_ratio": float("inf"), "floor": float("-inf")}

    def strict(text: str, where: str) -> Any:
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"{where} sent the bare constant {c}"))

    base = copilot(make_model("runbook"))
    agent = dataclasses.replace(base, tools=[get_kpis if t.name == "get_kpis" else t for t in NOC_TOOLS])
    with open_world(tmp_path, agent=agent) as w:
        w.start("alice", "CS-101", "n1")
        card = w.parked("n1")
        with w.client.stream("GET", "/api/runs/n1/stream", headers=w.bearer("bob")) as stream:
            lines = stream.iter_lines()
            event = next(line for line in lines if line == "event: approval")
            streamed = strict(next(lines).removeprefix("data: "), "the stream")
        assert event and streamed["id"] == card["id"]
        for shown in (card, streamed):
            (kpis,) = [r["result"] for r in shown["evidence"]["reads"] if r["tool"] == "get_kpis"]
            assert (kpis["jitter_ms"], kpis["peak_ratio"], kpis["floor"]) == (None, None, None)
            assert len(kpis["series"]) == 12
        for url in (f"/api/approvals/{card['id']}", "/api/approvals?status=all", "/api/runs/n1/timeline"):
            got = w.client.get(url, headers=w.bearer("bob"))
            assert got.status_code == 200, (url, got.text[:300])
            strict(got.text, url)
        approved = w.client.post(
            f"/api/approvals/{card['id']}/approve", json={"comment": "ok"}, headers=w.bearer("bob")
        )
        assert approved.status_code == 200, approved.text[:300]
        strict(approved.text, "approve")
        assert w.finished("n1")["status"] == "completed"


@contextlib.contextmanager
def traced_probe(w: World, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[TestClient, list[str]]]:
    """A second server on `w`'s store, without a worker, whose SQLite connections report every
    statement (with its bound values) into the list yielded beside its client."""
    statements = trace_sqlite(monkeypatch)
    probe_app = App(w.app.db)
    try:
        copilot(make_model("runbook")).register(probe_app)
        with TestClient(create_app(probe_app, run_worker=False)) as probe:
            statements.clear()
            yield probe, statements
    finally:
        probe_app.close()


def test_the_runs_list_sends_the_same_statements_for_one_run_as_for_three(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runs page asks for 100 runs every 3 s: their steps, tokens, cost and open approvals
    are read for all of them at once, not run by run (a list of 3 runs sends as many statements
    as a list of 1), each statement names the caller's tenant, and the figures are those of
    each run's own page."""
    with traced_probe(world, monkeypatch) as (probe, statements):
        sent = {}
        probe.get("/api/runs", headers=world.bearer("erin"))  # the schema check of a first request
        for limit in (1, 3):
            statements.clear()
            got = probe.get("/api/runs", params={"limit": limit}, headers=world.bearer("erin"))
            assert got.status_code == 200 and len(got.json()["runs"]) == limit, got.text
            sent[limit] = [s for s in statements if "af_" in s and not re.search(r"af_operator_tokens|af_alembic", s)]
        assert len(sent[3]) == len(sent[1]), sent[3]
        assert all("'noc-east" in s for s in sent[3]), sent[3]
        listed = got.json()["runs"]
    for shown in listed:
        single = world.run(shown["id"], "erin")
        assert {k: shown[k] for k in FIGURES} == {k: single[k] for k in FIGURES}, shown["id"]


FIGURES = ("steps", "tokens", "cost_usd", "open_approvals", "status", "outcome", "answer")


def test_the_nav_badge_poll_reads_no_run_history(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every page asks for the open requests every 3 s, for the nav badge: with `evidence=false`
    the cards come without evidence and the request reads no run's history (no statement on
    af_steps or af_blobs), however many requests are open; the inbox (`status=all`) reads each
    run's history once, not once per request."""
    # a second open request on b1's run (a plan staging two changes): its history is read once
    decision = PolicyDecision(effect="require_approval", rule="change-approval", approval_rule="change-approval",
                              approval=ApprovalSpec(roles=["noc-engineer"], four_eyes=False))  # fmt: skip
    Approvals.of(world.app).request(run_id="noc-east:b1", call_id="c-second", tenant="noc-east", requested_by="bob",
                                    tool="apply_change", args={"site": "CS-102", "value": 4}, decision=decision)  # fmt: skip
    with traced_probe(world, monkeypatch) as (probe, statements):
        badge = {"status": "pending", "evidence": "false"}
        got = probe.get("/api/approvals", params=badge, headers=world.bearer("erin"))
        assert got.status_code == 200, got.text
        cards = got.json()["approvals"]
        assert cards and all(c["evidence"] is None for c in cards)
        assert statements and not [s for s in statements if "af_steps" in s or "af_blobs" in s], statements
        statements.clear()
        inbox = probe.get("/api/approvals", params={"status": "all"}, headers=world.bearer("erin")).json()["approvals"]
        open_cards = [c for c in inbox if c["status"] in ("pending", "escalated")]
        assert sum(c["run_id"] == "b1" for c in open_cards) == 2 and all(c["evidence"] for c in open_cards)
        histories = [s for s in statements if "FROM af_steps WHERE run_id" in s and "ORDER BY seq" in s]
        assert len(histories) == len({c["run_id"] for c in open_cards}), histories


def test_the_evidence_of_a_change_is_the_reads_of_its_own_target(tmp_path: Path) -> None:
    """The card of a change on CS-101 quotes the reads of CS-101 only: not the read of CS-1010
    (whose name contains it) nor CS-102's diagnosis that lists CS-101 as a neighbour, even when
    those came later (the latest read of each tool is shown: a later one on another site used to
    replace CS-101's own root cause). A read-only tool without a declared target counts when its
    arguments name the site as a whole word."""
    from agentflow.chat import Chat, evidence
    from agentflow.store import StepRecord

    def step(seq: int, kind: str, name: str, args: Any, result: Any) -> StepRecord:
        return StepRecord(seq=seq, kind=kind, name=name, digest="", status="completed", attempt=1, args=json.dumps(args),
                          result=json.dumps(result), error=None, started_at=float(seq), finished_at=seq + 0.5,
                          wake_at=None, epoch=1)  # fmt: skip

    def read(seq: int, tool: str, site: str, result: dict[str, Any], target: str | None = "site") -> list[StepRecord]:
        call = {"tool": tool, "call": f"c{seq}", "args": {"site": site}}
        facts = {"side_effect": False, "target": site if target else None}
        return [step(seq, "policy", tool, call, {"effect": "allow", "call": facts}),
                step(seq + 1, "tool", tool, call, json.dumps(result))]  # fmt: skip

    app = App(f"sqlite:///{tmp_path / 'wf.db'}")
    try:
        decision = PolicyDecision(effect="require_approval", rule="change-approval", approval_rule="change-approval",
                                  approval=ApprovalSpec(roles=["noc-engineer"]))  # fmt: skip
        req = Approvals.of(app).request(run_id="r1", call_id="c-fix", tenant="default", requested_by="alice",
                                        tool="apply_change", args={"site": "CS-101"}, decision=decision)  # fmt: skip
        steps = [
            *read(1, "rank_root_causes", "CS-101", {"site": "CS-101", "top_cause": "mis_set_handover"}),
            *read(3, "get_kpis", "CS-101", {"site": "CS-101", "drop_rate_pct": 3.1}),
            *read(5, "rank_root_causes", "CS-1010", {"site": "CS-1010", "top_cause": "congestion"}),
            *read(7, "rank_root_causes", "CS-102", {"site": "CS-102", "top_cause": "backhaul_fault", "neighbours": ["CS-101"]}),
            *read(9, "site_notes", "CS-101", {"notes": "tilt replaced last week"}, target=None),
            *read(11, "site_notes", "CS-1010", {"notes": "nothing to say"}, target=None),
            step(13, "policy", "apply_change", {"tool": "apply_change", "call": "c-fix", "args": {"site": "CS-101"}},
                 {"effect": "require_approval", "call": {"side_effect": True, "target": "CS-101"}}),
        ]  # fmt: skip
        ev = evidence(Chat.of(app), req, steps)
    finally:
        app.close()
    assert [(r["tool"], r["seq"]) for r in ev["reads"]] == [
        ("rank_root_causes", 2),
        ("get_kpis", 4),
        ("site_notes", 10),
    ]
    assert [(d["field"], d["value"]) for d in ev["diagnosis"]] == [("top_cause", "mis_set_handover")]


def test_a_card_whose_evidence_cannot_be_read_still_shows_and_can_be_approved(tmp_path: Path) -> None:
    """The run's stored messages damaged (a blob that no longer decodes): the card's evidence
    cannot be read, but the run page, the inbox, the card and the approve answer still answer
    200 with the card (evidence null and `evidence_error` saying why), and approving is
    recorded: an unreadable record never stands between an operator and a decision."""
    with open_world(tmp_path) as w:
        w.start("alice", "CS-101", "d1")
        card = w.parked("d1")
        with sqlite3.connect(w.db) as db:
            db.execute("UPDATE af_blobs SET data = '{not json'")
        for url in ("/api/runs/d1", "/api/approvals?status=all", f"/api/approvals/{card['id']}"):
            got = w.client.get(url, headers=w.bearer("bob"))
            assert got.status_code == 200, (url, got.text[:300])
        shown = w.client.get(f"/api/approvals/{card['id']}", headers=w.bearer("bob")).json()
        assert shown["evidence"] is None and "CorruptRecordError" in shown["evidence_error"]
        approved = w.client.post(
            f"/api/approvals/{card['id']}/approve", json={"comment": "ok"}, headers=w.bearer("bob")
        )
        assert approved.status_code == 200 and approved.json()["status"] == "approved", approved.text[:300]
        assert w.finished("d1")["status"] in ("completed", "failed")  # (the run itself may not read on)


def test_the_inbox_sends_every_open_request_and_the_latest_decided_with_counts(tmp_path: Path) -> None:
    """The inbox is asked for every 3 s: it sends every open request but only the newest
    `decided_limit` decided ones (200 by default), with the counts of both over all of them, so
    a tenant with a long history is not sent (and redrawn) all of it at every poll."""
    with open_world(tmp_path) as w:
        w.start("alice", "CS-101", "h1")
        w.parked("h1")  # its own request stays open: 3 open in all
        approvals = Approvals.of(w.app)
        decision = PolicyDecision(effect="require_approval", rule="change-approval", approval_rule="change-approval",
                                  approval=ApprovalSpec(roles=["noc-engineer"], four_eyes=False))  # fmt: skip
        made = [approvals.request(run_id="noc-east:h1", call_id=f"c{i}", tenant="noc-east", requested_by="agent",
                                  tool="apply_change", args={"site": "CS-101", "value": i}, decision=decision)
                for i in range(7)]  # fmt: skip
        for req in made[:5]:
            approvals.reject(req.id, by=w.tokens["bob"], comment="no")
        got = w.client.get("/api/approvals", params={"status": "all", "decided_limit": 3}, headers=w.bearer("erin"))
        assert got.status_code == 200, got.text
        body = got.json()
        assert body["counts"] == {"pending": 3, "decided": 5}
        shown = {c["id"] for c in body["approvals"]}
        assert shown == {w.cards["h1"]["id"], *(r.id for r in made[5:]), *(r.id for r in made[2:5])}  # newest 3 decided
        default = w.client.get("/api/approvals", params={"status": "all"}, headers=w.bearer("erin")).json()
        assert len(default["approvals"]) == 8 and default["counts"] == {"pending": 3, "decided": 5}
        bad = w.client.get("/api/approvals", params={"status": "all", "decided_limit": 0}, headers=w.bearer("erin"))
        assert bad.status_code == 422 and "decided_limit" in bad.json()["error"]["message"]
