"""Delegated identity: chat accounts linked to operators, per tenant.

A chat bridge holds no operator's token. It acts for the person who typed: the account the chat
system vouches for (a Matrix user id, a Slack user id; never a display name, which anyone can
set) is looked up here, in the bridge's tenant, and the decision is that operator's, checked by
the same service as the web's (roles, four-eyes, quorum, expiry, stale arguments).

    approvals.link("bob", surface="matrix", account="@bob:example.org", tenant="noc-east")
    approvals.linked("matrix", "@bob:example.org", tenant="noc-east")   # -> bob's Principal
    approvals.unlink(surface="matrix", account="@bob:example.org", tenant="noc-east")

An account acts only while its operator could sign in with a token: a disabled operator, or one
whose tokens were all revoked or expired, is refused with the same code and fix as their token
would be. An unlinked account is refused (`unlinked`) with the command that links it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from agentflow.approvals._models import Principal
from agentflow.approvals._operators import Operators, _principal, _refused, _token_status
from agentflow.errors import AuthenticationError, ConfigurationError
from agentflow.store import ChatLinkRow, PrincipalRow, TokenRow, Tx, check_tenant

#: How each surface spells a user id, and an example for messages.
_ACCOUNTS = {
    # `@localpart:server`: the localpart's grammar of the Matrix spec (historical ids aside), a
    # server name (host, IPv4 or [IPv6], optional port); at most 255 characters in all.
    "matrix": (re.compile(r"@[a-z0-9._=/+\-]+:(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-]+)(:[0-9]{1,5})?"), "@bob:example.org"),
    # A Slack member id: U... (or W... in Enterprise Grid), upper-case letters and digits.
    "slack": (re.compile(r"[UW][A-Z0-9]{2,20}"), "U0123ABCD"),
}
SURFACES = tuple(_ACCOUNTS)


@dataclass(frozen=True, slots=True)
class ChatAccount:
    """A chat account linked to an operator: `tenant`, `surface` (matrix, slack), `account`
    (the user id there), the operator's name and id, and when it was linked (the app's clock)."""

    tenant: str
    surface: str
    account: str
    operator: str
    principal_id: str
    created_at: float


def check_account(surface: str, account: str) -> str:
    """`account` if it is a user id of `surface`.

    Raises:
        ConfigurationError: an unknown surface, or an account that is not a user id there.
    """
    if surface not in _ACCOUNTS:
        raise ConfigurationError(f"unknown chat surface {surface!r}: use one of {', '.join(SURFACES)}")
    pattern, example = _ACCOUNTS[surface]
    if len(account) > 255 or pattern.fullmatch(account) is None:
        raise ConfigurationError(
            f"{account!r} is not a {surface} user id: give the account's id, e.g. --{surface} {example} "
            "(not a display name)"
        )
    return account


def link_command(surface: str, account: str, tenant: str, name: str = "NAME") -> str:
    return f"`agentflow operators link {name} --{surface} {account} --tenant {tenant}`"


class Links(Operators):
    """Chat accounts linked to operators (a mixin of `Approvals`)."""

    def link(self, name: str, *, surface: str, account: str, tenant: str | None = None) -> ChatAccount:
        """Link a chat account to operator `name`: what it decides in chat is that operator's.

        Linking an account to the operator it is linked to already changes nothing.

        Raises:
            ConfigurationError: a bad surface or account, no such operator, or the account is
                linked to another operator of the tenant (unlink it first).
        """
        check_account(surface, account)
        op = self.operator(name, tenant=tenant)
        now = self._now()

        def body(tx: Tx) -> ChatLinkRow:
            found = tx.chat_links.get(tenant=op.tenant, surface=surface, account=account)
            if found is not None and found.principal_id == op.id:
                return found
            if found is not None:
                other = tx.principals.by_id(found.principal_id, tenant=op.tenant)
                raise ConfigurationError(
                    f"the {surface} account {account} is already linked to operator "
                    f"{other.name if other else found.principal_id} of tenant {op.tenant}: unlink it first with "
                    f"`agentflow operators unlink --{surface} {account} --tenant {op.tenant}`"
                )
            row = ChatLinkRow(tenant=op.tenant, surface=surface, account=account, principal_id=op.id, created_at=now)
            tx.chat_links.add(row)
            self._audit(tx, op.tenant, "account_linked", f"{surface} {account} -> {op.name}", now)
            return row

        return _account(self._transact(body, op.tenant), op.name)

    def unlink(self, *, surface: str, account: str, tenant: str | None = None) -> ChatAccount:
        """Unlink a chat account: it decides nothing from now on.

        Raises:
            ConfigurationError: the account is linked nowhere (in `tenant`), or in several
                tenants and no `tenant` was given.
        """
        check_account(surface, account)
        found = self._one_link(surface, account, tenant)
        now = self._now()

        def body(tx: Tx) -> str:
            p = tx.principals.by_id(found.principal_id, tenant=found.tenant)
            tx.chat_links.remove(tenant=found.tenant, surface=surface, account=account)
            who = p.name if p else found.principal_id
            self._audit(tx, found.tenant, "account_unlinked", f"{surface} {account} -> {who}", now)
            return who

        return _account(found, self._transact(body, found.tenant))

    def linked(self, surface: str, account: str, *, tenant: str, audit: bool = True) -> Principal:
        """The operator of `tenant` a chat account acts as.

        Args:
            surface: matrix or slack.
            account: the user id the chat system vouches for (never a display name).
            tenant: the tenant whose requests the chat decides on (the bridge's).
            audit: record a refusal in the audit trail (a bridge throttling a flood passes False).

        Raises:
            AuthenticationError: `unlinked` (with the command that links the account), or the
                code a token of the operator would be refused with (operator_disabled,
                token_revoked, token_expired).
        """
        check_tenant(tenant)

        def body(tx: Tx) -> tuple[PrincipalRow | None, list[TokenRow]]:
            row = tx.chat_links.get(tenant=tenant, surface=surface, account=account)
            p = None if row is None else tx.principals.by_id(row.principal_id, tenant=tenant)
            return p, [] if p is None else tx.tokens.list(tenant=tenant, principal_id=p.id)

        p, tokens = self.store.read(body)
        error = _unusable(p, tokens, self.wall(), surface, account, tenant)
        if error is not None:
            if audit:
                self._refused_account(surface, account, tenant, error)
            raise error
        assert p is not None
        return _principal(p)

    def links(self, tenant: str | None = None) -> list[ChatAccount]:
        """Linked chat accounts (of `tenant`), by tenant, surface and account."""

        def body(tx: Tx) -> list[ChatAccount]:
            names = {p.id: p.name for p in tx.principals.list(tenant=tenant)}
            return [_account(r, names.get(r.principal_id, r.principal_id)) for r in tx.chat_links.list(tenant=tenant)]

        return self.store.read(body)

    def _one_link(self, surface: str, account: str, tenant: str | None) -> ChatLinkRow:
        rows = self.store.read(lambda tx: tx.chat_links.list(tenant=tenant, surface=surface, account=account))
        if not rows:
            where = f" in tenant {tenant}" if tenant else ""
            raise ConfigurationError(f"the {surface} account {account} is not linked{where}: "
                                     "`agentflow operators list` shows the linked accounts")  # fmt: skip
        if len(rows) > 1:
            tenants = ", ".join(r.tenant for r in rows)
            raise ConfigurationError(f"the {surface} account {account} is linked in several tenants ({tenants}): "
                                     "name one with --tenant")  # fmt: skip
        return rows[0]

    def _refused_account(self, surface: str, account: str, tenant: str, error: AuthenticationError) -> None:
        now = self._now()
        self._transact(lambda tx: tx.audit.add(at=now, tenant=tenant, actor=f"{surface}:{account}",
                                               action="authenticate", approval_id=None, run_id=None,
                                               outcome="refused", reason=f"{error.code}: {error.message}"),
                       tenant)  # fmt: skip


def _unusable(
    p: PrincipalRow | None, tokens: list[TokenRow], wall: float, surface: str, account: str, tenant: str
) -> AuthenticationError | None:
    """Why a chat account may not act as operator `p` (None: it may)."""
    if p is None:
        return AuthenticationError(
            f"the {surface} account {account} is not linked to an operator of tenant {tenant}, so it decides "
            f"nothing: an admin links it with {link_command(surface, account, tenant)}",
            code="unlinked",
            tenant=tenant,
        )
    live = [t for t in tokens if _token_status(t, wall) == "active"]
    # No live token: refused as the newest one is (revoked or expired), like the operator's API use.
    return _refused(p, live[-1] if live else (tokens[-1] if tokens else None), wall)


def _account(row: ChatLinkRow, operator: str) -> ChatAccount:
    return ChatAccount(tenant=row.tenant, surface=row.surface, account=row.account, operator=operator,
                       principal_id=row.principal_id, created_at=row.created_at)  # fmt: skip
