"""`agentflow demo`: the NOC copilot on an incident, end to end, crash-safe."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from agentflow.cli._common import DbOption, JsonOption, console, err_console, fail
from agentflow.cli._exit import EXIT_OK, EXIT_UNFINISHED, exit_code_for
from agentflow.cli._json import emit
from agentflow.errors import AgentflowError


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
        str,
        typer.Option(
            help="react (one tool loop, default), plan (plan-and-execute: a recorded plan) or guided (the "
            "runbook's phases, each with its tools and a required call: for small local models)."
        ),
    ] = "react",
    network: Annotated[
        str,
        typer.Option(
            help="simulated (the offline network, default) or netconf: the closed loop on confirmed commit "
            "against the device NOC_NETCONF_HOST/_PORT/_USER/_KEY name, or a lab netconfd+sshd started here."
        ),
    ] = "simulated",
    as_json: JsonOption = False,
) -> None:
    """Run the NOC copilot on an incident end to end (investigate, diagnose, stage, approve,
    apply, monitor, ticket), crash-safe, on the embedded SQLite store.

    Exit code: 0 when the agent answered and the incident is resolved (checked on the network:
    `verdict`), 1 when the run failed (the error is printed), 3 cancelled, 4 when the agent
    stopped unfinished (max_turns, budget) or answered with the incident still open
    (`incident_open: true`), 5 waiting for people."""
    from agentflow.store import resolve_url

    if approve not in ("auto", "prompt"):
        raise typer.BadParameter("--approve must be auto or prompt")
    if mode not in ("react", "plan", "guided"):
        raise typer.BadParameter("--mode must be react, plan or guided")
    if network not in ("simulated", "netconf"):
        raise typer.BadParameter("--network must be simulated or netconf")
    run_demo = _noc_demo()
    extra = {"network": network} if network != "simulated" else {}  # a pack without --network still runs
    try:
        summary = run_demo(
            db=resolve_url(db), crash_at=crash_at, resume=resume, approve=approve, model=model, quiet=as_json,
            mode=mode, **extra,
        )  # fmt: skip
    except AgentflowError as exc:
        fail(exc)
    code = exit_code_for(summary["status"], {"status": summary.get("outcome")})
    if code == EXIT_OK and summary.get("incident_open"):
        code = EXIT_UNFINISHED  # answered, but the network says the incident is still open
    if as_json:
        emit(summary)
    else:
        _print_summary(summary)
    raise typer.Exit(code=code)


def _print_summary(summary: dict[str, Any]) -> None:
    table = Table(show_header=False, title="summary")
    table.add_column(no_wrap=True)
    table.add_column(overflow="fold")  # the run id is wrapped whole, never cut
    for key, value in summary.items():
        if key != "error":
            table.add_row(key, str(value))
    console.print(table)
    error = summary.get("error")
    if isinstance(error, dict):
        err_console.print(f"[bold red]error:[/] {escape(str(error.get('type')))}: {escape(str(error.get('message')))}")


def _noc_demo() -> Any:
    return pack_entry("agentflow.demos", "demo")


def pack_entry(group: str, what: str) -> Any:
    """The NOC pack's `noc` entry point of `group` (its demo, its evaluation), loaded: content
    (agentflow_noc, in tools/noc) is found this way, agentflow never imports it."""
    from importlib.metadata import entry_points

    found = [ep for ep in entry_points(group=group) if ep.name == "noc"]
    if not found:
        err_console.print(
            f"[bold red]error:[/] the NOC {what} is not installed: it ships in the agentflow-noc pack "
            "(from the repository: pip install -e ./tools/noc)"
        )
        raise typer.Exit(code=2)
    return found[0].load()
