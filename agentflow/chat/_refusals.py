"""Why an operator may not decide a request, in words for people: the approvals service's refusal
codes (`self_approval`, `missing_role`, ...) are for programs; a chat or a card says what they mean
and what to do about it."""

from __future__ import annotations

from agentflow.approvals import ApprovalRequest, Principal
from agentflow.chat._context import Chat


def refusal_text(code: str, message: str, req: ApprovalRequest | None = None, viewer: Principal | None = None) -> str:
    """A refusal (its code and the service's message) as a sentence without the code."""
    if code == "self_approval":
        return "You asked for this run: four-eyes means another engineer has to approve it."
    if code == "missing_role" and req is not None and viewer is not None:
        have = ", ".join(viewer.roles) or "no role"
        return f"Deciding needs the role {' or '.join(req.deciding_roles)}; you have {have} in {viewer.tenant}."
    if code == "wrong_tenant":
        return "This request belongs to another tenant than the one you are signed in to."
    if code == "run_ended":
        return "The run ended before a decision: nothing waits for this approval any more."
    if code == "expired":
        return "The request expired: the change will not run (the agent may stage it again)."
    if code == "already_decided" and req is not None:
        return f"It is already {req.status}."
    if code == "stale_args":
        return "The arguments changed since you looked: read the request again and decide again."
    return message[:1].upper() + message[1:] if message else code.replace("_", " ")


def why_not_text(chat: Chat, req: ApprovalRequest, viewer: Principal) -> str | None:
    """Why `viewer` cannot approve `req` now, in words (None: they can)."""
    refused = chat.approvals.refusal(req, viewer)
    if refused is not None:
        return refusal_text(refused.code, refused.message, req, viewer)
    if any(v.principal == viewer.name and v.revision == req.revision and v.decision == "approve" for v in req.votes):
        left = req.spec.quorum - req.approvals
        return f"You approved; waiting for {left} more approval{'s' if left != 1 else ''}."
    return None
