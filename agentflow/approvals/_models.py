"""The approval records as the API returns them."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, Field

from agentflow.policy import ApprovalSpec

#: `withdrawn`: the run ended (cancelled, failed, finished) before anyone decided.
Status = Literal["pending", "escalated", "approved", "rejected", "expired", "withdrawn"]
OPEN = ("pending", "escalated")


def args_hash(args: dict[str, Any]) -> str:
    """The hash an approval is bound to: sha256 of the arguments' canonical JSON."""
    body = json.dumps(args, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(body.encode()).hexdigest()


def request_id(run_id: str, call_id: str, digest: str, step: str = "") -> str:
    """A stable id per (run, gated call, tool, exact arguments). `step` is the gate's own key for
    the call (not an id the model chose): the same call retried after a crash gets the same
    request, while a call re-issued later, even with the same id and arguments, needs its own
    approval; other arguments are another request too."""
    body = f"{run_id}\x00{call_id}\x00{digest}\x00{step}"
    return "apr_" + hashlib.sha256(body.encode()).hexdigest()[:20]


class Principal(BaseModel):
    """An operator: a name and roles within one tenant (`token_id`: the token they signed in
    with, when they did)."""

    id: str
    name: str
    tenant: str
    roles: list[str]
    token_id: str | None = None


#: `active`: may sign in; `disabled`: every token refused until enabled; `revoked`: no token
#: (`operators rotate` issues one); `expired`: their last token expired.
OperatorStatus = Literal["active", "disabled", "revoked", "expired"]
TokenStatus = Literal["active", "revoked", "expired"]


class OperatorToken(BaseModel):
    """One of an operator's API tokens as listed (never the token: only its hash is stored).
    Times are wall-clock time."""

    id: str
    status: TokenStatus
    created_at: float
    expires_at: float | None
    revoked_at: float | None


class Operator(Principal):
    """An operator as listed: their status, when their live token expires (None: never, or no
    live token) and all their tokens, oldest first."""

    status: OperatorStatus
    created_at: float
    expires_at: float | None
    tokens: list[OperatorToken] = Field(default_factory=list)


class Vote(BaseModel):
    principal: str
    decision: Literal["approve", "reject"]
    comment: str = ""
    revision: int
    at: float


class ApprovalRequest(BaseModel):
    """A staged tool call and where its approval stands."""

    id: str
    run_id: str
    call_id: str
    tenant: str
    requested_by: str | None
    tool: str
    args: dict[str, Any]
    args_hash: str
    diff: Any = None
    rule: str
    pack_hash: str
    spec: ApprovalSpec
    status: Status
    created_at: float
    expires_at: float | None
    decided_at: float | None
    revision: int
    votes: list[Vote] = Field(default_factory=list)

    @property
    def approvals(self) -> int:
        """Distinct approvers of the current arguments."""
        return sum(1 for v in self.votes if v.decision == "approve" and v.revision == self.revision)

    @property
    def deciding_roles(self) -> list[str]:
        return self.spec.escalate_to if self.status == "escalated" else self.spec.roles

    @property
    def open(self) -> bool:
        return self.status in OPEN


class AuditEntry(BaseModel):
    id: int
    at: float
    tenant: str | None
    actor: str
    action: str
    approval_id: str | None
    run_id: str | None
    outcome: Literal["done", "refused"]
    reason: str
