"""The `agentflow` command: one module per command group.

    agentflow worker | run | demo | serve | chat          _worker, _run, _demo, _serve, _chat
    agentflow eval                                        _eval
    agentflow runs list | show | history | usage | cancel | signal | watch           _runs, _watch
    agentflow db upgrade | rotate-key                                                _db
    agentflow doctor                                                                 _doctor
    agentflow operators add | list | disable | enable | revoke | rotate              _operators
    agentflow approvals list | show | approve | reject                               _approvals
    agentflow policy check                                                           _policy
    agentflow webhooks add | list | remove | deliveries | deliver                    _webhooks
    agentflow chat-bridge matrix | slack                          _bridge, _bridge_matrix, _bridge_slack
    agentflow mcp serve                                                              _mcp

What they share (consoles, `--db`, the error exit, loading the user's App) is in `_common`.
"""

from __future__ import annotations

from typing import Annotated

import typer

from agentflow.cli._approvals import approvals_app
from agentflow.cli._bridge import bridge_app
from agentflow.cli._bridge_matrix import bridge_app as _with_matrix
from agentflow.cli._bridge_slack import bridge_app as _with_slack
from agentflow.cli._chat import chat
from agentflow.cli._db import db_app
from agentflow.cli._demo import demo
from agentflow.cli._doctor import doctor
from agentflow.cli._eval import eval_scenarios
from agentflow.cli._logging import LogFormat, LogLevel, configure_logging
from agentflow.cli._mcp import mcp_app
from agentflow.cli._operators import operators_app
from agentflow.cli._policy import policy_app
from agentflow.cli._run import run_agent
from agentflow.cli._runs import runs_app
from agentflow.cli._serve import serve
from agentflow.cli._webhooks import webhooks_app
from agentflow.cli._worker import worker

__all__ = ["app", "main"]

# The exit-code table (`_exit`), as `agentflow --help` shows it.
_EXIT_CODES = (
    "Exit codes (run, demo, runs show --wait, runs watch): 0 completed (the agent answered) · 1 failed "
    "(the error is printed) · 2 bad usage or configuration (a flag, an unknown run, no such database, bad "
    "credentials) · 3 cancelled · 4 the agent stopped unfinished (max_turns, budget, time limit) · 5 waiting "
    "for people (an approval or a signal) · 6 still running (--timeout passed) · 75 the store is busy or "
    "unreachable: retry later."
)

app = typer.Typer(
    help="agentflow: durable workflows for LLM agents that act on real systems.",
    epilog=_EXIT_CODES,
    no_args_is_help=True,
    add_completion=False,
)
# The order of `agentflow --help`.
app.command()(chat)
app.command()(worker)
app.command("run")(run_agent)
app.command()(demo)
app.command("eval")(eval_scenarios)
app.command()(serve)
app.command()(doctor)
app.add_typer(runs_app, name="runs")
app.add_typer(db_app, name="db")
app.add_typer(operators_app, name="operators")
app.add_typer(approvals_app, name="approvals")
app.add_typer(policy_app, name="policy")
app.add_typer(webhooks_app, name="webhooks")
app.add_typer(bridge_app, name="chat-bridge")  # with its matrix and slack commands
app.add_typer(mcp_app, name="mcp")
assert _with_matrix is _with_slack is bridge_app


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        print(f"agentflow {version('agentflow')}")
        raise typer.Exit()


#: Commands that run for long and report what they do: their log level is info by default.
_SERVICES = ("worker", "serve", "chat-bridge")


@app.callback()
def _root(
    ctx: typer.Context,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
    ] = False,
    log_level: Annotated[
        LogLevel | None,
        typer.Option(
            "--log-level",
            envvar="AGENTFLOW_LOG_LEVEL",
            case_sensitive=False,
            help="Least severe log records shown (default: info for worker and serve, else warning).",
        ),
    ] = None,
    log_format: Annotated[
        LogFormat,
        typer.Option(
            "--log-format",
            envvar="AGENTFLOW_LOG_FORMAT",
            case_sensitive=False,
            help="Log lines on stderr: text, json (one object per line) or logfmt.",
        ),
    ] = LogFormat.text,
) -> None:
    """agentflow: durable workflows for LLM agents that act on real systems."""
    default = "info" if ctx.invoked_subcommand in _SERVICES else "warning"
    configure_logging(log_level.value if log_level else default, log_format)


def main() -> None:
    """The `agentflow` console script."""
    app()
