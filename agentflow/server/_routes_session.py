"""`/api/session`: sign in with an operator token, who am I, switch tenant, sign out."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from agentflow.server._auth import Actor, ApiError, State, Who, authenticate
from agentflow.server._models import SessionBody, TenantBody
from agentflow.server._sessions import COOKIE
from agentflow.server._state import Served

router = APIRouter(prefix="/api/session", tags=["session"])


def session_body(state: Served, who: Actor) -> dict[str, Any]:
    tenants = sorted(who.session.principals) if who.session else [who.principal.tenant]
    return {"operator": who.principal.name, "roles": who.principal.roles, "tenant": who.principal.tenant,
            "tenants": tenants, "csrf": who.session.csrf if who.session else None,
            "now": state.chat.clock.now()}  # fmt: skip


@router.post("")
def sign_in(body: SessionBody, request: Request, response: Response, state: State) -> dict[str, Any]:
    """Sign in with an operator token: sets the session cookie; the body carries the CSRF value."""
    principal = authenticate(state, request, body.token)
    secret, info = state.sessions.sign_in(principal, tenant=body.tenant, cookie=request.cookies.get(COOKIE))
    response.set_cookie(COOKIE, secret, max_age=int(state.session_ttl), httponly=True, samesite="strict",
                        secure=state.secure_cookies, path="/")  # fmt: skip
    return session_body(state, Actor(state.sessions.principal(info), info))


@router.get("")
def whoami(who: Who, state: State) -> dict[str, Any]:
    return session_body(state, who)


@router.put("/tenant")
def switch_tenant(body: TenantBody, who: Who, state: State) -> dict[str, Any]:
    if who.session is None:
        raise ApiError(400, "bad_request", "a bearer token acts in its own tenant; there is nothing to switch")
    info = state.sessions.switch(who.session, body.tenant)
    return session_body(state, Actor(state.sessions.principal(info), info))


@router.delete("", status_code=204)
def sign_out(who: Who, state: State) -> Response:
    if who.session is not None:
        state.sessions.revoke(who.session)
    gone = Response(status_code=204)
    gone.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict", secure=state.secure_cookies)
    return gone
