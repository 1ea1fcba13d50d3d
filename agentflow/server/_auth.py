"""Who is calling: a bearer token, or a browser session whose state changes carry its CSRF value."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request

from agentflow.approvals import Principal
from agentflow.errors import AuthenticationError
from agentflow.server._sessions import COOKIE, SessionInfo
from agentflow.server._state import Served, served

_UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}


class ApiError(Exception):
    """An error answered as `{"error": {...}}` with `status` (and `headers`, e.g. Retry-After)."""

    def __init__(self, status: int, code: str, message: str, *, headers: dict[str, str] | None = None,
                 **extra: Any) -> None:  # fmt: skip
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra
        self.headers = headers or {}


@dataclass(frozen=True, slots=True)
class Actor:
    """Who is calling: the principal, and the browser session when it came with one."""

    principal: Principal
    session: SessionInfo | None


def actor(request: Request, state: Annotated[Served, Depends(served)]) -> Actor:
    """The operator calling: a bearer token, else the session cookie (whose state changes must
    carry the session's CSRF value)."""
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return Actor(authenticate(state, request, header[7:].strip()), None)
    cookie = request.cookies.get(COOKIE)
    session = state.sessions.find(cookie) if cookie else None
    if session is None:
        code = "session_expired" if cookie else "not_signed_in"
        raise ApiError(401, code, "sign in with your operator token (POST /api/session) or send a bearer token")
    if request.method in _UNSAFE:
        _check_csrf(request, session, secure=state.secure_cookies)
    return Actor(state.sessions.principal(session), session)


def authenticate(state: Served, request: Request, token: str) -> Principal:
    """The operator of `token`, unless the client failed too often lately (429, nothing looked
    up). Failures are audited one by one up to the server's audit budget, then summed up."""
    client = request.client.host if request.client else "unknown"
    wait = state.throttle.retry_after(client)
    if wait is not None:
        raise ApiError(429, "too_many_attempts", f"too many failed sign-ins from {client}: try again in {wait:.0f} s",
                       headers={"Retry-After": str(int(wait))})  # fmt: skip
    approvals = state.chat.approvals
    try:
        return approvals.authenticate(token, audit=False)
    except AuthenticationError as exc:
        if state.throttle.failed(client):
            skipped = state.throttle.unaudited()
            if skipped:
                approvals.audit_refusals(skipped, "failed sign-ins over the audit budget, summed up")
            approvals.audit_refusals(1, f"{exc.message} (from {client})", tenant=exc.tenant)
        raise


Who = Annotated[Actor, Depends(actor)]
State = Annotated[Served, Depends(served)]


def _check_csrf(request: Request, session: SessionInfo, *, secure: bool) -> None:
    sent = request.headers.get("x-csrf-token", "")
    if not secrets.compare_digest(sent.encode(), session.csrf.encode()):
        raise ApiError(403, "csrf", "missing or wrong X-CSRF-Token header: reload the page and try again")
    origin = request.headers.get("origin")
    # Scheme and host: http://host is another origin than https://host (a downgraded page).
    # Behind a proxy that terminates TLS (`--secure-cookies`) the page's scheme is https.
    host = request.headers.get("host")
    allowed = {f"{request.url.scheme}://{host}"} | ({f"https://{host}"} if secure else set())
    if origin and origin not in allowed:
        raise ApiError(403, "csrf", f"a request from {origin} may not act on this server")
