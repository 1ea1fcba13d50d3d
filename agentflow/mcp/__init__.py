"""Tools from Model Context Protocol servers, recorded and guarded like any tool.

    from agentflow.mcp import server
    Agent(name="noc", model=..., tools=[server("stdio:python -m inventory", name="inv"), get_kpis])

Needs the `mcp` extra (`pip install "agentflow[mcp]"`); `agentflow` itself imports without it.
How annotations, pins and idempotency keys work: `agentflow/mcp/_server.py`'s docstring.
"""

from agentflow.mcp._pins import Pin
from agentflow.mcp._server import META_KEY, Server, server

__all__ = ["META_KEY", "Pin", "Server", "server"]
