"""`agentflow runs ...`: inspect and steer the runs recorded in a store."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from agentflow.cli._common import DbOption, JsonOption, client, console, fail, store
from agentflow.errors import AgentflowError

if TYPE_CHECKING:
    from agentflow.store import StepRecord

runs_app = typer.Typer(help="Inspect and steer runs recorded in the store.", no_args_is_help=True)


def _ts(value: float | None) -> str:
    if value is None:
        return "-"
    return datetime.fromtimestamp(value, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


@runs_app.command("list")
def runs_list(
    db: DbOption = None,
    status: Annotated[str | None, typer.Option(help="Only runs with this status.")] = None,
    tenant: Annotated[str | None, typer.Option(help="Only runs of this tenant.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many runs, newest first.")] = 50,
    as_json: JsonOption = False,
) -> None:
    """List runs, newest first."""
    try:
        runs = store(db).list_runs(tenant=tenant, status=status, limit=limit)
    except AgentflowError as exc:
        fail(exc)
    if as_json:
        print(json.dumps([r.to_dict() for r in runs], indent=1))
        return
    table = Table("run", "workflow", "tenant", "status", "created", "updated")
    for r in runs:
        table.add_row(r.id, r.workflow, r.tenant, r.status, _ts(r.created_at), _ts(r.updated_at))
    console.print(table)


@runs_app.command("show")
def runs_show(run_id: str, db: DbOption = None, as_json: JsonOption = False) -> None:
    """Show one run: status, input, output or error, what it waits for."""
    try:
        the_store = store(db)
        run = the_store.get_run(run_id)
        steps = the_store.load_steps(run_id)
    except AgentflowError as exc:
        fail(exc)
    data = run.to_dict() | {"steps": len(steps)}
    if as_json:
        print(json.dumps(data, indent=1))
        return
    table = Table(show_header=False)
    for key in ("id", "workflow", "tenant", "status", "parent_id", "input", "output", "error", "waiting_on", "steps"):
        table.add_row(key, str(data[key]) if data[key] is not None else "-")
    for key in ("created_at", "updated_at", "completed_at", "wake_at"):
        table.add_row(key, _ts(data[key]))
    console.print(table)


@runs_app.command("history")
def runs_history(run_id: str, db: DbOption = None, as_json: JsonOption = False) -> None:
    """Show a run's recorded steps, one line per step."""
    try:
        the_store = store(db)
        the_store.get_run(run_id)
        steps = the_store.load_steps(run_id)
        attempts = the_store.load_attempts(run_id)
    except AgentflowError as exc:
        fail(exc)
    if as_json:
        failed = [
            dict(zip(("seq", "attempt", "error", "started_at", "finished_at", "retry_at"), a, strict=True))
            for a in attempts
        ]
        print(
            json.dumps({"run_id": run_id, "steps": [s.to_dict() for s in steps], "failed_attempts": failed}, indent=1)
        )
        return
    table = Table("seq", "kind", "name", "status", "attempt", "started", "result / error")
    for s in steps:
        table.add_row(str(s.seq), s.kind, s.name, s.status, str(s.attempt), _ts(s.started_at), _detail(s))
    console.print(table)


def _detail(step: StepRecord) -> str:
    """One line about a step's outcome: a model call's usage, an error's type, or the result."""
    if step.status != "completed":
        try:
            err = json.loads(step.error or "{}")
            return f"{err.get('type')}: {err.get('message', '')}"[:100] if err else ""
        except ValueError:
            return (step.error or "")[:100]
    if step.kind == "llm" and step.result:
        try:
            body = json.loads(step.result)
            u = body.get("usage", {})
            return (
                f"tokens {u.get('input_tokens')}+{u.get('output_tokens')} ({u.get('source')}), "
                f"${u.get('cost_usd', 0):.6f}, finish {body.get('finish_reason')}"
            )
        except (ValueError, AttributeError):
            pass
    return (step.result or "")[:100]


@runs_app.command("usage")
def runs_usage(
    db: DbOption = None,
    run: Annotated[str | None, typer.Option("--run", help="Only this run.")] = None,
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's runs.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Tokens and cost of recorded model calls, per model (one run, a tenant, or everything)."""
    from agentflow.agent import usage

    try:
        the_store = store(db)
        if run is not None:
            the_store.get_run(run)
        summary = usage(the_store, run_id=run, tenant=tenant)
    except AgentflowError as exc:
        fail(exc)
    if as_json:
        print(json.dumps(summary.to_dict()))
        return
    table = Table("model", "calls", "tokens", "cost (USD)")
    for model, per in sorted(summary.by_model.items()):
        table.add_row(model, str(int(per["calls"])), str(int(per["tokens"])), f"{per['cost_usd']:.6f}")
    table.add_row("total", str(summary.calls), str(summary.total_tokens), f"{summary.cost_usd:.6f}", style="bold")
    console.print(table)


@runs_app.command("cancel")
def runs_cancel(run_id: str, db: DbOption = None) -> None:
    """Request cancellation of a run (its compensation code runs, recorded)."""
    try:
        info = client(db).cancel(run_id)
    except AgentflowError as exc:
        fail(exc)
    console.print(f"run {run_id}: {info.status}, cancel requested")


@runs_app.command("signal")
def runs_signal(
    run_id: str,
    name: str,
    payload: Annotated[str, typer.Option(help="The payload, as JSON.")] = "null",
    db: DbOption = None,
) -> None:
    """Send a signal to a run."""
    try:
        value = json.loads(payload)
    except ValueError as exc:
        raise typer.BadParameter(f"--payload is not JSON: {exc}") from None
    try:
        client(db).signal(run_id, name, value)
    except AgentflowError as exc:
        fail(exc)
    console.print(f"signal {name!r} sent to run {run_id}")
