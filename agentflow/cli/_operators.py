"""`agentflow operators ...`: the people who approve staged actions, with roles per tenant, and
their API tokens: add, list, disable, enable, revoke, rotate; tokens may expire. `link` and
`unlink` tie chat accounts (Matrix, Slack) to an operator: what the account decides through a
chat bridge is that operator's decision.

A token is printed once, when it is issued (`add`, `rotate`), alone on stdout (or in the `--json`
document): only its hash is stored. A disabled operator, or a revoked or expired token, is
refused wherever a token is checked (these commands' `approvals approve|reject --token`, the
server's bearer tokens and web sessions) with an error saying which and how to fix it.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from agentflow.cli._common import DbOption, JsonOption, approvals_of, console, err_console, fail_decision
from agentflow.cli._json import emit, iso, record
from agentflow.errors import AgentflowError

if TYPE_CHECKING:
    from agentflow.approvals import ChatAccount, Operator

operators_app = typer.Typer(
    help="Operators who approve staged actions, with roles per tenant, and their tokens.", no_args_is_help=True
)

TenantOption = Annotated[
    str | None,
    typer.Option(help="The operator's tenant (needed when the name is an operator's in several tenants)."),
]
ExpiresIn = Annotated[
    str | None,
    typer.Option("--expires-in", help="The token stops working after this long: 90d, 12h, 30m, 2w, 1d12h."),
]
ExpiresAt = Annotated[
    str | None,
    typer.Option("--expires-at", help="The token stops working at this time: ISO-8601, UTC unless it says."),
]
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"(\d+)([smhdw])")


def duration(text: str) -> float:
    """Seconds in `90d`, `12h`, `1d12h`, `30m` (a bare number is seconds)."""
    spec = text.strip().lower()
    if spec.isdigit():
        return float(spec)
    parts = _DURATION.findall(spec)
    if not parts or "".join(n + u for n, u in parts) != spec or sum(int(n) for n, _ in parts) == 0:
        raise typer.BadParameter(
            f"{text!r} is not a duration: use e.g. 90d, 12h, 30m, 2w or 1d12h", param_hint="--expires-in"
        )
    return float(sum(int(n) * _UNITS[u] for n, u in parts))


def moment(text: str) -> float:
    """Epoch seconds of an ISO-8601 date or time (`2027-03-31`, `2027-03-31T18:00Z`); UTC unless it says."""
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not an ISO-8601 time: use e.g. 2027-03-31 or 2027-03-31T18:00Z",
                                 param_hint="--expires-at") from None  # fmt: skip
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def _expiry(expires_in: str | None, expires_at: str | None, now: float) -> float | None:
    if expires_in and expires_at:
        raise typer.BadParameter("give --expires-in or --expires-at, not both")
    if expires_in:
        return now + duration(expires_in)
    return moment(expires_at) if expires_at else None


MatrixOption = Annotated[
    str | None, typer.Option("--matrix", help="A Matrix user id, e.g. @bob:example.org (not a display name).")
]
SlackOption = Annotated[str | None, typer.Option("--slack", help="A Slack member id, e.g. U0123ABCD.")]


def operator_record(op: Operator, accounts: list[ChatAccount] | None = None) -> dict[str, Any]:
    """An operator as `--json` prints it (never a token: their ids and times only), with the
    chat accounts linked to them (`accounts`: surface and account)."""
    fields = op.model_dump(mode="json", exclude={"id", "token_id", "tokens"})
    linked = [{"surface": a.surface, "account": a.account} for a in accounts or [] if a.principal_id == op.id]
    return record(fields) | {"tokens": [record(t.model_dump(mode="json")) for t in op.tokens], "accounts": linked}


def _issued(op: Operator, token: str, as_json: bool, verb: str) -> None:
    """Print a token issued to `op` once: alone on stdout (`TOKEN=$(agentflow operators add ...)`
    works), or in the JSON document; what it is goes to stderr."""
    if as_json:
        emit(operator_record(op) | {"token": token, "token_id": op.tokens[-1].id})
        return
    until = f", expires {iso(op.expires_at)}" if op.expires_at is not None else ", never expires"
    err_console.print(f"operator {op.name} ({op.tenant}, roles {', '.join(op.roles)}): {verb}{until}; "
                      "token, shown once:", highlight=False, markup=False, soft_wrap=True)  # fmt: skip
    print(token)


@operators_app.command("add")
def operators_add(
    name: str,
    tenant: Annotated[str, typer.Option(help="The tenant whose runs the operator may decide on.")],
    role: Annotated[list[str], typer.Option("--role", help="A role (repeat for several), e.g. noc-engineer.")],
    expires_in: ExpiresIn = None,
    expires_at: ExpiresAt = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create an operator and print their API token (once: only its hash is stored)."""
    approvals = approvals_of(db, create=True)
    ends = _expiry(expires_in, expires_at, approvals.wall())
    try:
        _, token = approvals.add_operator(name, tenant=tenant, roles=role, expires_at=ends)
        op = approvals.operator(name, tenant=tenant)
    except AgentflowError as exc:
        fail_decision(exc)
    _issued(op, token, as_json, "added")


@operators_app.command("list")
def operators_list(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant.")] = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """List operators: roles, status (active, disabled, revoked, expired) and when their token expires."""
    approvals = approvals_of(db)
    try:
        found = approvals.operators(tenant=tenant)
        accounts = approvals.links(tenant)
    except AgentflowError as exc:
        fail_decision(exc)
    if as_json:
        emit(operator_record(op, accounts) for op in found)
        return
    now = approvals.wall()
    # The chat accounts' column only when some are linked: the table fits 80 columns without it.
    table = Table("name", "tenant", "roles", "status", "token expires", *(["chat accounts"] if accounts else []))
    for op in found:
        linked = ", ".join(f"{a.surface} {a.account}" for a in accounts if a.principal_id == op.id) or "-"
        table.add_row(op.name, op.tenant, ", ".join(op.roles), op.status, _expires(op, now),
                      *([linked] if accounts else []))  # fmt: skip
    console.print(table, highlight=False, markup=False)


def _accounts(matrix: str | None, slack: str | None, *, one: bool) -> list[tuple[str, str]]:
    given = [(s, a) for s, a in (("matrix", matrix), ("slack", slack)) if a]
    if not given or (one and len(given) > 1):
        raise typer.BadParameter("give " + ("one of --matrix or --slack" if one else "--matrix and/or --slack"))
    return given


@operators_app.command("link")
def operators_link(
    name: str,
    matrix: MatrixOption = None,
    slack: SlackOption = None,
    tenant: TenantOption = None,
    db: DbOption = None,
) -> None:
    """Link chat accounts to an operator: what they decide in a chat bridge (`agentflow
    chat-bridge`) is this operator's decision, with the same checks as the web's."""
    approvals = approvals_of(db)
    for surface, account in _accounts(matrix, slack, one=False):
        try:
            linked = approvals.link(name, surface=surface, account=account, tenant=tenant)
        except AgentflowError as exc:
            fail_decision(exc)
        console.print(f"{surface} account {linked.account} linked to operator {linked.operator} ({linked.tenant})",
                      highlight=False, markup=False, soft_wrap=True)  # fmt: skip


@operators_app.command("unlink")
def operators_unlink(
    matrix: MatrixOption = None, slack: SlackOption = None, tenant: TenantOption = None, db: DbOption = None
) -> None:
    """Unlink a chat account: it decides nothing from now on."""
    approvals = approvals_of(db)
    [(surface, account)] = _accounts(matrix, slack, one=True)
    try:
        gone = approvals.unlink(surface=surface, account=account, tenant=tenant)
    except AgentflowError as exc:
        fail_decision(exc)
    console.print(f"{surface} account {gone.account} unlinked from operator {gone.operator} ({gone.tenant})",
                  highlight=False, markup=False, soft_wrap=True)  # fmt: skip


def _expires(op: Operator, now: float) -> str:
    from agentflow.chat import time_left, utc

    if op.status != "active":
        return "-"
    if op.expires_at is None:
        return "never"
    return f"{utc(op.expires_at)} ({time_left(op.expires_at - now)})"


@operators_app.command("disable")
def operators_disable(name: str, tenant: TenantOption = None, db: DbOption = None) -> None:
    """Refuse every token of the operator, and end their web sessions, until `enable`."""
    _change(
        db, name, tenant, "disable", "disabled: every token of theirs is refused until `agentflow operators enable`"
    )


@operators_app.command("enable")
def operators_enable(name: str, tenant: TenantOption = None, db: DbOption = None) -> None:
    """Accept the operator's tokens again (revoked and expired ones stay refused)."""
    _change(db, name, tenant, "enable", "enabled")


@operators_app.command("revoke")
def operators_revoke(name: str, tenant: TenantOption = None, db: DbOption = None) -> None:
    """Revoke every token of the operator (their web sessions end); `rotate` issues a new one."""
    _change(db, name, tenant, "revoke", "every token revoked: `agentflow operators rotate` issues a new one")


def _change(db: str | None, name: str, tenant: str | None, action: str, said: str) -> None:
    approvals = approvals_of(db)
    try:
        op = getattr(approvals, action)(name, tenant=tenant)
    except AgentflowError as exc:
        fail_decision(exc)
    console.print(f"operator {op.name} ({op.tenant}): {said}", highlight=False, markup=False, soft_wrap=True)


@operators_app.command("rotate")
def operators_rotate(
    name: str,
    tenant: TenantOption = None,
    expires_in: ExpiresIn = None,
    expires_at: ExpiresAt = None,
    no_expiry: Annotated[bool, typer.Option("--no-expiry", help="The new token never expires.")] = False,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Issue a new token (printed once) and revoke the operator's others: the old one stops
    working at once. Without an expiry option the new token lives as long as the old one did."""
    approvals = approvals_of(db)
    ends = _expiry(expires_in, expires_at, approvals.wall())
    if no_expiry and ends is not None:
        raise typer.BadParameter("--no-expiry contradicts --expires-in/--expires-at")
    try:
        op, token = approvals.rotate(name, tenant=tenant, expires_at=None if no_expiry else ends or "same")
    except AgentflowError as exc:
        fail_decision(exc)
    _issued(op, token, as_json, "new token, the others revoked")
