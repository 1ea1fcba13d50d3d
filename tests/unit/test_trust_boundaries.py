"""Issue 13's holes, each pinned by a test that failed on the code before its fix: what a hostile
model, a hostile chat user or an unlucky operator did to the guard rails, and what must happen."""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

import pytest
from langchain_core.tools import BaseTool

import agentflow.llm as llm
import agentflow_noc as noc
from agentflow import App, WorkflowContext
from agentflow.agent import Agent, Limits, authorize
from agentflow.approvals import Approvals
from agentflow.errors import ApprovalRefused
from agentflow.policy import CallFacts, decide, parse_pack
from agentflow.testing import ScriptedChatModel, TestClock, assert_eventually

APPLIED: list[Any] = []


@llm.tool(side_effect="none", target="site")
def get_kpis(site: str, window_minutes: int = 15) -> dict[str, float]:
    """Read the KPIs of a cell site over a window."""
    return {"drop_rate_pct": 2.9, "window": float(window_minutes)}


@llm.tool(side_effect="idempotent", target="site")
def apply_change(site: str, param: str, value: float) -> str:
    """Apply a configuration change."""
    APPLIED.append(value)
    return f"applied {param}={value} on {site}"


PACK = parse_pack(
    """
schema_version: 1
name: envelope
rules:
  - id: reads
    match: {tags: [read_only]}
    effect: allow
  - id: tx-power-envelope
    match: {tools: [apply_change]}
    when: 'args.param == "txPower" && args.value > 43.0'
    effect: deny
    reason: txPower above 43 dBm is outside the safe envelope
  - id: changes
    match: {tools: [apply_change]}
    effect: require_approval
    approval: {roles: [noc-engineer]}
"""
)


@pytest.fixture(autouse=True)
def _clear() -> None:
    APPLIED.clear()


def run_agent(app: App, *responses: Any) -> dict[str, Any]:
    agent = Agent(name="copilot", model=llm.LangChainChat(ScriptedChatModel(responses=list(responses))),
                  tools=[get_kpis, apply_change], policies=PACK)  # fmt: skip

    @app.workflow(name="copilot")
    async def copilot(ctx: WorkflowContext, task: str) -> dict[str, Any]:
        return (await agent.run(ctx, task)).model_dump()

    return app.run(copilot, "CS-101 drop rate is high", run_id="r")


def call(name: str, **args: Any) -> dict[str, Any]:
    return {"tool_calls": [{"name": name, "args": args}]}


# -- hole 2: numbers no condition can judge ---------------------------------------------------------
@pytest.mark.parametrize(
    ("tool", "args"),
    [
        (get_kpis, {"site": "CS-101", "window_minutes": 10**400}),
        (get_kpis, {"site": "CS-101", "window_minutes": -(2**63) - 1}),
        (apply_change, {"site": "CS-101", "param": "txPower", "value": math.nan}),
        (apply_change, {"site": "CS-101", "param": "txPower", "value": math.inf}),
        (apply_change, {"site": "CS-101", "param": "txPower", "value": "NaN"}),  # the schema makes it a NaN
        (apply_change, {"site": "CS-101", "param": "txPower", "value": "-Infinity"}),
    ],
)
def test_unrepresentable_numbers_are_invalid_calls(tool: BaseTool, args: dict[str, Any]) -> None:
    """NaN, infinities and integers beyond 64 bits fail the tool-call screening, with a message
    the model can act on (before the fix, they passed the schema)."""
    error = llm.validate_tool_args(tool, args)
    assert error is not None and "send plain finite numbers" in error
    assert llm.validate_tool_args(tool, {**args, **{k: 1 for k in args if k != "site" and k != "param"}}) is None


def test_a_model_sending_such_numbers_gets_them_back_and_the_run_completes(app: App) -> None:
    """The hostile calls go back to the model as invalid; nothing runs, nothing is staged for
    approval (no NaN on a card), the policy never sees them, and the run ends answered."""
    out = run_agent(
        app,
        call("get_kpis", site="CS-101", window_minutes=10**400),
        call("apply_change", site="CS-101", param="txPower", value=math.nan),
        "Gave up.",
    )
    assert out["status"] == "answered" and out["turns"] == 3
    assert [c["status"] for c in out["tool_calls"]] == ["invalid", "invalid"]
    assert APPLIED == [] and Approvals.of(app).list(status=None) == []
    assert [s.kind for s in app.history("r") if s.kind in ("policy", "tool", "approval")] == []


def test_the_policy_engine_denies_what_it_cannot_judge() -> None:
    """`decide` never raises on such numbers (it raised OverflowError) and never lets NaN slip
    past a comparison (`NaN > 43.0` is false): it denies, naming the argument."""
    for value in (math.nan, math.inf, 10**400):
        facts = CallFacts(tenant="t", tool="apply_change", args={"param": "txPower", "value": value}, target="CS-101")
        decision = decide(PACK, facts, 1_700_000_000.0)
        assert (decision.effect, decision.rule) == ("deny", "invalid-arguments")
        assert "args.value" in decision.reason
    ok = decide(
        PACK, CallFacts(tenant="t", tool="apply_change", args={"param": "txPower", "value": 46.0}), 1_700_000_000.0
    )
    assert (ok.effect, ok.rule) == ("deny", "tx-power-envelope")


def test_workflow_code_authorizing_such_a_call_gets_a_recorded_denial(app: App) -> None:
    """`authorize` (the gate other workflows use) records a deny for it, whatever the policy."""

    @app.workflow(name="wf")
    async def wf(ctx: WorkflowContext) -> str:
        verdict = await authorize(ctx, apply_change, {"site": "CS-101", "param": "txPower", "value": math.inf},
                                  call_id="c1", policies=PACK)  # fmt: skip
        return f"{verdict.status}: {verdict.refusal}"

    out = app.run(wf, run_id="w")
    assert out.startswith("denied: denied by policy (invalid-arguments)") and "not a finite number" in out
    assert APPLIED == []


# -- hole 1: compensations pass the guard rails -------------------------------------------------------
ROLLED_BACK: list[dict[str, Any]] = []


@llm.tool(side_effect="idempotent", target="site", compensate="rollback_change", tags=["config"])
def push_change(site: str, value: int) -> dict[str, Any]:
    """Push a configuration value; returns the change id."""
    APPLIED.append((site, value))
    return {"change_id": f"chg-{site}-{value}"}


@llm.tool(side_effect="idempotent", target="site", tags=["config"])
def rollback_change(site: str, change_id: str) -> str:
    """Undo a pushed change."""
    ROLLED_BACK.append({"site": site, "change_id": change_id})
    return f"rolled back {change_id}"


def rollback_pack(rollback_rule: str) -> Any:
    return parse_pack(
        f"""
schema_version: 1
name: rollbacks
rules:
  - id: pushes
    match: {{tools: [push_change]}}
    effect: require_approval
    approval: {{roles: [noc-engineer]}}
{rollback_rule}
"""
    )


ROLLBACK_NEEDS_A_MANAGER = """
  - id: rollback-approval
    match: {tools: [rollback_change]}
    effect: require_approval
    approval: {roles: [noc-manager]}
"""
ROLLBACK_FORBIDDEN = """
  - id: no-rollback-of-cs-101
    match: {tools: [rollback_change]}
    when: 'target == "CS-101"'
    effect: deny
    reason: CS-101 is rolled back by hand only
"""


def cancelled_after_a_push(app: App, worker_thread: Any, pack: Any) -> Approvals:
    """A run that pushed a change (approved), then waits for its second push's approval, and is
    cancelled there: what its compensation then does is the question."""
    ROLLED_BACK.clear()
    agent = Agent(name="comp", tools=[push_change, rollback_change], policies=pack,
                  model=llm.LangChainChat(ScriptedChatModel(responses=[call("push_change", site="CS-101", value=3),
                                                                       call("push_change", site="CS-102", value=3),
                                                                       "done"])))  # fmt: skip
    agent.start(app, "push twice", run_id="r", requested_by="alice")
    worker_thread(app)
    approvals = Approvals.of(app)
    bob = approvals.add_operator("bob", tenant="default", roles=["noc-engineer"])[0]
    first = assert_eventually(lambda: next(iter(approvals.list(run_id="r")), None))
    approvals.approve(first.id, by=bob)
    assert_eventually(lambda: len(APPLIED) == 1 and len(approvals.list(run_id="r")) == 1)
    app.cancel("r")
    return approvals


@pytest.fixture
def people(make_app: Any) -> App:
    return make_app(clock=TestClock(start=1_700_000_000, skip=False))  # approvals wait for people


def test_a_compensation_waits_for_the_approval_its_rule_asks_for(people: App, worker_thread: Any) -> None:
    """After a cancel, the rollback of an approved push is a staged call under the pack's
    rollback rule: it waits for a manager (an engineer may not decide it), then runs once."""
    approvals = cancelled_after_a_push(people, worker_thread, rollback_pack(ROLLBACK_NEEDS_A_MANAGER))
    undo = assert_eventually(lambda: next((r for r in approvals.list(run_id="r") if r.tool == "rollback_change"), None))
    assert (undo.rule, undo.args) == ("rollback-approval", {"site": "CS-101", "change_id": "chg-CS-101-3"})
    # The approval is staged before the run parks on it (a separate commit): wait for the park.
    assert_eventually(lambda: people.get_run("r").status == "waiting")
    assert ROLLED_BACK == []
    bob = approvals.authenticate(approvals.add_operator("carol", tenant="default", roles=["noc-engineer"])[1])
    with pytest.raises(ApprovalRefused) as refused:
        approvals.approve(undo.id, by=bob)
    assert refused.value.code == "missing_role"
    manager = approvals.add_operator("dave", tenant="default", roles=["noc-manager"])[0]
    approvals.approve(undo.id, by=manager)
    assert_eventually(lambda: people.get_run("r").status == "cancelled")
    assert ROLLED_BACK == [{"site": "CS-101", "change_id": "chg-CS-101-3"}]
    decisions = [s.name for s in people.history("r") if s.kind == "policy"]
    assert decisions.count("rollback_change") >= 1


def test_a_compensation_the_pack_denies_does_not_run(people: App, worker_thread: Any) -> None:
    """A deny rule on the compensating tool holds after a cancel too: the rollback is decided,
    denied (recorded), and never runs; the run still ends cancelled."""
    cancelled_after_a_push(people, worker_thread, rollback_pack(ROLLBACK_FORBIDDEN))
    assert_eventually(lambda: people.get_run("r").status == "cancelled")
    assert ROLLED_BACK == []
    denied = [s for s in people.history("r") if s.kind == "policy" and s.name == "rollback_change"]
    assert len(denied) == 1 and '"effect":"deny"' in (denied[0].result or "").replace(" ", "")
    assert [s.name for s in people.history("r") if s.kind == "tool"] == ["push_change"]


# -- hole 3: limits compare targets as the tool names them --------------------------------------------
LIMITS = parse_pack(
    """
schema_version: 1
name: limits
rules:
  - id: one-change-per-site
    match: {tags: [config]}
    effect: limit
    one_change_per_target: true
  - id: tenant-blast-radius
    match: {tools: [apply_change]}
    effect: limit
    blast_radius: {max_targets: 2, window: 1h, per: tenant}
  - id: changes
    match: {tags: [config]}
    effect: allow
"""
)


def gate_apply(app: App, run_id: str, site: str, *, hold: bool) -> str:
    """A run asks the gate for the NOC pack's apply_change on `site` and, with `hold`, stays open
    afterwards (so it holds the change); returns its recorded decision: effect, rule, target."""

    @app.workflow(name=f"gate-{run_id}")
    async def wf(ctx: WorkflowContext) -> None:
        await authorize(ctx, noc.apply_change, {"site": site, "param": "hoA3Offset", "value": 3}, call_id="c",
                        policies=LIMITS)  # fmt: skip
        if hold:
            await ctx.wait_signal("done")

    app.start(wf, run_id=run_id)
    asyncio.run(app.worker(root_id=run_id).run_until_blocked(run_id))
    assert app.get_run(run_id).status == ("waiting" if hold else "completed")
    (step,) = [s for s in app.history(run_id) if s.kind == "policy"]
    decision = json.loads(step.result or "{}")
    return f"{decision['effect']} {decision['rule']} target={decision['call']['target']}"


def test_a_spelling_variant_of_a_site_is_the_same_site_to_the_limits(app: App) -> None:
    """`site="cs-101"` while another open run holds a change on CS-101: denied by the one-change
    rule (before the fix it was approved and applied: two changes on one site at once)."""
    assert gate_apply(app, "a", "CS-101", hold=True) == "allow changes target=CS-101"
    assert gate_apply(app, "b", "cs-101", hold=False) == "deny one-change-per-site target=CS-101"
    assert gate_apply(app, "c", " Cs-101 ", hold=False) == "deny one-change-per-site target=CS-101"


def test_blast_radius_counts_a_site_once_however_it_is_spelled(app: App) -> None:
    """Blast radius (2 sites per tenant and hour): CS-101 then "cs-101" is one site, so CS-102
    is still allowed and "cs-103" is the one over the limit."""
    verdicts = [gate_apply(app, rid, site, hold=False) for rid, site in (("a", "CS-101"), ("b", "cs-101"),
                                                                          ("c", "CS-102"), ("d", "cs-103"))]  # fmt: skip
    assert verdicts == ["allow changes target=CS-101", "allow changes target=CS-101", "allow changes target=CS-102",
                        "deny tenant-blast-radius target=CS-103"]  # fmt: skip


def test_a_target_the_tool_cannot_name_is_denied_not_failed(app: App) -> None:
    """A `canonical` that raises on the model's value denies the call (no limit could be checked)
    instead of failing the run."""

    def strict(value: Any) -> str:
        if not str(value).startswith("CS-"):
            raise ValueError(f"{value!r} is not a site id")
        return str(value)

    odd = llm.tool(apply_change, side_effect="idempotent", target="site", canonical=strict, tags=["config"])

    @app.workflow(name="odd")
    async def wf(ctx: WorkflowContext) -> str:
        verdict = await authorize(ctx, odd, {"site": "XX", "param": "p", "value": 1.0}, call_id="c", policies=LIMITS)
        return f"{verdict.status}: {verdict.refusal}"

    out = app.run(wf, run_id="odd")
    assert out.startswith("denied: denied by policy (invalid-target)") and "'XX' is not a site id" in out


# -- hole 8: runaway outputs are bounded, and hitting a bound is a recorded outcome -----------------
@llm.tool(side_effect="none", target="site")
def dump(site: str) -> str:
    """Return a huge blob of text."""
    return "z" * 1_000_000


def bounded_agent(*responses: Any, **limits: Any) -> Agent:
    return Agent(name="runaway", model=llm.LangChainChat(ScriptedChatModel(responses=list(responses))),
                 tools=[get_kpis, dump], limits=Limits(**limits))  # fmt: skip


def run_bounded(app: App, agent: Agent) -> dict[str, Any]:
    @app.workflow(name="bounded")
    async def wf(ctx: WorkflowContext, task: str) -> dict[str, Any]:
        return (await agent.run(ctx, task)).model_dump()

    return app.run(wf, "go", run_id="b")


def stored_bytes(app: App) -> int:
    return sum(len(s.result or "") + len(s.args or "") for s in app.history("b")) + sum(
        len(v) for v in app.store.get_blobs([h for s in app.history("b") for h in _refs(s)]).values()
    )


def _refs(step: Any) -> list[str]:
    body = json.loads(step.result or "{}") if step.kind == "llm" and step.status == "completed" else {}
    return [body["message"]] if isinstance(body.get("message"), str) else []


def test_a_ten_megabyte_answer_is_cut_before_it_is_recorded(app: App) -> None:
    """The answer is kept to the limit (said so in its text and in `truncated_chars`); the store
    holds about the limit, not the 10 MB (before: stored whole)."""
    out = run_bounded(app, bounded_agent("A" * 10_000_000, max_response_chars=5_000))
    assert out["status"] == "answered" and out["answer"].startswith("A" * 5_000)
    assert out["answer"].endswith("[agentflow: the answer was cut at 5000 of 10000000 characters]")
    (llm_step,) = [s for s in app.history("b") if s.kind == "llm"]
    assert json.loads(llm_step.result or "{}")["truncated_chars"] == 10_000_000 - 5_000
    assert stored_bytes(app) < 20_000


def test_two_thousand_calls_in_one_answer_run_at_most_the_limit(app: App) -> None:
    """2,000 tool calls in one answer: 20 run, the other 1,980 go back to the model as invalid
    (before: all ran, 4,000 steps)."""
    calls = {"tool_calls": [{"name": "get_kpis", "args": {"site": f"CS-{100 + i % 20}"}} for i in range(2_000)]}
    out = run_bounded(app, bounded_agent(calls, "done"))
    statuses = [c["status"] for c in out["tool_calls"]]
    assert statuses.count("ok") == 20 and statuses.count("invalid") == 1_980 and out["status"] == "answered"
    assert sum(1 for s in app.history("b") if s.kind == "tool") == 20
    refused = [c["result"] for c in out["tool_calls"] if c["status"] == "invalid"]
    assert all("at most 20 tool calls are run from one answer" in r for r in refused)


def test_a_huge_tool_output_is_cut_before_it_is_recorded(app: App) -> None:
    out = run_bounded(app, bounded_agent(call("dump", site="CS-101"), "done", max_tool_output_chars=1_000))
    result = out["tool_calls"][0]["result"]
    assert result.startswith("z" * 1_000) and result.endswith("cut at 1000 of 1000000 characters]")
    (tool_step,) = [s for s in app.history("b") if s.kind == "tool"]
    assert len(tool_step.result or "") < 1_200


def test_a_run_over_its_time_ends_with_its_own_outcome(make_app: Any) -> None:
    """With `max_run_seconds`, a run whose engine clock passed the limit makes no further model
    call: its outcome is `time_limit`, recorded like any outcome."""
    clock = TestClock(start=1_700_000_000, skip=False)
    app = make_app(clock=clock)

    @llm.tool(side_effect="none", target="site")
    def slow_read(site: str) -> str:
        """A read that takes ten minutes of engine time."""
        clock.advance(600)
        return "read"

    agent = Agent(name="slow", model=llm.LangChainChat(ScriptedChatModel(responses=[
        call("slow_read", site="CS-101"), call("slow_read", site="CS-102"), "done"])),
        tools=[slow_read], limits=Limits(max_run_seconds=300))  # fmt: skip
    out = run_bounded(app, agent)
    assert (out["status"], out["turns"]) == ("time_limit", 1) and "over its limit of 300 s" in out["detail"]


# -- hole 7: conditions have a cost bound, and are not evaluated under the write lock --------------
SEVEN = "[1, 2, 3, 4, 5, 6, 7]"
COSTLY = (f"{SEVEN}.map(a, {SEVEN}.map(b, {SEVEN}.map(c, {SEVEN}.map(d, {SEVEN}.map(e, a + b + c + d + e)"
          ".size()).size()).size()).size()).size() > 0")  # fmt: skip


def test_a_pack_whose_condition_is_over_the_budget_is_refused_where_it_is_written() -> None:
    """16,807 elements passed `policy check` and then held the write lock for 12 s; now the pack
    is refused at load, naming the line and why."""
    from agentflow.errors import PolicyError

    text = f"""schema_version: 1
name: costly
rules:
  - id: slow
    match: {{tools: [apply_change]}}
    when: '{COSTLY}'
    effect: deny
    reason: slow
"""
    with pytest.raises(PolicyError, match="too costly") as refused:
        parse_pack(text, source="costly.yaml")
    assert refused.value.line == 6 and "costly.yaml:6" in str(refused.value)


def test_a_condition_costly_on_its_data_fails_closed_within_the_budget() -> None:
    """Cheap on an empty call, costly on the model's arguments: evaluation stops at the budget
    (well under a second), a deny rule then applies and an allow rule does not."""
    import time

    cond = "args.items.map(a, args.items.map(b, args.items.map(c, a + b + c).size()).size()).size() > 0"
    pack = parse_pack(f"""schema_version: 1
name: data
rules:
  - {{id: guard, match: {{tools: [apply_change]}}, when: '{cond}', effect: deny, reason: too many items}}
  - {{id: ok, match: {{tools: [get_kpis]}}, when: '{cond}', effect: allow}}
""")  # fmt: skip
    items = list(range(200))
    started = time.monotonic()
    denied = decide(pack, CallFacts(tenant="t", tool="apply_change", args={"items": items}), 1.0)
    reads = decide(pack, CallFacts(tenant="t", tool="get_kpis", args={"items": items}, side_effect=False), 1.0)
    assert time.monotonic() - started < 2.0
    assert (denied.effect, denied.rule) == ("deny", "guard") and "too costly" in denied.reason
    assert reads.rule == "default:read-only"  # the allow rule did not match: it failed closed


def test_conditions_are_not_evaluated_inside_the_write_transaction(app: App, monkeypatch: Any) -> None:
    """The gate evaluates conditions before the decision's transaction; inside it, only usage is
    read again and the results are reused (before, CEL ran with the store's write lock held)."""
    import agentflow.policy._engine as engine

    inside = {"now": False, "evaluated_inside": 0, "evaluated": 0}
    real_eval, real_tx = engine.evaluate_condition, type(app.store).transaction

    def spy_eval(source: str, env: Any) -> Any:
        inside["evaluated"] += 1
        inside["evaluated_inside"] += inside["now"]
        return real_eval(source, env)

    def spy_tx(store: Any, body: Any, **kw: Any) -> Any:
        def wrapped(tx: Any) -> Any:
            inside["now"] = True
            try:
                return body(tx)
            finally:
                inside["now"] = False

        return real_tx(store, wrapped, **kw)

    monkeypatch.setattr(engine, "evaluate_condition", spy_eval)
    monkeypatch.setattr(type(app.store), "transaction", spy_tx)

    @app.workflow(name="tx")
    async def wf(ctx: WorkflowContext) -> str:
        verdict = await authorize(ctx, apply_change, {"site": "CS-101", "param": "txPower", "value": 40.0},
                                  call_id="c", policies=PACK)  # fmt: skip
        return verdict.decision.rule

    assert app.run(wf, run_id="tx") == "changes"
    assert inside["evaluated"] >= 1 and inside["evaluated_inside"] == 0


# -- hole 9: a request outlives no run ----------------------------------------------------------------
def test_a_cancelled_runs_pending_approval_is_withdrawn_and_cannot_be_approved(people: App, worker_thread: Any) -> None:
    """Cancelled while its push waits for approval: the request leaves the inbox as `withdrawn`
    (audited) in the cancel's commit, and approving it is refused with `run_ended` (before, it
    stayed pending and could still be approved)."""
    agent = Agent(name="w", tools=[push_change, rollback_change], policies=rollback_pack(ROLLBACK_FORBIDDEN),
                  model=llm.LangChainChat(ScriptedChatModel(responses=[call("push_change", site="CS-9", value=1),
                                                                       "done"])))  # fmt: skip
    agent.start(people, "push", run_id="r", requested_by="alice")
    worker_thread(people)
    approvals = Approvals.of(people)
    req = assert_eventually(lambda: next(iter(approvals.list(run_id="r")), None))
    people.cancel("r")
    assert_eventually(lambda: people.get_run("r").status == "cancelled")
    assert approvals.list(run_id="r") == [] and approvals.get(req.id).status == "withdrawn"
    bob = approvals.add_operator("bob", tenant="default", roles=["noc-engineer"])[0]
    with pytest.raises(ApprovalRefused) as refused:
        approvals.approve(req.id, by=bob)
    assert refused.value.code == "run_ended"
    assert [(a.action, a.outcome) for a in approvals.audit(approval_id=req.id)][-2:] == [
        ("withdrawn", "done"), ("approve", "refused")]  # fmt: skip
    assert APPLIED == []


def test_a_pack_that_is_not_utf8_names_its_file_and_line(tmp_path: Any) -> None:
    """Hole 9: a Latin-1 pack gave a traceback; now a PolicyError with file:line and the fix."""
    from agentflow.errors import PolicyError
    from agentflow.policy import load_pack

    pack = tmp_path / "latin1.yaml"
    pack.write_bytes("schema_version: 1\nname: noc\ndescription: Réseau\n".encode("latin-1"))
    with pytest.raises(PolicyError, match="not UTF-8 text") as refused:
        load_pack(pack)
    assert (
        refused.value.line == 3 and f"{pack}:3" in str(refused.value) and "save the pack as UTF-8" in str(refused.value)
    )
