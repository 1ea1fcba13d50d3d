"""The `agentflow` command."""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import signal
import sys
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from agentflow._cli_chat import chat
from agentflow._cli_people import approvals_app, operators_app, policy_app
from agentflow.errors import AgentflowError

app = typer.Typer(
    help="agentflow: durable workflows for LLM agents that act on real systems.",
    no_args_is_help=True,
    add_completion=False,
)
runs_app = typer.Typer(help="Inspect and steer runs recorded in the store.", no_args_is_help=True)
db_app = typer.Typer(help="The store's schema.", no_args_is_help=True)
app.add_typer(runs_app, name="runs")
app.add_typer(db_app, name="db")
app.add_typer(operators_app, name="operators")
app.add_typer(approvals_app, name="approvals")
app.add_typer(policy_app, name="policy")
app.command()(chat)

console = Console()
err_console = Console(stderr=True)

DbOption = Annotated[
    str | None,
    typer.Option("--db", help="SQLAlchemy URL of the store (default: $AGENTFLOW_DB, else sqlite:///agentflow.db)."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _url(db: str | None) -> str:
    from agentflow.store import resolve_url

    return resolve_url(db)


def _store(db: str | None) -> Any:
    from agentflow.store import EventStore

    return EventStore(_url(db))


def _ts(value: float | None) -> str:
    if value is None:
        return "-"
    return datetime.fromtimestamp(value, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


def _fail(exc: AgentflowError) -> None:
    err_console.print(f"[bold red]error:[/] {type(exc).__name__}: {exc}")
    raise typer.Exit(code=2)


# -- worker -------------------------------------------------------------------------------------
@app.command()
def worker(
    app_ref: Annotated[str, typer.Option("--app", help="The App to serve, as module:attribute.")],
    db: DbOption = None,
    concurrency: Annotated[int, typer.Option(help="Runs driven at once.")] = 16,
    poll_interval: Annotated[float, typer.Option(help="Seconds between looks for work when idle.")] = 0.05,
    until_idle: Annotated[
        bool, typer.Option("--until-idle", help="Exit once no run is pending, running or due.")
    ] = False,
) -> None:
    """Run a worker: claim runnable runs, recover runs whose owner died, wake due timers."""
    if db:
        os.environ["AGENTFLOW_DB"] = db
    the_app = load_app(app_ref)
    from agentflow.engine import Worker

    w = Worker(the_app, concurrency=concurrency, poll_interval=poll_interval)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if until_idle:
            task = asyncio.create_task(w.run_forever(stop))
            while not stop.is_set():
                await asyncio.sleep(poll_interval * 4)
                if (
                    not the_app.store.any_active(workflows=the_app.workflow_names)
                    and not w.executors
                    and _nothing_due(the_app)
                ):
                    stop.set()
            await task
        else:
            await w.run_forever(stop)

    try:
        asyncio.run(main())
    except AgentflowError as exc:
        _fail(exc)


def _nothing_due(the_app: Any) -> bool:
    wake = the_app.store.next_wake_at(workflows=the_app.workflow_names)
    return wake is None or wake > the_app.clock.now()


def load_app(ref: str) -> Any:
    """Import `module:attribute` and return the App it names."""
    from agentflow.engine import App

    module_name, _, attr = ref.partition(":")
    if not module_name or not attr:
        raise typer.BadParameter(f"--app must look like module:attribute, got {ref!r}")
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise typer.BadParameter(f"cannot import {module_name!r}: {exc}") from None
    obj = getattr(module, attr, None)
    if not isinstance(obj, App):
        raise typer.BadParameter(f"{ref!r} is not an agentflow.App (got {type(obj).__name__})")
    return obj


# -- run ----------------------------------------------------------------------------------------
@app.command("run")
def run_agent(
    task: Annotated[str, typer.Argument(help="What the agent should do, e.g. 'CS-101 drop rate is high'.")],
    app_ref: Annotated[str, typer.Option("--app", help="The App its agent is registered on, as module:attribute.")],
    agent: Annotated[
        str | None, typer.Option("--agent", help="The agent's name (default: the app's only agent).")
    ] = None,
    tenant: Annotated[str, typer.Option(help="The tenant the run belongs to.")] = "default",
    requested_by: Annotated[
        str | None, typer.Option("--requested-by", help="Who asks (recorded; default: $USER).")
    ] = None,
    run_id: Annotated[str | None, typer.Option("--run-id", help="A run id (an existing one is attached to).")] = None,
    wait: Annotated[
        bool, typer.Option("--wait/--no-wait", help="Drive the run here until it ends or waits for someone.")
    ] = True,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Start an agent registered on an app (`agent.register(app)`) as a run of its own."""
    if db:
        os.environ["AGENTFLOW_DB"] = db
    the_app = load_app(app_ref)
    wf = _agent_workflow(the_app, agent)
    who = requested_by or os.environ.get("USER") or "cli"
    try:
        handle = the_app.start(
            wf, task, run_id=run_id, tenant=tenant, meta={"agent": wf.name.split(":", 1)[1], "requested_by": who}
        )
        if wait:
            from agentflow.engine import Worker

            asyncio.run(Worker(the_app, root_id=handle.run_id).run_until_blocked(handle.run_id, until_signal_wait=True))
        info = the_app.get_run(handle.run_id)
    except AgentflowError as exc:
        _fail(exc)
    _print_started(info, as_json)


def _agent_workflow(the_app: Any, name: str | None) -> Any:
    from agentflow.agent._agent import agent_workflow
    from agentflow.errors import ConfigurationError

    try:
        return agent_workflow(the_app, name)
    except ConfigurationError as exc:
        raise typer.BadParameter(f"--agent: {exc.message}") from None


def _print_started(info: Any, as_json: bool) -> None:
    waiting = (info.waiting_on or {}) if info.status == "waiting" else {}
    if as_json:
        print(json.dumps(info.to_dict(), indent=1))
        return
    console.print(f"run [cyan]{info.run_id}[/] ({info.workflow}, tenant {info.tenant}): [bold]{info.status}[/]")
    if info.output_json:
        outcome = json.loads(info.output_json)
        console.print(f"outcome: {outcome.get('status')}", highlight=False)
        if outcome.get("answer"):
            console.print(outcome["answer"], markup=False, highlight=False)
    for name in waiting.get("signals", []):
        if name.startswith("approval:"):
            rid = name.split(":", 1)[1]
            console.print(f"waiting for approval [yellow]{rid}[/]: agentflow approvals show {rid}; "
                          f"agentflow approvals approve {rid} --token <operator token>", highlight=False)  # fmt: skip
        else:
            console.print(f"waiting for signal [yellow]{name}[/]", highlight=False)


# -- runs ---------------------------------------------------------------------------------------
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
        runs = _store(db).list_runs(tenant=tenant, status=status, limit=limit)
    except AgentflowError as exc:
        _fail(exc)
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
        store = _store(db)
        run = store.get_run(run_id)
        steps = store.load_steps(run_id)
    except AgentflowError as exc:
        _fail(exc)
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
        store = _store(db)
        store.get_run(run_id)
        steps = store.load_steps(run_id)
        attempts = store.load_attempts(run_id)
    except AgentflowError as exc:
        _fail(exc)
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


def _detail(step: Any) -> str:
    """One line about a step's outcome: a model call's usage, an error's type, or the result."""
    if step.status != "completed":
        try:
            err = json.loads(step.error or "{}")
            return f"{err.get('type')}: {err.get('message', '')}"[:100] if err else ""
        except ValueError:
            return (step.error or "")[:100]
    if step.kind == "llm":
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
        store = _store(db)
        if run is not None:
            store.get_run(run)
        summary = usage(store, run_id=run, tenant=tenant)
    except AgentflowError as exc:
        _fail(exc)
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
    from agentflow.engine._app import App

    try:
        info = App(_url(db)).cancel(run_id)
    except AgentflowError as exc:
        _fail(exc)
    console.print(f"run {run_id}: {info.status}, cancel requested")


@runs_app.command("signal")
def runs_signal(
    run_id: str,
    name: str,
    payload: Annotated[str, typer.Option(help="The payload, as JSON.")] = "null",
    db: DbOption = None,
) -> None:
    """Send a signal to a run."""
    from agentflow.engine._app import App

    try:
        value = json.loads(payload)
    except ValueError as exc:
        raise typer.BadParameter(f"--payload is not JSON: {exc}") from None
    try:
        App(_url(db)).signal(run_id, name, value)
    except AgentflowError as exc:
        _fail(exc)
    console.print(f"signal {name!r} sent to run {run_id}")


# -- db -------------------------------------------------------------------------------------------
@db_app.command("upgrade")
def db_upgrade(db: DbOption = None) -> None:
    """Create the schema or migrate it to this version's head."""
    try:
        store = _store(db)
    except AgentflowError as exc:
        _fail(exc)
    from agentflow.store import SCHEMA_REVISION

    console.print(f"{store.url}: schema at revision {SCHEMA_REVISION}")


# -- demo -----------------------------------------------------------------------------------------
@app.command()
def demo(
    db: DbOption = None,
    crash_at: Annotated[
        int | None, typer.Option("--crash-at", help="Kill this process with SIGKILL after the N-th recorded step.")
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Finish the last unfinished demo run.")] = False,
    approve: Annotated[
        str, typer.Option(help="How staged changes are approved: auto, or prompt (asks in the terminal).")
    ] = "auto",
    model: Annotated[
        str, typer.Option(help="runbook (offline, default) or openai:<model> (OPENAI_API_KEY / OPENAI_BASE_URL).")
    ] = "runbook",
    mode: Annotated[
        str, typer.Option(help="react (one tool loop, default) or plan (plan-and-execute: a recorded plan).")
    ] = "react",
    as_json: JsonOption = False,
) -> None:
    """Run the NOC copilot on an incident end to end (investigate, diagnose, stage, approve,
    apply, monitor, ticket), crash-safe, on the embedded SQLite store."""
    if approve not in ("auto", "prompt"):
        raise typer.BadParameter("--approve must be auto or prompt")
    if mode not in ("react", "plan"):
        raise typer.BadParameter("--mode must be react or plan")
    # The demo is content (agentflow_noc), found through an entry point: agentflow never imports it.
    from importlib.metadata import entry_points

    found = [ep for ep in entry_points(group="agentflow.demos") if ep.name == "noc"]
    if not found:
        err_console.print(
            "[bold red]error:[/] the NOC demo is not installed: it ships in the agentflow-noc pack "
            "(from the repository: pip install -e ./tools/noc)"
        )
        raise typer.Exit(code=2)
    run_demo = found[0].load()
    try:
        summary = run_demo(
            db=_url(db), crash_at=crash_at, resume=resume, approve=approve, model=model, quiet=as_json, mode=mode
        )
    except AgentflowError as exc:
        _fail(exc)
    if as_json:
        print(json.dumps(summary))
    else:
        table = Table(show_header=False, title="summary")
        for key, value in summary.items():
            table.add_row(key, str(value))
        console.print(table)


# -- serve ----------------------------------------------------------------------------------------
@app.command()
def serve(
    app_ref: Annotated[str, typer.Option("--app", help="The App to serve, as module:attribute.")],
    agent: Annotated[
        str | None, typer.Option("--agent", help="The agent chat requests start (default: the app's only agent).")
    ] = None,
    db: DbOption = None,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    worker: Annotated[bool, typer.Option("--worker/--no-worker", help="Also drive runs in this process.")] = True,
    secure_cookies: Annotated[
        bool, typer.Option("--secure-cookies", help="Mark the session cookie Secure (behind HTTPS).")
    ] = False,
) -> None:
    """Serve the web chat and JSON API: operators start runs, watch them live, approve staged actions."""
    if db:
        os.environ["AGENTFLOW_DB"] = db
    try:
        import uvicorn

        from agentflow.server import create_app
    except ImportError as exc:
        err_console.print(
            f"[bold red]error:[/] agentflow serve needs the server extra: pip install 'agentflow[server]' ({exc})"
        )
        raise typer.Exit(code=2) from None
    the_app = load_app(app_ref)
    try:
        api = create_app(the_app, agent=agent, run_worker=worker, secure_cookies=secure_cookies)
    except AgentflowError as exc:
        _fail(exc)
    err_console.print(
        f"agentflow serve: http://{host}:{port}/ (store {the_app.store.url}, worker {'on' if worker else 'off'})"
    )
    # A short grace period: live streams would otherwise hold a shutdown until they end.
    uvicorn.run(api, host=host, port=port, log_level="warning", timeout_graceful_shutdown=2)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
