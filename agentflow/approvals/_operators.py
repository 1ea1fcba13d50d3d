"""Operators and their API tokens: add, list, disable, enable, revoke, rotate, expiry, and the
check of a token (or of the token a web session signed in with) on every use.

Token times (issued, expires, revoked) are wall-clock time, whatever clock the workflows run on
(a demo may run its workflows 30 days back): a token's life is a security property in real time,
like a web session's. The audit trail records these actions on the app's clock, like decisions.
A refused token says why (`code`) and how to get going again:

    bad_token          missing or unknown            pass the token `operators add|rotate` printed
    token_revoked      `operators revoke|rotate`     `agentflow operators rotate NAME --tenant T`
    token_expired      past its `--expires-in|at`    `agentflow operators rotate NAME --tenant T`
    operator_disabled  `operators disable`           `agentflow operators enable NAME --tenant T`
"""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal, TypeVar

from agentflow.approvals._models import Operator, OperatorStatus, OperatorToken, Principal, TokenStatus
from agentflow.errors import AuthenticationError, ConfigurationError
from agentflow.store import EventStore, PrincipalRow, TokenRow, Tx, check_tenant

if TYPE_CHECKING:
    from agentflow.engine import Clock

T = TypeVar("T")
TOKEN_PREFIX = "aft_"
#: `rotate(expires_at=SAME)`: the new token lives as long as the one it replaces.
SAME: Literal["same"] = "same"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Operators:
    """The operators of one store; `Approvals` adds the requests and decisions.

    Args:
        store: the store.
        clock: the app's clock (audit times, approval expiry).
        wall: wall-clock time for token lifetimes (default: `time.time`; tests pass their own).
    """

    def __init__(self, store: EventStore, clock: Clock, *, wall: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock
        self.wall = wall

    def add_operator(
        self, name: str, *, tenant: str, roles: list[str], expires_at: float | None = None
    ) -> tuple[Principal, str]:
        """Create an operator; return it and its API token (shown once: only its hash is kept).

        Args:
            expires_at: when the token stops working (wall-clock epoch seconds; None: never).
        """
        if not name or not tenant or not roles:
            raise ConfigurationError("an operator needs a name, a tenant and at least one role")
        check_tenant(tenant)
        wall = self._future(expires_at)
        principal = Principal(id=uuid.uuid4().hex, name=name, tenant=tenant, roles=sorted(set(roles)))
        now = self._now()

        def body(tx: Tx) -> str:
            if tx.principals.exists(tenant, name):
                raise ConfigurationError(f"operator {name!r} already exists in tenant {tenant!r}")
            tx.principals.add(id=principal.id, name=name, tenant=tenant, roles=principal.roles, now=wall)
            token, principal.token_id = _issue(tx, principal.id, tenant, wall, expires_at)
            self._audit(tx, tenant, "operator_added", f"{name} {principal.roles}{_until(expires_at)}", now)
            return token

        return principal, self._transact(body, tenant)

    def operators(self, *, tenant: str | None = None, name: str | None = None) -> list[Operator]:
        """Operators (disabled ones too), with their status and tokens, by tenant and name."""

        def body(tx: Tx) -> list[tuple[PrincipalRow, list[TokenRow]]]:
            tokens: dict[str, list[TokenRow]] = {}
            for t in tx.tokens.list(tenant=tenant):
                tokens.setdefault(t.principal_id, []).append(t)
            return [(p, tokens.get(p.id, [])) for p in tx.principals.list(tenant=tenant, name=name)]

        now = self.wall()
        return [_operator(p, tokens, now) for p, tokens in self.store.read(body)]

    def operator(self, name: str, *, tenant: str | None = None) -> Operator:
        """The operator `name` (of `tenant`; without it, of the only tenant that has one).

        Raises:
            ConfigurationError: no such operator, or one in several tenants and no `tenant`.
        """
        found = self.operators(tenant=tenant, name=name)
        if not found:
            where = f" in tenant {tenant!r}" if tenant else ""
            raise ConfigurationError(f"no operator {name!r}{where}: `agentflow operators list` shows them")
        if len(found) > 1:
            tenants = ", ".join(o.tenant for o in found)
            raise ConfigurationError(f"{name!r} is an operator of several tenants ({tenants}): name one with --tenant")
        return found[0]

    def disable(self, name: str, *, tenant: str | None = None) -> Operator:
        """Refuse every token of the operator (and end their web sessions) until `enable`."""
        return self._change(name, tenant, "operator_disabled", lambda tx, p, _: tx.principals.set_disabled(
            p.id, tenant=p.tenant, disabled=True))  # fmt: skip

    def enable(self, name: str, *, tenant: str | None = None) -> Operator:
        """Accept the operator's live tokens again."""
        return self._change(name, tenant, "operator_enabled", lambda tx, p, _: tx.principals.set_disabled(
            p.id, tenant=p.tenant, disabled=False))  # fmt: skip

    def revoke(self, name: str, *, tenant: str | None = None) -> Operator:
        """Revoke every token of the operator (their web sessions end too); `rotate` issues a new one."""
        return self._change(name, tenant, "tokens_revoked", lambda tx, p, wall: tx.tokens.revoke(
            p.id, tenant=p.tenant, at=wall))  # fmt: skip

    def rotate(
        self, name: str, *, tenant: str | None = None, expires_at: float | Literal["same"] | None = SAME
    ) -> tuple[Operator, str]:
        """Issue a new token and revoke the operator's others; return the operator and the token
        (shown once).

        Args:
            expires_at: when the new token stops working (wall-clock epoch seconds; None: never;
                `"same"`: as long after now as the newest token it replaces lived, or never).
        """
        issued: list[str] = []

        if expires_at != SAME:
            self._future(expires_at)  # refused before anything changes

        def change(tx: Tx, p: PrincipalRow, wall: float) -> None:
            if expires_at == SAME:
                ends = _same_life(tx.tokens.list(tenant=p.tenant, principal_id=p.id), wall)
            else:
                ends = expires_at
            tx.tokens.revoke(p.id, tenant=p.tenant, at=wall)
            issued.append(_issue(tx, p.id, p.tenant, wall, ends)[0])

        operator = self._change(name, tenant, "token_rotated", change)
        return operator, issued[0]

    def authenticate(self, token: str | None, *, approval_id: str | None = None, audit: bool = True) -> Principal:
        """The operator a token belongs to.

        Args:
            token: the operator's token.
            approval_id: the request the caller was about to decide (recorded with a refusal).
            audit: record a refusal in the audit trail (a server throttling guessers passes False
                past its audit budget and records a summary instead: `audit_refusals`).

        Raises:
            AuthenticationError: a missing or unknown token (`bad_token`), a revoked or expired
                one, or a disabled operator's (the module's table); audited unless `audit=False`.
        """
        found = self.store.read(lambda tx: tx.principals.by_token_hash(token_hash(token))) if token else None
        if found is None:
            error: AuthenticationError | None = AuthenticationError(
                "the operator token is missing or unknown: pass the token `agentflow operators add` "
                "(or `operators rotate`) printed",
                code="bad_token",
            )
        else:
            error = _refused(found[0], found[1], self.wall())
        if error is not None:
            if audit:
                self.audit_refusals(1, error.message, approval_id=approval_id, tenant=error.tenant)
            raise error
        assert found is not None
        return _principal(found[0], found[1].id)

    def audit_refusals(
        self, count: int, reason: str, *, approval_id: str | None = None, tenant: str | None = None
    ) -> None:
        """Record refused authentications (one row, `count` of them when several are summed up)."""
        now = self._now()
        why = reason if count == 1 else f"{count} refused: {reason}"
        self._transact(lambda tx: tx.audit.add(at=now, tenant=tenant, actor="anonymous", action="authenticate",
                                               approval_id=approval_id, run_id=None, outcome="refused",
                                               reason=why))  # fmt: skip

    def principal(self, principal_id: str, *, tenant: str, token_id: str | None = None) -> Principal:
        """The operator a web session acts as, checked again on every request: a disabled
        operator, or the session's token (`token_id`) revoked or expired, is refused at once.

        Raises:
            AuthenticationError: as `authenticate` says (`bad_token` for a removed operator).
        """

        def body(tx: Tx) -> tuple[PrincipalRow | None, TokenRow | None]:
            return tx.principals.by_id(principal_id, tenant=tenant), tx.tokens.get(token_id, tenant=tenant) if \
                token_id else None  # fmt: skip

        found, token = self.store.read(body)
        if found is None:
            raise AuthenticationError("this operator was removed: sign in again with a valid token", code="bad_token")
        error = _refused(found, token, self.wall())
        if error is not None:
            raise error
        return _principal(found, token_id)

    # -- plumbing ----------------------------------------------------------------------------
    def _change(
        self, name: str, tenant: str | None, action: str, change: Callable[[Tx, PrincipalRow, float], None]
    ) -> Operator:
        """`change` applied to operator `name` in one transaction of its tenant, audited."""
        found = self.operator(name, tenant=tenant)
        wall, now = self.wall(), self._now()

        def body(tx: Tx) -> None:
            row = tx.principals.by_id(found.id, tenant=found.tenant)
            if row is None:
                raise ConfigurationError(f"operator {name!r} of tenant {found.tenant!r} was removed meanwhile")
            change(tx, row, wall)
            self._audit(tx, found.tenant, action, name, now)

        self._transact(body, found.tenant)
        return self.operator(name, tenant=found.tenant)

    def _audit(self, tx: Tx, tenant: str, action: str, reason: str, now: float | None = None) -> None:
        tx.audit.add(at=self._now() if now is None else now, tenant=tenant, actor="admin", action=action,
                     approval_id=None, run_id=None, outcome="done", reason=reason)  # fmt: skip

    def _future(self, expires_at: float | None) -> float:
        """Wall-clock now, checking that `expires_at` (if any) is after it."""
        wall = self.wall()
        if expires_at is not None and expires_at <= wall:
            raise ConfigurationError(
                f"the token would expire at {_utc(expires_at)}, which is not in the future: give a later time"
            )
        return wall

    def _now(self) -> float:
        return self.clock.now()

    def _transact(self, body: Callable[[Tx], T], tenant: str | None = None) -> T:
        """`body` in a transaction serialized with the tenant's other approval and policy
        transactions (a tenant's requests, votes and operators are all its checks read)."""
        locks = (f"tenant:{tenant}",) if tenant is not None else ()
        return self.store.transaction(body, what="recording an approval", locks=locks)


def _issue(tx: Tx, principal_id: str, tenant: str, wall: float, expires_at: float | None) -> tuple[str, str]:
    """A new token of the principal, stored as its hash; (token, its id)."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = TokenRow(id="tok_" + secrets.token_hex(8), principal_id=principal_id, tenant=tenant, created_at=wall,
                   expires_at=expires_at, revoked_at=None)  # fmt: skip
    tx.tokens.add(row, token_hash=token_hash(token))
    return token, row.id


def _same_life(tokens: list[TokenRow], wall: float) -> float | None:
    """The expiry of a token issued at `wall` that lives as long as the newest of `tokens`."""
    if not tokens or tokens[-1].expires_at is None:
        return None
    return wall + (tokens[-1].expires_at - tokens[-1].created_at)


def _refused(p: PrincipalRow, t: TokenRow | None, now: float) -> AuthenticationError | None:
    """Why operator `p` may not sign in with token `t` at `now`, or None."""
    who = f"operator {p.name} of tenant {p.tenant}"
    rotate = f"ask an admin for a new one: `agentflow operators rotate {p.name} --tenant {p.tenant}`"

    def refuse(code: str, message: str) -> AuthenticationError:
        return AuthenticationError(message, code=code, tenant=p.tenant)

    if t is not None and t.revoked_at is not None:
        return refuse("token_revoked", f"this token of {who} was revoked at {_utc(t.revoked_at)}: {rotate}")
    if t is not None and _token_status(t, now) == "expired":
        assert t.expires_at is not None
        return refuse("token_expired", f"this token of {who} expired at {_utc(t.expires_at)}: {rotate}")
    if p.disabled:
        return refuse("operator_disabled", f"{who} is disabled: an admin enables them again with "
                      f"`agentflow operators enable {p.name} --tenant {p.tenant}`")  # fmt: skip
    return None


def _token_status(t: TokenRow, now: float) -> TokenStatus:
    if t.revoked_at is not None:
        return "revoked"
    return "expired" if t.expires_at is not None and now >= t.expires_at else "active"


def _operator(p: PrincipalRow, tokens: list[TokenRow], now: float) -> Operator:
    listed = [OperatorToken(id=t.id, status=_token_status(t, now), created_at=t.created_at, expires_at=t.expires_at,
                            revoked_at=t.revoked_at) for t in tokens]  # fmt: skip
    live = [t for t in listed if t.status == "active"]
    ends = [t.expires_at for t in live]
    expires = None if not ends or None in ends else max(e for e in ends if e is not None)
    return Operator(id=p.id, name=p.name, tenant=p.tenant, roles=p.roles, status=_status(p, listed),
                    created_at=p.created_at, expires_at=expires, tokens=listed)  # fmt: skip


def _status(p: PrincipalRow, tokens: list[OperatorToken]) -> OperatorStatus:
    if p.disabled:
        return "disabled"
    if any(t.status == "active" for t in tokens):
        return "active"
    return "expired" if tokens and tokens[-1].status == "expired" else "revoked"


def _principal(row: PrincipalRow, token_id: str | None = None) -> Principal:
    return Principal(id=row.id, name=row.name, tenant=row.tenant, roles=row.roles, token_id=token_id)


def _until(expires_at: float | None) -> str:
    return f", token expires {_utc(expires_at)}" if expires_at is not None else ""


def _utc(value: float) -> str:
    return datetime.fromtimestamp(value, tz=UTC).strftime("%Y-%m-%d %H:%M UTC")
