"""`agentflow run`: start an agent registered on an App as a run of its own, and drive it here."""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING, Annotated, Any

import typer

from agentflow.cli._common import DbOption, JsonOption, fail, load_app
from agentflow.cli._json import emit
from agentflow.cli._watch import print_outcome, run_exit_code, run_json
from agentflow.errors import AgentflowError

if TYPE_CHECKING:
    from agentflow.engine import App, Workflow


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
    """Start an agent registered on an app (`agent.register(app)`) as a run of its own, and drive
    it here until it ends or waits for people.

    Exit code: 0 answered, 1 failed (the error is printed), 3 cancelled, 4 the agent stopped
    unfinished (max_turns, budget, time limit), 5 waiting for an approval or a signal; with
    --no-wait, 0 once the run is recorded (follow it with `agentflow runs watch RUN`)."""
    the_app = load_app(app_ref, db)
    wf = _agent_workflow(the_app, agent)
    who = requested_by or os.environ.get("USER") or "cli"
    meta = {"agent": wf.name.split(":", 1)[1], "requested_by": who}
    try:
        handle = the_app.start(wf, task, run_id=run_id, tenant=tenant, meta=meta)
        if wait:
            from agentflow.engine import Worker

            asyncio.run(Worker(the_app, root_id=handle.run_id).run_until_blocked(handle.run_id, until_signal_wait=True))
        run = the_app.store.get_run(handle.run_id)
    except AgentflowError as exc:
        fail(exc)
    if as_json:
        emit(run_json(run))
    else:
        print_outcome(run)
    if wait:
        raise typer.Exit(code=run_exit_code(run))


def _agent_workflow(the_app: App, name: str | None) -> Workflow[Any, Any]:
    from agentflow.agent import agent_workflow
    from agentflow.errors import ConfigurationError

    try:
        return agent_workflow(the_app, name)
    except ConfigurationError as exc:
        raise typer.BadParameter(f"--agent: {exc.message}") from None
