"""Browser sessions of the web chat, kept in the store so they survive a server restart.

The cookie carries a 256-bit random secret; the store keeps only its SHA-256 (like operator
tokens), the operator's name, one principal per tenant the operator signed in to, the tenant
the session acts in, and a CSRF value the page must echo on every state change. Expiry is
wall-clock time, whatever clock the App's workflows use.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from dataclasses import replace

from agentflow.approvals import Approvals, Principal
from agentflow.chat import Chat
from agentflow.engine import SystemClock
from agentflow.errors import ApprovalRefused, AuthenticationError
from agentflow.store import EventStore, SessionRow, Tx

COOKIE = "af_session"
DEFAULT_TTL = 12 * 3600.0  # one operator shift


#: A live session: who, in which tenants (tenant -> principal id), acting in which one.
SessionInfo = SessionRow


def _wall_clock() -> float:
    # Sessions expire in real time even when the App's workflows run on a shifted or test clock.
    return SystemClock().now()


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class Sessions:
    """Create, find, extend to another tenant, switch tenant, and revoke sessions."""

    def __init__(self, chat: Chat, *, ttl: float = DEFAULT_TTL) -> None:
        self.chat, self.ttl = chat, ttl

    @property
    def approvals(self) -> Approvals:
        return self.chat.approvals

    @property
    def store(self) -> EventStore:
        return self.chat.store

    def sign_in(self, principal: Principal, *, tenant: str | None, cookie: str | None) -> tuple[str, SessionInfo]:
        """Sign `principal` in (its token was checked); return the cookie secret and session. Every sign-in makes a fresh
        session id (and CSRF value) and revokes the one the browser sent: a cookie planted in a
        browser before its user signs in is worth nothing afterwards. Signing in with another
        tenant's token of the operator already signed in carries that operator's tenants over;
        each of them joined with its own token.

        Raises:
            ApprovalRefused: `tenant` is given and is not the token's (code wrong_tenant).
        """
        if tenant is not None and tenant != principal.tenant:
            raise ApprovalRefused(
                f"this token is {principal.name}'s in tenant {principal.tenant}, not {tenant}: "
                "sign in with the token of that tenant",
                code="wrong_tenant",
            )
        secret, fresh = secrets.token_urlsafe(32), secrets.token_urlsafe(24)
        now = _wall_clock()

        def body(tx: Tx) -> tuple[str, SessionInfo]:
            # One transaction: a sign-in racing another sign-in or a sign-out on this browser
            # sees the session as it is, and never revives a revoked one.
            current = tx.sessions.find(_digest(cookie), now=now) if cookie else None
            principals = {principal.tenant: principal.id}
            tokens = {principal.tenant: principal.token_id} if principal.token_id else {}
            if current is not None:
                tx.sessions.revoke(current.id_hash)  # rotated: the old id never works again
                if current.operator == principal.name:
                    principals = {**current.principals, **principals}
                    tokens = {**current.tokens, **tokens}
            info = SessionInfo(id_hash=_digest(secret), operator=principal.name, principals=principals,
                               tenant=principal.tenant, csrf=fresh, expires_at=now + self.ttl,
                               tokens=tokens)  # fmt: skip
            tx.sessions.add(info, now=now)
            return secret, info

        return self.store.transaction(body, what="recording a web session")

    def find(self, cookie: str) -> SessionInfo | None:
        """The live session of a cookie (None: unknown, revoked or expired)."""
        digest, now = _digest(cookie), _wall_clock()
        return self.store.read(lambda tx: tx.sessions.find(digest, now=now))

    def principal(self, session: SessionInfo) -> Principal:
        """The principal the session acts as now, re-read: a disabled operator, or the token the
        session signed in with revoked (also by a rotation) or expired, is signed out; so is a
        session that does not say which token it signed in with (nothing could end it).

        Raises:
            AuthenticationError: which of these it is, and how to fix it.
        """
        tenant = session.tenant
        token_id = session.tokens.get(tenant)
        if not token_id:
            raise AuthenticationError(
                "this web session does not say which token it signed in with: sign in again with your operator token",
                code="session_expired",
                tenant=tenant,
            )
        return self.approvals.principal(session.principals.get(tenant, ""), tenant=tenant, token_id=token_id)

    def switch(self, session: SessionInfo, tenant: str) -> SessionInfo:
        """Act in another tenant the session signed in to."""
        if tenant not in session.principals:
            raise ApprovalRefused(
                f"{session.operator} has not signed in to tenant {tenant}: sign in with that tenant's token",
                code="wrong_tenant",
            )
        self._write(lambda tx: tx.sessions.set_tenant(session.id_hash, tenant))
        return replace(session, tenant=tenant)

    def revoke(self, session: SessionInfo) -> None:
        self._write(lambda tx: tx.sessions.revoke(session.id_hash))

    def _write(self, body: Callable[[Tx], None]) -> None:
        self.store.transaction(body, what="recording a web session")
