"""`/api/approvals`: the tenant's inbox, one card, approve (with edits) and reject."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter

from agentflow.approvals import ApprovalRequest
from agentflow.chat import card
from agentflow.errors import ApprovalRefused
from agentflow.server._auth import Actor, ApiError, State, Who
from agentflow.server._models import ApproveBody, RejectBody
from agentflow.server._state import Served

router = APIRouter(prefix="/api/approvals", tags=["approvals"])
_INBOX = {"pending", "approved", "rejected", "expired", "escalated", "withdrawn", "all"}


@router.get("")
def inbox(who: Who, state: State, status: str = "pending") -> dict[str, Any]:
    if status not in _INBOX:
        raise ApiError(422, "invalid", f"status must be one of {sorted(_INBOX)}")
    found = state.chat.approvals.list(tenant=who.principal.tenant, status=None if status == "all" else status)
    return {"approvals": [card(state.chat, r, who.principal) for r in found]}


def own_approval(state: Served, approval_id: str, who: Actor) -> ApprovalRequest:
    req = state.chat.approvals.get(approval_id)
    if req.tenant != who.principal.tenant:
        raise ApiError(404, "unknown", f"no approval request {approval_id}", approval_id=approval_id)
    return req


@router.get("/{approval_id}")
def get_approval(approval_id: str, who: Who, state: State) -> dict[str, Any]:
    req = own_approval(state, approval_id, who)
    return card(state.chat, req, who.principal, state.chat.store.load_steps(req.run_id))


@router.post("/{approval_id}/approve")
def approve(approval_id: str, body: ApproveBody, who: Who, state: State) -> dict[str, Any]:
    """Approve (optionally with edited arguments and the hash of what you were shown)."""
    with _not_confirming_other_tenants(approval_id):
        req = state.chat.approvals.approve(approval_id, by=who.principal, comment=body.comment, args=body.args,
                                           seen_hash=body.seen_hash)  # fmt: skip
    return card(state.chat, req, who.principal, state.chat.store.load_steps(req.run_id))


@router.post("/{approval_id}/reject")
def reject(approval_id: str, body: RejectBody, who: Who, state: State) -> dict[str, Any]:
    with _not_confirming_other_tenants(approval_id):
        req = state.chat.approvals.reject(approval_id, by=who.principal, comment=body.comment)
    return card(state.chat, req, who.principal, state.chat.store.load_steps(req.run_id))


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
