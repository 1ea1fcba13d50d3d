"""`agentflow approvals ...`: list, show, approve and reject approval requests."""

from __future__ import annotations

import json
import os
from typing import Annotated, Any

import typer
from rich.table import Table

from agentflow.cli._common import DbOption, JsonOption, approvals_of, console, fail_decision
from agentflow.errors import AgentflowError

approvals_app = typer.Typer(help="Approval requests: list, show, approve, reject.", no_args_is_help=True)

TokenOption = Annotated[
    str | None, typer.Option("--token", help="Your operator token (default: $AGENTFLOW_TOKEN).", show_default=False)
]


def _token(token: str | None) -> str | None:
    return token or os.environ.get("AGENTFLOW_TOKEN")


@approvals_app.command("list")
def approvals_list(
    token: TokenOption = None,
    tenant: Annotated[str | None, typer.Option(help="Only this tenant.")] = None,
    status: Annotated[str, typer.Option(help="pending (open ones), approved, rejected, expired, or all.")] = "pending",
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """List approval requests; with --token, those you may decide."""
    approvals = approvals_of(db)
    try:
        who = approvals.authenticate(_token(token)) if _token(token) else None
        found = approvals.list(tenant=tenant, status=None if status == "all" else status, for_principal=who)
    except AgentflowError as exc:
        fail_decision(exc)
    if as_json:
        print(json.dumps([r.model_dump(mode="json") for r in found], indent=1))
        return
    table = Table("id", "tenant", "tool", "args", "rule", "status", "approvals", "requested by")
    for r in found:
        table.add_row(r.id, r.tenant, r.tool, json.dumps(r.args), r.rule, r.status,
                      f"{r.approvals}/{r.spec.quorum}", r.requested_by or "-")  # fmt: skip
    console.print(table)


@approvals_app.command("show")
def approvals_show(approval_id: str, db: DbOption = None, as_json: JsonOption = False) -> None:
    """Show one request: the exact arguments and their hash, the diff, the rule, votes, audit."""
    approvals = approvals_of(db)
    try:
        req = approvals.get(approval_id)
    except AgentflowError as exc:
        fail_decision(exc)
    audit = approvals.audit(approval_id=approval_id)
    if as_json:
        print(json.dumps(req.model_dump(mode="json") | {"audit": [a.model_dump() for a in audit]}, indent=1))
        return
    table = Table(show_header=False)
    for key in ("id", "run_id", "tenant", "requested_by", "tool", "rule", "status", "args_hash"):
        table.add_row(key, str(getattr(req, key)))
    table.add_row("args", json.dumps(req.args))
    table.add_row("diff", json.dumps(req.diff) if req.diff is not None else "-")
    table.add_row(
        "needs", f"{req.spec.quorum} of roles {req.deciding_roles}" + (", four-eyes" if req.spec.four_eyes else "")
    )
    table.add_row("editable", ", ".join(req.spec.editable_args) or "-")
    for v in req.votes:
        table.add_row("vote", f"{v.principal}: {v.decision} (revision {v.revision}) {v.comment}")
    for a in audit:
        table.add_row("audit", f"{a.actor} {a.action} {a.outcome} {a.reason}")
    console.print(table, highlight=False, markup=False)


@approvals_app.command("approve")
def approvals_approve(
    approval_id: str,
    token: TokenOption = None,
    comment: Annotated[str, typer.Option(help="Recorded with your decision.")] = "",
    set_arg: Annotated[
        list[str] | None, typer.Option("--set", help="Edit an argument the rule lets approvers edit: NAME=JSON.")
    ] = None,
    seen_hash: Annotated[
        str | None,
        typer.Option("--seen-hash", help="The args_hash you reviewed: refused if the request changed since."),
    ] = None,
    db: DbOption = None,
) -> None:
    """Approve a request (counts toward its quorum)."""
    approvals = approvals_of(db)
    try:
        edited = _edited(approvals.get(approval_id).args, set_arg) if set_arg else None
        req = approvals.approve(approval_id, by=_token(token) or "", comment=comment, args=edited, seen_hash=seen_hash)
    except AgentflowError as exc:
        fail_decision(exc)
    console.print(f"{req.id}: {req.status} ({req.approvals}/{req.spec.quorum} approvals)", highlight=False)


@approvals_app.command("reject")
def approvals_reject(
    approval_id: str,
    token: TokenOption = None,
    comment: Annotated[str, typer.Option(help="Why (the agent is told).")] = "",
    db: DbOption = None,
) -> None:
    """Reject a request: the call does not run; the agent is told why."""
    try:
        req = approvals_of(db).reject(approval_id, by=_token(token) or "", comment=comment)
    except AgentflowError as exc:
        fail_decision(exc)
    console.print(f"{req.id}: {req.status}", highlight=False)


def _edited(args: dict[str, Any], sets: list[str]) -> dict[str, Any]:
    """The request's arguments with each `--set NAME=JSON` applied (a bare word is a string)."""
    out = dict(args)
    for item in sets:
        name, sep, raw = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"--set takes NAME=JSON, got {item!r}")
        try:
            out[name] = json.loads(raw)
        except ValueError:
            out[name] = raw  # a bare string
    return out
