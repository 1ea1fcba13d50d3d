"""The web chat and JSON API (`agentflow serve`): operators start copilot runs, watch them live
and decide their staged actions, with the same checks and audit as the approvals API; and the
app's runs offered to other agents over the Model Context Protocol (`agentflow mcp serve`).

    from agentflow.server import create_app
    api = create_app(app)              # a FastAPI app: uvicorn.run(api), or `agentflow serve`
    mcp = mcp_server(app, tenant="noc-east")   # an MCP server (mcp SDK): start and read runs,
                                               # list pending approvals; never decide one

The HTTP API is described in API.md next to this file and served as OpenAPI at /openapi.json.
`create_app` needs the `server` extra (`pip install agentflow[server]`), `mcp_server` the `mcp`
extra only; each is imported on first use.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agentflow.server._app import create_app
    from agentflow.server._mcp import mcp_server

_LAZY = {"create_app": "agentflow.server._app", "mcp_server": "agentflow.server._mcp"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'agentflow.server' has no attribute {name!r}")


__all__ = ["create_app", "mcp_server"]
