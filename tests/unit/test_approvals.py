"""Approvals: who may decide a staged call, what a decision changes, and what a refusal does not.

The authorization matrix builds requests directly on a started run; the other tests go through an
agent run parked on its approval, driven by a worker until it is blocked on people again (the
time-skipping clock only moves when a test advances it past an expiry).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import BaseMessage, ToolMessage

import agentflow.llm as llm
from agentflow import App, WorkflowContext
from agentflow.agent import Agent
from agentflow.approvals import ApprovalRequest, Approvals
from agentflow.errors import ApprovalError, ApprovalRefused, AuthenticationError
from agentflow.policy import ApprovalSpec, PolicyDecision, parse_pack
from agentflow.store import local_id
from agentflow.testing import TestClock, assert_eventually

TENANT = "noc-east"
R = "noc-east:r"  # the store's key of run "r" of TENANT (run ids are per tenant)
ARGS = {"site": "CS-101", "param": "hoA3Offset", "value": 2}
RAN: list[dict[str, Any]] = []


@llm.tool(side_effect="idempotent", target="site")
def apply_change(site: str, param: str, value: int) -> dict[str, Any]:
    """Apply a configuration change to a cell site."""
    RAN.append({"site": site, "param": param, "value": value})
    return {"applied": True, "site": site, param: value}


@pytest.fixture(autouse=True)
def _clear() -> None:
    RAN.clear()


@pytest.fixture(scope="module")
def migrated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store file with the schema in place, made once for the module."""
    path = tmp_path_factory.mktemp("template") / "agentflow.db"
    template = App(f"sqlite:///{path}")
    Approvals.of(template).operators()  # opening the store migrates it
    template.close()
    return path


@pytest.fixture
def db_url(tmp_path: Path, migrated: Path) -> str:
    """Like conftest's: a SQLite file of this test only, but copied from a migrated one (the
    migrations cost more than most tests here; the matrix alone opens 18 stores)."""
    shutil.copyfile(migrated, tmp_path / "agentflow.db")
    return f"sqlite:///{tmp_path / 'agentflow.db'}"


# -- the world: a run, its operators, one request ---------------------------------------------
# name -> (tenant, roles). `req` asked for the run (its meta's requested_by).
OPERATORS = {
    "req": (TENANT, ["noc-engineer"]),
    "bob": (TENANT, ["noc-engineer"]),
    "alice": (TENANT, ["noc-engineer"]),
    "carol": (TENANT, ["viewer"]),
    "dave": ("noc-west", ["noc-engineer"]),
    "mgr": (TENANT, ["noc-manager"]),
}


@dataclass
class World:
    app: App
    tokens: dict[str, str]
    request: ApprovalRequest


def add_operators(app: App) -> dict[str, str]:
    return {
        name: Approvals.of(app).add_operator(name, tenant=tenant, roles=roles)[1]
        for name, (tenant, roles) in OPERATORS.items()
    }


def staged(app: App, spec: ApprovalSpec, *, run_id: str = R, call_id: str = "c1") -> World:
    """A started (never driven) run asked for by `req`, with one request for `spec`."""

    @app.workflow(name="parked")
    async def parked(ctx: WorkflowContext) -> None:
        await ctx.wait_signal("never")

    app.start(parked, run_id=local_id(run_id, TENANT), tenant=TENANT, meta={"requested_by": "req"})
    tokens = add_operators(app)
    decision = PolicyDecision(
        effect="require_approval", rule="change-approval", approval_rule="change-approval", approval=spec,
        pack="test", pack_hash="0" * 16,
    )  # fmt: skip
    request = Approvals.of(app).request(
        run_id=run_id, call_id=call_id, tenant=TENANT, requested_by="req", tool="apply_change", args=dict(ARGS),
        decision=decision,
    )  # fmt: skip
    return World(app, tokens, request)


def snapshot(app: App, approval_id: str) -> dict[str, Any]:
    """Everything a decision may change, straight from the tables."""
    q = app.store.backend.query
    return {
        "request": q(
            "SELECT status, args, args_hash, revision, expires_at, decided_at FROM af_approvals WHERE id = ?",
            (approval_id,),
        ),
        "votes": q(
            "SELECT approval_id, principal_id, principal, decision, comment, revision, at "
            "FROM af_approval_votes ORDER BY approval_id, principal_id"
        ),
        "signals": q("SELECT id, run_id, name, payload, created_at, consumed_seq FROM af_signals ORDER BY id"),
        "runs": q("SELECT id, status, wake_at FROM af_runs ORDER BY id"),
    }


def outcome(req: ApprovalRequest) -> str:
    return "approved" if req.status == "approved" else f"counted {req.approvals}/{req.spec.quorum}"


def assert_refused_without_change(app: App, approval_id: str, attempt: Any, code: str, actor: str) -> None:
    """`attempt()` is refused with `code`; nothing changed but one refused audit record by `actor`."""
    before, audit_before = snapshot(app, approval_id), Approvals.of(app).audit()
    with pytest.raises(ApprovalError) as refused:
        attempt()
    assert refused.value.code == code
    assert snapshot(app, approval_id) == before
    added = Approvals.of(app).audit()[len(audit_before) :]
    assert [(a.actor, a.outcome, a.approval_id) for a in added] == [(actor, "refused", approval_id)]
    assert added[0].reason.startswith(f"{code}: ")


# -- 1. the authorization matrix ---------------------------------------------------------------
RULES = {
    "single": ApprovalSpec(roles=["noc-engineer"], quorum=1, four_eyes=True),
    "quorum2": ApprovalSpec(roles=["noc-engineer"], quorum=2, four_eyes=True),
    "four_eyes_off": ApprovalSpec(roles=["noc-engineer"], quorum=1, four_eyes=False),
}
ACTORS = {
    # actor -> (whose token, the name the audit records)
    "requester": ("req", "req"),
    "approver_with_role": ("bob", "bob"),
    "approver_without_role": ("carol", "carol"),
    "other_tenant_approver": ("dave", "dave"),
    "bad_token": (None, "anonymous"),
    "expired_request": ("bob", "bob"),
}
EXPECTED = {
    ("requester", "single"): "refused:self_approval",
    ("requester", "quorum2"): "refused:self_approval",
    ("requester", "four_eyes_off"): "approved",
    ("approver_with_role", "single"): "approved",
    ("approver_with_role", "quorum2"): "counted 1/2",
    ("approver_with_role", "four_eyes_off"): "approved",
    ("approver_without_role", "single"): "refused:missing_role",
    ("approver_without_role", "quorum2"): "refused:missing_role",
    ("approver_without_role", "four_eyes_off"): "refused:missing_role",
    # Another tenant's request is read with the decider's tenant in the query: unknown, like no request.
    ("other_tenant_approver", "single"): "refused:unknown",
    ("other_tenant_approver", "quorum2"): "refused:unknown",
    ("other_tenant_approver", "four_eyes_off"): "refused:unknown",
    ("bad_token", "single"): "refused:bad_token",
    ("bad_token", "quorum2"): "refused:bad_token",
    ("bad_token", "four_eyes_off"): "refused:bad_token",
    ("expired_request", "single"): "refused:expired",
    ("expired_request", "quorum2"): "refused:expired",
    ("expired_request", "four_eyes_off"): "refused:expired",
}


def test_the_matrix_covers_every_cell() -> None:
    """The expected-outcome table names every (actor, rule) pair, and nothing else."""
    assert set(EXPECTED) == {(a, r) for a in ACTORS for r in RULES}


@pytest.mark.parametrize("rule", list(RULES))
@pytest.mark.parametrize("actor", list(ACTORS))
def test_authorization_matrix(app: App, actor: str, rule: str) -> None:
    """Who may approve: the outcome of one approval attempt equals the table's cell. A refusal
    changes nothing (request row, votes, signals, run) but adds one refused audit record naming
    the actor and the reason; an approval reaching the quorum wakes the run in the same
    transaction, a vote short of it does not."""
    world = staged(app, RULES[rule])
    rid = world.request.id
    who, audited_as = ACTORS[actor]
    token = world.tokens[who] if who else "aft_" + "x" * 43  # well-formed, but nobody's
    if actor == "expired_request":
        assert isinstance(app.clock, TestClock)
        app.clock.advance(RULES[rule].expires_in + 1)
    before, audit_before = snapshot(app, rid), Approvals.of(app).audit()
    try:
        observed = outcome(Approvals.of(app).approve(rid, by=token, comment="lgtm"))
    except ApprovalError as exc:
        observed = f"refused:{exc.code}"
    assert observed == EXPECTED[(actor, rule)]

    after, added = snapshot(app, rid), Approvals.of(app).audit()[len(audit_before) :]
    if observed.startswith("refused:"):
        code = observed.removeprefix("refused:")
        assert after == before, "a refused decision changed state"
        assert [(a.actor, a.action, a.outcome) for a in added] == [
            (audited_as, "authenticate" if code == "bad_token" else "approve", "refused")
        ]
        if code == "bad_token":
            assert "token" in added[0].reason
        else:
            assert added[0].reason.startswith(f"{code}: ") and added[0].approval_id == rid
        return
    assert [(a.actor, a.action, a.outcome) for a in added] == [(audited_as, "approve", "done")]
    assert [(v.principal, v.decision, v.revision) for v in Approvals.of(app).get(rid).votes] == [
        (audited_as, "approve", 1)
    ]
    woke = [s[2] for s in after["signals"][len(before["signals"]) :]]
    assert woke == ([f"approval:{rid}"] if observed == "approved" else [])


# -- 2. decisions ----------------------------------------------------------------------------
QUORUM2_EDITABLE = ApprovalSpec(roles=["noc-engineer"], quorum=2, four_eyes=True, editable_args=["value"])


def test_quorum_counts_distinct_approvers(app: App) -> None:
    """The same approver approving twice counts once (a second audit record says so); a second
    distinct approver reaches the quorum."""
    world = staged(app, QUORUM2_EDITABLE)
    rid = world.request.id
    first = Approvals.of(app).approve(rid, by=world.tokens["bob"])
    again = Approvals.of(app).approve(rid, by=world.tokens["bob"], comment="really")
    assert (first.status, first.approvals) == (again.status, again.approvals) == ("pending", 1)
    assert [v.principal for v in again.votes] == ["bob"]
    bobs = [(a.outcome, a.reason) for a in Approvals.of(app).audit(approval_id=rid) if a.actor == "bob"]
    assert bobs == [("done", "approval 1/2"), ("done", "repeated decision: counted once")]
    done = Approvals.of(app).approve(rid, by=world.tokens["alice"])
    assert (done.status, done.approvals) == ("approved", 2)


def test_an_approver_who_approved_can_still_reject(app: App) -> None:
    """One rejection by an operator who may decide ends the request, also when that operator had
    approved the same arguments before (changed their mind): the rejection is recorded, not
    dropped as a 'repeated decision', and their earlier approval no longer counts."""
    world = staged(app, QUORUM2_EDITABLE)
    rid = world.request.id
    Approvals.of(app).approve(rid, by=world.tokens["bob"])
    rejected = Approvals.of(app).reject(rid, by=world.tokens["bob"], comment="wrong site, sorry")
    assert rejected.status == "rejected"
    assert [(v.principal, v.decision) for v in rejected.votes] == [("bob", "reject")]
    assert_refused_without_change(
        app, rid, lambda: Approvals.of(app).approve(rid, by=world.tokens["alice"]), "already_decided", "alice"
    )


def test_a_decided_request_refuses_further_decisions(app: App) -> None:
    """Once approved, any further approve or reject (by another approver or the same one) is
    refused `already_decided` and changes nothing."""
    world = staged(app, RULES["single"])
    rid = world.request.id
    assert Approvals.of(app).approve(rid, by=world.tokens["bob"]).status == "approved"
    attempts = [
        ("alice", lambda: Approvals.of(app).approve(rid, by=world.tokens["alice"])),
        ("alice", lambda: Approvals.of(app).reject(rid, by=world.tokens["alice"], comment="too late")),
        ("bob", lambda: Approvals.of(app).approve(rid, by=world.tokens["bob"])),
    ]
    for actor, attempt in attempts:
        assert_refused_without_change(app, rid, attempt, "already_decided", actor)


def test_approving_arguments_seen_before_an_edit_is_refused_stale(app: App) -> None:
    """An approver who reviewed the arguments before another approver edited them is refused
    `stale_args` (nothing changes); approving with the current hash counts."""
    world = staged(app, QUORUM2_EDITABLE)
    rid, old_hash = world.request.id, world.request.args_hash
    edited = Approvals.of(app).approve(rid, by=world.tokens["bob"], args={**ARGS, "value": 4})
    assert (edited.revision, edited.args["value"], edited.status) == (2, 4, "pending")
    assert_refused_without_change(
        app,
        rid,
        lambda: Approvals.of(app).approve(rid, by=world.tokens["alice"], seen_hash=old_hash),
        "stale_args",
        "alice",
    )
    done = Approvals.of(app).approve(rid, by=world.tokens["alice"], seen_hash=edited.args_hash)
    assert (done.status, done.args, done.approvals) == ("approved", {**ARGS, "value": 4}, 2)


def test_only_editable_arguments_may_be_edited(app: App) -> None:
    """An approver changing an argument the rule does not list in `editable_args` (here the
    site; also one added or removed) is refused `not_editable` and nothing changes."""
    world = staged(app, QUORUM2_EDITABLE)
    rid = world.request.id
    for args in ({**ARGS, "site": "CS-999"}, {**ARGS, "extra": 1}, {"site": "CS-101", "value": 2}):
        assert_refused_without_change(
            app,
            rid,
            lambda a=args: Approvals.of(app).approve(rid, by=world.tokens["bob"], args=a),
            "not_editable",
            "bob",
        )
    assert Approvals.of(app).get(rid).revision == 1


# -- 3. through an agent run -------------------------------------------------------------------
def pack(*rules: dict[str, Any]) -> Any:
    """A policy pack (validated like a file) with reads allowed, a deny envelope, then `rules`."""
    base = [
        {"id": "reads", "match": {"tags": ["read_only"]}, "effect": "allow"},
        {"id": "envelope", "match": {"tools": ["apply_change"]}, "when": "args.value > 43.0", "effect": "deny",
         "reason": "value above 43 is outside the safe envelope"},
    ]  # fmt: skip
    return parse_pack(json.dumps({"schema_version": 1, "name": "approvals-test", "rules": [*base, *rules]}))


def approval_rule(rule_id: str = "change-approval", **approval: Any) -> dict[str, Any]:
    return {"id": rule_id, "match": {"tools": ["apply_change"]}, "effect": "require_approval",
            "approval": {"roles": ["noc-engineer"], **approval}}  # fmt: skip


def call(value: int, call_id: str | None = None) -> dict[str, Any]:
    one: dict[str, Any] = {"name": "apply_change", "args": {**ARGS, "value": value}}
    return {"tool_calls": [one | ({"id": call_id} if call_id else {})]}


def agent(policies: Any, *responses: Any, respond: Any = None) -> Agent:
    model = llm.ScriptedChatModel(responses=list(responses), respond=respond)
    return Agent(name="noc", model=llm.LangChainChat(model), tools=[apply_change], policies=policies)


def started(app: App, the_agent: Agent, run_id: str = R) -> dict[str, str]:
    """Operators, then the agent's run asked for by `req`, driven until it waits for people."""
    tokens = add_operators(app)
    the_agent.start(app, "fix CS-101", tenant=TENANT, requested_by="req", run_id=local_id(run_id, TENANT))
    drive(app, run_id)
    return tokens


def drive(app: App, run_id: str = R) -> None:
    """Run until the run ends or waits on an approval whose expiry is still ahead."""
    asyncio.run(app.worker(root_id=run_id).run_until_blocked(run_id, until_signal_wait=True))


def waiting_request(app: App, run_id: str = R) -> ApprovalRequest:
    assert app.get_run(run_id).status == "waiting"
    (request,) = Approvals.of(app).list(run_id=run_id)
    return request


def result(app: App, run_id: str = R) -> dict[str, Any]:
    run = app.store.get_run(run_id)
    assert run.status == "completed", run.error
    out: dict[str, Any] = json.loads(run.output or "{}")
    return out


def test_an_edit_resets_approvals_and_the_tool_runs_with_the_edited_arguments(app: App) -> None:
    """Editing an editable argument bumps the revision and voids earlier approvals (quorum 2:
    alice's approval of the old arguments no longer counts); once approved, the run evaluates the
    policy again on the edited call (a second recorded decision) and runs the tool with exactly
    the edited arguments."""
    tokens = started(app, agent(pack(approval_rule(quorum=2, editable_args=["value"])), call(2), "Applied."))
    request = waiting_request(app)
    assert Approvals.of(app).approve(request.id, by=tokens["alice"]).approvals == 1
    edited = Approvals.of(app).approve(request.id, by=tokens["bob"], args={**ARGS, "value": 4}, comment="smaller")
    assert (edited.status, edited.revision, edited.approvals) == ("pending", 2, 1)
    drive(app)  # nothing to do: still waiting for a second approval of the edited arguments
    assert RAN == [] and waiting_request(app).id == request.id
    assert Approvals.of(app).approve(request.id, by=tokens["alice"], seen_hash=edited.args_hash).status == "approved"
    drive(app)
    out = result(app)
    assert RAN == [{**ARGS, "value": 4}]
    assert out["tool_calls"][0]["args"] == {**ARGS, "value": 4}
    assert out["tool_calls"][0]["approved_by"] in ("alice, bob", "bob, alice")
    decided = [json.loads(s.args or "{}") for s in app.history(R) if s.kind == "policy"]
    assert [(d["args"]["value"], d["approved"]) for d in decided] == [(2, None), (4, request.id)]


def test_an_edit_into_a_denied_call_is_denied_by_the_re_evaluation(app: App) -> None:
    """An approved edit is decided again before it runs: edited past the deny envelope, the
    call is denied and the tool never runs."""
    tokens = started(app, agent(pack(approval_rule(editable_args=["value"])), call(2), "OK."))
    request = waiting_request(app)
    assert Approvals.of(app).approve(request.id, by=tokens["bob"], args={**ARGS, "value": 50}).status == "approved"
    drive(app)
    out = result(app)
    assert RAN == []
    assert out["tool_calls"][0]["status"] == "denied" and "envelope" in out["tool_calls"][0]["result"]


def test_an_edit_into_a_stricter_rule_needs_that_rules_approvers(app: App) -> None:
    """An approval covers the rule it was asked under: an engineer who edits a small change
    (engineers' rule) into a big one (managers' rule) and approves it does not thereby approve
    the big change; the re-evaluation asks the managers, and the tool waits for them."""
    managers = approval_rule("big-change", roles=["noc-manager"])
    managers["when"] = "args.value > 5.0"
    policies = pack(managers, approval_rule(editable_args=["value"]))
    tokens = started(app, agent(policies, call(2), "OK."))
    request = waiting_request(app)
    assert request.rule == "change-approval"
    assert Approvals.of(app).approve(request.id, by=tokens["bob"], args={**ARGS, "value": 9}).status == "approved"
    drive(app)
    assert RAN == [], "an engineer's approval let a change through that the pack gives to managers"
    again = waiting_request(app)
    assert again.rule == "big-change" and again.args == {**ARGS, "value": 9}
    Approvals.of(app).approve(again.id, by=tokens["mgr"])
    drive(app)
    assert result(app)["tool_calls"][0]["status"] == "ok" and RAN == [{**ARGS, "value": 9}]


def test_a_rejection_ends_the_request_and_the_model_is_told_why(make_app: Any, worker_thread: Any) -> None:
    """One rejection by an authorized operator ends the request (quorum 2 notwithstanding):
    the tool never runs and the model's next turn carries the operator's name and comment."""
    app = make_app(clock=TestClock(start=1_700_000_000, skip=False))  # people, not expiry, decide
    told: list[str] = []

    def respond(messages: list[BaseMessage]) -> Any:
        results = [m for m in messages if isinstance(m, ToolMessage)]
        if not results:
            return call(2)
        told.append(str(results[-1].content))
        return "Understood, not applying."

    tokens = add_operators(app)
    policies = pack(approval_rule(quorum=2))
    agent(policies, respond=respond).start(app, "fix CS-101", tenant=TENANT, requested_by="req", run_id="r")
    worker_thread(app)
    (request,) = assert_eventually(lambda: Approvals.of(app).list(run_id=R))
    rejected = Approvals.of(app).reject(request.id, by=tokens["bob"], comment="not before the freeze ends")
    assert rejected.status == "rejected"
    assert_eventually(lambda: app.get_run(R).status == "completed", message=str(app.get_run(R).error))
    assert RAN == []
    assert len(told) == 1 and "bob" in told[0] and "not before the freeze ends" in told[0]
    assert result(app)["tool_calls"][0]["status"] == "rejected"


def test_a_reissued_call_id_with_other_arguments_needs_its_own_approval(app: App) -> None:
    """The model controls call ids: re-issuing the approved call id "c1" with other arguments in
    a later turn is a new request (the approval is bound to the exact arguments), and the tool
    runs only with arguments someone approved."""
    tokens = started(app, agent(pack(approval_rule()), call(2, "c1"), call(9, "c1"), "Done."))
    first = waiting_request(app)
    Approvals.of(app).approve(first.id, by=tokens["bob"])
    drive(app)
    second = waiting_request(app)
    assert second.id != first.id and second.call_id == first.call_id == "c1"
    assert second.args == {**ARGS, "value": 9} and second.status == "pending"
    assert RAN == [{**ARGS, "value": 2}]
    Approvals.of(app).reject(second.id, by=tokens["bob"], comment="one change is enough")
    drive(app)
    assert [c["status"] for c in result(app)["tool_calls"]] == ["ok", "rejected"]
    assert RAN == [{**ARGS, "value": 2}]


def test_a_reissued_call_with_the_same_arguments_needs_a_new_approval(app: App) -> None:
    """An approval authorizes one execution of a staged call: a model that re-issues call id
    "c1" with the very same arguments in a later turn does not get a second run of the
    side-effecting tool out of the first approval."""
    tokens = started(app, agent(pack(approval_rule()), call(2, "c1"), call(2, "c1"), "Done."))
    first = waiting_request(app)
    Approvals.of(app).approve(first.id, by=tokens["bob"])
    drive(app)
    assert RAN == [{**ARGS, "value": 2}], "one approval ran the side-effecting tool twice"
    assert waiting_request(app).id != first.id


@pytest.mark.parametrize("ids", [("c1", "c2", "c3"), ("c1", "c1", "c1")], ids=["distinct-ids", "reused-id"])
def test_rate_limits_count_every_call_whatever_its_id(app: App, ids: tuple[str, ...]) -> None:
    """A rate limit of 2 calls per hour lets two calls through and denies the third, also when
    the model reuses one call id for all three (a reused id must not hide calls from limits)."""
    rate = {"id": "rate", "match": {"tools": ["apply_change"]}, "effect": "limit",
            "rate": {"max_calls": 2, "window": "1h"}}  # fmt: skip
    allow = {"id": "changes", "match": {"tools": ["apply_change"]}, "effect": "allow"}
    responses = [call(v, i) for v, i in zip((1, 2, 3), ids, strict=True)]
    agent(pack(rate, allow), *responses, "Done.").start(app, "fix", tenant=TENANT, run_id="r")
    drive(app)
    assert [c["status"] for c in result(app)["tool_calls"]] == ["ok", "ok", "denied"]
    assert [r["value"] for r in RAN] == [1, 2]


def test_expiry_escalates_once_then_only_the_escalation_roles_decide(app: App) -> None:
    """With `on_expiry: escalate`, nobody can approve between the expiry and the run noticing
    it (`expired`); then the request is escalated with a new expiry, an engineer (the original
    role) is refused `missing_role`, and a manager's approval runs the call."""
    escalating = approval_rule(expires_in="30m", on_expiry="escalate", escalate_to=["noc-manager"])
    tokens = started(app, agent(pack(escalating), call(2), "Applied."))
    request = waiting_request(app)
    assert isinstance(app.clock, TestClock)
    app.clock.advance(30 * 60)
    assert_refused_without_change(
        app, request.id, lambda: Approvals.of(app).approve(request.id, by=tokens["bob"]), "expired", "bob"
    )
    drive(app)  # the wait times out: the run escalates the request and waits again
    escalated = waiting_request(app)
    assert (escalated.id, escalated.status, escalated.deciding_roles) == (request.id, "escalated", ["noc-manager"])
    assert escalated.expires_at == app.clock.now() + 30 * 60
    assert [
        (a.action, a.reason) for a in Approvals.of(app).audit(approval_id=request.id) if a.actor == "agentflow"
    ] == [("expired", "escalated to ['noc-manager']")]
    assert_refused_without_change(
        app, request.id, lambda: Approvals.of(app).approve(request.id, by=tokens["bob"]), "missing_role", "bob"
    )
    assert [r.id for r in Approvals.of(app).list(for_principal=Approvals.of(app).authenticate(tokens["bob"]))] == []
    assert Approvals.of(app).approve(request.id, by=tokens["mgr"], comment="go").status == "approved"
    drive(app)
    assert result(app)["tool_calls"][0]["approved_by"] == "mgr" and RAN == [ARGS]


# -- 4. tokens ----------------------------------------------------------------------------------
def test_tokens_are_stored_hashed_and_bad_tokens_are_refused(app: App) -> None:
    """Only a token's sha256 is stored (no plaintext token in any column of af_principals,
    af_operator_tokens or the audit trail); a missing or unknown token raises AuthenticationError
    (`bad_token`), a disabled operator's `operator_disabled`, each attempt audited."""
    tokens = add_operators(app)
    rows = app.store.backend.query("SELECT * FROM af_principals") + app.store.backend.query(
        "SELECT * FROM af_operator_tokens"
    )
    stored = json.dumps(rows) + json.dumps(app.store.backend.query("SELECT * FROM af_audit"))
    for name, token in tokens.items():
        assert token.startswith("aft_") and token not in stored and token[4:] not in stored
        assert Approvals.of(app).authenticate(token).name == name
    hashes = {r[0] for r in app.store.backend.query("SELECT token_hash FROM af_operator_tokens")}
    assert hashes == {hashlib.sha256(t.encode()).hexdigest() for t in tokens.values()}
    assert len(set(tokens.values())) == len(tokens)
    Approvals.of(app).disable("carol")
    before = len(Approvals.of(app).audit())
    for bad, code in ((tokens["carol"], "operator_disabled"), ("aft_unknown", "bad_token"), ("", "bad_token"),
                      (None, "bad_token")):  # fmt: skip
        with pytest.raises(AuthenticationError) as refused:
            Approvals.of(app).authenticate(bad)
        assert refused.value.code == code
    added = Approvals.of(app).audit()[before:]
    assert [(a.actor, a.action, a.outcome) for a in added] == [("anonymous", "authenticate", "refused")] * 4
    assert not isinstance(refused.value, ApprovalRefused)
