"""The web chat and JSON API (`agentflow serve`): operators start copilot runs, watch them live
and decide their staged actions, with the same checks and audit as the approvals API.

    from agentflow.server import create_app
    api = create_app(app)              # a FastAPI app: uvicorn.run(api), or `agentflow serve`

The HTTP API is described in API.md next to this file and served as OpenAPI at /openapi.json.
Needs the `server` extra (`pip install agentflow[server]`).
"""

from agentflow.server._app import create_app

__all__ = ["create_app"]
