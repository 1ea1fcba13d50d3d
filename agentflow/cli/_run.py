"""`agentflow run`: start an agent registered on an App as a run of its own, and drive it here."""

from __future__ import annotations

import asyncio
import json
import os
from typing import TYPE_CHECKING, Annotated, Any

import typer

from agentflow.cli._common import DbOption, JsonOption, console, fail, load_app
from agentflow.errors import AgentflowError

if TYPE_CHECKING:
    from agentflow.engine import App, RunInfo, Workflow


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
    the_app = load_app(app_ref, db)
    wf = _agent_workflow(the_app, agent)
    who = requested_by or os.environ.get("USER") or "cli"
    meta = {"agent": wf.name.split(":", 1)[1], "requested_by": who}
    try:
        handle = the_app.start(wf, task, run_id=run_id, tenant=tenant, meta=meta)
        if wait:
            from agentflow.engine import Worker

            asyncio.run(Worker(the_app, root_id=handle.run_id).run_until_blocked(handle.run_id, until_signal_wait=True))
        info = the_app.get_run(handle.run_id)
    except AgentflowError as exc:
        fail(exc)
    _print_started(info, as_json)


def _agent_workflow(the_app: App, name: str | None) -> Workflow[Any, Any]:
    from agentflow.agent import agent_workflow
    from agentflow.errors import ConfigurationError

    try:
        return agent_workflow(the_app, name)
    except ConfigurationError as exc:
        raise typer.BadParameter(f"--agent: {exc.message}") from None


def _print_started(info: RunInfo, as_json: bool) -> None:
    if as_json:
        print(json.dumps(info.to_dict(), indent=1))
        return
    console.print(f"run [cyan]{info.run_id}[/] ({info.workflow}, tenant {info.tenant}): [bold]{info.status}[/]")
    if info.output_json:
        outcome = json.loads(info.output_json)
        console.print(f"outcome: {outcome.get('status')}", highlight=False)
        if outcome.get("answer"):
            console.print(outcome["answer"], markup=False, highlight=False)
    waiting = (info.waiting_on or {}) if info.status == "waiting" else {}
    for name in waiting.get("signals", []):
        if name.startswith("approval:"):
            rid = name.split(":", 1)[1]
            console.print(f"waiting for approval [yellow]{rid}[/]: agentflow approvals show {rid}; "
                          f"agentflow approvals approve {rid} --token <operator token>", highlight=False)  # fmt: skip
        else:
            console.print(f"waiting for signal [yellow]{name}[/]", highlight=False)
