"""The real `openai` client end to end: `OpenAIChat` over real HTTP against a local
OpenAI-compatible server, driven through `agentflow.agent.chat` inside workflows.

What is checked here is the whole path a production model call takes: the request the provider
receives (messages, tools, parallel tool calls), the response parsed into langchain-core messages,
usage and cost recorded, provider errors mapped to agentflow's typed errors and retried (or not)
by the engine with every attempt in the history, and replays that never send a request again.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from support.openai_server import OpenAIServer, Reply, completion, error

from agentflow import ActivityError, App, RunFailedError, WorkflowContext
from agentflow.agent import chat
from agentflow.agent._chat import MODEL_RETRY
from agentflow.errors import ModelConnectionError, ModelRequestsForbidden
from agentflow.llm import ModelResponse, OpenAIChat, PriceTable, tool
from agentflow.testing import assert_eventually

MODEL = "gpt-4o-mini"  # priced in the default PriceTable: (0.15, 0.60) USD per 1M tokens


@tool(side_effect="none", target="site")
def get_kpis(site: str) -> dict:
    """Read the KPIs (availability, throughput, drop rate) of a cell site."""
    return {"site": site, "availability": 99.9}


@tool(side_effect="none", target="site")
def get_alarms(site: str, severity: str = "major") -> list:
    """List the active alarms of a cell site at or above a severity."""
    return []


TOOLS = [get_kpis, get_alarms]


def model_for(server: OpenAIServer, *, model: str = MODEL, timeout: float = 5.0) -> OpenAIChat:
    return OpenAIChat(model=model, base_url=server.url, api_key="test", timeout=timeout)


def asker(
    app: App,
    model: OpenAIChat,
    tools: Sequence[BaseTool] = (),
    *,
    messages: Callable[[], list[BaseMessage]] | None = None,
    catch: bool = True,
) -> tuple[Any, list[ModelResponse]]:
    """A workflow making one model call; the responses it got are appended to the list.

    A failed call is returned as {"error": cause_type, "attempts": n} (or raised, `catch=False`)."""
    seen: list[ModelResponse] = []

    @app.workflow(name="ask")
    async def ask(ctx: WorkflowContext, question: str) -> dict[str, Any]:
        msgs = messages() if messages else [HumanMessage(question)]
        try:
            response = await chat(ctx, model, msgs, tools)
        except ActivityError as exc:
            if not catch:
                raise
            return {"error": exc.cause_type, "attempts": exc.attempts, "message": exc.cause_message}
        seen.append(response)
        return {"content": response.message.content}

    return ask, seen


def attempts(app: App, run_id: str) -> list[dict[str, Any]]:
    keys = ("seq", "attempt", "error", "started_at", "finished_at", "retry_at")
    rows = [dict(zip(keys, row, strict=True)) for row in app.store.load_attempts(run_id)]
    for row in rows:
        row["error"] = json.loads(row["error"])
    return rows


def llm_step(app: App, run_id: str) -> Any:
    steps = [s for s in app.history(run_id) if s.kind == "llm"]
    assert len(steps) == 1, steps
    return steps[0]


# ------------------------------------------------------------------------------------------
# answers, tool calls, the request on the wire
# ------------------------------------------------------------------------------------------
def test_plain_answer_records_provider_usage_and_priced_cost(app) -> None:
    """A plain answer comes back as the AIMessage content; usage is the provider's own counts
    (source "provider"), cost is tokens x the PriceTable price of the model, and the call is
    one recorded step of kind "llm" named after the model, completed on the first attempt."""
    with OpenAIServer([completion("All 12 sites are up.", prompt_tokens=1200, completion_tokens=300)]) as server:
        ask, seen = asker(app, model_for(server))
        assert app.run(ask, "status?", run_id="r") == {"content": "All 12 sites are up."}
        assert server.calls == 1

    (response,) = seen
    assert response.usage.source == "provider"
    assert (response.usage.input_tokens, response.usage.output_tokens) == (1200, 300)
    price_in, price_out = PriceTable().price_for(MODEL)
    assert (price_in, price_out) == (0.15, 0.60)
    assert response.usage.cost_usd == pytest.approx((1200 * price_in + 300 * price_out) / 1_000_000)
    assert response.usage.cost_usd > 0
    assert response.finish_reason == "stop" and not response.truncated and response.refusal is None
    assert response.counted_prompt_tokens > 0

    step = llm_step(app, "r")
    assert (step.kind, step.name, step.status, step.attempt) == ("llm", MODEL, "completed", 1)
    recorded = json.loads(step.result)
    assert recorded["usage"]["input_tokens"] == 1200 and recorded["usage"]["output_tokens"] == 300
    assert app.store.load_attempts("r") == []
    # The request the provider got.
    (request,) = server.requests
    assert request["model"] == MODEL
    assert request["messages"] == [{"role": "user", "content": "status?"}]
    assert "tools" not in request and "parallel_tool_calls" not in request


def test_parallel_tool_calls_are_parsed_and_the_request_is_in_openai_format(app) -> None:
    """Two tool calls in one response become two AIMessage.tool_calls with the provider's ids and
    dict arguments. The request carried the tools as langchain-core's `convert_to_openai_tool`
    schemas with `parallel_tool_calls: true`, and a conversation of system / human /
    AI-with-tool-calls / tool messages converted to OpenAI roles."""

    def conversation() -> list[BaseMessage]:
        return [
            SystemMessage("You are a NOC assistant."),
            HumanMessage("Check CS-1 and CS-2."),
            AIMessage("", tool_calls=[{"name": "get_kpis", "args": {"site": "CS-0"}, "id": "prev-1"}]),
            ToolMessage('{"availability": 97.1}', tool_call_id="prev-1"),
        ]

    reply = completion(None, [("get_kpis", {"site": "CS-1"}), ("get_alarms", {"site": "CS-2", "severity": "critical"})])
    with OpenAIServer([reply]) as server:
        ask, seen = asker(app, model_for(server), TOOLS, messages=conversation)
        app.run(ask, "unused", run_id="r")
        assert server.calls == 1

    (response,) = seen
    calls = response.message.tool_calls
    assert [(c["id"], c["name"], c["args"]) for c in calls] == [
        ("call_0", "get_kpis", {"site": "CS-1"}),
        ("call_1", "get_alarms", {"site": "CS-2", "severity": "critical"}),
    ]
    assert all(isinstance(c["args"], dict) for c in calls)
    assert response.message.invalid_tool_calls == []
    assert response.finish_reason == "tool_calls"

    (request,) = server.requests
    assert request["tools"] == [convert_to_openai_tool(t) for t in TOOLS]
    assert request["tools"][0]["type"] == "function"
    assert request["tools"][0]["function"]["name"] == "get_kpis"
    assert request["tools"][0]["function"]["parameters"]["required"] == ["site"]
    assert request["parallel_tool_calls"] is True
    msgs = request["messages"]
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "tool"]
    assert msgs[0]["content"] == "You are a NOC assistant."
    assert msgs[1]["content"] == "Check CS-1 and CS-2."
    (prev,) = msgs[2]["tool_calls"]
    assert prev["id"] == "prev-1" and prev["type"] == "function"
    assert prev["function"]["name"] == "get_kpis"
    assert json.loads(prev["function"]["arguments"]) == {"site": "CS-0"}
    assert msgs[3] == {"role": "tool", "tool_call_id": "prev-1", "content": '{"availability": 97.1}'}


def test_malformed_tool_call_arguments_become_invalid_tool_calls(app) -> None:
    """A tool call whose arguments are not JSON is kept in `invalid_tool_calls` with an error
    saying so, never in `tool_calls` (nothing would execute it); a valid sibling call survives."""
    with OpenAIServer([completion(None, [("get_kpis", "{not json"), ("get_alarms", {"site": "CS-2"})])]) as server:
        ask, seen = asker(app, model_for(server), TOOLS)
        app.run(ask, "go", run_id="r")

    (response,) = seen
    assert [c["name"] for c in response.message.tool_calls] == ["get_alarms"]
    (bad,) = response.message.invalid_tool_calls
    assert (bad["id"], bad["name"], bad["args"]) == ("call_0", "get_kpis", "{not json")
    assert "not valid JSON" in bad["error"]


def test_fenced_json_tool_call_in_text_is_recovered(app) -> None:
    """A model that writes its tool call as fenced JSON in the text (small local models do)
    gets it recovered into `tool_calls` when it names an offered tool: recovered_tool_calls == 1."""
    text = '```json\n{"name": "get_kpis", "arguments": {"site": "CS-1"}}\n```'
    with OpenAIServer([completion(text)]) as server:
        ask, seen = asker(app, model_for(server), TOOLS)
        app.run(ask, "go", run_id="r")

    (response,) = seen
    assert response.recovered_tool_calls == 1
    ((name, args),) = [(c["name"], c["args"]) for c in response.message.tool_calls]
    assert (name, args) == ("get_kpis", {"site": "CS-1"})
    assert response.message.invalid_tool_calls == []
    # What was recorded is the recovered message (a replay sees the same).
    assert json.loads(llm_step(app, "r").result)["recovered_tool_calls"] == 1


def test_fenced_json_tool_call_failing_the_schema_is_never_a_tool_call(app) -> None:
    """A recovered call whose arguments fail the tool's schema lands in `invalid_tool_calls`
    with the validation error, never in `tool_calls`."""
    text = '```json\n{"name": "get_kpis", "arguments": {"cell": "CS-1"}}\n```'
    with OpenAIServer([completion(text)]) as server:
        ask, seen = asker(app, model_for(server), TOOLS)
        app.run(ask, "go", run_id="r")

    (response,) = seen
    assert response.message.tool_calls == []
    (bad,) = response.message.invalid_tool_calls
    assert bad["name"] == "get_kpis"
    assert "site" in bad["error"]
    assert response.recovered_tool_calls == 1


def test_fenced_json_naming_no_offered_tool_stays_text(app) -> None:
    """Fenced JSON that names no offered tool is left alone: plain text, no tool call."""
    text = '```json\n{"name": "reboot_site", "arguments": {"site": "CS-1"}}\n```'
    with OpenAIServer([completion(text)]) as server:
        ask, seen = asker(app, model_for(server), TOOLS)
        app.run(ask, "go", run_id="r")

    (response,) = seen
    assert response.message.tool_calls == [] and response.message.invalid_tool_calls == []
    assert response.recovered_tool_calls == 0
    assert response.message.content == text


def test_refusal_is_a_response_not_an_error(app) -> None:
    """A refusal (content null, `refusal` set) is an answer: ModelResponse.refusal carries it,
    the step completes on its first attempt."""
    with OpenAIServer([completion(None, refusal="I can't help with that.")]) as server:
        ask, seen = asker(app, model_for(server))
        app.run(ask, "go", run_id="r")
        assert server.calls == 1

    (response,) = seen
    assert response.refusal == "I can't help with that."
    assert response.message.tool_calls == []
    assert llm_step(app, "r").attempt == 1


def test_truncated_response_is_flagged(app) -> None:
    """finish_reason "length" sets `truncated` (the answer was cut at the output limit)."""
    with OpenAIServer([completion("The sites are", finish_reason="length")]) as server:
        ask, seen = asker(app, model_for(server))
        app.run(ask, "go", run_id="r")

    (response,) = seen
    assert response.truncated is True
    assert response.finish_reason == "length"
    assert response.message.content == "The sites are"


def test_missing_usage_is_estimated_with_tiktoken(app) -> None:
    """A response without `usage` (some compatible servers) gets usage counted with tiktoken:
    source "estimated", input tokens = the pre-flight prompt count (> 0), output tokens > 0."""
    with OpenAIServer([completion("Everything nominal on all sectors.", usage=False)]) as server:
        ask, seen = asker(app, model_for(server))
        app.run(ask, "How are the sites doing today?", run_id="r")

    (response,) = seen
    assert response.usage.source == "estimated"
    assert response.usage.input_tokens > 0
    assert response.usage.input_tokens == response.counted_prompt_tokens
    assert response.usage.output_tokens > 0
    price_in, price_out = PriceTable().price_for(MODEL)
    expected = (response.usage.input_tokens * price_in + response.usage.output_tokens * price_out) / 1e6
    assert response.usage.cost_usd == pytest.approx(expected)


# ------------------------------------------------------------------------------------------
# replay
# ------------------------------------------------------------------------------------------
def test_a_resumed_run_replays_the_model_call_without_a_request(make_app, worker_thread) -> None:
    """A run parked after its model call and resumed by another App (a redeployed process) on
    the same database replays the call from the history: no request reaches the provider, and
    the workflow sees the same response (content, tool calls, usage, cost)."""

    def register(app: App, model: OpenAIChat) -> tuple[Any, list[ModelResponse]]:
        seen: list[ModelResponse] = []

        @app.workflow(name="ask_then_wait")
        async def ask_then_wait(ctx: WorkflowContext) -> dict[str, Any]:
            response = await chat(ctx, model, [HumanMessage("KPIs of CS-1?")], TOOLS)
            seen.append(response)
            approval = await ctx.wait_signal("approve")
            return {"approval": approval, "content": response.message.content, "calls": response.message.tool_calls}

        return ask_then_wait, seen

    reply = completion("Checking.", [("get_kpis", {"site": "CS-1"})], prompt_tokens=90, completion_tokens=12)
    with OpenAIServer([reply]) as server:
        first = make_app()
        wf1, seen1 = register(first, model_for(server))
        first.start(wf1, run_id="r")
        w = worker_thread(first)
        assert_eventually(lambda: first.get_run("r").status == "waiting")
        w.stop()
        assert server.calls == 1

        second = make_app()
        wf2, seen2 = register(second, model_for(server))
        second.signal("r", "approve", "ok")
        result = second.run(wf2, run_id="r")
        assert server.calls == 1, "the replay sent a request"

    (live,) = seen1
    (replayed,) = seen2
    assert replayed == live
    assert replayed.usage.cost_usd > 0 and replayed.usage.input_tokens == 90
    assert result["approval"] == "ok" and result["content"] == "Checking."
    assert [c["args"] for c in result["calls"]] == [{"site": "CS-1"}]
    assert llm_step(second, "r").attempt == 1


def test_running_a_completed_run_again_sends_nothing(app) -> None:
    """`app.run` with the id of a completed run returns its recorded result; no request."""
    with OpenAIServer([completion("first answer"), completion("second answer")]) as server:
        ask, _ = asker(app, model_for(server))
        assert app.run(ask, "q", run_id="r") == {"content": "first answer"}
        assert app.run(ask, "q", run_id="r") == {"content": "first answer"}
        assert server.calls == 1


def test_the_same_model_object_works_across_event_loops(make_app) -> None:
    """One `OpenAIChat` used by two `app.run()` calls (each its own event loop) against a
    keep-alive server: the second call does not fail on a connection pooled by the first,
    closed loop; both succeed on their first attempt."""
    with OpenAIServer([completion("one"), completion("two")], keep_alive=True) as server:
        model = model_for(server)
        app = make_app()
        ask, _ = asker(app, model)
        assert app.run(ask, "q", run_id="r1") == {"content": "one"}
        assert app.run(ask, "q", run_id="r2") == {"content": "two"}
        assert server.calls == 2
        assert app.store.load_attempts("r2") == []


# ------------------------------------------------------------------------------------------
# provider errors, retries and the history
# ------------------------------------------------------------------------------------------
def test_429_with_retry_after_is_retried_after_at_least_that_long(app) -> None:
    """A 429 with `Retry-After: 7` is recorded as a failed attempt of type ModelRateLimited
    (status 429), the next attempt is due at least 7 s (engine clock) later, and the retry
    succeeds: two requests, the step completed on attempt 2."""
    with OpenAIServer([error(429, "slow down", headers={"retry-after": "7"}), completion("ok")]) as server:
        ask, seen = asker(app, model_for(server))
        t0 = app.clock.now()
        assert app.run(ask, "q", run_id="r") == {"content": "ok"}
        assert server.calls == 2

    (failed,) = attempts(app, "r")
    assert failed["attempt"] == 1
    assert failed["error"]["type"] == "ModelRateLimited"
    assert failed["error"]["retryable"] is True
    assert (failed["error"]["status"], failed["error"]["retry_after"]) == (429, 7)
    assert "slow down" in failed["error"]["message"]
    assert failed["retry_at"] - failed["finished_at"] >= 7
    assert app.clock.now() - t0 >= 7
    step = llm_step(app, "r")
    assert (step.status, step.attempt) == ("completed", 2)
    assert len(seen) == 1


def test_500_then_success_is_retried(app) -> None:
    """A 500 is a ModelServerError: recorded, retried with backoff, then the answer."""
    with OpenAIServer([error(500, "upstream hiccup"), completion("ok")]) as server:
        ask, _ = asker(app, model_for(server))
        assert app.run(ask, "q", run_id="r") == {"content": "ok"}
        assert server.calls == 2

    (failed,) = attempts(app, "r")
    assert failed["error"]["type"] == "ModelServerError"
    assert failed["retry_at"] - failed["finished_at"] >= MODEL_RETRY.initial_interval
    assert llm_step(app, "r").attempt == 2


def test_500_forever_fails_the_step_after_max_attempts(app) -> None:
    """A provider that keeps answering 500 fails the step after MODEL_RETRY.max_attempts
    attempts, each recorded; the workflow gets ActivityError with cause_type ModelServerError."""
    with OpenAIServer([error(500, "down")]) as server:
        ask, _ = asker(app, model_for(server))
        result = app.run(ask, "q", run_id="r")
        assert server.calls == MODEL_RETRY.max_attempts

    assert result["error"] == "ModelServerError"
    assert result["attempts"] == MODEL_RETRY.max_attempts
    rows = attempts(app, "r")
    assert [r["attempt"] for r in rows] == list(range(1, MODEL_RETRY.max_attempts + 1))
    assert all(r["error"]["type"] == "ModelServerError" for r in rows)
    assert rows[-1]["retry_at"] is None and rows[-1]["error"]["retryable"] is False
    step = llm_step(app, "r")
    assert (step.status, step.attempt) == ("failed", MODEL_RETRY.max_attempts)


def test_500_forever_uncaught_fails_the_run(app) -> None:
    """The same ActivityError left uncaught fails the run, the error naming the cause."""
    with OpenAIServer([error(503, "down")]) as server:
        ask, _ = asker(app, model_for(server), catch=False)
        with pytest.raises(RunFailedError) as info:
            app.run(ask, "q", run_id="r")
        assert server.calls == MODEL_RETRY.max_attempts

    assert app.get_run("r").status == "failed"
    assert info.value.error["type"] == "ActivityError"
    assert "ModelServerError" in info.value.error["message"]


def test_timeout_is_recorded_and_retried(app) -> None:
    """A provider slower than OpenAIChat(timeout=) gives a ModelTimeout attempt; the retry
    gets the answer."""
    slow = Reply(body=completion("late").body, delay=1.0)
    with OpenAIServer([slow, completion("on time")]) as server:
        ask, _ = asker(app, model_for(server, timeout=0.3))
        assert app.run(ask, "q", run_id="r") == {"content": "on time"}
        assert server.calls == 2

    (failed,) = attempts(app, "r")
    assert failed["error"]["type"] == "ModelTimeout"
    assert failed["error"]["retryable"] is True
    assert llm_step(app, "r").attempt == 2


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(Reply(body="not json", status=200), id="text-body"),
        pytest.param(
            Reply(body='{"choices": [', status=200, headers={"content-type": "application/json"}), id="cut-json"
        ),
        pytest.param(Reply(body={"choices": []}), id="no-choices"),
        pytest.param(Reply(body={"choices": [{"index": 0}]}), id="choice-without-message"),
    ],
)
def test_malformed_body_is_a_retryable_bad_response(app, bad) -> None:
    """A 200 whose body is not a chat completion is a ModelBadResponse (retryable), recorded as
    such; the retry gets the answer."""
    with OpenAIServer([bad, completion("ok")]) as server:
        ask, _ = asker(app, model_for(server))
        assert app.run(ask, "q", run_id="r") == {"content": "ok"}
        assert server.calls == 2

    (failed,) = attempts(app, "r")
    assert failed["error"]["type"] == "ModelBadResponse"
    assert failed["error"]["retryable"] is True


def test_empty_response_is_a_bad_response_and_retried(app) -> None:
    """A completion with no text and no tool call is a ModelBadResponse, retried."""
    with OpenAIServer([completion(None), completion("ok")]) as server:
        ask, _ = asker(app, model_for(server), TOOLS)
        assert app.run(ask, "q", run_id="r") == {"content": "ok"}
        assert server.calls == 2

    (failed,) = attempts(app, "r")
    assert failed["error"]["type"] == "ModelBadResponse"
    assert "empty" in failed["error"]["message"]


@pytest.mark.parametrize(
    ("status", "cause"),
    [(400, "ModelBadRequest"), (404, "ModelBadRequest"), (401, "ModelAuthError"), (403, "ModelAuthError")],
)
def test_refused_requests_and_credentials_are_not_retried(app, status, cause) -> None:
    """400/404 (ModelBadRequest) and 401/403 (ModelAuthError) fail the step at once: one
    attempt, one request, the provider's message in the error."""
    with OpenAIServer([error(status, "context_length_exceeded or bad key"), completion("never")]) as server:
        ask, _ = asker(app, model_for(server))
        result = app.run(ask, "q", run_id="r")
        assert server.calls == 1

    assert result["error"] == cause
    assert result["attempts"] == 1
    assert "context_length_exceeded or bad key" in result["message"]
    (row,) = attempts(app, "r")
    assert row["error"]["type"] == cause and row["error"]["status"] == status
    assert row["error"]["retryable"] is False and row["retry_at"] is None


def test_unreachable_endpoint_is_a_retryable_connection_error(app) -> None:
    """Nothing listening at base_url: ModelConnectionError, retried until max_attempts."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    model = OpenAIChat(model=MODEL, base_url=f"http://127.0.0.1:{port}/v1", api_key="test", timeout=2)
    ask, _ = asker(app, model)
    result = app.run(ask, "q", run_id="r")
    assert result == {
        "error": "ModelConnectionError",
        "attempts": MODEL_RETRY.max_attempts,
        "message": result["message"],
    }
    assert all(r["error"]["type"] == "ModelConnectionError" for r in attempts(app, "r"))


# ------------------------------------------------------------------------------------------
# the guard against real model requests
# ------------------------------------------------------------------------------------------
@pytest.fixture
def no_network(monkeypatch) -> list[Any]:
    """Record (and refuse) any DNS lookup or socket connect made during the test."""
    tried: list[Any] = []

    def refuse(*args: Any, **kwargs: Any) -> Any:
        tried.append(args)
        raise OSError("network access in a test that must not touch the network")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    return tried


def test_guard_refuses_a_real_endpoint_before_any_network_access(no_network) -> None:
    """With AGENTFLOW_ALLOW_MODEL_REQUESTS=0, a request to a non-loopback endpoint raises
    ModelRequestsForbidden before anything is sent: no DNS lookup, no connect."""
    model = OpenAIChat(model="gpt-4o", base_url="https://api.openai.com/v1", api_key="sk-not-a-key")
    with pytest.raises(ModelRequestsForbidden, match="AGENTFLOW_ALLOW_MODEL_REQUESTS"):
        asyncio.run(model.agenerate([HumanMessage("hi")]))
    assert no_network == []


def test_the_no_network_fixture_sees_a_real_request(no_network, monkeypatch) -> None:
    """Control for the two tests around it: with model requests allowed, the same call does
    reach for the network (the fixture records it), so an empty record means nothing was tried."""
    monkeypatch.setenv("AGENTFLOW_ALLOW_MODEL_REQUESTS", "1")
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    model = OpenAIChat(model="gpt-4o", base_url="https://api.openai.com/v1", api_key="sk-not-a-key")
    with pytest.raises(ModelConnectionError):
        asyncio.run(model.agenerate([HumanMessage("hi")]))
    assert no_network != []


def test_guard_fails_the_step_once_not_retried(app, no_network) -> None:
    """Through chat(), the forbidden request fails the step after one attempt with cause_type
    ModelRequestsForbidden (retrying cannot help), still without network access."""
    ask, _ = asker(app, OpenAIChat(model="gpt-4o", base_url="https://api.openai.com/v1", api_key="sk-not-a-key"))
    result = app.run(ask, "q", run_id="r")
    assert result["error"] == "ModelRequestsForbidden"
    assert result["attempts"] == 1
    (row,) = attempts(app, "r")
    assert row["error"]["retryable"] is False
    assert no_network == []
