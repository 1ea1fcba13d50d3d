"""Governance records: operators (principals), approval requests and their votes, the audit trail.

These are the store's SQL for `agentflow.approvals`; the rules (roles, quorum, four-eyes, expiry)
live there. Everything here runs on one connection: inside `EventStore.transaction(...)` the
reads and writes of one decision are one atomic transaction.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from agentflow.store._backend import Records
from agentflow.store._constants import OPEN_STATUSES

_APPROVAL_COLUMNS = (
    "id, run_id, call_id, tenant, requested_by, tool, args, args_hash, diff, rule, pack_hash, spec, status, "
    "created_at, expires_at, decided_at, revision"
)
_AUDIT_COLUMNS = "id, at, tenant, actor, action, approval_id, run_id, outcome, reason"


@dataclass(frozen=True, slots=True)
class PrincipalRow:
    """An operator: id, name, tenant, roles; whether they are disabled, when they were added."""

    id: str
    name: str
    tenant: str
    roles: list[str]
    disabled: bool = False
    created_at: float = 0.0


@dataclass(frozen=True, slots=True)
class TokenRow:
    """An operator's API token as stored, without its hash: its id, whose it is, when it was
    issued, when it expires (None: never) and when it was revoked (None: it was not)."""

    id: str
    principal_id: str
    tenant: str
    created_at: float
    expires_at: float | None
    revoked_at: float | None


@dataclass(frozen=True, slots=True)
class VoteRow:
    principal: str
    decision: str
    comment: str
    revision: int
    at: float


@dataclass(slots=True)
class ApprovalRow:
    """An approval request as stored (JSON columns decoded: `args`, `diff`, `spec`)."""

    id: str
    run_id: str
    call_id: str
    tenant: str
    requested_by: str | None
    tool: str
    args: dict[str, Any]
    args_hash: str
    diff: Any
    rule: str
    pack_hash: str
    spec: dict[str, Any]
    status: str
    created_at: float
    expires_at: float | None
    decided_at: float | None
    revision: int
    votes: list[VoteRow] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}


@dataclass(frozen=True, slots=True)
class AuditRow:
    id: int
    at: float
    tenant: str | None
    actor: str
    action: str
    approval_id: str | None
    run_id: str | None
    outcome: str
    reason: str


def equal_filters(**columns: Any) -> tuple[list[str], list[Any]]:
    """`column = ?` clauses (and their parameters) for the columns given a value."""
    given = {c: v for c, v in columns.items() if v is not None}
    return [f"{c} = ?" for c in given], list(given.values())


def _where(clauses: list[str]) -> str:
    return f" WHERE {' AND '.join(clauses)}" if clauses else ""


_PRINCIPAL_COLUMNS = "id, name, tenant, roles, disabled, created_at"
_TOKEN_COLUMNS = "id, principal_id, tenant, created_at, expires_at, revoked_at"


class PrincipalRecords(Records):
    """Operators (`af_principals`); every statement but the sign-in lookup names the tenant."""

    def exists(self, tenant: str, name: str) -> bool:
        return self.by_name(tenant, name) is not None

    def add(self, *, id: str, name: str, tenant: str, roles: list[str], now: float) -> None:
        self._write(
            "INSERT INTO af_principals (id, name, tenant, roles, created_at, disabled) VALUES (?, ?, ?, ?, ?, 0)",
            (id, name, tenant, json.dumps(roles), now),
        )

    def by_id(self, principal_id: str, *, tenant: str) -> PrincipalRow | None:
        """The operator with this id in `tenant`, disabled or not."""
        return self._one("id = ? AND tenant = ?", principal_id, tenant)

    def by_name(self, tenant: str, name: str) -> PrincipalRow | None:
        return self._one("tenant = ? AND name = ?", tenant, name)

    def by_token_hash(self, digest: str) -> tuple[PrincipalRow, TokenRow] | None:
        """Who a token is (the sign-in lookup: no tenant is known yet) and the token's state."""
        cols = ", ".join([*(f"p.{c}" for c in _PRINCIPAL_COLUMNS.split(", ")),
                          *(f"t.{c}" for c in _TOKEN_COLUMNS.split(", "))])  # fmt: skip
        row = self.conn.execute(
            f"SELECT {cols} FROM af_operator_tokens t JOIN af_principals p ON p.id = t.principal_id "
            "WHERE t.token_hash = ?",
            (digest,),
        ).fetchone()
        return None if row is None else (_principal(row[:6]), TokenRow(*row[6:]))

    def list(self, *, tenant: str | None = None, name: str | None = None) -> list[PrincipalRow]:
        """Operators, disabled ones too, by tenant and name."""
        clauses, params = equal_filters(tenant=tenant, name=name)
        rows = self.conn.execute(
            f"SELECT {_PRINCIPAL_COLUMNS} FROM af_principals" + _where(clauses) + " ORDER BY tenant, name", params
        ).fetchall()
        return [_principal(r) for r in rows]

    def set_disabled(self, principal_id: str, *, tenant: str, disabled: bool) -> None:
        self._write(
            "UPDATE af_principals SET disabled = ? WHERE id = ? AND tenant = ?", (int(disabled), principal_id, tenant)
        )

    def _one(self, where: str, *values: str) -> PrincipalRow | None:
        row = self.conn.execute(f"SELECT {_PRINCIPAL_COLUMNS} FROM af_principals WHERE {where}", values).fetchone()
        return None if row is None else _principal(row)


def _principal(row: Any) -> PrincipalRow:
    return PrincipalRow(id=row[0], name=row[1], tenant=row[2], roles=json.loads(row[3]), disabled=bool(row[4]),
                        created_at=float(row[5]))  # fmt: skip


class TokenRecords(Records):
    """Operators' API tokens (`af_operator_tokens`): hashes only, kept after revocation or expiry."""

    def add(self, row: TokenRow, *, token_hash: str) -> None:
        self._write(
            f"INSERT INTO af_operator_tokens ({_TOKEN_COLUMNS}, token_hash) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (row.id, row.principal_id, row.tenant, row.created_at, row.expires_at, row.revoked_at, token_hash),
        )

    def get(self, token_id: str, *, tenant: str) -> TokenRow | None:
        row = self.conn.execute(
            f"SELECT {_TOKEN_COLUMNS} FROM af_operator_tokens WHERE id = ? AND tenant = ?", (token_id, tenant)
        ).fetchone()
        return None if row is None else TokenRow(*row)

    def list(self, *, tenant: str | None = None, principal_id: str | None = None) -> list[TokenRow]:
        """Tokens, oldest first."""
        clauses, params = equal_filters(tenant=tenant, principal_id=principal_id)
        sql = f"SELECT {_TOKEN_COLUMNS} FROM af_operator_tokens" + _where(clauses) + " ORDER BY created_at, id"
        return [TokenRow(*r) for r in self.conn.execute(sql, params).fetchall()]

    def revoke(self, principal_id: str, *, tenant: str, at: float) -> None:
        """Revoke the principal's tokens not revoked yet (expired ones too: they stay refused)."""
        self._write(
            "UPDATE af_operator_tokens SET revoked_at = ? WHERE principal_id = ? AND tenant = ? AND revoked_at IS NULL",
            (at, principal_id, tenant),
        )


class ApprovalRecords(Records):
    """Approval requests and votes (`af_approvals`, `af_approval_votes`)."""

    def get(self, approval_id: str, *, tenant: str | None = None) -> ApprovalRow | None:
        """The request with its votes; with `tenant`, only if it is that tenant's (in the query)."""
        clauses, params = equal_filters(id=approval_id, tenant=tenant)
        row = self.conn.execute(f"SELECT {_APPROVAL_COLUMNS} FROM af_approvals" + _where(clauses), params)
        found = row.fetchone()
        if found is None:
            return None
        data = dict(zip(_APPROVAL_COLUMNS.split(", "), found, strict=True))
        opened, tenant, rid = self.seals.open, data["tenant"], data["id"]
        data["args"] = json.loads(opened(data["args"], tenant, "af_approvals.args", rid) or "null")
        diff = opened(data["diff"], tenant, "af_approvals.diff", rid)
        data["diff"] = json.loads(diff) if diff else None
        data["spec"] = json.loads(data["spec"])
        votes = self.conn.execute(  # joined to name the request's tenant: every read carries one
            "SELECT v.principal, v.decision, v.comment, v.revision, v.at, v.principal_id FROM af_approval_votes v "
            "JOIN af_approvals a ON a.id = v.approval_id WHERE v.approval_id = ? AND a.tenant = ? "
            "ORDER BY v.at, v.principal",
            (rid, tenant),
        ).fetchall()
        return ApprovalRow(**data, votes=[
            VoteRow(v[0], v[1], opened(v[2], tenant, "af_approval_votes.comment", rid, v[5]) or "", v[3], v[4])
            for v in votes
        ])  # fmt: skip

    def add(self, row: ApprovalRow) -> None:
        """Insert a request (a second insert of the same id is a no-op)."""
        self._write(
            f"INSERT INTO af_approvals ({_APPROVAL_COLUMNS}) VALUES ({', '.join('?' * 17)}) "
            "ON CONFLICT (id) DO NOTHING",
            (row.id, row.run_id, row.call_id, row.tenant, row.requested_by, row.tool,
             self.seals.seal(json.dumps(row.args), row.tenant, "af_approvals.args", row.id), row.args_hash,
             self.seals.seal(None if row.diff is None else json.dumps(row.diff, default=str), row.tenant,
                             "af_approvals.diff", row.id), row.rule,
             row.pack_hash, json.dumps(row.spec), row.status, row.created_at, row.expires_at, row.decided_at,
             row.revision),
        )  # fmt: skip

    def ids(
        self, *, tenant: str | None = None, run_id: str | None = None, statuses: Sequence[str] | None = None
    ) -> list[str]:
        """Request ids, newest first (of any status when `statuses` is None)."""
        clauses, params = equal_filters(tenant=tenant, run_id=run_id)
        if statuses is not None:
            clauses.append(f"status IN ({', '.join('?' * len(statuses))})")
            params.extend(statuses)
        sql = "SELECT id FROM af_approvals" + _where(clauses) + " ORDER BY created_at DESC, id"
        return [r[0] for r in self.conn.execute(sql, params).fetchall()]

    def count_open(self, run_id: str) -> int:
        sql = (
            f"SELECT count(*) FROM af_approvals WHERE run_id = ? AND status IN ({', '.join('?' * len(OPEN_STATUSES))})"
        )
        return int(self.conn.execute(sql, (run_id, *OPEN_STATUSES)).fetchone()[0])

    def set_status(self, approval_id: str, status: str, *, tenant: str, at: float) -> None:
        """A final status (approved, rejected, expired), decided at `at`."""
        self._write(
            "UPDATE af_approvals SET status = ?, decided_at = ? WHERE id = ? AND tenant = ?",
            (status, at, approval_id, tenant),
        )

    def escalate(self, approval_id: str, *, tenant: str, expires_at: float) -> None:
        self._write(
            "UPDATE af_approvals SET status = 'escalated', expires_at = ? WHERE id = ? AND tenant = ?",
            (expires_at, approval_id, tenant),
        )

    def edit_args(self, approval_id: str, args: dict[str, Any], digest: str, revision: int, *, tenant: str) -> None:
        """New arguments (a new revision); the preview diff of the old ones is dropped."""
        sealed = self.seals.seal(json.dumps(args), tenant, "af_approvals.args", approval_id)
        self._write(
            "UPDATE af_approvals SET args = ?, args_hash = ?, revision = ?, diff = NULL WHERE id = ? AND tenant = ?",
            (sealed, digest, revision, approval_id, tenant),
        )

    def vote(
        self, approval_id: str, *, tenant: str, principal_id: str, principal: str, decision: str, comment: str,
        revision: int, at: float,
    ) -> None:  # fmt: skip
        """Record a principal's vote (a later vote of the same principal replaces it); only on a
        request of `tenant` (the insert selects the request with its tenant)."""
        where = ("af_approval_votes.comment", approval_id, principal_id)
        comment = self.seals.seal(self.clean(comment), tenant, *where) or ""
        self._write(
            "INSERT INTO af_approval_votes (approval_id, principal_id, principal, decision, comment, revision, at) "
            "SELECT id, ?, ?, ?, ?, ?, ? FROM af_approvals WHERE id = ? AND tenant = ? "
            "ON CONFLICT (approval_id, principal_id) DO UPDATE SET "
            "principal = excluded.principal, decision = excluded.decision, comment = excluded.comment, "
            "revision = excluded.revision, at = excluded.at",
            (principal_id, principal, decision, comment, revision, at, approval_id, tenant),
        )


class AuditRecords(Records):
    """The audit trail (`af_audit`): every decision and refusal, with its actor and reason."""

    def add(
        self, *, at: float, tenant: str | None, actor: str, action: str, approval_id: str | None,
        run_id: str | None, outcome: str, reason: str,
    ) -> None:  # fmt: skip
        self._write(
            "INSERT INTO af_audit (at, tenant, actor, action, approval_id, run_id, outcome, reason) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (at, tenant, actor, action, approval_id, run_id, outcome,
             self.seals.seal(self.clean(reason), tenant, "af_audit.reason", approval_id, run_id)),
        )  # fmt: skip

    def list(self, *, approval_id: str | None = None, run_id: str | None = None) -> list[AuditRow]:
        clauses, params = equal_filters(approval_id=approval_id, run_id=run_id)
        rows = self.conn.execute(f"SELECT {_AUDIT_COLUMNS} FROM af_audit" + _where(clauses) + " ORDER BY id", params)
        opened = self.seals.open
        return [AuditRow(*(*r[:8], opened(r[8], r[2], "af_audit.reason", r[5], r[6]) or "")) for r in rows.fetchall()]
