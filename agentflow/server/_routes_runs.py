"""`/api/runs`: list and start copilot runs, read one, follow it live, chat commands, its timeline,
trace export."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import PlainTextResponse, StreamingResponse

from agentflow.chat import START_HELP, bare_command, events, reply, run_summary
from agentflow.server._auth import Actor, ApiError, State, Who
from agentflow.server._cards import run_web_cards, web_card
from agentflow.server._listing import RunFilters, run_listing
from agentflow.server._models import ChatBody, StartBody
from agentflow.server._state import Served
from agentflow.server._stream import stream_run
from agentflow.store import RUN_STATUSES, RunRecord
from agentflow.trace import timeline as run_timeline

router = APIRouter(prefix="/api/runs", tags=["runs"])
_STREAM_HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}


def own_run(state: Served, run_id: str, who: Actor) -> RunRecord:
    """The run if it is in the caller's tenant (the tenant is part of the query and of the run's
    key); another tenant's run is not even confirmed."""
    run = state.chat.store.find_run(run_id, tenant=who.principal.tenant)
    if run is None:
        raise ApiError(404, "unknown_run", f"no run {run_id} in tenant {who.principal.tenant}")
    return run


Text = Annotated[str | None, Query(max_length=200)]
#: A time (seconds since the epoch): NaN compares false with every run and so would filter nothing.
Time = Annotated[float | None, Query(allow_inf_nan=False)]


@router.get("")
def list_runs(
    who: Who, state: State, status: str | None = None, q: Text = None, tool: Text = None, target: Text = None,
    requested_by: Text = None, since: Time = None, until: Time = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> dict[str, Any]:  # fmt: skip
    """The tenant's runs of the served agent, newest first, narrowed by the filters given (the
    latest 500 are looked at), with counts per status and the values each filter can take."""
    if status is not None and status not in RUN_STATUSES:
        raise ApiError(422, "invalid", f"status must be one of {list(RUN_STATUSES)}, not {status!r}")
    filters = RunFilters(status=status, q=q or None, tool=tool or None, target=target or None,
                         requested_by=requested_by or None, since=since, until=until)  # fmt: skip
    return run_listing(state.chat, tenant=who.principal.tenant, workflow=state.workflow.name, filters=filters,
                       limit=limit)  # fmt: skip


@router.post("", status_code=201)
def start_run(body: StartBody, who: Who, state: State) -> dict[str, Any]:
    """Start the copilot on a task, in the operator's tenant, recorded as requested by them. A
    task that is only a chat command word (`help`, `?`, `status`) is refused (422 not_a_task,
    with the help text as the message): nothing is started."""
    if bare_command(body.task) is not None:
        raise ApiError(422, "not_a_task", f"`{body.task.strip()}` is a chat command, not a task. {START_HELP}")
    meta = {"agent": state.workflow.name.split(":", 1)[-1], "requested_by": who.principal.name}
    handle = state.chat.client.start(state.workflow, body.task, run_id=body.run_id, tenant=who.principal.tenant,
                                     meta=meta)  # fmt: skip
    if not handle.created:
        raise ApiError(409, "run_exists", f"run {body.run_id} already exists in your tenant: choose another id")
    return run_summary(state.chat, state.chat.store.get_run(handle.run_id))


@router.get("/{run_id}")
def get_run(run_id: str, who: Who, state: State) -> dict[str, Any]:
    run = own_run(state, run_id, who)
    steps = state.chat.store.load_steps(run.id)
    return {**run_summary(state.chat, run), "events": events(state.chat, steps),
            "approvals": run_web_cards(state, run.id, run.tenant, who.principal, steps)}  # fmt: skip


@router.get("/{run_id}/events")
def run_events(run_id: str, who: Who, state: State, after: Annotated[int, Query(ge=0)] = 0) -> dict[str, Any]:
    run = own_run(state, run_id, who)
    steps = state.chat.store.load_steps(run.id)
    return {"run": run_summary(state.chat, run), "events": events(state.chat, [s for s in steps if s.seq > after]),
            "approvals": run_web_cards(state, run.id, run.tenant, who.principal, steps)}  # fmt: skip


@router.get("/{run_id}/stream", response_class=StreamingResponse)
def run_stream(
    run_id: str, who: Who, state: State, request: Request, after: Annotated[int | None, Query(ge=0)] = None
) -> StreamingResponse:
    """Server-sent events: `step`, `approval`, `run`, `end` (API.md). Resumes after `Last-Event-ID`."""
    run = own_run(state, run_id, who)
    # An EventSource reconnecting sends Last-Event-ID (it cannot change its URL's ?after=).
    start = max(after or 0, _last_event_id(request))
    body = stream_run(state.chat, run.id, who.principal, start, request, state.poll_interval,
                      lambda req, steps: web_card(state, req, who.principal, steps))  # fmt: skip
    return StreamingResponse(body, media_type="text/event-stream", headers=_STREAM_HEADERS)


@router.post("/{run_id}/messages")
def chat(run_id: str, body: ChatBody, who: Who, state: State) -> dict[str, Any]:
    """Chat commands on the run: `approve [comment]`, `reject <reason>`, `status`, `why?`."""
    answer = reply(state.chat, own_run(state, run_id, who), who.principal, body.text)
    if answer.get("card"):  # the console's card (evidence, refusals in words) for the one decided
        req = state.chat.approvals.get(answer["card"]["id"], tenant=who.principal.tenant)
        answer["card"] = web_card(state, req, who.principal)
    return answer


@router.get("/{run_id}/timeline")
def timeline(run_id: str, who: Who, state: State) -> dict[str, Any]:
    """The run as a timeline (`agentflow.trace.timeline`): every step on the recorded clock,
    lease changes (a crash and the resume, a wake after a wait), reads folded, what happened."""
    run = own_run(state, run_id, who)
    return run_timeline(state.chat.client, run.id, now=state.chat.clock.now())


@router.get("/{run_id}/trace.jsonl", response_class=PlainTextResponse)
def export(run_id: str, who: Who, state: State) -> PlainTextResponse:
    run = own_run(state, run_id, who)
    try:
        from agentflow import trace
    except ImportError as exc:
        raise ApiError(501, "unavailable", f"trace export needs `pip install agentflow[trace]` ({exc})") from None
    text = trace.load(state.chat.client, run.id).jsonl()
    return PlainTextResponse(text, media_type="application/x-ndjson",
                             headers={"Content-Disposition": f'attachment; filename="{run.local_id}.jsonl"'})  # fmt: skip


def _last_event_id(request: Request) -> int:
    raw = request.headers.get("last-event-id", "0")
    return int(raw) if raw.isdigit() else 0
