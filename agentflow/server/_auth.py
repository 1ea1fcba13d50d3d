"""Who is calling: a bearer token, or a browser session whose state changes carry its CSRF value."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request

from agentflow.approvals import Principal
from agentflow.server._sessions import COOKIE, SessionInfo
from agentflow.server._state import Served, served

_UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}


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


def actor(request: Request, state: Annotated[Served, Depends(served)]) -> Actor:
    """The operator calling: a bearer token, else the session cookie (whose state changes must
    carry the session's CSRF value)."""
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return Actor(state.chat.approvals.authenticate(header[7:].strip()), None)
    cookie = request.cookies.get(COOKIE)
    session = state.sessions.find(cookie) if cookie else None
    if session is None:
        code = "session_expired" if cookie else "not_signed_in"
        raise ApiError(401, code, "sign in with your operator token (POST /api/session) or send a bearer token")
    if request.method in _UNSAFE:
        _check_csrf(request, session)
    return Actor(state.sessions.principal(session), session)


Who = Annotated[Actor, Depends(actor)]
State = Annotated[Served, Depends(served)]


def _check_csrf(request: Request, session: SessionInfo) -> None:
    sent = request.headers.get("x-csrf-token", "")
    if not secrets.compare_digest(sent.encode(), session.csrf.encode()):
        raise ApiError(403, "csrf", "missing or wrong X-CSRF-Token header: reload the page and try again")
    origin = request.headers.get("origin")
    if origin and origin.split("://", 1)[-1] != request.headers.get("host"):
        raise ApiError(403, "csrf", f"a request from {origin} may not act on this server")
