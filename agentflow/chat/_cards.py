"""Approval cards: a staged call as every surface shows it, with what the viewer may do about it."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from agentflow.approvals import ApprovalRequest, Principal
from agentflow.chat._context import Chat
from agentflow.chat._views import json_or_text
from agentflow.store import RunRecord, StepRecord, local_id


def card(chat: Chat, req: ApprovalRequest, viewer: Principal, steps: Iterable[StepRecord] = ()) -> dict[str, Any]:
    """`Card` of API.md, with what `viewer` may do about it."""
    why_not = why_not_decide(chat, req, viewer)
    return {
        "id": req.id,
        "run_id": local_id(req.run_id, req.tenant),
        "tool": req.tool,
        "target": _target(req, steps),
        "args": req.args,
        "args_hash": req.args_hash,
        "diff": req.diff,
        "rule": req.rule,
        "requested_by": req.requested_by,
        "status": req.status,
        "created_at": req.created_at,
        "expires_at": req.expires_at,
        "quorum": {"needed": req.spec.quorum, "have": req.approvals},
        "votes": [
            {"principal": v.principal, "decision": v.decision, "comment": v.comment, "at": v.at}
            for v in req.votes
            if v.revision == req.revision
        ],
        "revision": req.revision,
        "deciding_roles": req.deciding_roles,
        "editable_args": list(req.spec.editable_args),
        "four_eyes": req.spec.four_eyes,
        "can_decide": why_not is None,
        "why_not": why_not,
        "now": chat.clock.now(),  # the server's time: the App's clock may be shifted (a demo window)
    }


def run_cards(chat: Chat, run: RunRecord, viewer: Principal, steps: list[StepRecord]) -> list[dict[str, Any]]:
    """The cards of every approval request of a run, as `viewer` may act on them."""
    return [card(chat, r, viewer, steps) for r in chat.approvals.list(tenant=run.tenant, run_id=run.id, status=None)]


def why_not_decide(chat: Chat, req: ApprovalRequest, viewer: Principal) -> str | None:
    """Why `viewer` cannot approve `req` now (None: they can): the approvals service's own
    checks, which it makes again in the decision's transaction."""
    refused = chat.approvals.refusal(req, viewer)
    if refused is not None:
        return f"{refused.code}: {refused.message}"
    if any(v.principal == viewer.name and v.revision == req.revision and v.decision == "approve" for v in req.votes):
        return f"you approved; waiting for {req.spec.quorum - req.approvals} more approval(s)"
    return None


def _target(req: ApprovalRequest, steps: Iterable[StepRecord]) -> str | None:
    """The target the policy saw for the staged call (from its recorded decision's facts)."""
    for step in steps:
        if step.kind == "policy" and step.result:
            decision = json_or_text(step.result) or {}
            call = decision.get("call") or {}
            if (json_or_text(step.args) or {}).get("call") == req.call_id and call.get("target"):
                return str(call["target"])
    for key in ("site", "target", "cell", "node"):
        if isinstance(req.args.get(key), str):
            return str(req.args[key])
    return None
