"""Offline chat models for tests and the demo, as langchain-core `BaseChatModel`s.

`ScriptedChatModel` answers from a script: a list of responses (the n-th model turn of a
conversation gets the n-th response, so a resumed run gets the same answer as the first time) or
a function of the conversation. `RunbookChatModel` follows a runbook: it reads the task and the
tool results in the conversation and emits the next real tool call, then a final answer.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import ConfigDict, Field

from agentflow.llm import count_messages, count_text

Response = AIMessage | str | Mapping[str, Any]


def _as_message(value: Response | BaseMessage, turn: int = 0) -> AIMessage:
    if isinstance(value, AIMessage):
        return value
    if isinstance(value, BaseMessage):
        return AIMessage(content=value.content)
    if isinstance(value, str):
        return AIMessage(content=value)
    calls = [
        {"name": c["name"], "args": c.get("args", {}), "id": c.get("id") or f"call-{turn}-{i}", "type": "tool_call"}
        for i, c in enumerate(value.get("tool_calls", []))
    ]
    return AIMessage(content=value.get("content", ""), tool_calls=calls)


def _with_usage(message: AIMessage, messages: Sequence[BaseMessage], model: str) -> AIMessage:
    prompt = count_messages(messages, model).tokens
    text = message.content if isinstance(message.content, str) else json.dumps(message.content)
    output = count_text(text + json.dumps([c["args"] for c in message.tool_calls]), model).tokens
    return message.model_copy(
        update={
            "usage_metadata": {"input_tokens": prompt, "output_tokens": output, "total_tokens": prompt + output},
            "response_metadata": {**message.response_metadata, "model_name": model, "finish_reason": "stop"},
        }
    )


class _OfflineChatModel(BaseChatModel):
    """Shared parts: tool binding and usage counted with tiktoken."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    model_name: str = "offline"

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        formatted = [convert_to_openai_tool(t) for t in tools]
        return self.bind(tools=formatted, **kwargs)

    def _answer(self, messages: list[BaseMessage], tools: list[dict[str, Any]]) -> Response:
        raise NotImplementedError

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        turn = sum(1 for m in messages if isinstance(m, AIMessage))
        answer = _as_message(self._answer(messages, kwargs.get("tools") or []), turn)
        message = _with_usage(answer, messages, self.model_name)
        return ChatResult(generations=[ChatGeneration(message=message)])


class ScriptedChatModel(_OfflineChatModel):
    """Answers from a script.

    Args:
        responses: the n-th model turn (counted as the AI messages already in the conversation)
            gets the n-th response: an AIMessage, a string, or {"content": ..., "tool_calls":
            [{"name": ..., "args": {...}}]}. Past the end, the last one repeats.
        respond: instead, a function of the conversation returning a response.
    """

    model_name: str = "scripted"
    responses: list[Any] = Field(default_factory=list)
    respond: Callable[[list[BaseMessage]], Any] | None = None

    @property
    def _llm_type(self) -> str:
        return "agentflow-scripted"

    def _answer(self, messages: list[BaseMessage], tools: list[dict[str, Any]]) -> Response:
        if self.respond is not None:
            return self.respond(messages)  # type: ignore[no-any-return]
        if not self.responses:
            return ""
        turn = sum(1 for m in messages if isinstance(m, AIMessage))
        return self.responses[min(turn, len(self.responses) - 1)]  # type: ignore[no-any-return]


_SITE = re.compile(r"\b(CS-\d+)\b", re.I)


class RunbookChatModel(_OfflineChatModel):
    """A deterministic model that follows a NOC runbook with real tool calls.

    The runbook is a list of steps `{"tool": name, "args": {...}, "goal": ...}`; argument values
    may be templates filled from the task and earlier tool results: `{site}` (a cell-site id found
    in the task), `{result.<tool>.<field>}` (a field of that tool's JSON result). A step whose tool
    is not offered is skipped. After the last step the model answers with a summary of the results.

    A task naming several sites gets the runbook once per site, in the order named (a call counts
    for the site its `site` argument names, or, without one, the site its arguments mention). A
    step may end its site's pass early: `"stop_if": {"<field>": value}` on its result (e.g. a
    diagnosis finding no cause), with `"stop_say"` (`{site}` filled in) as that site's answer line.
    With its call the model says the step's `"say"` and `"because"` (templates filled in anywhere
    in the text: the reason it gives).

    Plan-and-execute: offered a `submit_plan` tool, it submits the runbook steps not yet done as
    the plan. Asked to carry out a step (a user turn after the plan), it makes the next runbook
    call, and once that call's result is in, reports it in a sentence.
    """

    model_name: str = "runbook"
    runbook: list[dict[str, Any]] = Field(default_factory=list)

    @property
    def _llm_type(self) -> str:
        return "agentflow-runbook"

    def _answer(self, messages: list[BaseMessage], tools: list[dict[str, Any]]) -> Response:
        offered = {t["function"]["name"] for t in tools if "function" in t}
        done = [m.name or "" for m in messages if isinstance(m, ToolMessage)]
        if PLAN_TOOL in offered:
            steps = [
                {"goal": s.get("goal") or s.get("say") or f"run {s['tool']}", "tool": s["tool"]}
                for s in self.runbook
                if s["tool"] not in done
            ]
            return {"tool_calls": [{"name": PLAN_TOOL, "args": {"steps": steps}, "id": f"rb-plan-{len(done)}"}]}
        if _planned(messages) and isinstance(messages[-1], ToolMessage):
            return f"Step done: {messages[-1].name} returned {_brief(messages[-1].content)}"
        task = next((m.content for m in messages if isinstance(m, HumanMessage) and isinstance(m.content, str)), "")
        sites = list(dict.fromkeys(m.group(1).upper() for m in _SITE.finditer(task))) or [""]
        calls = _tool_calls(messages)
        lines = []
        for site in sites:
            # One site: every call is its own (the runbook as written); several: each its own.
            results = _tool_results(calls if len(sites) == 1 else [c for c in calls if _names(c, site)])
            context = {"site": site}
            for step in self.runbook:
                name = step["tool"]
                if name in results and _stops(step, results[name]):
                    lines.append(str(step.get("stop_say", "{site}: stopped after " + name)).replace("{site}", site))
                    break
                if name not in offered or name in results:
                    continue
                args = {k: _fill(v, context, results) for k, v in step.get("args", {}).items()}
                return {
                    "content": _said(step, context, results),
                    "tool_calls": [{"name": name, "args": args, "id": f"rb-{len(done)}"}],
                }
            else:
                # The last result that summarizes itself (e.g. a monitoring report), else what ran.
                said = [
                    v["summary"] for v in results.values() if isinstance(v, dict) and isinstance(v.get("summary"), str)
                ]
                lines.append(said[-1] if said else "steps run: " + ", ".join(results))
        return f"Runbook complete for {', '.join(s for s in sites if s) or 'the task'}. {' '.join(lines)}"


PLAN_TOOL = "submit_plan"


def _planned(messages: Sequence[BaseMessage]) -> bool:
    return any(c["name"] == PLAN_TOOL for m in messages if isinstance(m, AIMessage) for c in m.tool_calls)


def _brief(content: Any) -> str:
    text = content if isinstance(content, str) else json.dumps(content)
    return text if len(text) <= 160 else text[:157] + "..."


def _tool_calls(messages: Sequence[BaseMessage]) -> list[tuple[str, dict[str, Any], Any]]:
    """(tool, args, decoded result) of each answered tool call, in order."""
    asked: dict[str, tuple[str, dict[str, Any]]] = {}
    for m in messages:
        if isinstance(m, AIMessage):
            asked.update({c["id"] or "": (c["name"], dict(c["args"])) for c in m.tool_calls})
    out = []
    for m in messages:
        if isinstance(m, ToolMessage):
            name, args = asked.get(m.tool_call_id, (m.name or "", {}))
            try:
                result = json.loads(m.content) if isinstance(m.content, str) else m.content
            except ValueError:
                result = m.content
            out.append((m.name or name, args, result))
    return out


def _tool_results(calls: Sequence[tuple[str, dict[str, Any], Any]]) -> dict[str, Any]:
    return {name: result for name, _, result in calls}


def _names(call: tuple[str, dict[str, Any], Any], site: str) -> bool:
    """Whether a call is about `site`: its `site` argument, or (none) its arguments mention it."""
    target = str(call[1].get("site", "")).strip().upper()
    return target == site if target else site in json.dumps(call[1]).upper()


def _stops(step: Mapping[str, Any], result: Any) -> bool:
    wanted = step.get("stop_if")
    if not isinstance(wanted, Mapping) or not wanted or not isinstance(result, dict):
        return False
    return all(result.get(k) == v for k, v in wanted.items())


def _said(step: Mapping[str, Any], context: Mapping[str, Any], results: Mapping[str, Any]) -> str:
    """What the model says with a step's call: its `say`, then its `because` with `{site}` and
    `{result.<tool>.<field>}` filled in wherever they appear (the reason an approver reads)."""
    because = re.sub(r"\{([A-Za-z0-9_.]+)\}", lambda m: str(_fill("{" + m.group(1) + "}", context, results)),
                     str(step.get("because", "")))  # fmt: skip
    return " ".join(part for part in (str(step.get("say", "")), because) if part)


def _fill(value: Any, context: Mapping[str, Any], results: Mapping[str, Any]) -> Any:
    if not isinstance(value, str) or not value.startswith("{") or not value.endswith("}"):
        return value
    path = value[1:-1].split(".")
    if path[0] == "result" and len(path) >= 2:
        current: Any = results.get(path[1])
        for key in path[2:]:
            current = current.get(key) if isinstance(current, dict) else None
        return current
    return context.get(path[0], value)
