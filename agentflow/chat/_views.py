"""What a chat shows, built from the store: run summaries, one event per finished step, and
approval cards, as plain data (dicts of JSON values; the `RunSummary`, `Event` and `Card` of
`agentflow/server/API.md`). Model words and tool output are passed through as `text` marked
untrusted; nothing here turns them into markup (every surface renders them as plain text)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from agentflow.chat._context import Chat
from agentflow.chat._text import utc
from agentflow.errors import CorruptRecordError
from agentflow.store import RunRecord, StepRecord

TEXT_LIMIT = 8000  # characters of one tool output or model message sent to a chat
_HIDDEN = {"now", "uuid", "random"}  # determinism bookkeeping, not conversation


def json_or_text(text: str | None) -> Any:
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def task_of(run: RunRecord) -> str:
    """The task a run was started on (the first argument of an agent workflow)."""
    raw = json_or_text(run.input)
    if isinstance(raw, list) and raw and isinstance(raw[0], list) and raw[0] and isinstance(raw[0][0], str):
        return raw[0][0]
    return ""


def run_summary(
    chat: Chat, run: RunRecord, *, open_approvals: int | None = None,
    totals: tuple[int, int, float, int] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """`RunSummary` of API.md. `totals`: the run's (steps, tokens, cost, open approvals) when
    already read (`EventStore.run_totals`, for many runs at once); else they are read here."""
    output = json_or_text(run.output) if run.status == "completed" else None
    outcome = output if isinstance(output, dict) else {}
    if totals is not None:
        steps, tokens, cost, open_approvals = totals
    else:
        # The agent layer loads langchain-core: only when a summary is built, so surfaces that
        # only render (the terminal chat) start fast.
        from agentflow.agent import usage

        used = usage(chat.store, run_id=run.id)
        steps, tokens, cost = chat.store.count_steps(run.id), used.input_tokens + used.output_tokens, used.cost_usd
        if open_approvals is None:
            open_approvals = chat.approvals.count_open(run.id)
    meta = run.meta_dict()
    return {
        "id": run.local_id,  # what the run's tenant calls it (ids are per tenant)
        "status": run.status,
        "task": task_of(run),
        "agent": meta.get("agent"),
        "requested_by": meta.get("requested_by"),
        "tenant": run.tenant,
        "created_at": run.created_at,
        "updated_at": run.updated_at,
        "waiting_on": waiting_text(run) if run.status == "waiting" else None,
        "answer": outcome.get("answer") if isinstance(outcome.get("answer"), str) else None,
        "outcome": outcome.get("status") if isinstance(outcome.get("status"), str) else None,
        "error": run.error_dict().get("message") if run.status in ("failed", "cancelled") else None,
        "tokens": tokens,
        "cost_usd": round(cost, 6),
        "steps": steps,
        "open_approvals": open_approvals,
    }


def waiting_text(run: RunRecord) -> str | None:
    """What a parked run waits for, in words (`waiting_on` is the engine's JSON)."""
    raw = json_or_text(run.waiting_on)
    if not isinstance(raw, dict):
        return run.waiting_on
    parts = []
    for name in raw.get("signals", []):
        kind, _, ref = str(name).partition(":")
        parts.append(f"approval {ref}" if kind == "approval" else f"signal {name}")
    if raw.get("children"):
        parts.append(f"{len(raw['children'])} child run(s)")
    timers = [t for t in raw.get("timers", []) if isinstance(t, int | float)]
    if timers and not raw.get("signals"):
        parts.append(f"a timer until {utc(min(timers))}")
    elif timers:
        parts.append(f"(expires {utc(min(timers))})")
    return " ".join(parts) or None


def _clip(text: str | None) -> str | None:
    if text is None or len(text) <= TEXT_LIMIT:
        return text
    return text[:TEXT_LIMIT] + f"\n… ({len(text) - TEXT_LIMIT} more characters)"


def _tool_text(result: str | None) -> str | None:
    """A tool step's result is the JSON of the tool's text output: show that text."""
    value = json_or_text(result)
    return value if isinstance(value, str) else (json.dumps(value, ensure_ascii=False) if value is not None else None)


def events(chat: Chat, steps: Iterable[StepRecord]) -> list[dict[str, Any]]:
    """`Event`s of API.md for the finished steps among `steps`, in seq order."""
    done = [s for s in steps if s.status in ("completed", "failed") and s.kind not in _HIDDEN]
    refs = [
        r
        for s in done
        if s.kind == "llm"
        for r in [(json_or_text(s.result) or {}).get("message")]
        if isinstance(r, str)
    ]
    blobs = chat.store.get_blobs(refs) if refs else {}
    return [_event(s, blobs) for s in sorted(done, key=lambda s: s.seq)]


def _event(step: StepRecord, blobs: dict[str, str]) -> dict[str, Any]:
    base: dict[str, Any] = {
        "seq": step.seq,
        "kind": "step",
        "name": step.name,
        "status": step.status,
        "at": step.finished_at or step.started_at,
        "title": f"{step.kind} {step.name}",
        "text": None,
        "untrusted": False,
        "data": {},
    }
    builder = _BUILDERS.get(step.kind)
    if builder is not None:
        try:
            base.update(builder(step, blobs))
        except (CorruptRecordError, ValueError, TypeError, AttributeError, KeyError) as exc:
            # A record this view cannot read is still shown, not dropped: the history is the truth.
            base.update(title=f"{step.kind} {step.name} (unreadable: {type(exc).__name__})")
    if step.status == "failed":
        base["title"] += " — failed"
        base["text"] = base["text"] or _clip(_error_text(step.error))
        base["untrusted"] = True
    return base


def _error_text(error: str | None) -> str | None:
    """A failed step's error as `Type: message` (the recorded traceback stays in the history,
    for `agentflow runs history`; a chat shows what went wrong, not the worker's stack)."""
    value = json_or_text(error)
    if isinstance(value, dict) and "message" in value:
        return f"{value.get('type', 'Error')}: {value['message']}"
    return error


def _model(step: StepRecord, blobs: dict[str, str]) -> dict[str, Any]:
    result = json_or_text(step.result) or {}
    u = result.get("usage", {})
    ref = result.get("message")
    text, calls = None, []
    if isinstance(ref, str) and ref in blobs:
        from agentflow.llm import message_from_blob  # langchain-core: loaded when a model step is shown

        message = message_from_blob(blobs[ref])
        content = message.content
        text = content if isinstance(content, str) else json.dumps(content, ensure_ascii=False)
        calls = [{"name": c["name"], "args": c["args"]} for c in getattr(message, "tool_calls", [])]
    return {
        "kind": "model",
        "title": f"model {step.name}" + (f" → {', '.join(c['name'] for c in calls)}" if calls else ""),
        "text": _clip(text) or None,
        "untrusted": True,
        "data": {
            "tool_calls": calls,
            "tokens_in": u.get("input_tokens"),
            "tokens_out": u.get("output_tokens"),
            "cost_usd": u.get("cost_usd"),
        },
    }


def _tool(step: StepRecord, blobs: dict[str, str]) -> dict[str, Any]:
    args = (json_or_text(step.args) or {}).get("args", {})
    return {
        "kind": "tool",
        "title": f"tool {step.name}",
        "text": _clip(_tool_text(step.result)),
        "untrusted": True,
        "data": {"args": args, "error": _error_text(step.error)},
    }


def _policy(step: StepRecord, blobs: dict[str, str]) -> dict[str, Any]:
    decision = json_or_text(step.result) or {}
    call = json_or_text(step.args) or {}
    effect, rule = decision.get("effect"), decision.get("rule")
    until = decision.get("defer_until")
    title = f"policy {effect} ({rule}) for {call.get('tool', step.name)}"
    if until:
        title += f", until {utc(until)}"
    return {
        "kind": "policy",
        "title": title,
        "text": None,
        "data": {
            "tool": call.get("tool", step.name),
            "args": call.get("args", {}),
            "effect": effect,
            "rule": rule,
            "reason": decision.get("reason") or "",
            "defer_until": until,
        },
    }


def _approval(step: StepRecord, blobs: dict[str, str]) -> dict[str, Any]:
    body = json_or_text(step.result) or {}
    what = {"read": "approval decided", "expire": "approval expired"}.get(step.name, "approval requested")
    return {
        "kind": "approval",
        "title": f"{what}: {body.get('status')} ({body.get('tool', '')})",
        "data": {"approval_id": body.get("id"), "status": body.get("status")},
    }


def _wait(step: StepRecord, blobs: dict[str, str]) -> dict[str, Any]:
    until = json_or_text(step.args)
    when = datetime.fromisoformat(until).timestamp() if isinstance(until, str) else step.wake_at
    return {"kind": "wait", "title": f"waited until {utc(when)}" if when else "waited", "data": {"until": when}}


def _signal(step: StepRecord, blobs: dict[str, str]) -> dict[str, Any]:
    return {"kind": "signal", "title": f"signal {step.name}", "data": {"payload": json_or_text(step.result)}}


def _plan(step: StepRecord, blobs: dict[str, str]) -> dict[str, Any]:
    steps = (json_or_text(step.result) or {}).get("steps", [])
    return {
        "kind": "plan",
        "title": f"plan {step.name}: " + " → ".join(str(s.get("tool") or "?") for s in steps),
        "text": "\n".join(f"{i + 1}. {s.get('goal', '')}" for i, s in enumerate(steps)) or None,
        "untrusted": True,
        "data": {"steps": [{"tool": s.get("tool"), "goal": s.get("goal")} for s in steps]},
    }


_BUILDERS = {"llm": _model, "tool": _tool, "policy": _policy, "approval": _approval, "sleep": _wait,
             "signal": _signal, "plan": _plan}  # fmt: skip
