"""Any langchain-core `BaseChatModel` works in an `Agent` unchanged (wrapped automatically), or
the Agent refuses it when it is built, with a `ConfigurationError` naming the model's class and
the fix: never an AttributeError on the worker, at the first model call."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool

import agentflow.llm as llm
from agentflow import App
from agentflow.agent import Agent
from agentflow.errors import ConfigurationError

CALLS: list[str] = []


@llm.tool(side_effect="none", target="site")
def get_kpis(site: str) -> dict[str, float]:
    """Read the KPIs of a cell site."""
    CALLS.append(site)
    return {"drop_rate_pct": 2.9}


class PlainChat(BaseChatModel):
    """The least a langchain-core chat model implements: `_generate` and `_llm_type`; no
    `bind_tools` (BaseChatModel's raises NotImplementedError), no usage metadata, no name."""

    answer: str = "CS-101 looks fine."

    @property
    def _llm_type(self) -> str:
        return "plain-chat"

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        # Only ToolChat is ever given tools (bound by its bind_tools): it calls the first one once.
        tools = kwargs.get("tools") or []
        message = AIMessage(content=self.answer)
        if tools and not any(m.type == "tool" for m in messages):
            call = {"name": tools[0]["function"]["name"], "args": {"site": "CS-101"}, "id": "c1", "type": "tool_call"}
            message = AIMessage(content="", tool_calls=[call])
        return ChatResult(generations=[ChatGeneration(message=message)])


class ToolChat(PlainChat):
    """A minimal chat model with tool calling: `bind_tools` binds the schemas."""

    def bind_tools(
        self, tools: Sequence[dict[str, Any] | type | BaseTool], **kwargs: Any
    ) -> Runnable[LanguageModelInput, AIMessage]:
        return self.bind(tools=list(tools), **kwargs)


@pytest.fixture(autouse=True)
def _clear() -> Iterator[None]:
    CALLS.clear()
    yield


@pytest.fixture
def local_models(monkeypatch: pytest.MonkeyPatch) -> None:
    # The suite forbids model requests from chat models outside langchain's and agentflow's
    # offline modules; PlainChat/ToolChat (defined here) answer in-process and send nothing.
    monkeypatch.setenv("AGENTFLOW_ALLOW_MODEL_REQUESTS", "1")


def llm_steps(app: App, run_id: str) -> list[dict[str, Any]]:
    return [
        {"name": s.name, **json.loads(s.result or "{}")}
        for s in app.history(run_id)
        if s.kind == "llm" and s.status == "completed"
    ]


def test_generic_fake_chat_model_without_a_name_answers(app: App) -> None:
    """The issue's case: GenericFakeChatModel has `name=None` and no `context_window`; it was
    accepted, then failed on the worker with AttributeError in llm/_tokens.py."""
    fake = GenericFakeChatModel(messages=iter([AIMessage(content="all good")]))
    agent = Agent(name="fake", model=fake, tools=[])
    assert isinstance(agent.model, llm.LangChainChat) and agent.model.name == "generic-fake-chat-model"
    wf = agent.register(app)
    out = app.run(wf, "CS-101 drop rate?", run_id="r")
    assert (out.status, out.answer) == ("answered", "all good")
    [step] = llm_steps(app, "r")
    assert step["name"] == "generic-fake-chat-model"
    # No usage from the model: counted with tiktoken (cl100k_base); no price for it: cost 0, said so.
    usage = step["usage"]
    assert usage["source"] == "estimated" and usage["input_tokens"] > 0 and usage["output_tokens"] > 0
    assert (usage["cost_usd"], usage["cost_source"]) == (0.0, "unknown")


def test_generic_fake_chat_model_with_a_name_answers(app: App) -> None:
    """With `name=` set it failed with "'GenericFakeChatModel' object has no attribute 'context_window'"."""
    fake = GenericFakeChatModel(messages=iter([AIMessage(content="done")]), name="my-fake")
    agent = Agent(name="fake", model=fake, tools=[])
    out = app.run(agent.register(app), "task", run_id="r")
    assert (out.status, out.answer) == ("answered", "done")
    assert [s["name"] for s in llm_steps(app, "r")] == ["my-fake"]


@pytest.mark.parametrize("mode", ["react", "plan"])
def test_a_model_without_tool_calling_is_refused_when_the_agent_is_built(mode: str) -> None:
    """No bind_tools: refused at Agent(...), naming the class and the two fixes."""
    fake = GenericFakeChatModel(messages=iter([]))
    with pytest.raises(ConfigurationError) as caught:
        Agent(name="fake", model=fake, tools=[get_kpis], mode=mode)  # type: ignore[arg-type]
    text = str(caught.value)
    assert "agent fake" in text and "GenericFakeChatModel" in text
    assert "does not support tool calling" in text and "tools=[]" in text
    with pytest.raises(ConfigurationError, match=r"PlainChat does not support tool calling"):
        Agent(name="plain", model=PlainChat(), tools=[get_kpis])
    if mode == "plan":  # plan mode offers the model its plan tool, even with no tools of the agent's
        with pytest.raises(ConfigurationError, match="PlainChat"):
            Agent(name="plain", model=PlainChat(), tools=[], mode="plan")


def test_a_minimal_chat_model_without_bind_tools_answers_with_no_tools(app: App, local_models: None) -> None:
    agent = Agent(name="plain", model=PlainChat(), tools=[])
    assert agent.model.name == "plain-chat" and agent.model.context_window is None
    out = app.run(agent.register(app), "CS-101?", run_id="r")
    assert (out.status, out.answer) == ("answered", "CS-101 looks fine.")


def test_a_minimal_chat_model_with_bind_tools_calls_the_tools(app: App, local_models: None) -> None:
    """A tool-calling BaseChatModel is used unchanged: its tool call runs as a recorded tool step."""
    agent = Agent(name="tools", model=ToolChat(), tools=[get_kpis])
    out = app.run(agent.register(app), "CS-101?", run_id="r")
    assert out.status == "answered" and CALLS == ["CS-101"]
    assert [s.kind for s in app.history("r") if s.kind in ("llm", "tool")] == ["llm", "tool", "llm"]


def test_the_model_profile_gives_the_context_window_and_tool_support() -> None:
    windowed = llm.as_chat_model(ToolChat(profile={"max_input_tokens": 4096}))
    assert windowed.context_window == 4096
    with pytest.raises(ConfigurationError, match="its profile says so"):
        llm.as_chat_model(ToolChat(profile={"tool_calling": False}), tools=[get_kpis])
    assert llm.as_chat_model(ToolChat(profile={"tool_calling": False}), tools=[]).name == "plain-chat"


def test_what_is_not_a_chat_model_is_refused_with_the_fix() -> None:
    with pytest.raises(ConfigurationError, match=r"builtins.str is not a chat model: pass a langchain-core"):
        Agent(name="x", model="gpt-4o-mini", tools=[])  # type: ignore[arg-type]

    class Nameless:
        name = ""
        context_window = None

        async def agenerate(self, messages: Any, tools: Any = (), *, max_tokens: int | None = None) -> Any: ...

    with pytest.raises(ConfigurationError, match="needs a non-empty name"):
        Agent(name="x", model=Nameless(), tools=[])
    adapter = llm.LangChainChat(PlainChat(), name="mine")
    assert llm.as_chat_model(adapter) is adapter
