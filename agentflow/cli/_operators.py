"""`agentflow operators ...`: the people who approve staged actions, with roles per tenant."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from agentflow.cli._common import DbOption, approvals_of, console, err_console, fail_decision
from agentflow.errors import AgentflowError

operators_app = typer.Typer(help="Operators who approve staged actions, with roles per tenant.", no_args_is_help=True)


@operators_app.command("add")
def operators_add(
    name: str,
    tenant: Annotated[str, typer.Option(help="The tenant whose runs the operator may decide on.")],
    role: Annotated[list[str], typer.Option("--role", help="A role (repeat for several), e.g. noc-engineer.")],
    db: DbOption = None,
) -> None:
    """Create an operator and print their API token (once: only its hash is stored)."""
    try:
        principal, token = approvals_of(db).add_operator(name, tenant=tenant, roles=role)
    except AgentflowError as exc:
        fail_decision(exc)
    err_console.print(f"operator {principal.name} ({tenant}, roles {', '.join(principal.roles)}); token, shown once:")
    print(token)  # alone on stdout: `TOKEN=$(agentflow operators add ...)` works


@operators_app.command("list")
def operators_list(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant.")] = None, db: DbOption = None
) -> None:
    """List operators and their roles."""
    table = Table("name", "tenant", "roles")
    for p in approvals_of(db).operators(tenant=tenant):
        table.add_row(p.name, p.tenant, ", ".join(p.roles))
    console.print(table)
