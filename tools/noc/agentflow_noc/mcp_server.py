"""The NOC pack's read tools as a Model Context Protocol server, built with the official `mcp` SDK.

    python -m agentflow_noc.mcp_server --network-db network.db                  # stdio
    python -m agentflow_noc.mcp_server --network-db network.db --transport http --port 8765

It offers the pack's tools declared `side_effect="none"` (get_kpis, detect_anomalies,
rank_root_causes, propose_change, stage_change, monitor_kpis) under the same names, descriptions
and argument schemas, each annotated read-only, idempotent and closed-world, and a resource
template with a site's configuration (`noc://sites/{site}/config`). Nothing here changes the
network: the effect tools (apply_change, tickets, notifications) are not offered, so an agent
that takes its tools from this server can investigate and diagnose, never act.

The network is the file `--network-db` names, else `$NOC_DB`, the same way the demo and the
copilot's workers find it (`agentflow_noc.configure`). Over HTTP it binds 127.0.0.1 by default
and asks no credentials (it only reads a simulated network); put it behind a proxy that
authenticates before binding it anywhere else.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from langchain_core.tools import BaseTool, StructuredTool
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations

from agentflow.llm import tool_facts
from agentflow_noc.env import ENV, configure, network
from agentflow_noc.tools import NOC_TOOLS

NAME = "agentflow-noc"
#: What every tool of this server is: it reads the simulated network and nothing else.
READ_ONLY = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False)
INSTRUCTIONS = (
    "Read-only tools over a (simulated) 5G radio network: KPIs, anomalies (alarms), likely root "
    "causes, proposed and staged (dry-run) changes, and each site's configuration as the resource "
    "noc://sites/{site}/config. Nothing here changes the network; changes go through the NOC "
    "copilot, its policies and human approvals."
)


def read_tools() -> list[BaseTool]:
    """The pack's tools that only read (`side_effect="none"`), in the pack's order."""
    return [t for t in NOC_TOOLS if tool_facts(t).read_only]


def _inert(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn` with its errors (an unknown site, a bad parameter) sent to the caller as a tool error
    carrying the pack's message, as the in-process tool shows it to the model. The SDK hides the
    text of any other exception."""

    @functools.wraps(fn)  # the SDK reads the schema from the pack's own signature
    def call(**kwargs: Any) -> Any:
        try:
            return fn(**kwargs)
        except (ValueError, KeyError, LookupError) as exc:
            raise ToolError(str(exc)) from exc

    return call


def build() -> MCPServer[Any]:
    """The server over the network this process is configured for (`configure` or `$NOC_DB`)."""
    network()  # fail now, with the pack's message, when no network is configured
    server: MCPServer[Any] = MCPServer(NAME, instructions=INSTRUCTIONS, log_level="WARNING")
    for t in read_tools():
        if not isinstance(t, StructuredTool) or t.func is None:  # pragma: no cover - the pack's tools are sync
            raise TypeError(f"{t.name}: only the pack's synchronous tools are served")
        server.add_tool(_inert(t.func), name=t.name, description=t.description, annotations=READ_ONLY)

    @server.resource("noc://sites/{site}/config", name="site_config", mime_type="application/json")
    def site_config(site: str) -> str:
        """A cell site's current configuration (parameter -> value)."""
        return json.dumps(network().config(site), sort_keys=True)

    return server


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m agentflow_noc.mcp_server", description=__doc__.split("\n")[0])
    parser.add_argument("--network-db", help=f"the simulated network's file (default: ${ENV})")
    parser.add_argument("--transport", choices=("stdio", "http"), default="stdio")
    parser.add_argument("--host", default="127.0.0.1", help="HTTP: the address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8765, help="HTTP: the port (default 8765)")
    args = parser.parse_args(argv)
    if args.network_db:
        configure(args.network_db)
    elif not os.environ.get(ENV):
        parser.error(f"no network: pass --network-db PATH or set {ENV}")
    server = build()
    if args.transport == "stdio":
        server.run("stdio")
    else:
        print(f"{NAME}: MCP over streamable HTTP at http://{args.host}:{args.port}/mcp", file=sys.stderr, flush=True)
        server.run("streamable-http", host=args.host, port=args.port)


if __name__ == "__main__":
    main()
