"""The `agentflow` command: one module per command group.

    agentflow worker | run | demo | serve | chat          _worker, _run, _demo, _serve, _chat
    agentflow runs list | show | history | usage | cancel | signal                   _runs
    agentflow db upgrade | rotate-key                                                _db
    agentflow doctor                                                                 _doctor
    agentflow operators add | list                                                   _operators
    agentflow approvals list | show | approve | reject                               _approvals
    agentflow policy check                                                           _policy

What they share (consoles, `--db`, the error exit, loading the user's App) is in `_common`.
"""

from __future__ import annotations

from typing import Annotated

import typer

from agentflow.cli._approvals import approvals_app
from agentflow.cli._chat import chat
from agentflow.cli._db import db_app
from agentflow.cli._demo import demo
from agentflow.cli._doctor import doctor
from agentflow.cli._operators import operators_app
from agentflow.cli._policy import policy_app
from agentflow.cli._run import run_agent
from agentflow.cli._runs import runs_app
from agentflow.cli._serve import serve
from agentflow.cli._worker import worker

__all__ = ["app", "main"]

app = typer.Typer(
    help="agentflow: durable workflows for LLM agents that act on real systems.",
    no_args_is_help=True,
    add_completion=False,
)
# The order of `agentflow --help`.
app.command()(chat)
app.command()(worker)
app.command("run")(run_agent)
app.command()(demo)
app.command()(serve)
app.command()(doctor)
app.add_typer(runs_app, name="runs")
app.add_typer(db_app, name="db")
app.add_typer(operators_app, name="operators")
app.add_typer(approvals_app, name="approvals")
app.add_typer(policy_app, name="policy")


def _print_version(value: bool) -> None:
    if value:
        from agentflow import __version__

        print(f"agentflow {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """agentflow: durable workflows for LLM agents that act on real systems."""


def main() -> None:
    """The `agentflow` console script."""
    app()
