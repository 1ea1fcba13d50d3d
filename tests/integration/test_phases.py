"""Runbook phases: the run follows the phases in order, each offering only its tools with
tool_choice="required", a skippable phase offers skip_phase, and the final answer comes last.
The real `openai` client talks to a local test server, which plays a small model."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import BaseModel, Field
from support.openai_server import OpenAIServer, Reply, completion

import agentflow.llm as llm
from agentflow import Agent, App, WorkflowContext, current_activity
from agentflow.agent import Decision, Phase
from agentflow.errors import ConfigurationError
from agentflow.llm import OpenAIChat

EFFECTS: list[str] = []


@llm.tool(side_effect="none", target="site")
def get_kpis(site: str) -> dict[str, float]:
    """Read the KPIs of a cell site."""
    return {"drop_rate_pct": 2.9}


@llm.tool(side_effect="idempotent", target="site")
def apply_change(site: str, param: str, value: int) -> dict[str, Any]:
    """Apply a configuration change to a cell site."""
    EFFECTS.append(current_activity().idempotency_key)
    return {"applied": True, "site": site, param: value}


@llm.tool(side_effect="idempotent")
def notify(message: str) -> str:
    """Notify on-call."""
    EFFECTS.append("notify")
    return "sent"


PHASES = [
    Phase("investigate", "Read the site's KPIs.", ("get_kpis",)),
    Phase("apply", "Apply the fix if the KPIs show a fault.", ("apply_change",), required=False),
    Phase("report", "Tell on-call what you did.", ("notify",)),
]
ARGS = {
    "get_kpis": {"site": "CS-101"},
    "apply_change": {"site": "CS-101", "param": "hoA3Offset", "value": 2},
    "notify": {"message": "CS-101 fixed"},
}


def allow_all(ctx: Any, tool: Any, facts: llm.ToolFacts, args: dict[str, Any]) -> Decision:
    return Decision(effect="allow", rule="test")


def offered(body: dict[str, Any]) -> list[str]:
    return [t["function"]["name"] for t in body.get("tools") or []]


def small_model(skip_apply: bool = False, chatty: bool = False) -> Any:
    """Answers each phase with a call of its first tool (or skip_phase), the final request in
    text; `chatty`: answers in prose whatever it is asked (ignores tool_choice)."""

    def respond(body: dict[str, Any]) -> Reply:
        tools = offered(body)
        if chatty or not tools:
            return completion("CS-101 drop rate is 2.9 %; fixed.")
        if skip_apply and "skip_phase" in tools:
            return completion(tool_calls=[("skip_phase", {"reason": "the KPIs are fine: a false alarm"})])
        return completion(tool_calls=[(tools[0], ARGS[tools[0]])])

    return respond


def copilot(app: App, agent: Agent) -> Any:
    @app.workflow(name=f"copilot.{agent.name}")
    async def run(ctx: WorkflowContext, task: str) -> dict[str, Any]:
        return (await agent.run(ctx, task)).model_dump()

    return run


@pytest.fixture(autouse=True)
def _clear() -> None:
    EFFECTS.clear()


def test_phases_run_in_order_each_with_its_tools_and_a_required_call(app: App) -> None:
    with OpenAIServer(respond=small_model()) as server:
        model = OpenAIChat(model="small", base_url=server.url, api_key="t", context_window=None)
        agent = Agent(name="noc", model=model, tools=[get_kpis, apply_change, notify], policies=allow_all,
                      phases=PHASES, check_numbers=True)  # fmt: skip
        workflow = copilot(app, agent)
        out = app.run(workflow, "CS-101 drops", run_id="r")
        assert out["status"] == "answered" and out["answer"] == "CS-101 drop rate is 2.9 %; fixed."
        assert [(p["goal"], p["status"]) for p in out["plan"]] == [
            ("investigate", "done"), ("apply", "done"), ("report", "done"),
        ]  # fmt: skip
        assert [offered(b) for b in server.requests] == [
            ["get_kpis"], ["apply_change", "skip_phase"], ["notify"], [],
        ]  # fmt: skip
        assert [b.get("tool_choice") for b in server.requests] == ["required", "required", "required", None]
        assert "Phase 2 of 3: apply" in json.dumps(server.requests[1]["messages"][-1])
        assert [c["name"] for c in out["tool_calls"]] == ["get_kpis", "apply_change", "notify"]
        assert len(EFFECTS) == 2
        calls = server.calls
        assert app.run(workflow, "CS-101 drops", run_id="r") == out  # replayed: nothing sent
        assert server.calls == calls and len(EFFECTS) == 2


def test_a_skippable_phase_is_skipped_with_its_reason_and_nothing_changes(app: App) -> None:
    with OpenAIServer(respond=small_model(skip_apply=True)) as server:
        model = OpenAIChat(model="small", base_url=server.url, api_key="t", context_window=None)
        agent = Agent(name="noc", model=model, tools=[get_kpis, apply_change, notify], policies=allow_all,
                      phases=PHASES)  # fmt: skip
        out = app.run(copilot(app, agent), "CS-101 drops?", run_id="r")
    assert [(p["goal"], p["status"]) for p in out["plan"]] == [
        ("investigate", "done"), ("apply", "skipped"), ("report", "done"),
    ]  # fmt: skip
    assert out["plan"][1]["result"] == "the KPIs are fine: a false alarm"
    assert EFFECTS == ["notify"] and out["status"] == "answered"


def test_a_model_that_only_talks_fails_the_phase_by_name(app: App) -> None:
    """A model that ignores tool_choice and answers in prose is told to call a tool; after the
    phase's turns the run ends `failed` naming the phase (not `answered` with nothing done)."""
    with OpenAIServer(respond=small_model(chatty=True)) as server:
        model = OpenAIChat(model="small", base_url=server.url, api_key="t", context_window=None)
        agent = Agent(name="noc", model=model, tools=[get_kpis, apply_change, notify], policies=allow_all,
                      phases=PHASES)  # fmt: skip
        out = app.run(copilot(app, agent), "CS-101 drops", run_id="r")
        assert server.calls == PHASES[0].turns
    assert out["status"] == "failed" and "phase investigate" in out["detail"]
    assert EFFECTS == [] and out["answer"] is None


def test_phases_naming_unknown_tools_or_in_plan_mode_are_refused_when_built() -> None:
    model = llm.LangChainChat(llm.ScriptedChatModel(responses=["x"]))
    with pytest.raises(ConfigurationError, match="rank_root_causes"):
        Agent(name="noc", model=model, tools=[get_kpis], phases=[Phase("diagnose", "Rank.", ("rank_root_causes",))])
    with pytest.raises(ConfigurationError, match="react-mode"):
        Agent(name="noc", model=model, tools=[get_kpis], mode="plan", phases=[Phase("i", "Read.", ("get_kpis",))])


def test_phases_run_once_per_target_the_task_names(app: App) -> None:
    """phase_targets: "CS-1 and cs-2" runs the phases for CS-1, then for CS-2, each request
    naming its target; the outcome's plan names each phase with its target."""

    def sites(task: str) -> list[str]:
        import re

        return [m.upper() for m in re.findall(r"\bcs-\d+\b", task, re.I)]

    with OpenAIServer(respond=small_model()) as server:
        model = OpenAIChat(model="small", base_url=server.url, api_key="t", context_window=None)
        agent = Agent(name="noc", model=model, tools=[get_kpis, apply_change, notify], policies=allow_all,
                      phases=PHASES, phase_targets=sites)  # fmt: skip
        out = app.run(copilot(app, agent), "CS-1 and cs-2 drop calls", run_id="r")
        assert [p["goal"] for p in out["plan"]] == [
            "investigate CS-1", "apply CS-1", "report CS-1", "investigate CS-2", "apply CS-2", "report CS-2",
        ]  # fmt: skip
        assert [p["index"] for p in out["plan"]] == [1, 2, 3, 4, 5, 6]
        asked = [json.dumps(b["messages"][-1]) for b in server.requests[:-1]]
        assert "Target CS-1 (1 of 2): Phase 1 of 3" in asked[0] and "Target CS-2 (2 of 2): Phase 3 of 3" in asked[-1]
        assert out["status"] == "answered" and server.calls == 7


class Diagnosis(BaseModel):
    site: str = Field(pattern=r"^CS-\d+$")
    cause: str = Field(min_length=3)


def test_a_phase_records_its_structured_output_checked_by_its_schema(app: App) -> None:
    """Phase(output=Diagnosis): after its tool ran, the model must call record_investigate with
    arguments the schema accepts; a bad one ("site": "somewhere") is sent back once; a model
    that never gets it right fails the phase by name."""
    attempts: dict[str, int] = {}

    def respond(fix_on: int) -> Any:
        def reply(body: dict[str, Any]) -> Reply:
            tools = offered(body)
            if tools == ["record_investigate"]:
                attempts[str(fix_on)] = attempts.get(str(fix_on), 0) + 1
                good = attempts[str(fix_on)] >= fix_on
                args = {"site": "CS-101" if good else "somewhere", "cause": "mis_set_handover"}
                return completion(tool_calls=[("record_investigate", args)])
            return small_model()(body)

        return reply

    phases = [Phase("investigate", "Read the KPIs.", ("get_kpis",), output=Diagnosis), PHASES[2]]
    for fix_on, expected in ((1, "done"), (2, "done"), (99, "failed")):
        with OpenAIServer(respond=respond(fix_on)) as server:
            model = OpenAIChat(model="small", base_url=server.url, api_key="t", context_window=None)
            agent = Agent(name=f"noc{fix_on}", model=model, tools=[get_kpis, notify], policies=allow_all,
                          phases=phases)  # fmt: skip
            out = app.run(copilot(app, agent), "CS-101 drops", run_id=f"r{fix_on}")
        first = out["plan"][0]
        assert first["status"] == expected, out
        if expected == "done":
            assert json.loads(first["result"]) == {"site": "CS-101", "cause": "mis_set_handover"}
            assert out["status"] == "answered" and attempts[str(fix_on)] == fix_on
        else:
            assert out["status"] == "failed" and "no valid Diagnosis" in out["detail"] and attempts["99"] == 2


def test_a_phase_is_required_when_a_function_of_the_calls_so_far_says_so(app: App) -> None:
    """required=f(records): once the KPIs were read the change phase offers no skip_phase (a
    small model may not skip the fix it was sent for); with f false it does."""

    def read_kpis(records: Any) -> bool:
        return any(r.name == "get_kpis" and r.status == "ok" for r in records)

    for when, skip_offered in ((read_kpis, False), (lambda records: False, True)):
        phases = [PHASES[0], Phase("apply", "Apply the fix.", ("apply_change",), required=when), PHASES[2]]
        with OpenAIServer(respond=small_model(skip_apply=True)) as server:
            model = OpenAIChat(model="small", base_url=server.url, api_key="t", context_window=None)
            agent = Agent(name=f"noc{skip_offered}", model=model, tools=[get_kpis, apply_change, notify],
                          policies=allow_all, phases=phases)  # fmt: skip
            out = app.run(copilot(app, agent), "CS-101 drops", run_id=f"r{skip_offered}")
            assert offered(server.requests[1]) == (["apply_change", "skip_phase"] if skip_offered else ["apply_change"])
        assert out["plan"][1]["status"] == ("skipped" if skip_offered else "done"), out


def test_a_phase_whose_condition_is_false_is_skipped_without_a_model_call(app: App) -> None:
    """when=f(records): the apply phase runs only when f says so; otherwise it is recorded
    skipped and no request offers its tools."""
    for runs, expected in ((lambda records: False, "skipped"), (lambda records: True, "done")):
        phases = [PHASES[0], Phase("apply", "Apply the fix.", ("apply_change",), when=runs), PHASES[2]]
        with OpenAIServer(respond=small_model()) as server:
            model = OpenAIChat(model="small", base_url=server.url, api_key="t", context_window=None)
            agent = Agent(name=f"noc-{expected}", model=model, tools=[get_kpis, apply_change, notify],
                          policies=allow_all, phases=phases)  # fmt: skip
            out = app.run(copilot(app, agent), "CS-101 drops", run_id=f"r-{expected}")
            asked = [offered(b) for b in server.requests]
        assert out["plan"][1]["status"] == expected, out
        assert (["apply_change"] in asked) is (expected == "done")
        assert len(EFFECTS) == (2 if expected == "done" else 1)
        EFFECTS.clear()
