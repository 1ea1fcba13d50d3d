"""`GET /api/doctor` (agentflow/server/API.md): `agentflow doctor` for the signed-in operator's
tenant, served by FastAPI's TestClient whose lifespan runs a live worker. An operator sees their
tenant's problems under the run ids they know, and nothing of another tenant's (no run id, no
approval id); the schema and worker liveness are the store's."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from agentflow import Agent, App
from agentflow.approvals import Approvals
from agentflow.engine import SystemClock
from agentflow.llm import LangChainChat
from agentflow.policy import ApprovalSpec, PolicyDecision
from agentflow.server import create_app
from agentflow.testing import ScriptedChatModel, assert_eventually

pytestmark = pytest.mark.backends("sqlite", "postgresql")

EAST, WEST = "noc-east", "noc-west"


@pytest.fixture
def served(db_url: str) -> Iterator[tuple[App, TestClient, dict[str, str]]]:
    """An App with one agent, an operator per tenant, served (its worker serves `agent:echo`)."""
    app = App(db_url, clock=SystemClock())
    Agent(name="echo", model=LangChainChat(ScriptedChatModel(responses=["done"])), tools=[]).register(app)
    approvals = Approvals.of(app)
    tokens = {"alice": approvals.add_operator("alice", tenant=EAST, roles=["noc-engineer"])[1],
              "dave": approvals.add_operator("dave", tenant=WEST, roles=["noc-engineer"])[1]}  # fmt: skip
    try:
        with TestClient(create_app(app)) as client:
            yield app, client, tokens
    finally:
        app.close()


def test_doctor_shows_an_operator_only_their_tenants_problems(served: tuple[App, TestClient, dict[str, str]]) -> None:
    """Each tenant has a run of a workflow no worker serves; the west also has an approval request
    an hour past its expiry. Alice (east) gets her run, by the id she knows, and not one of the
    west's ids; Dave (west) gets his two findings and nothing of the east; both see the live
    worker and the current schema. Without a token: 401."""
    app, client, tokens = served
    east = app.client.start("ghost", run_id="east-ghost", tenant=EAST).run_id
    west = app.client.start("ghost", run_id="west-ghost", tenant=WEST).run_id
    decision = PolicyDecision(effect="require_approval", rule="change", approval_rule="change",
                              approval=ApprovalSpec(roles=["*"], expires_in=3600), pack="t", pack_hash="0" * 16)  # fmt: skip
    stale = Approvals(app.store, SystemClock(offset=-7200)).request(  # made 2 h ago, expired 1 h ago
        run_id=west,
        call_id="c1",
        tenant=WEST,
        requested_by="dave",
        tool="apply_change",
        args={"site": "CS-107"},
        decision=decision,
    )

    def doctor(who: str) -> tuple[str, dict[str, Any]]:
        got = client.get("/api/doctor", headers={"Authorization": f"Bearer {tokens[who]}"})
        assert got.status_code == 200, got.text
        return got.text, got.json()

    # The served worker registers as it starts: wait until it is live.
    assert_eventually(lambda: doctor("alice")[1]["workers"]["live"] == 1, timeout=30)
    text, alice = doctor("alice")
    assert alice["tenant"] == EAST and alice["schema"]["status"] == "current" and alice["healthy"] is False
    assert [(f["kind"], f["run_id"], f["tenant"]) for f in alice["findings"]] == [
        ("unregistered_workflow", "east-ghost", EAST)
    ]
    assert "agent:echo" in alice["findings"][0]["message"]  # what the live worker serves
    for other in ("west-ghost", west, stale.id, WEST):
        assert other not in text

    text, dave = doctor("dave")
    assert sorted((f["kind"], f["severity"], f["run_id"]) for f in dave["findings"]) == [
        ("approval_expired", "warning", "west-ghost"),  # its run does not wait on it: a warning
        ("unregistered_workflow", "error", "west-ghost"),
    ]
    expired = next(f for f in dave["findings"] if f["kind"] == "approval_expired")
    assert expired["approval_id"] == stale.id and 3500 < expired["for_s"] < 3700
    assert expired["fix"] == f"agentflow approvals show {stale.id}"
    for other in ("east-ghost", east, EAST):
        assert other not in text

    missing = client.get("/api/doctor")
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "not_signed_in"
