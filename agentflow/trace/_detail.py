"""What one recorded step carried, decoded for people: the request and response of a model call
(its messages, not their hashes), a tool's arguments and its output as JSON, a decision, an
approval. Plain JSON values only: every surface renders them as text (the values came from a
model, a tool or an operator, and are untrusted).
"""

from __future__ import annotations

import json
from typing import Any

from agentflow.store import StepRecord
from agentflow.trace._records import Recorded, error_of, loads, request_of, response_of

TEXT_LIMIT = 20_000  # characters of one message or output kept in a step's detail


def decoded(value: Any) -> Any:
    """A recorded value with JSON text inside decoded (a tool's output is recorded as the JSON
    string of its text, which is itself JSON for most tools)."""
    for _ in range(2):
        if not isinstance(value, str):
            break
        text = value.strip()
        if not text or text[0] not in "{[":
            break
        try:
            value = json.loads(text)
        except ValueError:
            break
    return _clip(value)


def _clip(value: Any) -> Any:
    if isinstance(value, str) and len(value) > TEXT_LIMIT:
        return value[:TEXT_LIMIT] + f" … ({len(value) - TEXT_LIMIT} more characters)"
    return value


def message_view(data: str | None) -> dict[str, Any] | None:
    """A stored message (blob JSON) as {role, name, content, tool_calls, tool_call_id}."""
    if data is None:
        return None
    from agentflow.llm import message_from_blob  # langchain-core: loaded when a model step is shown

    message = message_from_blob(data)
    content = message.content if isinstance(message.content, str) else json.dumps(message.content, default=str)
    calls = [{"name": c["name"], "args": c["args"], "id": c.get("id")} for c in getattr(message, "tool_calls", [])]
    view: dict[str, Any] = {"role": message.type, "name": message.name, "content": decoded(content)}
    if calls:
        view["tool_calls"] = calls
    call_id = getattr(message, "tool_call_id", None)
    if call_id:
        view["tool_call_id"] = call_id
    return view


def model_detail(recorded: Recorded, step: StepRecord) -> dict[str, Any]:
    """A model call: the messages this call added to the conversation (`after`: the call whose
    conversation it extends), the response, and what it used."""
    request, response = request_of(step), response_of(step)
    added = [message_view(recorded.blobs.get(str(ref))) for ref in request.get("messages", [])]
    return {
        "model": response.get("model") or request.get("model") or step.name,
        "extends": request.get("after"),
        "request": [m for m in added if m is not None],
        "response": message_view(recorded.blobs.get(str(response.get("message")))),
        "usage": response.get("usage") or {},
        "finish_reason": response.get("finish_reason"),
        "error": error_of(step),
    }


def step_detail(recorded: Recorded, step: StepRecord) -> dict[str, Any]:
    """What `step` carried, by kind (see the module docstring)."""
    args, result = loads(step.args), loads(step.result) if step.status == "completed" else None
    if step.kind == "llm":
        return model_detail(recorded, step)
    if step.kind == "tool":
        call = args if isinstance(args, dict) else {}
        return {"tool": call.get("tool", step.name), "call_id": call.get("call"), "args": call.get("args", {}),
                "result": decoded(result), "error": error_of(step),
                "idempotency_key": f"{recorded.run_id}:{step.seq}"}  # fmt: skip
    if step.kind == "policy":
        call = args if isinstance(args, dict) else {}
        decision = result if isinstance(result, dict) else {}
        return {"tool": call.get("tool", step.name), "args": call.get("args", {}), "call_id": call.get("call"),
                "effect": decision.get("effect"), "rule": decision.get("rule"), "reason": decision.get("reason"),
                "defer_until": decision.get("defer_until"), "approval_rule": decision.get("approval_rule"),
                "matched": decision.get("matched", []), "pack": decision.get("pack"),
                "pack_hash": decision.get("pack_hash"), "error": error_of(step)}  # fmt: skip
    return {"args": decoded(args), "result": decoded(result), "error": error_of(step)}
