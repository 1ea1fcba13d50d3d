"""The FastAPI application: the web chat page and the JSON API of API.md, over one App.

Every route acts as one operator (`Actor`): a bearer token, or a browser session whose cookie
is HttpOnly and SameSite=Strict and whose state changes carry the session's CSRF value. All
reads are scoped to the operator's current tenant (other tenants' runs answer 404, so their
ids are not even confirmed), and every decision goes through `app.approvals`, which checks
again and audits in one transaction. Errors are JSON with a 4xx code (API.md's table).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from agentflow.agent._agent import agent_workflow
from agentflow.approvals import Principal
from agentflow.engine import App
from agentflow.errors import AgentflowError, ApprovalError, ApprovalRefused, ConfigurationError, UnknownRunError
from agentflow.server._models import (
    ApproveBody,
    ChatBody,
    RejectBody,
    SessionBody,
    StartBody,
    TenantBody,
)
from agentflow.server._sessions import COOKIE, DEFAULT_TTL, SessionInfo, Sessions
from agentflow.server._stream import stream_run
from agentflow.server._views import card, events, run_summary
from agentflow.store import RunRecord, StepRecord
from agentflow.store._constants import RUN_STATUSES

log = logging.getLogger("agentflow.server")
STATIC = Path(__file__).parent / "static"
_UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}
_STATUS = {  # ApprovalError.code -> HTTP status
    "bad_token": 401, "not_signed_in": 401, "session_expired": 401, "csrf": 403, "wrong_tenant": 403,
    "missing_role": 403, "self_approval": 403, "unknown": 404, "unknown_run": 404, "already_decided": 409,
    "stale_args": 409, "run_exists": 409, "expired": 410, "not_editable": 422, "invalid": 422, "ambiguous": 400,
}  # fmt: skip


def actor(request: Request) -> Actor:
    """The operator calling: a bearer token, else the session cookie (whose state changes must
    carry the session's CSRF value)."""
    sessions: Sessions = request.app.state.sessions
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return Actor(sessions.app.approvals.authenticate(header[7:].strip()), None)
    cookie = request.cookies.get(COOKIE)
    session = sessions.find(cookie) if cookie else None
    if session is None:
        code = "session_expired" if cookie else "not_signed_in"
        raise ApiError(401, code, "sign in with your operator token (POST /api/session) or send a bearer token")
    if request.method in _UNSAFE:
        _check_csrf(request, session)
    return Actor(sessions.principal(session), session)


class ApiError(Exception):
    """An error answered as `{"error": {...}}` with `status`."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra


@dataclass(frozen=True, slots=True)
class Actor:
    """Who is calling: the principal, and the browser session when it came with one."""

    principal: Principal
    session: SessionInfo | None


Who = Annotated[Actor, Depends(actor)]


def create_app(
    app: App,
    *,
    agent: str | None = None,
    run_worker: bool = True,
    secure_cookies: bool = False,
    session_ttl: float = DEFAULT_TTL,
    poll_interval: float = 0.25,
) -> FastAPI:
    """The web chat and JSON API over `app`.

    Args:
        app: the App whose runs, approvals and operators are served.
        agent: the agent chat requests start (default: the app's only registered agent).
        run_worker: also drive runs in this process (False when separate workers run).
        secure_cookies: mark the session cookie Secure (serve behind HTTPS).
        session_ttl: seconds a browser session lasts.
        poll_interval: seconds between looks at the store for live updates.
    """
    workflow = agent_workflow(app, agent)
    sessions = Sessions(app, ttl=session_ttl)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        stop = asyncio.Event()
        task = None
        if run_worker:
            from agentflow.engine import Worker

            task = asyncio.create_task(Worker(app, poll_interval=0.05).run_forever(stop))
        try:
            yield
        finally:
            stop.set()
            if task is not None:
                await task

    api = FastAPI(
        title="agentflow",
        summary="Start copilot runs, watch them live, and decide their staged actions.",
        version="1",
        lifespan=lifespan,
    )
    api.state.sessions = sessions
    _install_error_handlers(api)

    def own_run(run_id: str, who: Actor) -> RunRecord:
        run = app.store.find_run(run_id)
        if run is None or run.tenant != who.principal.tenant:
            raise ApiError(404, "unknown_run", f"no run {run_id} in tenant {who.principal.tenant}")
        return run

    def session_body(who: Actor) -> dict[str, Any]:
        tenants = sorted(who.session.principals) if who.session else [who.principal.tenant]
        return {"operator": who.principal.name, "roles": who.principal.roles, "tenant": who.principal.tenant,
                "tenants": tenants, "csrf": who.session.csrf if who.session else None, "now": app.clock.now()}  # fmt: skip

    # -- pages -----------------------------------------------------------------------------
    @api.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers=_PAGE_HEADERS)

    api.mount("/static", StaticFiles(directory=STATIC), name="static")

    # -- session ---------------------------------------------------------------------------
    @api.post("/api/session", tags=["session"])
    def sign_in(body: SessionBody, request: Request, response: Response) -> dict[str, Any]:
        """Sign in with an operator token: sets the session cookie; the body carries the CSRF value."""
        secret, info = sessions.sign_in(body.token, tenant=body.tenant, cookie=request.cookies.get(COOKIE))
        response.set_cookie(COOKIE, secret, max_age=int(session_ttl), httponly=True, samesite="strict",
                            secure=secure_cookies, path="/")  # fmt: skip
        return session_body(Actor(sessions.principal(info), info))

    @api.get("/api/session", tags=["session"])
    def whoami(who: Who) -> dict[str, Any]:
        return session_body(who)

    @api.put("/api/session/tenant", tags=["session"])
    def switch_tenant(body: TenantBody, who: Who) -> dict[str, Any]:
        if who.session is None:
            raise ApiError(400, "bad_request", "a bearer token acts in its own tenant; there is nothing to switch")
        info = sessions.switch(who.session, body.tenant)
        return session_body(Actor(sessions.principal(info), info))

    @api.delete("/api/session", status_code=204, tags=["session"])
    def sign_out(who: Who, response: Response) -> Response:
        if who.session is not None:
            sessions.revoke(who.session)
        gone = Response(status_code=204)
        gone.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict", secure=secure_cookies)
        return gone

    # -- runs ------------------------------------------------------------------------------
    @api.get("/api/runs", tags=["runs"])
    def list_runs(
        who: Who, status: str | None = None, limit: Annotated[int, Query(ge=1, le=500)] = 50
    ) -> dict[str, Any]:
        if status is not None and status not in RUN_STATUSES:
            raise ApiError(422, "invalid", f"status must be one of {list(RUN_STATUSES)}, not {status!r}")
        runs = app.store.list_runs(tenant=who.principal.tenant, status=status, workflow=workflow.name, limit=limit)
        return {"runs": [run_summary(app, r) for r in runs]}

    @api.post("/api/runs", status_code=201, tags=["runs"])
    def start_run(body: StartBody, who: Who) -> dict[str, Any]:
        """Start the copilot on a task, in the operator's tenant, recorded as requested by them."""
        meta = {"agent": workflow.name.split(":", 1)[-1], "requested_by": who.principal.name}
        handle = app.start(workflow, body.task, run_id=body.run_id, tenant=who.principal.tenant, meta=meta)
        if not handle.created:
            raise ApiError(409, "run_exists", f"run {body.run_id} already exists: choose another id")
        return run_summary(app, app.store.get_run(handle.run_id))

    @api.get("/api/runs/{run_id}", tags=["runs"])
    def get_run(run_id: str, who: Who) -> dict[str, Any]:
        run = own_run(run_id, who)
        steps = app.store.load_steps(run.id)
        return {**run_summary(app, run), "events": events(app, steps), "approvals": run_cards(app, run, who, steps)}

    @api.get("/api/runs/{run_id}/events", tags=["runs"])
    def run_events(run_id: str, who: Who, after: Annotated[int, Query(ge=0)] = 0) -> dict[str, Any]:
        run = own_run(run_id, who)
        steps = app.store.load_steps(run.id)
        return {"run": run_summary(app, run), "events": events(app, [s for s in steps if s.seq > after]),
                "approvals": run_cards(app, run, who, steps)}  # fmt: skip

    @api.get("/api/runs/{run_id}/stream", tags=["runs"], response_class=StreamingResponse)
    def run_stream(
        run_id: str, who: Who, request: Request, after: Annotated[int | None, Query(ge=0)] = None
    ) -> StreamingResponse:
        """Server-sent events: `step`, `approval`, `run`, `end` (API.md). Resumes after `Last-Event-ID`."""
        run = own_run(run_id, who)
        # An EventSource reconnecting sends Last-Event-ID (it cannot change its URL's ?after=).
        start = max(after or 0, _last_event_id(request))
        body = stream_run(app, run.id, who.principal, start, request, poll_interval)
        return StreamingResponse(body, media_type="text/event-stream", headers=_STREAM_HEADERS)

    @api.post("/api/runs/{run_id}/messages", tags=["runs"])
    def chat(run_id: str, body: ChatBody, who: Who) -> dict[str, Any]:
        """Chat commands on the run: `approve [comment]`, `reject <reason>`, `status`, `why?`."""
        from agentflow.server._commands import reply

        return reply(app, own_run(run_id, who), who.principal, body.text)

    @api.get("/api/runs/{run_id}/trace.jsonl", tags=["runs"], response_class=PlainTextResponse)
    def export(run_id: str, who: Who) -> PlainTextResponse:
        run = own_run(run_id, who)
        try:
            from agentflow.trace._export import jsonl_records
            from agentflow.trace._records import load_recorded
        except ImportError as exc:
            raise ApiError(501, "unavailable", f"trace export needs `pip install agentflow[trace]` ({exc})") from None
        lines = jsonl_records(load_recorded(app, run.id))
        text = "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in lines)
        return PlainTextResponse(text, media_type="application/x-ndjson",
                                 headers={"Content-Disposition": f'attachment; filename="{run.id}.jsonl"'})  # fmt: skip

    # -- approvals -------------------------------------------------------------------------
    @api.get("/api/approvals", tags=["approvals"])
    def inbox(who: Who, status: str = "pending") -> dict[str, Any]:
        allowed = {"pending", "approved", "rejected", "expired", "escalated", "all"}
        if status not in allowed:
            raise ApiError(422, "invalid", f"status must be one of {sorted(allowed)}")
        found = app.approvals.list(tenant=who.principal.tenant, status=None if status == "all" else status)
        return {"approvals": [card(app, r, who.principal) for r in found]}

    def own_approval(approval_id: str, who: Actor) -> Any:
        req = app.approvals.get(approval_id)
        if req.tenant != who.principal.tenant:
            raise ApiError(404, "unknown", f"no approval request {approval_id}", approval_id=approval_id)
        return req

    @api.get("/api/approvals/{approval_id}", tags=["approvals"])
    def get_approval(approval_id: str, who: Who) -> dict[str, Any]:
        req = own_approval(approval_id, who)
        return card(app, req, who.principal, app.store.load_steps(req.run_id))

    @api.post("/api/approvals/{approval_id}/approve", tags=["approvals"])
    def approve(approval_id: str, body: ApproveBody, who: Who) -> dict[str, Any]:
        """Approve (optionally with edited arguments and the hash of what you were shown)."""
        with _not_confirming_other_tenants(approval_id):
            req = app.approvals.approve(approval_id, by=who.principal, comment=body.comment, args=body.args,
                                        seen_hash=body.seen_hash)  # fmt: skip
        return card(app, req, who.principal, app.store.load_steps(req.run_id))

    @api.post("/api/approvals/{approval_id}/reject", tags=["approvals"])
    def reject(approval_id: str, body: RejectBody, who: Who) -> dict[str, Any]:
        with _not_confirming_other_tenants(approval_id):
            req = app.approvals.reject(approval_id, by=who.principal, comment=body.comment)
        return card(app, req, who.principal, app.store.load_steps(req.run_id))

    return api


_PAGE_HEADERS = {
    # The page builds its DOM with textContent only; the policy is the second line of defence:
    # no inline script, no remote anything, no framing.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
_STREAM_HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}


@contextlib.contextmanager
def _not_confirming_other_tenants(approval_id: str) -> Iterator[None]:
    """A decision on another tenant's request is refused (and audited) by the service as
    wrong_tenant; the caller gets the same 404 as for an id that does not exist."""
    try:
        yield
    except ApprovalRefused as exc:
        if exc.code != "wrong_tenant":
            raise
        raise ApiError(404, "unknown", f"no approval request {approval_id}", approval_id=approval_id) from None


def run_cards(app: App, run: RunRecord, who: Actor, steps: list[StepRecord]) -> list[dict[str, Any]]:
    """The cards of every approval request of a run, as `who` may act on them."""
    return [card(app, r, who.principal, steps) for r in app.approvals.list(run_id=run.id, status=None)]


def _check_csrf(request: Request, session: SessionInfo) -> None:
    sent = request.headers.get("x-csrf-token", "")
    if not secrets.compare_digest(sent.encode(), session.csrf.encode()):
        raise ApiError(403, "csrf", "missing or wrong X-CSRF-Token header: reload the page and try again")
    origin = request.headers.get("origin")
    if origin and origin.split("://", 1)[-1] != request.headers.get("host"):
        raise ApiError(403, "csrf", f"a request from {origin} may not act on this server")


def _last_event_id(request: Request) -> int:
    raw = request.headers.get("last-event-id", "0")
    return int(raw) if raw.isdigit() else 0


def _error(status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, **extra}}, status_code=status)


def _install_error_handlers(api: FastAPI) -> None:
    @api.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.code, exc.message, **exc.extra)

    @api.exception_handler(ApprovalError)
    async def approval_error(_: Request, exc: ApprovalError) -> JSONResponse:
        extra = {"approval_id": exc.approval_id} if exc.approval_id else {}
        return _error(_STATUS.get(exc.code, 403), exc.code, exc.message, **extra)

    @api.exception_handler(UnknownRunError)
    async def unknown_run(_: Request, exc: UnknownRunError) -> JSONResponse:
        return _error(404, "unknown_run", exc.message)

    @api.exception_handler(ConfigurationError)
    async def bad_input(_: Request, exc: ConfigurationError) -> JSONResponse:
        return _error(422, "invalid", exc.message)

    @api.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        details = [{"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", ""))} for e in errors]
        if any(e.get("type") == "json_invalid" for e in errors):
            return _error(400, "bad_request", "the body is not valid JSON", details=details)
        loc, msg = (details[0]["loc"], details[0]["msg"]) if details else ([], "invalid")
        if loc == ["body"]:
            msg = "the body must be a JSON object, sent with Content-Type: application/json"
        where = ".".join(p for p in loc if p != "body")
        return _error(422, "invalid", f"{where}: {msg}" if where else str(msg), details=details)

    @api.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _error(exc.status_code, code, str(exc.detail))

    @api.exception_handler(AgentflowError)
    async def store_error(_: Request, exc: AgentflowError) -> JSONResponse:
        # Store trouble (busy, corrupt record) is the server's, not the caller's: 503, retryable.
        log.warning("request failed: %s", exc)
        return _error(503, type(exc).__name__, exc.message, retryable=exc.retryable)
