"""Events out (issue 17): an event and its deliveries are written in the transaction of what they
report, for the subscriptions of its tenant that take its kind, and for nobody else; a refused or
idempotent decision reports nothing; a run reports its end once; sealed tenants' event bodies,
webhook URLs and secrets are sealed at rest; two deliverers never claim the same delivery.

On SQLite and PostgreSQL (`backends`)."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest

from agentflow import App, RunFailedError, WorkflowContext
from agentflow.approvals import ApprovalRequest, Approvals
from agentflow.errors import ApprovalRefused, ConfigurationError, LeaseLostError
from agentflow.policy import ApprovalSpec, PolicyDecision
from agentflow.store import DeliveryRow, EventStore, Sealing
from agentflow.webhooks import Webhooks

pytestmark = pytest.mark.backends("sqlite", "postgresql")

START = 1_700_000_000
EAST, WEST = "noc-east", "noc-west"
ARGS = {"site": "CS-101", "param": "hoA3Offset", "value": 2, "password": "hunter2-very-secret"}


def events(store: EventStore, tenant: str, kind: str | None = None) -> list[dict[str, Any]]:
    return [json.loads(e.payload) for e in store.read(lambda tx: tx.events.list(tenant=tenant, kind=kind))]


def deliveries(store: EventStore) -> set[tuple[str, str]]:
    """(webhook id, event kind) of every delivery row."""
    rows: list[DeliveryRow] = store.read(lambda tx: tx.deliveries.list(limit=1000))
    return {(d.webhook_id, d.kind) for d in rows}


def append(store: EventStore, tenant: str, kind: str, subject: str = "s1") -> str | None:
    return store.transaction(
        lambda tx: tx.events.append(tenant=tenant, kind=kind, subject=subject, data={"n": 1}, now=START)
    )


def test_an_event_goes_to_its_tenants_subscriptions_that_take_its_kind_and_nowhere_else(app: App) -> None:
    """No subscription: nothing is recorded. Each event gets one delivery per subscription of its
    tenant taking its kind; another tenant's subscription never gets one; a subscription added
    later gets the next event (no stale cache), a removed one no more."""
    store, hooks = app.store, Webhooks(app.store)
    assert append(store, EAST, "run.finished") is None
    assert store.backend.query("SELECT count(*) FROM af_events")[0][0] == 0
    runs, _ = hooks.add("http://127.0.0.1:9/runs", tenant=EAST, kinds=["run.finished"])
    every, _ = hooks.add("https://hooks.example.org/all", tenant=EAST)
    west, _ = hooks.add("http://127.0.0.1:9/west", tenant=WEST)
    assert append(store, EAST, "run.finished") is not None
    assert append(store, EAST, "approval.decided") is not None
    assert append(store, WEST, "approval.requested") is not None
    assert deliveries(store) == {(runs.id, "run.finished"), (every.id, "run.finished"),
                                 (every.id, "approval.decided"), (west.id, "approval.requested")}  # fmt: skip
    late, _ = hooks.add("http://127.0.0.1:9/late", tenant=EAST, kinds=["approval.expired"])
    append(store, EAST, "approval.expired")
    assert (late.id, "approval.expired") in deliveries(store)
    hooks.remove(every.id, tenant=EAST)
    append(store, EAST, "approval.decided", "s2")
    assert not {d for d in deliveries(store) if d[0] == every.id}
    assert [e["type"] for e in events(store, WEST)] == ["approval.requested"]
    with pytest.raises(ConfigurationError, match="has no webhook"):
        hooks.remove(west.id, tenant=EAST)  # another tenant's id: not found, and not removed
    assert [s.id for s in hooks.list(tenant=WEST)] == [west.id]


def test_bad_subscriptions_are_refused_with_what_is_accepted(app: App) -> None:
    hooks = Webhooks(app.store)
    for url in ("ftp://example.org/x", "file:///etc/passwd", "http:///nohost", "https://a b.org/", "javascript:x"):
        with pytest.raises(ConfigurationError, match="http:// or https://"):
            hooks.add(url, tenant=EAST)
    with pytest.raises(ConfigurationError, match=r"unknown event kind approval\.voted"):
        hooks.add("https://example.org/x", tenant=EAST, kinds=["approval.voted"])
    assert hooks.list() == []


# -- approvals ------------------------------------------------------------------------------------
def world(app: App, spec: ApprovalSpec) -> tuple[dict[str, str], ApprovalRequest]:
    @app.workflow(name="parked")
    async def parked(ctx: WorkflowContext) -> None:
        await ctx.wait_signal("never")

    app.start(parked, run_id="r", tenant=EAST, meta={"requested_by": "req"})
    approvals = Approvals.of(app)
    tokens = {n: approvals.add_operator(n, tenant=EAST, roles=["noc-engineer", "noc-manager"])[1]
              for n in ("req", "bob", "alice")}  # fmt: skip
    return tokens, request(app, spec)


def request(app: App, spec: ApprovalSpec) -> ApprovalRequest:
    decision = PolicyDecision(effect="require_approval", rule="change-approval", approval_rule="change-approval",
                              approval=spec, pack="test", pack_hash="0" * 16)  # fmt: skip
    return Approvals.of(app).request(run_id=f"{EAST}:r", call_id="c1", tenant=EAST, requested_by="req",
                                     tool="apply_change", args=dict(ARGS), decision=decision)  # fmt: skip


def test_approval_events_report_each_decision_once_and_refusals_none(app: App) -> None:
    """A new request is `approval.requested` (its idempotent repeat is not); a four-eyes refusal
    and a vote short of the quorum report nothing; the deciding vote is one `approval.decided`
    with every vote, the arguments as approvers see them (secrets masked), times in ISO 8601
    UTC and epoch."""
    Webhooks(app.store).add("https://hooks.example.org/af", tenant=EAST)
    tokens, req = world(app, ApprovalSpec(roles=["noc-engineer"], quorum=2, four_eyes=True))
    again = request(app, ApprovalSpec(roles=["noc-engineer"], quorum=2, four_eyes=True))
    assert again.id == req.id
    assert [e["type"] for e in events(app.store, EAST)] == ["approval.requested"]
    approvals = Approvals.of(app)
    with pytest.raises(ApprovalRefused) as refused:
        approvals.approve(req.id, by=tokens["req"])
    assert refused.value.code == "self_approval"
    assert approvals.approve(req.id, by=tokens["bob"], comment="ok by me").status == "pending"
    assert [e["type"] for e in events(app.store, EAST)] == ["approval.requested"]
    app.clock.advance(60)  # type: ignore[attr-defined]
    assert approvals.approve(req.id, by=tokens["alice"]).status == "approved"
    requested, decided = events(app.store, EAST)
    assert decided["type"] == "approval.decided" and decided["tenant"] == EAST
    assert decided["id"].startswith("evt_") and decided["id"] != requested["id"]
    data = decided["data"]
    assert (data["approval_id"], data["run_id"], data["status"], data["tool"], data["rule"]) == (
        req.id, "r", "approved", "apply_change", "change-approval")  # fmt: skip
    assert data["args"] == {**ARGS, "password": "[redacted]"}
    assert "hunter2" not in json.dumps([requested, decided])
    assert [(v["principal"], v["decision"], v["comment"]) for v in data["votes"]] == [
        ("bob", "approve", "ok by me"), ("alice", "approve", "")]  # fmt: skip
    assert data["votes"][1]["at"] == "2023-11-14T22:14:20Z" and data["votes"][1]["at_epoch"] == START + 60
    assert (data["approvals"], data["quorum"], data["requested_by"]) == (2, 2, "req")
    assert data["created_at"] == "2023-11-14T22:13:20Z" and data["created_at_epoch"] == START
    assert decided["timestamp_epoch"] == START + 60
    with pytest.raises(ApprovalRefused):
        approvals.reject(req.id, by=tokens["bob"])  # already decided: nothing more to report
    assert len(events(app.store, EAST)) == 2


def test_expiry_escalates_then_expires_each_reported(app: App) -> None:
    Webhooks(app.store).add("https://hooks.example.org/af", tenant=EAST, kinds=["approval.escalated",
                                                                                 "approval.expired"])  # fmt: skip
    spec = ApprovalSpec(roles=["noc-engineer"], expires_in=600, on_expiry="escalate", escalate_to=["noc-manager"])
    _, req = world(app, spec)
    approvals = Approvals.of(app)
    assert approvals.expire(req.id).status == "pending"  # not due yet: nothing to report
    app.clock.advance(601)  # type: ignore[attr-defined]
    assert approvals.expire(req.id).status == "escalated"
    app.clock.advance(601)  # type: ignore[attr-defined]
    assert approvals.expire(req.id).status == "expired"
    assert approvals.expire(req.id).status == "expired"  # again: already reported
    escalated, expired = events(app.store, EAST)
    assert (escalated["type"], escalated["data"]["deciding_roles"]) == ("approval.escalated", ["noc-manager"])
    assert escalated["data"]["expires_at_epoch"] == START + 601 + 600
    assert (expired["type"], expired["data"]["status"]) == ("approval.expired", "expired")


# -- runs -----------------------------------------------------------------------------------------
def test_a_run_reports_its_end_once_whatever_the_end(app: App) -> None:
    """`run.finished` for a completed, a failed and a never-started cancelled run, with the
    workflow, the status and the error's type (never its message); another tenant's run goes to
    its own subscription only."""
    hooks = Webhooks(app.store)
    east, _ = hooks.add("https://hooks.example.org/east", tenant=EAST, kinds=["run.finished"])

    @app.workflow(name="ok")
    async def ok(ctx: WorkflowContext) -> int:
        return 1

    @app.workflow(name="boom")
    async def boom(ctx: WorkflowContext) -> int:
        raise ValueError("the secret plan")

    assert app.run(ok, run_id="r1", tenant=EAST) == 1
    with pytest.raises(RunFailedError):
        app.run(boom, run_id="r2", tenant=EAST)
    app.start(ok, run_id="r3", tenant=EAST)
    app.cancel(f"{EAST}:r3")
    assert app.run(ok, run_id="r4", tenant=WEST) == 1  # no subscription of noc-west: nothing
    found = {e["data"]["run_id"]: e["data"] for e in events(app.store, EAST, "run.finished")}
    assert {k: (v["workflow"], v["status"], v["error_type"]) for k, v in found.items()} == {
        "r1": ("ok", "completed", None), "r2": ("boom", "failed", "ValueError"), "r3": ("ok", "cancelled", "Cancelled"),
    }  # fmt: skip
    assert "the secret plan" not in json.dumps(found)
    assert found["r1"]["finished_at_epoch"] == START
    assert events(app.store, WEST) == []
    assert {d for d in deliveries(app.store)} == {(east.id, "run.finished")}
    assert app.store.backend.query("SELECT count(*) FROM af_deliveries")[0][0] == 3


def test_sealed_tenants_events_urls_and_secrets_are_sealed_at_rest(db_url: str, make_app: Any) -> None:
    """With encryption at rest, an event's body (it quotes arguments), a webhook's URL (it may
    carry a token) and its secret are stored sealed, and read back in clear."""
    key = "k1:" + "A" * 43 + "="
    app = make_app(sealing=Sealing.from_env({"AGENTFLOW_ENCRYPTION_KEYS": key}))
    marker = "https://hooks.example.org/T0KEN-in-path-zebra"
    _, secret = Webhooks(app.store).add(marker, tenant=EAST)
    world(app, ApprovalSpec(roles=["noc-engineer"]))
    raw = app.store.backend.query("SELECT url, secret FROM af_webhooks")[0]
    body = app.store.backend.query("SELECT payload FROM af_events")[0][0]
    assert all(v.startswith("af:enc:1:k1:") for v in (*raw, body))
    assert "CS-101" not in body and marker not in raw[0] and secret not in raw[1]
    assert events(app.store, EAST)[0]["data"]["args"]["site"] == "CS-101"
    (sub,) = app.store.read(lambda tx: tx.webhooks.list(tenant=EAST))
    assert (sub.url, sub.secret) == (marker, secret)


def test_two_deliverers_never_claim_the_same_delivery(app: App) -> None:
    """Claims from many threads at once (each its own connection) split the due deliveries:
    each is claimed once, with one attempt counted."""
    for i in range(40):
        Webhooks(app.store).add(f"http://127.0.0.1:9/x{i}", tenant=EAST)
    append(app.store, EAST, "run.finished")
    claimed: list[str] = []
    barrier = threading.Barrier(4)

    def claim() -> None:
        barrier.wait()
        for _ in range(20):
            got = app.store.transaction(lambda tx: tx.deliveries.claim(now=START, lease_until=START + 60, limit=3),
                                        locks=("webhooks:claim",))  # fmt: skip
            claimed.extend((d.webhook_id, d.event_id) for d in got)

    threads = [threading.Thread(target=claim) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(claimed) == 40 and len(set(claimed)) == 40
    assert app.store.backend.query("SELECT DISTINCT attempts FROM af_deliveries") == [(1,)]
    nothing = app.store.transaction(lambda tx: tx.deliveries.claim(now=START + 59, lease_until=START + 99, limit=9),
                                    locks=("x",))  # fmt: skip
    assert nothing == []  # leased until START + 60
    again = app.store.transaction(lambda tx: tx.deliveries.claim(now=START + 60, lease_until=START + 99, limit=99),
                                  locks=("x",))  # fmt: skip
    assert len(again) == 40  # the leases ran out: taken over


def test_a_change_rolled_back_or_fenced_out_reports_nothing(app: App) -> None:
    """The event is part of the transaction of what it reports: a transaction that fails after
    appending leaves no event and no delivery, and a run's end written by a worker that lost its
    lease (the fenced update refused) reports no `run.finished`."""
    Webhooks(app.store).add("https://hooks.example.org/af", tenant=EAST)

    def append_then_fail(tx: Any) -> None:
        assert tx.events.append(tenant=EAST, kind="run.finished", subject="r", data={}, now=START) is not None
        raise RuntimeError("the change failed after its event was appended")

    with pytest.raises(RuntimeError):
        app.store.transaction(append_then_fail)

    @app.workflow(name="parked")
    async def parked(ctx: WorkflowContext) -> None:
        await ctx.wait_signal("never")

    app.start(parked, run_id="z", tenant=EAST)
    store = app.store
    with pytest.raises(LeaseLostError):  # epoch 7 was never this run's lease
        store.backend.write(store.finish_ops(f"{EAST}:z", 7, "completed", "null", None, START, workflow="parked"))
    assert store.backend.query("SELECT count(*) FROM af_events")[0][0] == 0
    assert store.backend.query("SELECT count(*) FROM af_deliveries")[0][0] == 0


def test_a_subscription_has_one_attempt_under_way_at_a_time(app: App) -> None:
    """A subscription with a backlog (its receiver hangs: each attempt holds a deliverer's thread
    until the timeout) gets one delivery claimed at a time, its oldest: the claims' other slots
    go to other subscriptions (here another tenant's), which are not held behind it. Once its
    attempt is recorded (or its lease runs out), its next delivery is claimed."""
    hooks = Webhooks(app.store)
    slow, _ = hooks.add("http://127.0.0.1:9/hangs", tenant=EAST)
    other, _ = hooks.add("http://127.0.0.1:9/fine", tenant=WEST)
    for i in range(12):
        append(app.store, EAST, "run.finished", f"r{i}")
    append(app.store, WEST, "run.finished")
    first_east = app.store.read(lambda tx: tx.events.list(tenant=EAST))[0].id

    def claim(now: float, limit: int = 4) -> list[tuple[str, str]]:
        got = app.store.transaction(lambda tx: tx.deliveries.claim(now=now, lease_until=now + 60, limit=limit),
                                    locks=("webhooks:claim",))  # fmt: skip
        return [(d.webhook_id, d.event_id) for d in got]

    claimed = app.store.transaction(lambda tx: tx.deliveries.claim(now=START, lease_until=START + 60, limit=4))
    assert sorted((d.webhook_id, d.tenant) for d in claimed) == sorted([(slow.id, EAST), (other.id, WEST)])
    assert [d.event_id for d in claimed if d.webhook_id == slow.id] == [first_east]  # its oldest
    app.store.transaction(lambda tx: tx.deliveries.delivered(next(d for d in claimed if d.tenant == WEST), at=START))
    assert claim(START + 1) == []  # the slow one's attempt is under way; the other has nothing left
    assert not app.store.read(lambda tx: tx.deliveries.any_due(now=START + 1))  # an idle look finds nothing
    (due,) = app.store.transaction(lambda tx: tx.deliveries.claim(now=START + 60, lease_until=START + 120, limit=4))
    assert (due.webhook_id, due.event_id) == (slow.id, first_east)  # its lease ran out: taken over, the same one
    app.store.transaction(lambda tx: tx.deliveries.retry(due, next_at=START + 1000, error="timed out"))
    assert [w for w, _ in claim(START + 61)] == [slow.id]  # recorded: its next delivery goes
