"""`Approvals`: operators and their tokens, approval requests, decisions, and the audit trail.

Every decision is one store transaction: the checks (token, tenant, role, four-eyes, state,
expiry, argument hash), the vote, the request's new state, the audit record and, when the
request is decided, the signal that wakes the run. A refusal changes nothing but the audit
trail: its record is committed, then the typed error is raised.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from agentflow.approvals._models import (
    ApprovalRequest,
    AuditEntry,
    Principal,
    Vote,
    args_hash,
    request_id,
)
from agentflow.errors import ApprovalRefused, AuthenticationError, ConfigurationError
from agentflow.policy import ApprovalSpec, PolicyDecision

if TYPE_CHECKING:
    from agentflow.engine import App
    from agentflow.store._backend import Conn

T = TypeVar("T")
_List = list  # `Approvals.list` shadows the builtin inside the class
TOKEN_PREFIX = "aft_"
_COLUMNS = (
    "id, run_id, call_id, tenant, requested_by, tool, args, args_hash, diff, rule, pack_hash, spec, status, "
    "created_at, expires_at, decided_at, revision"
)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass
class _Refusal:
    error: ApprovalRefused | AuthenticationError


class Approvals:
    """Approvals over an app's store (`app.approvals`)."""

    def __init__(self, app: App) -> None:
        self.app = app

    # -- principals ------------------------------------------------------------------------
    def add_operator(self, name: str, *, tenant: str, roles: list[str]) -> tuple[Principal, str]:
        """Create an operator; return it and its API token (shown once: only its hash is kept)."""
        if not name or not tenant or not roles:
            raise ConfigurationError("an operator needs a name, a tenant and at least one role")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        principal = Principal(id=uuid.uuid4().hex, name=name, tenant=tenant, roles=sorted(set(roles)))

        def body(conn: Conn) -> None:
            taken = conn.execute("SELECT 1 FROM af_principals WHERE tenant = ? AND name = ?", (tenant, name))
            if taken.fetchone() is not None:
                raise ConfigurationError(f"operator {name!r} already exists in tenant {tenant!r}")
            conn.execute(
                "INSERT INTO af_principals (id, name, tenant, roles, token_hash, created_at, disabled) "
                "VALUES (?, ?, ?, ?, ?, ?, 0)",
                (principal.id, name, tenant, json.dumps(principal.roles), token_hash(token), self._now()),
            )
            _audit(
                conn, self._now(), tenant, "admin", "operator_added", None, None, "done", f"{name} {principal.roles}"
            )

        self._transact(body)
        return principal, token

    def operators(self, *, tenant: str | None = None) -> list[Principal]:
        sql = "SELECT id, name, tenant, roles FROM af_principals WHERE disabled = 0"
        params: tuple[Any, ...] = ()
        if tenant is not None:
            sql, params = sql + " AND tenant = ?", (tenant,)
        rows = self.app.store.backend.query(sql + " ORDER BY tenant, name", params)
        return [Principal(id=r[0], name=r[1], tenant=r[2], roles=json.loads(r[3])) for r in rows]

    def authenticate(self, token: str | None, *, approval_id: str | None = None) -> Principal:
        """The operator a token belongs to.

        Raises:
            AuthenticationError: missing, unknown or disabled token (audited).
        """
        found = self._principal(token) if token else None
        if found is None:
            error = AuthenticationError(
                "the operator token is missing or unknown: pass the token `agentflow operators add` printed",
                code="bad_token",
            )
            self._transact(lambda conn: _audit(conn, self._now(), None, "anonymous", "authenticate", approval_id,
                                               None, "refused", error.message))  # fmt: skip
            raise error
        return found

    def principal(self, principal_id: str) -> Principal | None:
        """The enabled operator with this id (a session re-reads it on every request, so a
        disabled operator or changed roles take effect at once)."""
        return self._one("id = ?", principal_id)

    def _principal(self, token: str) -> Principal | None:
        return self._one("token_hash = ?", token_hash(token))

    def _one(self, where: str, value: str) -> Principal | None:
        rows = self.app.store.backend.query(
            f"SELECT id, name, tenant, roles FROM af_principals WHERE {where} AND disabled = 0", (value,)
        )
        return (
            Principal(id=rows[0][0], name=rows[0][1], tenant=rows[0][2], roles=json.loads(rows[0][3])) if rows else None
        )

    # -- requests (made by the agent's recorded steps) -------------------------------------
    def request(
        self, *, run_id: str, call_id: str, tenant: str, requested_by: str | None, tool: str,
        args: dict[str, Any], decision: PolicyDecision, diff: Any = None, step: str = "",
    ) -> ApprovalRequest:  # fmt: skip
        """Create the approval request for a staged call (idempotent: the same run, gated call
        (`step`, the gate's key for it), tool and arguments give the same request)."""
        digest = args_hash(args)
        rule = decision.approval_rule or decision.rule
        rid = request_id(run_id, call_id, digest, f"{tool}\x00{step or decision.key}\x00{rule}")
        spec = decision.approval or ApprovalSpec(roles=["*"])
        now = self._now()

        def body(conn: Conn) -> ApprovalRequest:
            found = _load(conn, rid)
            if found is not None:
                return found
            conn.execute(
                f"INSERT INTO af_approvals ({_COLUMNS}) VALUES ({', '.join('?' * 17)}) ON CONFLICT (id) DO NOTHING",
                (rid, run_id, call_id, tenant, requested_by, tool, json.dumps(args), digest,
                 None if diff is None else json.dumps(diff, default=str), rule, decision.pack_hash,
                 spec.model_dump_json(), "pending", now, now + spec.expires_in, None, 1),
            )  # fmt: skip
            _audit(conn, now, tenant, requested_by or "agent", "requested", rid, run_id, "done",
                   f"{tool} needs approval by rule {decision.approval_rule or decision.rule}")  # fmt: skip
            loaded = _load(conn, rid)
            assert loaded is not None
            return loaded

        return self._transact(body)

    def expire(self, approval_id: str) -> ApprovalRequest:
        """Called when the wait ran out: an open request past its expiry is escalated once (if
        its rule says so, with a new expiry) or expired. Anything else is returned as it is."""
        now = self._now()

        def body(conn: Conn) -> ApprovalRequest:
            req = _load(conn, approval_id)
            if req is None:
                raise ApprovalRefused(f"no approval request {approval_id}", code="unknown", approval_id=approval_id)
            if not req.open or req.expires_at is None or now < req.expires_at:
                return req
            if req.status == "pending" and req.spec.on_expiry == "escalate":
                conn.execute("UPDATE af_approvals SET status = 'escalated', expires_at = ? WHERE id = ?",
                             (now + req.spec.expires_in, approval_id))  # fmt: skip
                reason = f"escalated to {req.spec.escalate_to}"
            else:
                conn.execute("UPDATE af_approvals SET status = 'expired', decided_at = ? WHERE id = ?",
                             (now, approval_id))  # fmt: skip
                reason = "no decision before the expiry: the call is not run"
            _audit(conn, now, req.tenant, "agentflow", "expired", approval_id, req.run_id, "done", reason)
            loaded = _load(conn, approval_id)
            assert loaded is not None
            return loaded

        return self._transact(body)

    # -- reading -----------------------------------------------------------------------------
    def get(self, approval_id: str) -> ApprovalRequest:
        """One request with its votes.

        Raises:
            ApprovalRefused: code "unknown" when there is no such request.
        """
        found = self._read(lambda conn: _load(conn, approval_id))
        if found is None:
            raise ApprovalRefused(f"no approval request {approval_id}", code="unknown", approval_id=approval_id)
        return found

    def list(
        self, *, tenant: str | None = None, status: str | None = "pending", run_id: str | None = None,
        for_principal: Principal | None = None,
    ) -> _List[ApprovalRequest]:  # fmt: skip
        """Requests, newest first. `status="pending"` lists open ones (pending or escalated);
        `for_principal` keeps those that operator may decide (tenant and role)."""
        clauses, params = _equal(tenant=tenant, run_id=run_id)
        if status == "pending":
            clauses.append("status IN ('pending', 'escalated')")
        elif status is not None:
            clauses.append("status = ?")
            params.append(status)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        ids = [r[0] for r in self.app.store.backend.query(
            f"SELECT id FROM af_approvals{where} ORDER BY created_at DESC, id", tuple(params))]  # fmt: skip
        found = [self.get(i) for i in ids]
        if for_principal is not None:
            found = [r for r in found if _may_decide(for_principal, r)]
        return found

    def audit(self, *, approval_id: str | None = None, run_id: str | None = None) -> _List[AuditEntry]:
        sql = "SELECT id, at, tenant, actor, action, approval_id, run_id, outcome, reason FROM af_audit"
        clauses, params = _equal(approval_id=approval_id, run_id=run_id)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self.app.store.backend.query(sql + where + " ORDER BY id", tuple(params))
        fields = list(AuditEntry.model_fields)
        return [AuditEntry.model_validate(dict(zip(fields, r, strict=True))) for r in rows]

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
        return _check(by, req, req.id, self._now(), decision, None, None)

    def reject(self, approval_id: str, *, by: Principal | str, comment: str = "") -> ApprovalRequest:
        """Reject as `by`: one rejection by an operator who may decide ends the request."""
        return self._decide(approval_id, by, "reject", comment, None, None)

    def _decide(
        self, approval_id: str, by: Principal | str, decision: str, comment: str,
        edited: dict[str, Any] | None, seen_hash: str | None,
    ) -> ApprovalRequest:  # fmt: skip
        principal = by if isinstance(by, Principal) else self.authenticate(by, approval_id=approval_id)
        now = self._now()

        def body(conn: Conn) -> ApprovalRequest | _Refusal:
            req = _load(conn, approval_id)
            refusal = _check(principal, req, approval_id, now, decision, edited, seen_hash)
            if refusal is not None:
                _audit(conn, now, principal.tenant, principal.name, decision, approval_id,
                       req.run_id if req else None, "refused", f"{refusal.code}: {refusal.message}")  # fmt: skip
                return _Refusal(refusal)
            assert req is not None
            return self._vote(conn, req, principal, decision, comment, edited, now)

        outcome = self._transact(body)
        if isinstance(outcome, _Refusal):
            raise outcome.error
        return outcome

    def _vote(
        self, conn: Conn, req: ApprovalRequest, principal: Principal, decision: str, comment: str,
        edited: dict[str, Any] | None, now: float,
    ) -> ApprovalRequest:  # fmt: skip
        revision = req.revision
        if edited is not None and edited != req.args:
            revision += 1
            # The staged diff was the tool's preview of the old arguments: showing it beside the
            # edited ones would show approvers a change that is not the one that will run.
            conn.execute("UPDATE af_approvals SET args = ?, args_hash = ?, revision = ?, diff = NULL WHERE id = ?",
                         (json.dumps(edited), args_hash(edited), revision, req.id))  # fmt: skip
            _audit(conn, now, req.tenant, principal.name, "edited", req.id, req.run_id, "done",
                   f"arguments changed: {sorted(k for k in edited if edited.get(k) != req.args.get(k))}")  # fmt: skip
        elif any(
            v.principal == principal.name and v.revision == revision and v.decision == decision for v in req.votes
        ):
            _audit(conn, now, req.tenant, principal.name, decision, req.id, req.run_id, "done",
                   "repeated decision: counted once")  # fmt: skip
            return req
        conn.execute(
            "INSERT INTO af_approval_votes (approval_id, principal_id, principal, decision, comment, revision, at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (approval_id, principal_id) DO UPDATE SET "
            "principal = excluded.principal, decision = excluded.decision, comment = excluded.comment, "
            "revision = excluded.revision, at = excluded.at",
            (req.id, principal.id, principal.name, decision, comment, revision, now),
        )
        approvals = 1 + sum(1 for v in req.votes if v.decision == "approve" and v.revision == revision
                            and v.principal != principal.name)  # fmt: skip
        status = "rejected" if decision == "reject" else ("approved" if approvals >= req.spec.quorum else None)
        note = comment or ""
        if status is not None:
            conn.execute("UPDATE af_approvals SET status = ?, decided_at = ? WHERE id = ?", (status, now, req.id))
            self._wake(conn, req, status, now)
            note = f"{status} ({approvals}/{req.spec.quorum}) {comment}".strip()
        else:
            note = f"approval {approvals}/{req.spec.quorum} {comment}".strip()
        _audit(conn, now, req.tenant, principal.name, decision, req.id, req.run_id, "done", note)
        loaded = _load(conn, req.id)
        assert loaded is not None
        return loaded

    def _wake(self, conn: Conn, req: ApprovalRequest, status: str, now: float) -> None:
        """Deliver the wake-up signal in the decision's transaction (the run re-reads the
        request itself: the payload is only informative)."""
        alive = conn.execute(
            "SELECT 1 FROM af_runs WHERE id = ? AND status NOT IN ('completed', 'failed', 'cancelled')", (req.run_id,)
        ).fetchone()
        if alive is None:
            return
        payload = json.dumps({"approval_id": req.id, "status": status})
        for sql, params, _ in self.app.store.signal_ops(req.run_id, approval_signal_name(req.id), payload, now):
            conn.execute(sql, params)

    # -- plumbing ----------------------------------------------------------------------------
    def _now(self) -> float:
        return self.app.clock.now()

    def _transact(self, body: Callable[[Conn], T]) -> T:
        return self.app.store.backend.transact(body, what="recording an approval")

    def _read(self, body: Callable[[Conn], T]) -> T:
        return body(self.app.store.backend.conn)


def approval_signal_name(approval_id: str) -> str:
    """The signal that wakes a run when its approval request is decided."""
    return f"approval:{approval_id}"


def _equal(**columns: str | None) -> tuple[list[str], list[Any]]:
    """`column = ?` filters (and their parameters) for the columns given a value."""
    given = {c: v for c, v in columns.items() if v is not None}
    return [f"{c} = ?" for c in given], list(given.values())


def _may_decide(principal: Principal, req: ApprovalRequest) -> bool:
    roles = req.deciding_roles
    return principal.tenant == req.tenant and ("*" in roles or bool(set(principal.roles) & set(roles)))


def _check(
    principal: Principal, req: ApprovalRequest | None, approval_id: str, now: float, decision: str,
    edited: dict[str, Any] | None, seen_hash: str | None,
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


def _load(conn: Conn, approval_id: str) -> ApprovalRequest | None:
    row = conn.execute(f"SELECT {_COLUMNS} FROM af_approvals WHERE id = ?", (approval_id,)).fetchone()
    if row is None:
        return None
    votes = [
        Vote(principal=v[0], decision=v[1], comment=v[2], revision=v[3], at=v[4])
        for v in conn.execute(
            "SELECT principal, decision, comment, revision, at FROM af_approval_votes WHERE approval_id = ? "
            "ORDER BY at, principal", (approval_id,))
    ]  # fmt: skip
    names = _COLUMNS.split(", ")
    data = dict(zip(names, row, strict=True))
    data["args"] = json.loads(data["args"])
    data["diff"] = json.loads(data["diff"]) if data["diff"] else None
    data["spec"] = ApprovalSpec.model_validate_json(data["spec"])
    return ApprovalRequest.model_validate({**data, "votes": votes})


def _audit(
    conn: Conn, at: float, tenant: str | None, actor: str, action: str, approval_id: str | None,
    run_id: str | None, outcome: str, reason: str,
) -> None:  # fmt: skip
    conn.execute(
        "INSERT INTO af_audit (at, tenant, actor, action, approval_id, run_id, outcome, reason) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (at, tenant, actor, action, approval_id, run_id, outcome, reason),
    )
