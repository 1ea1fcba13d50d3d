"""Plan-and-execute mode: the plan is a recorded step, each plan step is carried out and
recorded, a failed step triggers a recorded re-plan, and a resumed run continues at the first
unfinished plan step without re-calling the model for finished ones."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage

import agentflow.llm as llm
from agentflow import Agent, App, WorkflowContext, current_activity
from agentflow.agent import Outcome
from agentflow.approvals import Approvals

CALLS: list[tuple[str, dict[str, Any]]] = []


@llm.tool(side_effect="none", target="site")
def get_kpis(site: str) -> dict[str, float]:
    """Read the KPIs of a cell site."""
    CALLS.append(("get_kpis", {"site": site}))
    return {"drop_rate_pct": 2.9}


@llm.tool(side_effect="none", target="site")
def rank_root_causes(site: str) -> dict[str, str]:
    """Rank the root causes of a cell site's anomalies."""
    CALLS.append(("rank_root_causes", {"site": site}))
    if site == "CS-666":
        raise RuntimeError("inventory backend down")
    return {"top_cause": "mis_set_handover"}


@llm.tool(side_effect="none", target="site")
def read_alarms(site: str) -> dict[str, Any]:
    """Read a cell site's active alarms (another way to find a cause)."""
    CALLS.append(("read_alarms", {"site": site}))
    return {"alarms": ["HO_FAILURE_RATE"]}


@llm.tool(side_effect="idempotent", target="site")
def apply_change(site: str, param: str, value: int) -> dict[str, Any]:
    """Apply a configuration change to a cell site."""
    CALLS.append(("apply_change", {"site": site, "key": current_activity().idempotency_key}))
    return {"applied": True}


TOOLS = [get_kpis, rank_root_causes, read_alarms, apply_change]


def planner(
    plans: list[list[tuple[str, str]]], calls: dict[str, dict[str, Any]], counter: list[int] | None = None
) -> Callable[[list[BaseMessage]], Any]:
    """A function-driven model: the n-th planning request gets plans[n]; a step request gets the
    call of the tool its goal names, then a one-line result; the final request an answer."""

    def respond(messages: list[BaseMessage]) -> Any:
        if counter is not None:
            counter.append(1)
        last = messages[-1]
        humans = [m for m in messages if isinstance(m, HumanMessage)]
        request = str(humans[-1].content)
        if "submit_plan" in request:
            made = sum(
                1
                for m in messages
                if isinstance(m, AIMessage) and any(c["name"] == "submit_plan" for c in m.tool_calls)
            )
            steps = [{"goal": g, "tool": t} for g, t in plans[min(made, len(plans) - 1)]]
            return {"tool_calls": [{"name": "submit_plan", "args": {"steps": steps}}]}
        if request.startswith("Every step"):
            return "Done: handover offset fixed."
        if isinstance(last, ToolMessage):
            return f"{last.name} -> {last.content}"
        tool = next(t for t in calls if t in request)
        return {"tool_calls": [{"name": tool, "args": calls[tool]}]}

    return respond


def agent_with(respond: Callable[[list[BaseMessage]], Any], **kw: Any) -> Agent:
    model = llm.LangChainChat(llm.ScriptedChatModel(respond=respond))
    return Agent(name="planner", model=model, tools=TOOLS, mode="plan", **kw)


def copilot(app: App, agent: Agent) -> Any:
    @app.workflow(name="copilot")
    async def run(ctx: WorkflowContext, task: str) -> Outcome:
        return await agent.run(ctx, task)

    return run


SITE = {"site": "CS-101"}
PLAN = [("read the KPIs with get_kpis", "get_kpis"), ("rank causes with rank_root_causes", "rank_root_causes")]


def setup_function() -> None:
    CALLS.clear()


def test_the_plan_is_recorded_and_each_step_is_carried_out_in_order(app: App) -> None:
    """Planning call -> a `plan` step -> per step a model call, policy, tool, model result ->
    final answer; the outcome lists each plan step done."""
    agent = agent_with(planner([PLAN], {"get_kpis": SITE, "rank_root_causes": SITE}))
    out = app.run(copilot(app, agent), "CS-101 drop rate is high", run_id="r")
    assert out.status == "answered" and out.answer == "Done: handover offset fixed."
    assert [(p.index, p.status, p.plan_version) for p in out.plan] == [(1, "done", 1), (2, "done", 1)]
    assert out.replans == 0 and out.turns == 6
    assert [s.kind for s in app.history("r")] == [
        "llm", "plan", "llm", "policy", "tool", "llm", "llm", "policy", "tool", "llm", "llm",
    ]  # fmt: skip
    plan_step = next(s for s in app.history("r") if s.kind == "plan")
    assert plan_step.name == "plan-v1"
    assert [s["tool"] for s in json.loads(plan_step.result or "{}")["steps"]] == ["get_kpis", "rank_root_causes"]
    assert [c[0] for c in CALLS] == ["get_kpis", "rank_root_causes"]


def test_the_planning_call_shows_the_tools_the_steps_can_use(app: App) -> None:
    """The planning call offers only submit_plan, so its request names every other tool with
    its description (a model that never saw them invents tools: `root_cause_analysis`)."""
    seen: list[str] = []

    def respond(messages: list[BaseMessage]) -> Any:
        request = str([m for m in messages if isinstance(m, HumanMessage)][-1].content)
        if "submit_plan" in request:
            seen.append(request)
        return planner([PLAN], {"get_kpis": SITE, "rank_root_causes": SITE})(messages)

    app.run(copilot(app, agent_with(respond)), "CS-101 drop rate is high", run_id="r")
    assert seen, "no planning request"
    for t in TOOLS:
        assert f"- {t.name}: {t.description.splitlines()[0]}" in seen[0]


def test_a_failed_step_triggers_a_recorded_replan(app: App) -> None:
    """Step 2's tool fails: a re-plan is recorded (plan-v2) and the new plan goes another way;
    the failed step stays in the outcome, tagged with the plan version it belonged to."""
    bad = {"site": "CS-666"}
    replan = [("read the alarms with read_alarms", "read_alarms")]
    agent = agent_with(planner([PLAN, replan], {"get_kpis": bad, "rank_root_causes": bad, "read_alarms": bad}))
    out = app.run(copilot(app, agent), "CS-666 drop rate is high", run_id="r")
    assert out.status == "answered" and out.replans == 1
    assert [(p.goal.split()[-1], p.status, p.plan_version) for p in out.plan] == [
        ("get_kpis", "done", 1), ("rank_root_causes", "failed", 1), ("read_alarms", "done", 2),
    ]  # fmt: skip
    assert "inventory backend down" in out.plan[1].result
    assert [s.name for s in app.history("r") if s.kind == "plan"] == ["plan-v1", "plan-v2"]


def test_replans_are_bounded_and_end_in_a_typed_failure(app: App) -> None:
    """A step that keeps failing: after max_replans re-plans the run ends `failed` (recorded as
    its result), naming the step and why."""
    bad = {"site": "CS-666"}
    agent = agent_with(planner([[PLAN[1]]], {"rank_root_causes": bad}), max_replans=1)
    out = app.run(copilot(app, agent), "CS-666", run_id="r")
    assert out.status == "failed" and out.replans == 1
    assert "rank_root_causes" in out.detail and "inventory backend down" in out.detail
    assert app.get_run("r").status == "completed"  # a typed outcome, not a crashed run


def test_an_invalid_plan_gets_one_corrective_retry(app: App) -> None:
    """A plan naming a tool the agent does not have is refused with the reason; the model's
    corrected plan is used. A model that never plans ends `failed`, with no tool run."""
    agent = agent_with(planner([[("reboot it", "reboot_site")], PLAN], {"get_kpis": SITE, "rank_root_causes": SITE}))
    out = app.run(copilot(app, agent), "CS-101", run_id="r")
    assert out.status == "answered"
    refused = app.history("r")[0]
    assert refused.kind == "llm" and app.history("r")[1].kind == "llm"  # the retry, before any plan step

    silent = Agent(name="mute", model=llm.LangChainChat(llm.ScriptedChatModel(responses=["I won't plan."])),
                   tools=TOOLS, mode="plan")  # fmt: skip
    app2 = App(app.db.replace(".db", "-2.db"))
    out2 = app2.run(copilot(app2, silent), "CS-101", run_id="r")
    assert out2.status == "failed" and out2.detail == "the model gave no valid plan" and out2.turns == 2
    assert CALLS == [("get_kpis", SITE), ("rank_root_causes", SITE)]  # only the first agent's


def test_a_resumed_run_continues_at_the_first_unfinished_plan_step(tmp_path: Path) -> None:
    """The run parks for an approval at plan step 2; a new process (a fresh App on the same
    file) resumes it: the plan and step 1 are replayed from the history (no model call, no tool
    run), step 2 runs once with its recorded idempotency key."""
    db = f"sqlite:///{tmp_path / 'wf.db'}"
    plan = [PLAN[0], ("apply hoA3Offset=3 with apply_change", "apply_change")]
    calls = {"get_kpis": SITE, "apply_change": {"site": "CS-101", "param": "hoA3Offset", "value": 3}}
    first: list[int] = []
    app = App(db)
    wf = copilot(app, agent_with(planner([plan], calls, first)))
    app.start(wf, "CS-101", run_id="r")
    asyncio.run(app.worker(root_id="r").run_until_blocked("r", until_signal_wait=True))
    # The plan, step 1 (its call, its result), step 2's call: then it parks for the approval.
    assert app.get_run("r").status == "waiting" and len(first) == 4
    app.close()

    second: list[int] = []
    app2 = App(db)
    wf2 = copilot(app2, agent_with(planner([plan], calls, second)))
    request = Approvals.of(app2).list(run_id="r")[0]
    assert request.tool == "apply_change" and request.args == calls["apply_change"]
    oncall, _ = Approvals.of(app2).add_operator("oncall", tenant="default", roles=["noc-engineer"])
    Approvals.of(app2).approve(request.id, by=oncall)
    out = app2.run(wf2, "CS-101", run_id="r")
    assert out.status == "answered"
    assert len(second) == 2  # step 2's result and the final answer: nothing before was re-asked
    assert [c[0] for c in CALLS] == ["get_kpis", "apply_change"]
    assert (
        CALLS[1][1]["key"]
        == f"r:{next(s.seq for s in app2.history('r') if s.kind == 'tool' and s.name == 'apply_change')}"
    )
