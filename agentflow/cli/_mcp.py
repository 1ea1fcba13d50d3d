"""`agentflow mcp serve`: an App's runs offered to other agents over the Model Context Protocol.

The tools (start a run, its status, its trace summary, the approvals waiting) are
`agentflow.server.mcp_server`'s; none decides an approval: approvals stay with people. Needs the
`mcp` extra.
"""

from __future__ import annotations

import logging
import os
from enum import StrEnum
from typing import Annotated

import typer

from agentflow.cli._common import DbOption, err_console, fail, load_app, missing_extra
from agentflow.errors import AgentflowError
from agentflow.store import DEFAULT_TENANT, redact_url

mcp_app = typer.Typer(help="Model Context Protocol: serve the app's runs to other agents.", no_args_is_help=True)


class Transport(StrEnum):
    stdio = "stdio"
    http = "http"


@mcp_app.command("serve")
def serve(
    app_ref: Annotated[str, typer.Option("--app", help="The App whose agents are offered, as module:attribute.")],
    db: DbOption = None,
    tenant: Annotated[str, typer.Option(help="The tenant every tool acts within.")] = DEFAULT_TENANT,
    transport: Annotated[
        Transport, typer.Option(help="stdio (the caller started this process) or http (streamable HTTP).")
    ] = Transport.stdio,
    host: Annotated[str, typer.Option(help="HTTP: interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP: TCP port.")] = 8800,
    requested_by: Annotated[
        str | None,
        typer.Option("--requested-by", help="stdio: who runs are recorded as requested by (default: $USER)."),
    ] = None,
) -> None:
    """Serve the app's runs over MCP: start a run of one of its agents, read its status and trace
    summary, list the actions waiting for approval. No tool approves or rejects: people do, with
    their own operator tokens (`agentflow approvals`, the web console, a linked chat).

    Over stdio the caller that started this process is trusted. Over HTTP every request needs an
    operator token of --tenant (`Authorization: Bearer aft_...`, from `agentflow operators add`);
    the runs it starts are requested by that operator. Runs are driven by the app's workers
    (`agentflow worker --app ...` or `agentflow serve`), not by this process."""
    try:
        from agentflow.server import mcp_server
    except ImportError as exc:
        missing_extra("agentflow mcp serve", "mcp", exc)
    the_app = load_app(app_ref, db)
    http_url = f"http://{host}:{port}" if transport is Transport.http else None
    who = requested_by or os.environ.get("USER") or "mcp"
    try:
        _ = the_app.store  # an unreachable or too-new database is said here, not as a traceback
        server = mcp_server(the_app, tenant=tenant, requested_by=who, http_url=http_url)
    except AgentflowError as exc:
        fail(exc)
    if http_url is None:
        server.run("stdio")  # stdout is the protocol's: nothing else may be printed there
        return
    import uvicorn

    err_console.print(
        f"agentflow mcp serve: {http_url}/mcp (store {redact_url(the_app.db)}, tenant {tenant}, operator tokens required)"
    )
    level = logging.getLogger().getEffectiveLevel()
    uvicorn.run(server.streamable_http_app(host=host), host=host, port=port, log_config=None, log_level=level,
                access_log=level <= logging.DEBUG, timeout_graceful_shutdown=2)  # fmt: skip
