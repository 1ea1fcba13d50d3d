"""`/api/approvals`: the tenant's inbox, one card, approve (with edits) and reject."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from agentflow.approvals import ApprovalRequest
from agentflow.server._auth import Actor, ApiError, State, Who
from agentflow.server._cards import web_card
from agentflow.server._models import ApproveBody, RejectBody
from agentflow.server._state import Served
from agentflow.store import StepRecord

router = APIRouter(prefix="/api/approvals", tags=["approvals"])
_INBOX = {"pending", "approved", "rejected", "expired", "escalated", "withdrawn", "all"}


@router.get("")
def inbox(
    who: Who, state: State, status: str = "pending", evidence: bool = True,
    decided_limit: Annotated[int, Query(ge=1, le=5000)] = 200,
) -> dict[str, Any]:  # fmt: skip
    """The tenant's requests, newest first (`pending`: open ones): every open one, with its
    evidence unless `evidence=false` (the nav badge's poll on every page: no run's history is
    read), and the newest `decided_limit` decided ones (the inbox's history, polled every 3 s, is
    not sent whole); `counts` are over all of them."""
    if status not in _INBOX:
        raise ApiError(422, "invalid", f"status must be one of {sorted(_INBOX)}")
    found = state.chat.approvals.list(tenant=who.principal.tenant, status=None if status == "all" else status)
    decided = [r.id for r in found if not r.open]
    kept = set(decided[:decided_limit])
    counts = {"pending": len(found) - len(decided), "decided": len(decided)}
    found = [r for r in found if r.open or r.id in kept]
    histories: dict[str, list[StepRecord]] = {}  # a run's history read once for all its requests

    def shown(req: ApprovalRequest) -> dict[str, Any]:
        if not (evidence and req.open):
            return web_card(state, req, who.principal, with_evidence=False)
        if req.run_id not in histories:
            histories[req.run_id] = state.chat.store.load_steps(req.run_id)
        return web_card(state, req, who.principal, histories[req.run_id])

    return {"approvals": [shown(r) for r in found], "counts": counts}


def own_approval(state: Served, approval_id: str, who: Actor) -> ApprovalRequest:
    """The request if it is in the caller's tenant (read with the tenant in the query)."""
    return state.chat.approvals.get(approval_id, tenant=who.principal.tenant)


@router.get("/{approval_id}")
def get_approval(approval_id: str, who: Who, state: State) -> dict[str, Any]:
    return web_card(state, own_approval(state, approval_id, who), who.principal)


@router.post("/{approval_id}/approve")
def approve(approval_id: str, body: ApproveBody, who: Who, state: State) -> dict[str, Any]:
    """Approve (optionally with edited arguments and the hash of what you were shown)."""
    req = state.chat.approvals.approve(approval_id, by=who.principal, comment=body.comment, args=body.args,
                                       seen_hash=body.seen_hash)  # fmt: skip
    return web_card(state, req, who.principal)


@router.post("/{approval_id}/reject")
def reject(approval_id: str, body: RejectBody, who: Who, state: State) -> dict[str, Any]:
    req = state.chat.approvals.reject(approval_id, by=who.principal, comment=body.comment)
    return web_card(state, req, who.principal)
