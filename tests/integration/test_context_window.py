"""An agent keeps its conversation inside the model's context window: older tool outputs are
elided, a huge input is cut in its middle, and the window of a local server is read from it
(llama.cpp's `/props`). The real `openai` client talks to a local test server over HTTP."""

from __future__ import annotations

import json
from typing import Any

from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from support.openai_server import OpenAIServer, Reply, completion

import agentflow.llm as llm
from agentflow import Agent, App, WorkflowContext
from agentflow.agent import fit_messages
from agentflow.llm import OpenAIChat, count_messages

MODEL = "qwen-small"
ALARM = "2026-12-07T01:{:02d}:{:02d}Z CS-{:03d} MAJOR HO_FAILURE_RATE threshold crossed drop_rate={}.{}%\n"


def alarm_log(lines: int) -> str:
    return "".join(ALARM.format(i // 60 % 60, i % 60, 100 + i % 50, i % 7, i % 10) for i in range(lines))


@llm.tool(side_effect="none", target="site")
def get_kpis(site: str) -> str:
    """Read the KPI series of a cell site (long)."""
    return alarm_log(60)  # ~1,800 tokens of series


def tokens_of(request: dict[str, Any]) -> int:
    """Prompt tokens of a request the server received, counted like the agent counts them."""
    messages: list[Any] = []
    for m in request["messages"]:
        content = m.get("content") or ""
        if m["role"] == "system":
            messages.append(SystemMessage(content))
        elif m["role"] == "user":
            messages.append(HumanMessage(content))
        elif m["role"] == "tool":
            messages.append(ToolMessage(content, tool_call_id=m["tool_call_id"]))
        else:
            calls = [
                {"name": c["function"]["name"], "args": json.loads(c["function"]["arguments"]), "id": c["id"]}
                for c in m.get("tool_calls") or []
            ]
            messages.append(AIMessage(content, tool_calls=calls))
    return count_messages(messages, MODEL, request.get("tools") or []).tokens


def test_older_tool_outputs_are_elided_first_and_the_latest_turn_stays_whole() -> None:
    conversation: list[Any] = [SystemMessage("You are a NOC copilot."), HumanMessage("CS-101 drops. Fix.")]
    for i in range(6):
        conversation.append(AIMessage("", tool_calls=[{"name": "get_kpis", "args": {"site": "CS-101"}, "id": f"c{i}"}]))
        conversation.append(ToolMessage(alarm_log(60), tool_call_id=f"c{i}", name="get_kpis"))
    whole = count_messages(conversation, MODEL).tokens
    view, shortened = fit_messages(conversation, MODEL, window=6000, reserve=500)
    assert whole > 6000 and count_messages(view, MODEL).tokens <= 5500
    assert 0 < shortened < 6
    elided = [m for m in view if isinstance(m, ToolMessage) and "was elided" in str(m.content)]
    assert len(elided) == shortened
    assert view[-1].content == conversation[-1].content  # the latest result is whole
    assert view[1].content == "CS-101 drops. Fix."  # the task is not cut while outputs can go
    assert [type(m) for m in view] == [type(m) for m in conversation]  # every call keeps its answer
    assert conversation[3].content == alarm_log(60)  # the recorded conversation is not changed
    assert fit_messages(conversation, MODEL, window=200_000) == (conversation, 0)


def test_a_pasted_log_bigger_than_the_window_is_cut_in_its_middle() -> None:
    log = alarm_log(450)  # ~12,500 tokens, the size that failed at once
    conversation = [SystemMessage("You are a NOC copilot."), HumanMessage("Alarms:\n" + log)]
    assert count_messages(conversation, MODEL).tokens > 12_000
    view, shortened = fit_messages(conversation, MODEL, window=4096, reserve=256)
    assert shortened == 1 and count_messages(view, MODEL).tokens <= 4096 - 256
    text = str(view[1].content)
    assert text.startswith("Alarms:\n" + log[:200]) and text.endswith(log[-200:])
    assert "tokens elided here to fit the model's context window" in text
    assert view[0].content == "You are a NOC copilot."
    # Impossible: a system prompt alone bigger than the window is left for chat() to refuse.
    huge_system = [SystemMessage(log), HumanMessage("hi")]
    assert count_messages(fit_messages(huge_system, MODEL, window=1000)[0], MODEL).tokens > 1000


def test_an_agent_on_a_local_server_fits_its_window_read_from_the_server(app: App) -> None:
    """llama.cpp says n_ctx 4096 at /props: the pasted 12.5k-token log and five long KPI reads
    all go out inside 4,096 tokens, the run answers, and running it again sends nothing (the
    view is a function of the record: replay matches)."""
    replies: list[Reply] = [completion(tool_calls=[("get_kpis", {"site": "CS-101"})]) for _ in range(5)]
    replies.append(completion("CS-101: handover failures; propose hoA3Offset 2."))
    with OpenAIServer(replies, props={"default_generation_settings": {"n_ctx": 4096}}) as server:
        model = OpenAIChat(model=MODEL, base_url=server.url, api_key="test")
        assert model.context_window == 4096
        agent = Agent(name="noc", model=model, tools=[get_kpis], max_turns=8)

        @app.workflow(name="copilot")
        async def copilot(ctx: WorkflowContext, task: str) -> dict[str, Any]:
            return (await agent.run(ctx, task)).model_dump()

        out = app.run(copilot, "Alarms:\n" + alarm_log(450), run_id="r")
        assert out["status"] == "answered", out
        assert server.calls == 6
        sizes = [tokens_of(r) for r in server.requests]
        assert max(sizes) <= 4096, sizes
        assert "tokens elided here" in server.requests[0]["messages"][1]["content"]
        assert any("was elided" in (m.get("content") or "") for m in server.requests[-1]["messages"])
        # A replay of the finished run, today's server saying something else (or nothing):
        # the requests are fitted to the window they were sent with, recorded with them.
        from agentflow.trace import load

        for props in ({"default_generation_settings": {"n_ctx": 100_000}}, None):
            server.props = props
            model.context_window = "auto"  # type: ignore[assignment]  # a new process asks again
            assert load(app, "r").replay(app).status == "completed"
        assert server.calls == 6


def test_a_server_that_does_not_say_leaves_the_window_unknown() -> None:
    with OpenAIServer([completion("ok")]) as server:
        assert OpenAIChat(model=MODEL, base_url=server.url, api_key="test").context_window is None
        assert OpenAIChat(model=MODEL, base_url=server.url, api_key="t", context_window=9000).context_window == 9000


def test_a_run_parked_mid_conversation_resumes_with_the_window_it_was_fitted_to(
    make_app: Any, worker_thread: Any
) -> None:
    """The run reads long KPIs under a 4,096-token window, then parks for an approval; the
    server restarts with a 100k window. The resumed run replays the trimmed requests as they
    were (no NonDeterminismError), and only its new requests use the new window."""
    from agentflow.approvals import Approvals
    from agentflow.testing import TestClock, assert_eventually

    @llm.tool(side_effect="idempotent", target="site")
    def apply_fix(site: str) -> str:
        """Apply the fix to a site."""
        return "applied"

    app = make_app(clock=TestClock(start=1_700_000_000, skip=False))
    replies: list[Reply] = [completion(tool_calls=[("get_kpis", {"site": "CS-101"})]) for _ in range(3)]
    replies += [completion(tool_calls=[("apply_fix", {"site": "CS-101"})]), completion("Fixed CS-101.")]
    with OpenAIServer(replies, props={"default_generation_settings": {"n_ctx": 4096}}) as server:
        model = OpenAIChat(model=MODEL, base_url=server.url, api_key="test")
        agent = Agent(name="noc", model=model, tools=[get_kpis, apply_fix], max_turns=8)

        @app.workflow(name="copilot")
        async def copilot(ctx: WorkflowContext, task: str) -> dict[str, Any]:
            return (await agent.run(ctx, task)).model_dump()

        app.start(copilot, "Alarms:\n" + alarm_log(300), run_id="r")
        worker = worker_thread(app)
        request = assert_eventually(lambda: next(iter(Approvals.of(app).list(run_id="r")), None))
        assert_eventually(lambda: app.get_run("r").status == "waiting")
        worker.stop()
        assert server.calls == 4 and max(tokens_of(r) for r in server.requests) <= 4096
        server.props = {"default_generation_settings": {"n_ctx": 100_000}}
        model.context_window = "auto"  # type: ignore[assignment]  # a new worker process asks again
        operator = Approvals.of(app).add_operator("alice", tenant="default", roles=["noc-engineer"])[0]
        Approvals.of(app).approve(request.id, by=operator)
        worker_thread(app)
        assert_eventually(lambda: app.get_run("r").status == "completed", message=str(app.get_run("r").error))
        assert server.calls == 5  # the four recorded calls were not sent again
        assert "tokens elided here" not in json.dumps(server.requests[-1])  # the new window fits it whole
