"""`Approvals`: operators and their tokens, approval requests, decisions, and the audit trail.

Every decision is one store transaction: the checks (token, tenant, role, four-eyes, state,
expiry, argument hash), the vote, the request's new state, the audit record and, when the
request is decided, the signal that wakes the run. A refusal changes nothing but the audit
trail: its record is committed, then the typed error is raised. The SQL is the store's
(`EventStore.transaction` hands out its records); the rules are here.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agentflow.approvals._links import Links
from agentflow.approvals._models import (
    OPEN,
    ApprovalRequest,
    AuditEntry,
    Principal,
    Vote,
    args_hash,
    request_id,
)
from agentflow.errors import ApprovalRefused, AuthenticationError
from agentflow.policy import ApprovalSpec, PolicyDecision
from agentflow.store import ApprovalRow, Tx, local_id

if TYPE_CHECKING:
    from agentflow.engine import App

_List = list  # `Approvals.list` shadows the builtin inside the class


@dataclass
class _Refusal:
    error: ApprovalRefused | AuthenticationError


class Approvals(Links):
    """Operators (`Operators`), their chat accounts (`Links`) and approval requests in one store, on
    one clock.

    Args:
        store: the store holding the runs the requests belong to.
        clock: the app's clock (expiry is in workflow time: a shifted demo clock or a test clock).
        wall: wall-clock time for operator tokens' lifetimes (default: `time.time`).
    """

    @classmethod
    def of(cls, app: App) -> Approvals:
        """The approvals of an App's store, on the App's clock."""
        return cls(app.store, app.clock)

    # -- requests (made by the agent's recorded steps) -------------------------------------
    def request(
        self, *, run_id: str, call_id: str, tenant: str, requested_by: str | None, tool: str,
        args: dict[str, Any], decision: PolicyDecision, diff: Any = None, step: str = "",
    ) -> ApprovalRequest:  # fmt: skip
        """Create the approval request for a staged call (idempotent: the same run, gated call
        (`step`, the gate's key for it), tool and arguments give the same request)."""
        # Approvers see the arguments with their secrets masked, and the approval is bound to
        # what they saw (the gate compares the masked form of the call it is about to run).
        args, diff = self.store.redaction.data(args), self.store.redaction.data(diff)
        digest = args_hash(args)
        rule = decision.approval_rule or decision.rule
        rid = request_id(run_id, call_id, digest, f"{tool}\x00{step or decision.key}\x00{rule}")
        spec = decision.approval or ApprovalSpec(roles=["*"])
        now = self._now()
        row = ApprovalRow(
            id=rid, run_id=run_id, call_id=call_id, tenant=tenant, requested_by=requested_by, tool=tool, args=args,
            args_hash=digest, diff=diff, rule=rule, pack_hash=decision.pack_hash,
            spec=spec.model_dump(mode="json"), status="pending", created_at=now, expires_at=now + spec.expires_in,
            decided_at=None, revision=1,
        )  # fmt: skip

        def body(tx: Tx) -> ApprovalRequest:
            found = tx.approvals.get(rid, tenant=tenant)
            if found is not None:
                return _request(found)
            tx.approvals.add(row)
            tx.audit.add(at=now, tenant=tenant, actor=requested_by or "agent", action="requested", approval_id=rid,
                         run_id=run_id, outcome="done", reason=f"{tool} needs approval by rule {rule}")  # fmt: skip
            return _event(tx, "approval.requested", _loaded(tx, rid, tenant), now)

        return self._transact(body, tenant)

    def expire(self, approval_id: str) -> ApprovalRequest:
        """Called when the wait ran out: an open request past its expiry is escalated once (if
        its rule says so, with a new expiry) or expired. Anything else is returned as it is."""
        now = self._now()

        def body(tx: Tx) -> ApprovalRequest:
            req = _loaded(tx, approval_id)
            if not req.open or req.expires_at is None or now < req.expires_at:
                return req
            if req.status == "pending" and req.spec.on_expiry == "escalate":
                tx.approvals.escalate(approval_id, tenant=req.tenant, expires_at=now + req.spec.expires_in)
                reason, kind = f"escalated to {req.spec.escalate_to}", "approval.escalated"
            else:
                tx.approvals.set_status(approval_id, "expired", tenant=req.tenant, at=now)
                reason, kind = "no decision before the expiry: the call is not run", "approval.expired"
            tx.audit.add(at=now, tenant=req.tenant, actor="agentflow", action="expired", approval_id=approval_id,
                         run_id=req.run_id, outcome="done", reason=reason)  # fmt: skip
            return _event(tx, kind, _loaded(tx, approval_id, req.tenant), now)

        return self._transact(body, self.store.read(lambda tx: _loaded(tx, approval_id)).tenant)

    # -- reading -----------------------------------------------------------------------------
    def get(self, approval_id: str, *, tenant: str | None = None) -> ApprovalRequest:
        """One request with its votes (with `tenant`: only one of that tenant's).

        Raises:
            ApprovalRefused: code "unknown" when there is no such request (in `tenant`).
        """
        return self.store.read(lambda tx: _loaded(tx, approval_id, tenant))

    def list(
        self, *, tenant: str | None = None, status: str | None = "pending", run_id: str | None = None,
        for_principal: Principal | None = None,
    ) -> _List[ApprovalRequest]:  # fmt: skip
        """Requests, newest first. `status="pending"` lists open ones (pending or escalated);
        `for_principal` keeps those that operator may decide (tenant and role)."""
        wanted = OPEN if status == "pending" else None if status is None else (status,)

        def body(tx: Tx) -> _List[ApprovalRequest]:
            ids = tx.approvals.ids(tenant=tenant, run_id=run_id, statuses=wanted)
            return [_loaded(tx, i, tenant) for i in ids]

        found = self.store.read(body)
        if for_principal is not None:
            found = [r for r in found if _may_decide(for_principal, r)]
        return found

    def count_open(self, run_id: str) -> int:
        """How many of a run's requests wait for a decision."""
        return self.store.read(lambda tx: tx.approvals.count_open(run_id))

    def audit(self, *, approval_id: str | None = None, run_id: str | None = None) -> _List[AuditEntry]:
        rows = self.store.read(lambda tx: tx.audit.list(approval_id=approval_id, run_id=run_id))
        fields = list(AuditEntry.model_fields)
        return [AuditEntry.model_validate({f: getattr(r, f) for f in fields}) for r in rows]

    # -- decisions ---------------------------------------------------------------------------
    def approve(
        self, approval_id: str, *, by: Principal | str, comment: str = "", args: dict[str, Any] | None = None,
        seen_hash: str | None = None,
    ) -> ApprovalRequest:  # fmt: skip
        """Approve as `by` (a principal, or an operator token).

        Args:
            approval_id: the request.
            by: who decides.
            comment: recorded with the vote.
            args: edited arguments (only those the rule lists as editable may change); the
                earlier approvals were for other arguments and no longer count, and the agent
                evaluates the policy again on the edited call.
            seen_hash: the argument hash the approver was shown; a request edited since is refused.

        Raises:
            AuthenticationError, ApprovalRefused: the decision was not taken (audited).
        """
        return self._decide(approval_id, by, "approve", comment, args, seen_hash)

    def refusal(self, req: ApprovalRequest, by: Principal, decision: str = "approve") -> ApprovalRefused | None:
        """Why `by` could not take `decision` on `req` now, or None: the checks a decision makes,
        without recording anything (for showing an approve button only to those who may)."""
        live = self.store.read(lambda tx: tx.run_is_live(req.run_id))
        return _check(by, req, req.id, self._now(), decision, None, None, run_live=live)

    def reject(self, approval_id: str, *, by: Principal | str, comment: str = "") -> ApprovalRequest:
        """Reject as `by`: one rejection by an operator who may decide ends the request."""
        return self._decide(approval_id, by, "reject", comment, None, None)

    def _decide(
        self, approval_id: str, by: Principal | str, decision: str, comment: str,
        edited: dict[str, Any] | None, seen_hash: str | None,
    ) -> ApprovalRequest:  # fmt: skip
        principal = by if isinstance(by, Principal) else self.authenticate(by, approval_id=approval_id)
        now = self._now()
        # Edits are recorded like everything else, secrets masked (a masked value edits nothing:
        # a tool gets its secrets from its own configuration, never through a run).
        edited = None if edited is None else self.store.redaction.data(edited)

        def body(tx: Tx) -> ApprovalRequest | _Refusal:
            # Read in the decider's tenant: another tenant's request is "unknown", like none.
            row = tx.approvals.get(approval_id, tenant=principal.tenant)
            req = None if row is None else _request(row)
            live = req is None or tx.run_is_live(req.run_id)  # a request made before withdrawals existed
            refusal = _check(principal, req, approval_id, now, decision, edited, seen_hash, run_live=live)
            if refusal is not None:
                tx.audit.add(at=now, tenant=principal.tenant, actor=principal.name, action=decision,
                             approval_id=approval_id, run_id=req.run_id if req else None, outcome="refused",
                             reason=f"{refusal.code}: {refusal.message}")  # fmt: skip
                return _Refusal(refusal)
            assert req is not None
            return _vote(tx, req, principal, decision, comment, edited, now)

        outcome = self._transact(body, principal.tenant)
        if isinstance(outcome, _Refusal):
            raise outcome.error
        return outcome


def _vote(
    tx: Tx, req: ApprovalRequest, principal: Principal, decision: str, comment: str,
    edited: dict[str, Any] | None, now: float,
) -> ApprovalRequest:  # fmt: skip
    """Count one vote, decide the request when it reaches its quorum (or is rejected), audit."""
    revision = req.revision

    def audit(action: str, reason: str) -> None:
        tx.audit.add(at=now, tenant=req.tenant, actor=principal.name, action=action, approval_id=req.id,
                     run_id=req.run_id, outcome="done", reason=reason)  # fmt: skip

    if edited is not None and edited != req.args:
        revision += 1
        # The staged diff was the tool's preview of the old arguments: showing it beside the
        # edited ones would show approvers a change that is not the one that will run.
        tx.approvals.edit_args(req.id, edited, args_hash(edited), revision, tenant=req.tenant)
        audit("edited", f"arguments changed: {sorted(k for k in edited if edited.get(k) != req.args.get(k))}")
    elif any(v.principal == principal.name and v.revision == revision and v.decision == decision for v in req.votes):
        audit(decision, "repeated decision: counted once")
        return req
    tx.approvals.vote(req.id, tenant=req.tenant, principal_id=principal.id, principal=principal.name,
                      decision=decision, comment=comment, revision=revision, at=now)  # fmt: skip
    approvals = 1 + sum(1 for v in req.votes if v.decision == "approve" and v.revision == revision
                        and v.principal != principal.name)  # fmt: skip
    status = "rejected" if decision == "reject" else ("approved" if approvals >= req.spec.quorum else None)
    if status is not None:
        tx.approvals.set_status(req.id, status, tenant=req.tenant, at=now)
        _wake(tx, req, status, now)
        note = f"{status} ({approvals}/{req.spec.quorum}) {comment}".strip()
    else:
        note = f"approval {approvals}/{req.spec.quorum} {comment}".strip()
    audit(decision, note)
    decided = _loaded(tx, req.id, req.tenant)
    return decided if status is None else _event(tx, "approval.decided", decided, now)


def _event(tx: Tx, kind: str, req: ApprovalRequest, now: float) -> ApprovalRequest:
    """Record `kind` for webhooks in the transaction of the change it reports (so a refused or
    rolled-back decision reports nothing); its data is the request as it stands after the change,
    as approvers see it (arguments masked, comments redacted). Returns `req`."""
    votes = [{"principal": v.principal, "decision": v.decision, "comment": v.comment, "revision": v.revision,
              "at": v.at} for v in req.votes]  # fmt: skip
    data = {
        "approval_id": req.id, "run_id": local_id(req.run_id, req.tenant), "call_id": req.call_id,
        "tenant": req.tenant, "status": req.status, "tool": req.tool, "rule": req.rule, "pack_hash": req.pack_hash,
        "requested_by": req.requested_by, "args": req.args, "args_hash": req.args_hash, "diff": req.diff,
        "revision": req.revision, "approvals": req.approvals, "quorum": req.spec.quorum,
        "deciding_roles": req.deciding_roles, "four_eyes": req.spec.four_eyes, "created_at": req.created_at,
        "expires_at": req.expires_at, "decided_at": req.decided_at, "votes": votes,
    }  # fmt: skip
    tx.events.append(tenant=req.tenant, kind=kind, subject=req.id, data=data, now=now)
    return req


def _wake(tx: Tx, req: ApprovalRequest, status: str, now: float) -> None:
    """Deliver the wake-up signal in the decision's transaction (the run re-reads the request
    itself: the payload is only informative)."""
    if tx.run_is_live(req.run_id):
        payload = json.dumps({"approval_id": req.id, "status": status})
        tx.signal(req.run_id, approval_signal_name(req.id), payload, now)


def approval_signal_name(approval_id: str) -> str:
    """The signal that wakes a run when its approval request is decided."""
    return f"approval:{approval_id}"


def _may_decide(principal: Principal, req: ApprovalRequest) -> bool:
    roles = req.deciding_roles
    return principal.tenant == req.tenant and ("*" in roles or bool(set(principal.roles) & set(roles)))


def _check(
    principal: Principal, req: ApprovalRequest | None, approval_id: str, now: float, decision: str,
    edited: dict[str, Any] | None, seen_hash: str | None, *, run_live: bool = True,
) -> ApprovalRefused | None:  # fmt: skip
    """Why `principal` may not take this decision now, or None. The order matters: a request of
    another tenant is not described to its operators beyond that."""

    def refuse(code: str, message: str) -> ApprovalRefused:
        return ApprovalRefused(message, code=code, approval_id=approval_id, run_id=req.run_id if req else None)

    if req is None:
        return refuse("unknown", f"no approval request {approval_id}")
    if principal.tenant != req.tenant:
        return refuse(
            "wrong_tenant", f"{principal.name} is an operator of tenant {principal.tenant}, not of this request's"
        )
    if not _may_decide(principal, req):
        return refuse(
            "missing_role", f"{principal.name} has roles {principal.roles}; deciding needs one of {req.deciding_roles}"
        )
    if req.status == "withdrawn" or (req.open and not run_live):
        return refuse("run_ended", f"run {req.run_id} ended before a decision: nothing waits for this request")
    if not req.open:
        return refuse(
            "expired" if req.status == "expired" else "already_decided", f"the request is already {req.status}"
        )
    if req.expires_at is not None and now >= req.expires_at:
        return refuse("expired", "the request expired: the call will not run (the agent may stage it again)")
    if decision == "approve" and req.spec.four_eyes and principal.name == req.requested_by:
        return refuse("self_approval", f"{principal.name} asked for this run: four-eyes needs another approver")
    if seen_hash is not None and seen_hash != req.args_hash:
        return refuse("stale_args", "the arguments changed since you looked: reload the request and decide again")
    if edited is not None and decision == "approve":
        changed = {k for k in set(edited) | set(req.args) if edited.get(k) != req.args.get(k)}
        locked = sorted(changed - set(req.spec.editable_args))
        if locked:
            return refuse("not_editable", f"the rule {req.rule} does not let approvers change {locked}")
    return None


def _request(row: ApprovalRow) -> ApprovalRequest:
    data = row.to_dict()
    data["votes"] = [Vote.model_validate(dataclasses.asdict(v)) for v in row.votes]
    data["spec"] = ApprovalSpec.model_validate(row.spec)
    return ApprovalRequest.model_validate(data)


def _loaded(tx: Tx, approval_id: str, tenant: str | None = None) -> ApprovalRequest:
    """A request read in `tx`; ApprovalRefused(code="unknown") when there is none (in `tenant`)."""
    row = tx.approvals.get(approval_id, tenant=tenant)
    if row is None:
        raise ApprovalRefused(f"no approval request {approval_id}", code="unknown", approval_id=approval_id)
    return _request(row)
