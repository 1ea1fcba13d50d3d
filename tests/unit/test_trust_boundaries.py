"""Issue 13's holes, each pinned by a test that failed on the code before its fix: what a hostile
model, a hostile chat user or an unlucky operator did to the guard rails, and what must happen."""

from __future__ import annotations

import math
from typing import Any

import pytest
from langchain_core.tools import BaseTool

import agentflow.llm as llm
from agentflow import App, WorkflowContext
from agentflow.agent import Agent, authorize
from agentflow.approvals import Approvals
from agentflow.policy import CallFacts, decide, parse_pack
from agentflow.testing import ScriptedChatModel

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
        facts = CallFacts(tool="apply_change", args={"param": "txPower", "value": value}, target="CS-101")
        decision = decide(PACK, facts, 1_700_000_000.0)
        assert (decision.effect, decision.rule) == ("deny", "invalid-arguments")
        assert "args.value" in decision.reason
    ok = decide(PACK, CallFacts(tool="apply_change", args={"param": "txPower", "value": 46.0}), 1_700_000_000.0)
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
