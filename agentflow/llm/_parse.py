"""Turning provider output into langchain-core messages, and recovering fenced tool calls."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from typing import Any

from langchain_core.messages import AIMessage, InvalidToolCall, ToolCall
from langchain_core.tools import BaseTool

from agentflow.llm._tools import validate_tool_args


def parse_tool_call(call_id: str | None, name: str | None, arguments: Any) -> ToolCall | InvalidToolCall:
    """A provider tool call -> a valid ToolCall, or an InvalidToolCall saying what is wrong."""
    cid = call_id or f"call-{uuid.uuid4().hex[:12]}"
    raw = arguments if isinstance(arguments, str) else json.dumps(arguments)
    if not name:
        return InvalidToolCall(name=name, args=raw, id=cid, error="the tool call has no name", type="invalid_tool_call")
    if isinstance(arguments, dict):
        return ToolCall(name=name, args=arguments, id=cid, type="tool_call")
    if arguments is not None and not isinstance(arguments, str):
        return InvalidToolCall(
            name=name, args=raw, id=cid, type="invalid_tool_call",
            error=f"arguments must be a JSON object, got {type(arguments).__name__}",
        )  # fmt: skip
    try:
        args = json.loads(arguments) if arguments not in (None, "") else {}
    except ValueError as exc:
        return InvalidToolCall(
            name=name, args=raw, id=cid, error=f"arguments are not valid JSON: {exc}", type="invalid_tool_call"
        )
    if not isinstance(args, dict):
        return InvalidToolCall(
            name=name, args=raw, id=cid, error="arguments must be a JSON object", type="invalid_tool_call"
        )
    return ToolCall(name=name, args=args, id=cid, type="tool_call")


_FENCE = re.compile(r"```[ \t]*(?:json|tool_call|tool|javascript)?[ \t]*\n?(.*?)```", re.S | re.I)
_TAGGED = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.S)


def _candidates(text: str) -> list[Any]:
    found: list[Any] = []
    for block in [*_FENCE.findall(text), *_TAGGED.findall(text)]:
        try:
            value = json.loads(block.strip())
        except ValueError:
            continue
        found.extend(value if isinstance(value, list) else [value])
    return found


def _shape(obj: Any) -> tuple[str | None, Any] | None:
    """(name, arguments) of the usual shapes small models write, or None."""
    if not isinstance(obj, dict):
        return None
    if isinstance(obj.get("function"), dict):
        obj = obj["function"]
    name = obj.get("name") or obj.get("tool") or obj.get("tool_name")
    for key in ("arguments", "args", "parameters", "input"):
        if key in obj:
            return name, obj[key]
    return (name, {}) if name else None


def recover_tool_calls(
    message: AIMessage, tools: Sequence[BaseTool], *, strict: bool = True, id_prefix: str = "recovered"
) -> tuple[AIMessage, int]:
    """Recover tool calls a model wrote as fenced JSON in its text instead of native calls.

    Only blocks that name a known tool count. With `strict` (the default), only when the text is
    nothing but such blocks: a model quoting a block ("I did NOT run this: ...") is not calling
    it. A recovered call whose arguments fail the tool's schema becomes an invalid tool call
    (never executed). Ids are `<id_prefix>-<n>`: pass something unique per model call. Returns
    the message and how many calls were recovered (valid or not)."""
    if message.tool_calls or message.invalid_tool_calls or not tools or not isinstance(message.content, str):
        return message, 0
    if strict and _TAGGED.sub("", _FENCE.sub("", message.content)).strip():
        return message, 0
    by_name = {t.name: t for t in tools}
    valid: list[ToolCall] = []
    invalid: list[InvalidToolCall] = []
    for i, obj in enumerate(_candidates(message.content)):
        shaped = _shape(obj)
        if shaped is None or shaped[0] not in by_name:
            continue
        name = str(shaped[0])
        call = parse_tool_call(f"{id_prefix}-{i}", name, shaped[1])
        if call.get("type") != "tool_call":
            invalid.append(call)  # type: ignore[arg-type]
            continue
        args = call.get("args")
        error = validate_tool_args(by_name[name], args)
        if error is None:
            valid.append(call)  # type: ignore[arg-type]
        else:
            invalid.append(
                InvalidToolCall(
                    name=name, args=json.dumps(args), id=call.get("id"), error=error, type="invalid_tool_call"
                )
            )
    count = len(valid) + len(invalid)
    if not count:
        return message, 0
    recovered = message.model_copy(
        update={
            "tool_calls": valid,
            "invalid_tool_calls": invalid,
            "response_metadata": {**message.response_metadata, "agentflow_recovered_tool_calls": count},
        }
    )
    return recovered, count


# Markers small models and chat templates use for tool calls (Hermes/Qwen, Llama, Mistral, ...).
_CALL_MARKERS = re.compile(
    r"</?tool_call>|</?tools>|</?function(?:_call)?[\s>=]|\[TOOL_CALLS\]|<\|python_tag\|>|<\|tool_call\|>", re.I
)
_JSON_KEYS = re.compile(r"[\"']\s*(?:name|tool|tool_name|function|arguments|args|parameters)\s*[\"']\s*:", re.I)


def malformed_tool_call(message: AIMessage, tools: Sequence[BaseTool]) -> str | None:
    """Why a reply with no tool call looks like a failed attempt at one (None when it reads as
    an answer): a tool-call tag or marker, or JSON-ish text that names a known tool next to
    `name` / `arguments` keys (`{{"name": "apply_change", ...}}}}`, prose around a fenced
    block). Such text must not be taken as the agent's answer: the agent sends it back as an
    invalid call."""
    if message.tool_calls or message.invalid_tool_calls or not isinstance(message.content, str):
        return None
    text = message.content
    marker = _CALL_MARKERS.search(text)
    if marker:
        return f"the reply contains the tool-call marker {marker.group(0)!r} but no tool call could be read from it"
    named = [t.name for t in tools if re.search(rf"[\"'`]{re.escape(t.name)}[\"'`]", text)]
    if named and "{" in text and _JSON_KEYS.search(text):
        return (
            f"the reply looks like a call of {named[0]!r} written as text, but it is not a valid tool call "
            "(malformed JSON, or text around it)"
        )
    return None
