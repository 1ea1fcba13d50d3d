"""The agent loop: every model call, policy decision, approval and tool call is a recorded step."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

import agentflow.llm as llm
from agentflow import App, WorkflowContext, current_activity
from agentflow.agent import Agent, Budget, Decision, approval_signal
from agentflow.approvals import Approvals
from agentflow.testing import TestClock, assert_eventually

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


@llm.tool(side_effect="none")
def flaky(site: str) -> str:
    """A read that always fails."""
    raise RuntimeError("backend down")


def scripted(*responses: Any) -> llm.LangChainChat:
    return llm.LangChainChat(llm.ScriptedChatModel(responses=list(responses)))


def apply_call(value: int = 2) -> dict[str, Any]:
    return {"tool_calls": [{"name": "apply_change", "args": {"site": "CS-101", "param": "hoA3Offset", "value": value}}]}


@pytest.fixture
def people(make_app: Callable[..., App]) -> App:
    """An app whose clock does not skip time: an approval waits for people, not for its expiry
    (the worker would otherwise jump straight to the next timer)."""
    return make_app(clock=TestClock(start=1_700_000_000, skip=False))


@pytest.fixture(autouse=True)
def _clear() -> None:
    EFFECTS.clear()


def copilot_app(app: App, agent: Agent) -> Any:
    @app.workflow(name=f"copilot.{agent.name}")
    async def copilot(ctx: WorkflowContext, task: str) -> dict[str, Any]:
        return (await agent.run(ctx, task)).model_dump()

    return copilot


def request_for(app: App, run_id: str, call_id: str) -> Any:
    """The open approval request of a staged call (what an operator sees in their inbox)."""
    return assert_eventually(
        lambda: next((r for r in Approvals.of(app).list(run_id=run_id) if r.call_id == call_id), None)
    )


def operator(app: App, name: str) -> Any:
    return Approvals.of(app).add_operator(name, tenant="default", roles=["noc-engineer"])[0]


def kinds(app: App, run_id: str) -> list[tuple[str, str, str]]:
    return [(s.kind, s.name, s.status) for s in app.history(run_id)]


def test_read_only_tools_run_and_the_answer_ends_the_loop(app: App) -> None:
    """A read-only tool runs without approval; the model's text answer is the typed outcome."""
    agent = Agent(
        name="noc",
        model=scripted({"tool_calls": [{"name": "get_kpis", "args": {"site": "CS-101"}}]}, "Drop rate 2.9%."),
        tools=[get_kpis, apply_change],
    )
    out = app.run(copilot_app(app, agent), "CS-101 drop rate", run_id="r")
    assert out["status"] == "answered" and out["answer"] == "Drop rate 2.9%."
    assert [c["status"] for c in out["tool_calls"]] == ["ok"]
    assert out["tool_calls"][0]["decision"]["rule"] == "default:read-only"
    assert kinds(app, "r") == [
        ("llm", "scripted", "completed"),
        ("policy", "get_kpis", "completed"),
        ("tool", "get_kpis", "completed"),
        ("llm", "scripted", "completed"),
    ]


def test_side_effect_waits_for_approval_without_holding_a_worker(
    people: App, worker_thread: Callable[..., Any]
) -> None:
    """A side-effecting call parks the run on a durable approval wait (no owner); an approval
    signal resumes it and the tool runs once with the step's idempotency key."""
    app = people
    agent = Agent(name="noc", model=scripted(apply_call(), "Applied."), tools=[get_kpis, apply_change])
    wf = copilot_app(app, agent)
    app.start(wf, "fix CS-101", run_id="r")
    worker_thread(app)
    run = assert_eventually(lambda: (r := app.store.get_run("r")).status == "waiting" and r)
    assert run.owner is None
    request = request_for(app, "r", "call-0-0")
    assert json.loads(run.waiting_on)["signals"] == [approval_signal(request.id)]
    assert request.tool == "apply_change" and request.args == {"site": "CS-101", "param": "hoA3Offset", "value": 2}
    assert EFFECTS == []
    Approvals.of(app).approve(request.id, by=operator(app, "alice"))
    assert_eventually(lambda: app.get_run("r").status == "completed")
    out = json.loads(app.store.get_run("r").output or "{}")
    assert out["tool_calls"][0]["approved_by"] == "alice"
    tool_step = next(s for s in app.history("r") if s.kind == "tool")
    assert EFFECTS == [f"r:{tool_step.seq}"]


def test_rejection_goes_back_to_the_model(people: App, worker_thread: Callable[..., Any]) -> None:
    """A rejected call never runs; the model is told who rejected it and why."""
    app = people
    agent = Agent(name="noc", model=scripted(apply_call(), "Understood, not applying."), tools=[apply_change])
    app.start(copilot_app(app, agent), "fix CS-101", run_id="r")
    worker_thread(app)
    assert_eventually(lambda: app.get_run("r").status == "waiting")
    Approvals.of(app).reject(request_for(app, "r", "call-0-0").id, by=operator(app, "bob"), comment="not in the window")
    assert_eventually(lambda: app.get_run("r").status == "completed")
    out = json.loads(app.store.get_run("r").output or "{}")
    assert out["tool_calls"][0]["status"] == "rejected"
    assert "bob" in out["tool_calls"][0]["result"] and "not in the window" in out["tool_calls"][0]["result"]
    assert EFFECTS == []


def test_approval_expiry_counts_as_rejection(app: App) -> None:
    """An approval that does not come before the request expires (default: one hour, on the
    time-skipping clock) is a rejection; the request is recorded expired and audited."""
    agent = Agent(name="noc", model=scripted(apply_call(), "OK."), tools=[apply_change])
    out = app.run(copilot_app(app, agent), "fix", run_id="r")
    assert out["tool_calls"][0]["status"] == "rejected"
    assert "expired" in out["tool_calls"][0]["result"]
    request = Approvals.of(app).list(run_id="r", status=None)[0]
    assert request.status == "expired"
    assert ("signal", approval_signal(request.id), "failed") in kinds(app, "r")
    assert [(a.action, a.outcome) for a in Approvals.of(app).audit(approval_id=request.id)] == [
        ("requested", "done"),
        ("expired", "done"),
    ]
    assert EFFECTS == []


def test_a_forged_signal_approves_nothing(people: App, worker_thread: Callable[..., Any]) -> None:
    """The approval signal only wakes the run: the run re-reads the request from the store, so a
    hand-made signal claiming approval leaves the call waiting (and runs nothing)."""
    app = people
    agent = Agent(name="noc", model=scripted(apply_call(), "Applied."), tools=[apply_change])
    app.start(copilot_app(app, agent), "fix CS-101", run_id="r")
    worker_thread(app)
    request = request_for(app, "r", "call-0-0")
    app.signal("r", approval_signal(request.id), {"approved": True, "by": "mallory", "status": "approved"})
    assert_eventually(
        lambda: [s.name for s in app.history("r") if s.kind == "approval"] == ["request:apply_change", "read"]
    )
    assert_eventually(lambda: app.get_run("r").status == "waiting")
    assert EFFECTS == []
    Approvals.of(app).approve(request.id, by=operator(app, "alice"))
    assert_eventually(lambda: app.get_run("r").status == "completed")
    assert len(EFFECTS) == 1


def test_deny_policy_never_runs_the_tool(app: App) -> None:
    """A call the policy denies is not executed; the reason goes back to the model."""

    def deny_changes(ctx: Any, tool: Any, facts: llm.ToolFacts, args: dict[str, Any]) -> Decision:
        if facts.read_only:
            return Decision(effect="allow", rule="reads")
        return Decision(effect="deny", rule="freeze", reason="change freeze until Monday")

    agent = Agent(
        name="noc", model=scripted(apply_call(), "Freeze noted."), tools=[apply_change], policies=deny_changes
    )
    out = app.run(copilot_app(app, agent), "fix", run_id="r")
    assert out["tool_calls"][0]["status"] == "denied"
    assert "change freeze" in out["tool_calls"][0]["result"]
    assert not any(k == "tool" for k, _, _ in kinds(app, "r"))
    assert EFFECTS == []


def test_invalid_calls_go_back_to_the_model_and_never_reach_a_tool(app: App) -> None:
    """Unknown tools and schema-failing arguments are reported to the model as a user turn."""
    agent = Agent(
        name="noc",
        model=scripted(
            {"tool_calls": [{"name": "nope", "args": {}}, {"name": "get_kpis", "args": {"site": 5}}]},
            "Sorry.",
        ),
        tools=[get_kpis],
    )
    out = app.run(copilot_app(app, agent), "x", run_id="r")
    assert [c["status"] for c in out["tool_calls"]] == ["invalid", "invalid"]
    assert "unknown tool 'nope'" in out["tool_calls"][0]["result"]
    assert not any(k in ("tool", "policy") for k, _, _ in kinds(app, "r"))


def test_tool_failure_is_reported_not_raised(app: App) -> None:
    """A tool that fails after its retries returns an error message to the model."""
    agent = Agent(
        name="noc",
        model=scripted({"tool_calls": [{"name": "flaky", "args": {"site": "a"}}]}, "It failed."),
        tools=[flaky],
    )
    out = app.run(copilot_app(app, agent), "x", run_id="r")
    assert out["status"] == "answered"
    assert out["tool_calls"][0]["status"] == "error" and "backend down" in out["tool_calls"][0]["result"]
    assert len(app.store.load_attempts("r")) == 3  # TOOL_RETRY attempts, each recorded


def test_max_turns_and_budget_are_typed_outcomes(app: App) -> None:
    """The loop ends with `max_turns` or `budget_exceeded`, never an exception."""
    looping = scripted({"tool_calls": [{"name": "get_kpis", "args": {"site": "CS-1"}}]})
    agent = Agent(name="noc", model=looping, tools=[get_kpis], max_turns=3)
    out = app.run(copilot_app(app, agent), "x", run_id="r1")
    assert out["status"] == "max_turns" and out["turns"] == 3
    broke = Agent(name="noc2", model=looping, tools=[get_kpis], budget=Budget(max_tokens=150))
    out = app.run(copilot_app(app, broke), "x", run_id="r2")
    assert out["status"] == "budget_exceeded"
    assert out["usage"]["input_tokens"] + out["usage"]["output_tokens"] <= 150


def test_replay_calls_nothing_again(app: App) -> None:
    """Running a finished agent run again replays it: no model call, no tool call."""
    model = llm.ScriptedChatModel(responses=[apply_call(), "Done."])
    calls = []
    original = model._generate

    def counting(*a: Any, **kw: Any) -> Any:
        calls.append(1)
        return original(*a, **kw)

    object.__setattr__(model, "_generate", counting)

    def allow_all(ctx: Any, tool: Any, facts: Any, args: Any) -> Decision:
        return Decision(effect="allow", rule="test")

    agent = Agent(name="noc", model=llm.LangChainChat(model), tools=[apply_change], policies=allow_all)
    wf = copilot_app(app, agent)
    first = app.run(wf, "fix", run_id="r")
    assert len(calls) == 2 and len(EFFECTS) == 1
    second = app.run(wf, "fix", run_id="r")
    assert second == first and len(calls) == 2 and len(EFFECTS) == 1


def test_side_effects_of_one_reply_run_one_after_another(people: App, worker_thread: Callable[..., Any]) -> None:
    """Two side-effecting calls from one model response: the second is not even gated until
    the first is approved and applied; a read after them waits for both (it reads the changed
    network), and each resume replays the turn to the same steps. Each change runs once."""
    app = people
    turn = {
        "tool_calls": [
            {"name": "apply_change", "args": {"site": "CS-1", "param": "hoA3Offset", "value": 2}, "id": "c1"},
            {"name": "apply_change", "args": {"site": "CS-2", "param": "hoA3Offset", "value": 2}, "id": "c2"},
            {"name": "get_kpis", "args": {"site": "CS-1"}, "id": "c3"},
        ]
    }
    agent = Agent(name="noc", model=scripted(turn, "Both applied."), tools=[apply_change, get_kpis])
    app.start(copilot_app(app, agent), "fix both", run_id="r")
    worker_thread(app)
    first = request_for(app, "r", "c1")
    assert_eventually(lambda: app.get_run("r").status == "waiting")
    assert [r.call_id for r in Approvals.of(app).list(run_id="r")] == ["c1"]  # c2 is not staged yet
    assert not any(name == "get_kpis" for _, name, _ in kinds(app, "r"))
    Approvals.of(app).approve(first.id, by=operator(app, "alice"))
    second = request_for(app, "r", "c2")
    assert len(EFFECTS) == 1  # c1 was applied before c2 was gated
    assert not any(name == "get_kpis" for _, name, _ in kinds(app, "r"))
    Approvals.of(app).approve(second.id, by=operator(app, "bob"))
    assert_eventually(lambda: app.get_run("r").status == "completed", message=str(app.get_run("r").error))
    out = json.loads(app.store.get_run("r").output or "{}")
    assert [(c["id"], c["approved_by"], c["status"]) for c in out["tool_calls"]] == [
        ("c1", "alice", "ok"),
        ("c2", "bob", "ok"),
        ("c3", None, "ok"),
    ]
    order = [(k, n) for k, n, _ in kinds(app, "r") if k == "tool"]
    assert order == [("tool", "apply_change"), ("tool", "apply_change"), ("tool", "get_kpis")]
    assert len(EFFECTS) == 2 and len(set(EFFECTS)) == 2


NOTIFIED: list[str] = []


@llm.tool(side_effect="non_idempotent")
def notify(text: str) -> str:
    """Notify on-call."""
    NOTIFIED.append(text)
    return "sent"


def test_a_refused_change_stops_the_calls_after_it_in_its_reply(app: App) -> None:
    """[read, apply_change (denied), notify("applied"), read]: the first read runs, the denied
    change is not run, and neither the notification that reports it nor the read after it is
    run; the model is told why, in call order."""
    NOTIFIED.clear()

    def deny_changes(ctx: Any, tool: Any, facts: llm.ToolFacts, args: dict[str, Any]) -> Decision:
        if facts.read_only or tool.name == "notify":
            return Decision(effect="allow", rule="ok")
        return Decision(effect="deny", rule="freeze", reason="change freeze until Monday")

    turn = {
        "tool_calls": [
            {"name": "get_kpis", "args": {"site": "CS-1"}, "id": "r1"},
            {"name": "apply_change", "args": {"site": "CS-1", "param": "hoA3Offset", "value": 2}, "id": "a1"},
            {"name": "notify", "args": {"text": "Change applied on CS-1"}, "id": "n1"},
            {"name": "get_kpis", "args": {"site": "CS-1"}, "id": "r2"},
        ]
    }
    agent = Agent(
        name="noc", model=scripted(turn, "Freeze noted."), tools=[get_kpis, apply_change, notify], policies=deny_changes
    )
    out = app.run(copilot_app(app, agent), "fix", run_id="r")
    assert [(c["id"], c["status"]) for c in out["tool_calls"]] == [
        ("r1", "ok"),
        ("a1", "denied"),
        ("n1", "skipped"),
        ("r2", "skipped"),
    ]
    assert "apply_change" in out["tool_calls"][2]["result"] and "denied" in out["tool_calls"][2]["result"]
    assert NOTIFIED == [] and EFFECTS == []
    assert [n for k, n, _ in kinds(app, "r") if k == "tool"] == ["get_kpis"]


def test_policies_see_arguments_as_the_tool_schema_reads_them(app: App) -> None:
    """The model writes numbers as text ("46", "40"): the gate, the record and the tool all get
    the schema's integers, so `args.value > 43` decides on numbers (before, it could not be
    evaluated and a safe "40" was denied with a misleading reason)."""
    from agentflow.policy import parse_pack

    pack = parse_pack(
        """
schema_version: 1
name: limits
rules:
  - id: too-high
    match: {tools: [apply_change]}
    when: 'args.value > 43'
    effect: deny
    reason: value above 43
  - id: changes
    match: {tools: [apply_change]}
    effect: allow
"""
    )
    turn = {
        "tool_calls": [
            {"name": "apply_change", "args": {"site": "CS-1", "param": "hoA3Offset", "value": "46"}, "id": "hi"},
        ]
    }
    safe = {
        "tool_calls": [
            {"name": "apply_change", "args": {"site": "CS-1", "param": "hoA3Offset", "value": "40"}, "id": "ok"},
        ]
    }
    agent = Agent(name="noc", model=scripted(turn, safe, "Done."), tools=[apply_change], policies=pack)
    out = app.run(copilot_app(app, agent), "fix", run_id="r")
    hi, ok = out["tool_calls"]
    assert hi["status"] == "denied" and "value above 43" in hi["result"] and hi["args"]["value"] == 46
    assert ok["status"] == "ok" and ok["args"]["value"] == 40 and ok["decision"]["rule"] == "changes"
    assert json.loads(ok["result"])["hoA3Offset"] == 40  # the tool got the integer too
    assert len(EFFECTS) == 1


ROLLED_BACK: list[tuple[str, str]] = []


@llm.tool(side_effect="idempotent", target="site", compensate="rollback")
def push(site: str, value: int) -> dict[str, Any]:
    """Push a configuration value to a cell site; returns the change id."""
    EFFECTS.append(current_activity().idempotency_key)
    return {"change_id": f"chg-{site}-{value}", "site": site}


@llm.tool(side_effect="idempotent", target="site")
def rollback(site: str, change_id: str) -> dict[str, Any]:
    """Undo a pushed change by its change id."""
    ROLLED_BACK.append((site, change_id))
    return {"rolled_back": change_id}


def test_cancel_after_a_compensable_step_runs_its_compensation(people: App, worker_thread: Callable[..., Any]) -> None:
    """A run cancelled while waiting for its next approval undoes the change it already pushed:
    the compensating tool passes the gate like any side-effecting call (the default policy asks
    an operator), then runs once, recorded, with arguments taken from the push's arguments and
    result; the run ends cancelled."""
    app = people
    ROLLED_BACK.clear()
    agent = Agent(
        name="comp",
        model=scripted(
            {"tool_calls": [{"name": "push", "args": {"site": "CS-7", "value": 3}}]},
            {"tool_calls": [{"name": "push", "args": {"site": "CS-8", "value": 3}}]},
            "done",
        ),
        tools=[push, rollback],
    )
    app.start(copilot_app(app, agent), "push twice", run_id="r")
    worker_thread(app)
    assert_eventually(lambda: app.get_run("r").status == "waiting")
    Approvals.of(app).approve(request_for(app, "r", "call-0-0").id, by=operator(app, "alice"))
    assert_eventually(lambda: len(EFFECTS) == 1 and app.get_run("r").status == "waiting")
    app.cancel("r")
    undo = request_for(app, "r", "compensate:call-0-0")
    assert undo.tool == "rollback" and undo.args == {"site": "CS-7", "change_id": "chg-CS-7-3"} and ROLLED_BACK == []
    Approvals.of(app).approve(undo.id, by=operator(app, "bob"))
    assert_eventually(lambda: app.get_run("r").status == "cancelled", message=str(app.get_run("r").error))
    assert ROLLED_BACK == [("CS-7", "chg-CS-7-3")]
    assert len(EFFECTS) == 1  # the second push never ran
    tools_run = [(s.name, s.status) for s in app.history("r") if s.kind == "tool"]
    assert tools_run == [("push", "completed"), ("rollback", "completed")]


@pytest.mark.parametrize(
    "garbled",
    [
        '{{"name": "apply_change", "arguments": {"site": "CS-101", "param": "hoA3Offset", "value": 2}}}}',
        '<tools>\n{"name": "apply_change", "arguments": {"site": "CS-101"}}\n</tools>',
        'I will now fix it.\n```json\n{"name": "apply_change", "arguments": {"site": "CS-101", "param": "hoA3Offset",'
        ' "value": 2}}\n```\nThat should do it.',
        "<tool_call>apply_change(site=CS-101)</tool_call>",
    ],
    ids=["doubled-braces", "tools-tag", "prose-around-fence", "tag-not-json"],
)
def test_malformed_tool_call_text_is_sent_back_never_taken_as_the_answer(app: App, garbled: str) -> None:
    """A reply that looks like a tool call but is none goes back to the model once as an
    invalid call; the model then calls properly and the run answers. Twice in a row: failed."""
    agent = Agent(
        name="noc", model=scripted(garbled, {"tool_calls": [{"name": "get_kpis", "args": {"site": "CS-101"}}]},
                                   "Drop rate 2.9%."), tools=[get_kpis, apply_change],
    )  # fmt: skip
    out = app.run(copilot_app(app, agent), "fix", run_id="r")
    assert out["status"] == "answered" and out["answer"] == "Drop rate 2.9%."
    assert [c["status"] for c in out["tool_calls"]] == ["invalid", "ok"]
    assert "not run" in out["tool_calls"][0]["result"] and EFFECTS == []

    twice = Agent(name="noc2", model=scripted(garbled, garbled, "never reached"), tools=[get_kpis, apply_change])
    out = app.run(copilot_app(app, twice), "fix", run_id="r2")
    assert out["status"] == "failed" and "malformed" in out["detail"] and out["answer"] is None


def test_an_answer_that_quotes_json_is_still_an_answer(app: App) -> None:
    """No false alarm: an answer with JSON of the change it proposes (no call keys) or a tool's
    name in prose is the answer."""
    text = 'Proposed change: {"site": "CS-101", "param": "hoA3Offset", "value": 2}; run `apply_change` after approval.'
    agent = Agent(name="noc", model=scripted(text), tools=[get_kpis, apply_change])
    out = app.run(copilot_app(app, agent), "fix", run_id="r")
    assert out["status"] == "answered" and out["answer"] == text


@llm.tool(side_effect="none", target="site")
def read_drop_rate(site: str) -> dict[str, float]:
    """Read a cell site's drop rate in percent."""
    return {"drop_rate_pct": 0.956, "ho_failure_pct": 12.34}


def test_misquoted_numbers_are_sent_back_once_then_listed(app: App) -> None:
    """The model reads 0.956 % and answers 92.2 %: with check_numbers the answer goes back once
    with the number named; a corrected answer is taken, and a second wrong one is taken with the
    number listed in `unverified_numbers`. Rounding to the shown precision is not a misquote."""
    read = {"tool_calls": [{"name": "read_drop_rate", "args": {"site": "CS-101"}}]}
    wrong = "CS-101 drop rate is 92.2 %; handover failures 12.3 %."
    right = "CS-101 drop rate is 0.96 % (0.956 %); handover failures 12.3 %; 2 causes checked at 02:00."
    agent = Agent(name="noc", model=scripted(read, wrong, right), tools=[read_drop_rate], check_numbers=True)
    out = app.run(copilot_app(app, agent), "CS-101 drops", run_id="r1")
    assert out["status"] == "answered" and out["answer"] == right and out["unverified_numbers"] == []
    assert out["turns"] == 3

    stubborn = Agent(name="noc2", model=scripted(read, wrong, wrong), tools=[read_drop_rate], check_numbers=True)
    out = app.run(copilot_app(app, stubborn), "CS-101 drops", run_id="r2")
    assert out["status"] == "answered" and out["unverified_numbers"] == ["92.2 %"] and out["turns"] == 3

    unchecked = Agent(name="noc3", model=scripted(read, wrong), tools=[read_drop_rate])
    out = app.run(copilot_app(app, unchecked), "CS-101 drops", run_id="r3")
    assert out["answer"] == wrong and out["turns"] == 2 and out["unverified_numbers"] == []


def test_a_run_recorded_by_the_older_loop_replays_the_way_it_ran(
    people: App, worker_thread: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run parked by agent version 1 (a reply's side effects all gated at once) resumes under
    the current loop (one after another) without NonDeterminismError: the version is read from
    its first recorded request, and the resumed run keeps the old behaviour to its end."""
    import agentflow.agent._agent as agent_module

    app = people
    two = {
        "tool_calls": [
            {"name": "apply_change", "args": {"site": "CS-1", "param": "hoA3Offset", "value": 2}, "id": "c1"},
            {"name": "apply_change", "args": {"site": "CS-2", "param": "hoA3Offset", "value": 2}, "id": "c2"},
        ]
    }
    agent = Agent(name="noc", model=scripted(two, "Both applied."), tools=[apply_change])
    workflow = copilot_app(app, agent)
    monkeypatch.setattr(agent_module, "AGENT_VERSION", 1)
    app.start(workflow, "fix both", run_id="r")
    old = worker_thread(app)
    first, second = request_for(app, "r", "c1"), request_for(app, "r", "c2")  # both staged at once: v1
    assert_eventually(lambda: app.get_run("r").status == "waiting")
    old.stop()
    monkeypatch.setattr(agent_module, "AGENT_VERSION", 2)
    Approvals.of(app).approve(second.id, by=operator(app, "alice"))
    Approvals.of(app).approve(first.id, by=operator(app, "bob"))
    worker_thread(app)
    assert_eventually(lambda: app.get_run("r").status == "completed", message=str(app.get_run("r").error))
    out = json.loads(app.store.get_run("r").output or "{}")
    assert [(c["id"], c["status"]) for c in out["tool_calls"]] == [("c1", "ok"), ("c2", "ok")]
    assert len(EFFECTS) == 2
    first_request = json.loads(next(s for s in app.history("r") if s.kind == "llm").args or "{}")
    assert "agent" not in first_request  # recorded as the old code recorded it
