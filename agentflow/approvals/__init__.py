"""Approvals: operators with roles per tenant, approval requests bound to the exact arguments,
quorum and four-eyes, expiry, and an audit record of every decision and refusal; chat accounts
linked to operators (a decision typed in chat is the linked operator's)."""

from agentflow.approvals._links import ChatAccount
from agentflow.approvals._models import ApprovalRequest, AuditEntry, Operator, OperatorToken, Principal, Vote, args_hash
from agentflow.approvals._service import Approvals, approval_signal_name

__all__ = [
    "ApprovalRequest",
    "Approvals",
    "AuditEntry",
    "ChatAccount",
    "Operator",
    "OperatorToken",
    "Principal",
    "Vote",
    "approval_signal_name",
    "args_hash",
]
