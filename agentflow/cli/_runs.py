"""`agentflow runs ...`: inspect and steer the runs recorded in a store (`watch` and `show --wait`
follow one live: `_watch`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.table import Table

from agentflow.cli._common import DbOption, JsonOption, client, console, fail, store
from agentflow.cli._json import emit, record
from agentflow.cli._watch import follow, print_outcome, run_exit_code, run_json, runs_watch, step_detail
from agentflow.errors import AgentflowError

runs_app = typer.Typer(help="Inspect and steer runs recorded in the store.", no_args_is_help=True)
runs_app.command("watch")(runs_watch)


def _ts(value: float | None) -> str:
    if value is None:
        return "-"
    return datetime.fromtimestamp(value, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


def whole_ids_table(
    *headers: str, rows: Sequence[Sequence[str]], ids: Sequence[int] = (0,), optional: Sequence[int] = ()
) -> Table:
    """A table whose id columns (`ids`: their indexes) are never cut nor wrapped, however narrow
    the terminal: an id is meant to be copied. When the whole rows do not fit the terminal, the
    `optional` columns (indexes, least wanted first) are left out, one by one, before anything
    wraps; what still does not fit wraps (never cut with an ellipsis)."""
    widths = [max([len(row[i]) for row in rows] + [len(h)]) for i, h in enumerate(headers)]
    keep = list(range(len(headers)))
    for i in optional:
        if sum(widths[k] + 3 for k in keep) + 1 <= console.width:
            break
        keep.remove(i)
    table = Table(*(headers[k] for k in keep))
    for column, k in zip(table.columns, keep, strict=True):
        if k in ids:
            column.no_wrap = True
            column.min_width = widths[k]
        else:
            column.overflow = "fold"
    for row in rows:
        table.add_row(*(row[k] for k in keep))
    return table


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
        emit(run_json(r) for r in runs)
        return
    rows = [(r.id, r.workflow, r.tenant, r.status, _ts(r.created_at), _ts(r.updated_at)) for r in runs]
    # Narrow terminal: "created", then "tenant" (in the run id), then "workflow" give way.
    table = whole_ids_table("run", "workflow", "tenant", "status", "created", "updated", rows=rows, optional=(4, 2, 1))
    console.print(table)


@runs_app.command("show")
def runs_show(
    run_id: str,
    db: DbOption = None,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait",
            help="Wait until the run ends or waits for people, then exit with its code (see --help of agentflow).",
        ),
    ] = False,
    timeout: Annotated[
        float | None, typer.Option(help="With --wait: give up after this many seconds (exit 6).")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Show one run: status, input, output or error, what it waits for.

    With --wait, the exit code tells how the run stands: 0 completed, 1 failed, 3 cancelled, 4
    the agent stopped unfinished, 5 waiting for people, 6 still running when --timeout passed."""
    try:
        the_store = store(db)
        run = follow(the_store, run_id, timeout=timeout) if wait else the_store.get_run(run_id)
        steps = the_store.load_steps(run_id)
    except AgentflowError as exc:
        fail(exc)
    if as_json:
        emit(run_json(run, steps=len(steps)))
    else:
        _show(run_json(run, steps=len(steps)))
        if wait:
            print_outcome(run)
    if wait:
        raise typer.Exit(code=run_exit_code(run))


def _show(data: dict[str, object]) -> None:
    table = Table(show_header=False)
    table.add_column(no_wrap=True)
    table.add_column(overflow="fold")  # an id or a value is wrapped whole, never cut
    for key in (
        "run_id",
        "workflow",
        "tenant",
        "status",
        "parent_id",
        "input",
        "output",
        "error",
        "waiting_on",
        "steps",
    ):
        value = data[key]
        shown = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        table.add_row(key, "-" if value is None else shown)
    for key in ("created_at", "updated_at", "completed_at", "wake_at"):
        table.add_row(key, str(data[key] or "-"))
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
            record(dict(zip(("seq", "attempt", "error", "started_at", "finished_at", "retry_at"), a, strict=True)))
            for a in attempts
        ]
        steps_out = [record(s.to_dict()) for s in steps]
        emit({"run_id": run_id, "steps": steps_out, "failed_attempts": failed})
        return
    table = Table("seq", "kind", "name", "status", "attempt", "started", "result / error")
    for s in steps:
        table.add_row(str(s.seq), s.kind, s.name, s.status, str(s.attempt), _ts(s.started_at), step_detail(s))
    console.print(table)


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
        emit({"run_id": run, "tenant": tenant, **summary.to_dict()})
        return
    table = Table("model", "calls", "tokens", "cost (USD)")
    for model, per in sorted(summary.by_model.items()):
        table.add_row(model, str(int(per["calls"])), str(int(per["tokens"])), f"{per['cost_usd']:.6f}")
    table.add_row("total", str(summary.calls), str(summary.total_tokens), f"{summary.cost_usd:.6f}", style="bold")
    console.print(table)


@runs_app.command("cancel")
def runs_cancel(run_id: str, db: DbOption = None, as_json: JsonOption = False) -> None:
    """Request cancellation of a run (its compensation code runs, recorded, on a worker)."""
    try:
        found = client(db)
        found.cancel(run_id)
        run = found.store.get_run(run_id)
    except AgentflowError as exc:
        fail(exc)
    if as_json:
        emit(run_json(run))
        return
    console.print(f"run {run.id}: {run.status}, cancel requested", highlight=False, soft_wrap=True)


@runs_app.command("signal")
def runs_signal(
    run_id: str,
    name: str,
    payload: Annotated[str, typer.Option(help="The payload, as JSON.")] = "null",
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Send a signal to a run (a worker wakes the run if it waits for it)."""
    try:
        value = json.loads(payload)
    except ValueError as exc:
        raise typer.BadParameter(f"--payload is not JSON: {exc}") from None
    try:
        found = client(db)
        found.signal(run_id, name, value)
        run = found.store.get_run(run_id)
    except AgentflowError as exc:
        fail(exc)
    if as_json:
        emit({"run_id": run.id, "signal": name, "payload": value, "status": run.status})
        return
    console.print(f"signal {name!r} sent to run {run.id} ({run.status})", highlight=False, soft_wrap=True)
