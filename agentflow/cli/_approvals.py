"""`agentflow approvals ...`: list, show, approve and reject approval requests.

`approvals list --token` is the caller's work queue: their tenant's requests, without the open
ones they cannot decide (their own request under four-eyes, a role they lack), which are counted
under the table; `--all` shows those too, each with why not. Ids are printed whole at any
terminal width (they are meant to be copied). `approve` and `reject` say what happens next: how
many more approvals a request needs, or that its run is runnable again and needs a worker.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich import box
from rich.table import Table

from agentflow.cli._common import DbOption, JsonOption, approvals_of, console, err_console, fail_decision
from agentflow.cli._json import emit, iso, record
from agentflow.errors import AgentflowError, ConfigurationError

if TYPE_CHECKING:
    from agentflow.approvals import ApprovalRequest, Approvals, AuditEntry, Principal

approvals_app = typer.Typer(help="Approval requests: list, show, approve, reject.", no_args_is_help=True)

TokenOption = Annotated[
    str | None, typer.Option("--token", help="Your operator token (default: $AGENTFLOW_TOKEN).", show_default=False)
]


def _token(token: str | None) -> str | None:
    return token or os.environ.get("AGENTFLOW_TOKEN")


def approval_record(req: ApprovalRequest, **extra: Any) -> dict[str, Any]:
    """A request as `--json` prints it: `approval_id`, `run_id` (the run's key), ISO times, its
    quorum so far, the votes."""
    data = record(req.model_dump(mode="json", exclude={"votes"}), rename={"id": "approval_id"})
    votes = [v.model_dump(mode="json") | {"at": iso(v.at)} for v in req.votes]
    return data | {"approvals": req.approvals, "quorum": req.spec.quorum, "deciding_roles": req.deciding_roles,
                   "votes": votes, **extra}  # fmt: skip


def _audit_record(entry: AuditEntry) -> dict[str, Any]:
    return entry.model_dump(mode="json") | {"at": iso(entry.at)}


def _id_column(table: Table, header: str, ids: list[str]) -> None:
    """A column of ids that are never cut or wrapped: other columns give way at 80 columns."""
    table.add_column(header, no_wrap=True, min_width=max([len(header), *map(len, ids)]))


def _expiry(req: ApprovalRequest, now: float, *, short: bool = False) -> str:
    """`2026-01-01 10:30 UTC (in 3h 12m)`, `... (expired)`, or `-`; `short`: `in 3h 12m`, `expired`."""
    from agentflow.chat import time_left, utc

    if req.expires_at is None:
        return "-"
    if req.status == "expired" or (req.open and now >= req.expires_at):
        left = "expired"
    else:
        left = time_left(req.expires_at - now) if req.open else ""
    if short:
        return left or "-"
    return f"{utc(req.expires_at)} ({left})" if left else utc(req.expires_at)


@approvals_app.command("list")
def approvals_list(
    token: TokenOption = None,
    tenant: Annotated[str | None, typer.Option(help="Only this tenant (with --token: yours).")] = None,
    status: Annotated[str, typer.Option(help="pending (open ones), approved, rejected, expired, or all.")] = "pending",
    show_all: Annotated[
        bool, typer.Option("--all", help="With --token: also the open requests you cannot decide, with why not.")
    ] = False,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """List approval requests (open ones by default). With --token: your tenant's, without the
    open ones you cannot decide (your own under four-eyes, a role you lack) unless --all."""
    approvals = approvals_of(db)
    try:
        who = approvals.authenticate(_token(token)) if _token(token) else None
        if who is not None and tenant not in (None, who.tenant):
            raise ConfigurationError(f"your token is of tenant {who.tenant}, not {tenant}: drop --tenant")
        found = approvals.list(tenant=who.tenant if who else tenant, status=None if status == "all" else status)
    except AgentflowError as exc:
        fail_decision(exc)
    why_not = {r.id: _why_not(approvals, r, who) for r in found} if who else {}
    hidden = [r for r in found if r.open and why_not.get(r.id)] if who and not show_all else []
    shown = [r for r in found if r not in hidden]
    if as_json:
        marks = (lambda r: {"can_decide": not why_not[r.id], "why_not": why_not[r.id] or None}) if who else dict
        emit(approval_record(r, **marks(r)) for r in shown)
    else:
        _print_list(approvals, shown, why_not if who and show_all else None)
    if hidden:
        err_console.print(f"{len(hidden)} more open you cannot decide (your own request under four-eyes, or a role "
                          "you lack): --all shows them", highlight=False, markup=False)  # fmt: skip


def _why_not(approvals: Approvals, req: ApprovalRequest, who: Principal) -> str:
    """Why `who` cannot decide `req` now ('' if they can): the checks of a decision, unrecorded."""
    refusal = approvals.refusal(req, who)
    return "" if refusal is None else f"{refusal.code}: {refusal.message}"


def _print_list(approvals: Approvals, found: list[ApprovalRequest], why_not: dict[str, str] | None) -> None:
    """One table per run, under a line naming the run: at 80 columns ids stay whole and the
    other columns keep room (a run id may be longer than a request's)."""
    now = approvals.clock.now()
    if not found:
        console.print("no approval requests", style="dim")
    by_run: dict[str, list[ApprovalRequest]] = {}
    for r in found:
        by_run.setdefault(r.run_id, []).append(r)
    for run_id, requests in by_run.items():
        console.print(f"run {run_id}", highlight=False, markup=False, soft_wrap=True, style="bold")
        table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
        _id_column(table, "id", [r.id for r in requests])
        # Few columns, several lines each: at 80 columns nothing is cut, the arguments fold.
        table.add_column("request", overflow="fold", ratio=1, min_width=16)
        table.add_column("state", no_wrap=True)
        if why_not is not None:
            table.add_column("you", no_wrap=True)
        for r in requests:
            what = f"{r.tool} by {r.requested_by or '-'}\n{json.dumps(r.args, separators=(',', ':'))}"
            state = f"{r.status} {r.approvals}/{r.spec.quorum}\n{_expiry(r, now, short=True)}"
            table.add_row(r.id, what, state, *([_you(why_not[r.id])] if why_not is not None else []))
        console.print(table, highlight=False, markup=False)


def _you(why_not: str) -> str:
    """Whether the caller may decide, in a word or two (`approvals show` and the API say more)."""
    code = why_not.split(":", 1)[0]
    return {"": "can decide", "self_approval": "your request", "missing_role": "not your role"}.get(code, code)


@approvals_app.command("show")
def approvals_show(approval_id: str, db: DbOption = None, as_json: JsonOption = False) -> None:
    """Show one request: the exact arguments and their hash, the diff, the rule, votes, expiry, audit."""
    approvals = approvals_of(db)
    try:
        req = approvals.get(approval_id)
        audit = approvals.audit(approval_id=approval_id)
    except AgentflowError as exc:
        fail_decision(exc)
    if as_json:
        emit(approval_record(req, audit=[_audit_record(a) for a in audit]))
        return
    # No borders: at 80 columns a 64-digit hash (and any id) stays on one line.
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(no_wrap=True, style="bold")
    table.add_column(overflow="fold")
    for key in ("id", "run_id", "tenant", "requested_by", "tool", "rule", "status", "args_hash"):
        table.add_row(key, str(getattr(req, key)))
    table.add_row("args", json.dumps(req.args))
    table.add_row("diff", json.dumps(req.diff) if req.diff is not None else "-")
    table.add_row(
        "needs", f"{req.spec.quorum} of roles {req.deciding_roles}" + (", four-eyes" if req.spec.four_eyes else "")
    )
    table.add_row("expires", _expiry(req, approvals.clock.now()))
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
    as_json: JsonOption = False,
) -> None:
    """Approve a request (counts toward its quorum); says what happens next."""
    approvals = approvals_of(db)
    try:
        edited = _edited(approvals.get(approval_id).args, set_arg) if set_arg else None
        req = approvals.approve(approval_id, by=_token(token) or "", comment=comment, args=edited, seen_hash=seen_hash)
    except AgentflowError as exc:
        fail_decision(exc)
    _decided(approvals, req, as_json)


@approvals_app.command("reject")
def approvals_reject(
    approval_id: str,
    token: TokenOption = None,
    comment: Annotated[str, typer.Option(help="Why (the agent is told).")] = "",
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Reject a request: the call does not run; the agent is told why. Says what happens next."""
    approvals = approvals_of(db)
    try:
        req = approvals.reject(approval_id, by=_token(token) or "", comment=comment)
    except AgentflowError as exc:
        fail_decision(exc)
    _decided(approvals, req, as_json)


def _decided(approvals: Approvals, req: ApprovalRequest, as_json: bool) -> None:
    after = next_step(approvals, req)
    if as_json:
        emit(approval_record(req, next=after))
        return
    console.print(f"{req.id}: {req.status} ({req.approvals}/{req.spec.quorum} approvals)", highlight=False)
    console.print(after, highlight=False, markup=False, soft_wrap=True)


def next_step(approvals: Approvals, req: ApprovalRequest) -> str:
    """What happens after a decision, in words: the approvals still needed, or who resumes the run."""
    if req.open:
        roles = ", ".join(req.deciding_roles)
        eyes = ", not the requester" if req.spec.four_eyes and req.requested_by else ""
        more = req.spec.quorum - req.approvals
        return (f"needs {more} more approval{'s' * (more != 1)} (by {roles}{eyes}) before run {req.run_id} goes on "
                f"(`agentflow approvals show {req.id}` shows the votes)")  # fmt: skip
    what = "is runnable again" if req.status == "approved" else "goes on without the call (the agent is told why)"
    return f"{req.status}: run {req.run_id} {what}; {_driver(approvals, req.run_id)}"


#: Workers whose heartbeat is this recent (seconds) are looked at; each is live by its own lease.
_RECENT = 60.0


def _driver(approvals: Approvals, run_id: str) -> str:
    """Who picks a run up: a live worker serving its workflow, or the command to start one."""
    from agentflow.store import Checkup, redact_url

    run = approvals.store.find_run(run_id)
    workers = [w for w in Checkup(approvals.store).workers(within=_RECENT) if w.live]
    serving = [w for w in workers if run is None or w.workflows is None or run.workflow in w.workflows]
    if serving:
        return f"a live worker ({serving[0].host} pid {serving[0].pid}) picks it up"
    workflow = f" serves {run.workflow}" if run is not None else " is running"
    return (f"no live worker{workflow}: start one (`agentflow worker --app MODULE:APP --db "
            f"{redact_url(approvals.store.url)}`) and it picks the run up")  # fmt: skip


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
