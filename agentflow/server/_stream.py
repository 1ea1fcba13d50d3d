"""A run's live updates as server-sent events, read from the store.

The stream polls the history rather than listening to the worker, so it works whoever drives
the run (this process, another worker, a worker on another machine) and a reconnecting client
loses nothing: step events carry their seq as the event id, and `Last-Event-ID` resumes after
it. Steps are sent in seq order and only up to the first unfinished one, so a step that
finishes late (parallel tool calls) is never skipped by a client's cursor.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic_core import to_json
from starlette.requests import Request

from agentflow.approvals import ApprovalRequest, Principal
from agentflow.chat import Chat, events, run_summary
from agentflow.errors import UnknownRunError
from agentflow.store import StepRecord

#: How a request is shown on the stream: (request, the run's history) -> Card.
MakeCard = Callable[[ApprovalRequest, list[StepRecord]], dict[str, Any]]

KEEPALIVE = 15.0  # seconds: proxies close idle connections, browsers do not notice it otherwise


@dataclass
class _Cursor:
    after: int
    cards: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    status: str | None = None


def _message(event: str, data: Any, event_id: int | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    # Encoded as the routes' answers are (pydantic): NaN and Infinity, which a tool's output may
    # hold (`json.dumps` writes them), become null; a browser's JSON.parse refuses the whole event
    # otherwise, and a card with such evidence would never show on the stream.
    body = to_json(data, fallback=str, inf_nan_mode="null").decode()
    return f"{head}event: {event}\ndata: {body}\n\n"


def _poll(chat: Chat, run_id: str, viewer: Principal, cursor: _Cursor, make_card: MakeCard) -> tuple[list[str], bool]:
    """The messages due since `cursor` (which it advances), and whether the stream is over."""
    out: list[str] = []
    run = chat.store.find_run(run_id, tenant=viewer.tenant)
    if run is None:  # own_run checked it before the stream began; a run is never deleted
        raise UnknownRunError(f"no run {run_id} in tenant {viewer.tenant}", run_id=run_id)
    steps = chat.store.load_steps(run_id, after=cursor.after)
    ready = []
    for step in steps:
        if step.status not in ("completed", "failed") and not run.terminal:
            break
        ready.append(step)
    for event in events(chat, ready):
        out.append(_message("step", event, event["seq"]))
    if ready:
        cursor.after = ready[-1].seq
    requests = chat.approvals.list(tenant=viewer.tenant, run_id=run_id, status=None)
    changed = [r for r in requests if cursor.cards.get(r.id) != _fingerprint(r)]
    if changed:
        history = chat.store.load_steps(run_id)
        for req in sorted(changed, key=lambda r: r.created_at):
            cursor.cards[req.id] = _fingerprint(req)
            out.append(_message("approval", make_card(req, history)))
    if run.status != cursor.status:
        cursor.status = run.status
        out.append(_message("run", run_summary(chat, run)))
    done = run.terminal and len(ready) == len(steps)
    if done:
        out.append(_message("end", run_summary(chat, run)))
    return out, done


def _fingerprint(req: Any) -> tuple[Any, ...]:
    return (req.status, req.revision, tuple((v.principal, v.decision, v.revision) for v in req.votes))


async def stream_run(
    chat: Chat, run_id: str, viewer: Principal, after: int, request: Request, poll_interval: float,
    make_card: MakeCard,
) -> AsyncIterator[str]:  # fmt: skip
    """Server-sent events for one run (see API.md), until the run ends or the client leaves."""
    cursor = _Cursor(after=after)
    yield "retry: 1000\n\n"  # reconnect within a second after a restart (browsers default to ~3 s)
    quiet_since = time.monotonic()
    while not await request.is_disconnected():
        # The store is synchronous: read it off the event loop so other requests keep flowing.
        messages, done = await asyncio.to_thread(_poll, chat, run_id, viewer, cursor, make_card)
        for message in messages:
            yield message
        if done:
            return
        if messages:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since > KEEPALIVE:
            quiet_since = time.monotonic()
            yield ": keepalive\n\n"
        await asyncio.sleep(poll_interval)
