"""The conversation a run's model saw, rebuilt from content-addressed message blobs.

A model-call step records its request as message hashes; when it extends the previous call's
conversation it records only the new hashes and `after` (that call's seq). Following `after`
back rebuilds a request in full without the database ever storing it twice.
"""

from __future__ import annotations

import json
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, ToolMessage

from agentflow.errors import CorruptRecordError
from agentflow.llm import message_from_blob
from agentflow.store import StepRecord
from agentflow.trace._records import Recorded, request_of, response_of


def request_refs(recorded: Recorded, step: StepRecord) -> list[str]:
    """The message hashes of a model-call step's full request (following `after` links)."""
    by_seq = {s.seq: s for s in recorded.steps if s.kind == "llm"}
    chain: list[list[str]] = []
    current: StepRecord | None = step
    seen: set[int] = set()
    while current is not None and current.seq not in seen:
        seen.add(current.seq)
        request = request_of(current)
        chain.append(list(request.get("messages", [])))
        after = request.get("after")
        current = by_seq.get(after) if isinstance(after, int) else None
        if isinstance(after, int) and current is None:
            raise CorruptRecordError(
                f"model step {step.seq} of run {recorded.run_id} extends step {after}, which is not a model step",
                run_id=recorded.run_id,
                seq=step.seq,
            )
    return [ref for part in reversed(chain) for ref in part]


def final_conversation(recorded: Recorded) -> list[tuple[int, BaseMessage]]:
    """(seq, message) of the last model call's request plus its response, oldest first.

    `seq` is the model step that produced a message (for the model's own messages) or the first
    model step whose request carried it."""
    calls = [s for s in recorded.steps if s.kind == "llm" and s.args]
    if not calls:
        return []
    last = calls[-1]
    produced = {response_of(s).get("message"): s.seq for s in calls}
    introduced: dict[str, int] = {}
    for call in calls:
        for ref in request_of(call).get("messages", []):
            introduced.setdefault(ref, call.seq)
    refs = request_refs(recorded, last)
    answer = response_of(last).get("message")
    if isinstance(answer, str):
        refs.append(answer)
    return [(produced.get(ref) or introduced.get(ref, last.seq), _message(recorded, ref)) for ref in refs]


def _message(recorded: Recorded, ref: str) -> BaseMessage:
    data = recorded.blobs.get(ref)
    if data is None:
        raise CorruptRecordError(
            f"message {ref} of run {recorded.run_id} is referred to but not stored", run_id=recorded.run_id
        )
    return message_from_blob(data)


def message_row(seq: int, index: int, message: BaseMessage) -> dict[str, Any]:
    """One row of `Trace.messages`."""
    calls = message.tool_calls if isinstance(message, AIMessage) else []
    return {
        "index": index,
        "seq": seq,
        "role": message.type,
        "content": text_of(message),
        "tool_calls": [{"id": c.get("id"), "name": c["name"], "args": c["args"]} for c in calls],
        "tool_call_id": message.tool_call_id if isinstance(message, ToolMessage) else None,
        "name": message.name,
    }


def text_of(message: BaseMessage) -> str:
    """A message's content as text (structured content as JSON)."""
    content = message.content
    return content if isinstance(content, str) else json.dumps(content, ensure_ascii=False, default=str)
