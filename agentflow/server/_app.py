"""The FastAPI application: the web chat page and the JSON API of API.md, over one App.

Every route acts as one operator (`_auth.Actor`): a bearer token, or a browser session whose
cookie is HttpOnly and SameSite=Strict and whose state changes carry the session's CSRF value.
All reads are scoped to the operator's current tenant (other tenants' runs answer 404, so their
ids are not even confirmed), and every decision goes through the approvals service, which checks
again and audits in one transaction. What runs, events and cards look like is `agentflow.chat`'s;
routes live per area (`_routes_session`, `_routes_runs`, `_routes_approvals`,
`_routes_doctor`, and `_routes_ops`: metrics and probes). Errors are JSON with a 4xx code (API.md's table).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

from agentflow.agent import agent_policies, agent_workflow
from agentflow.chat import Chat
from agentflow.engine import App, Worker
from agentflow.server import _routes_approvals, _routes_doctor, _routes_runs, _routes_session
from agentflow.server._errors import install_error_handlers
from agentflow.server._headers import SecurityHeaders
from agentflow.server._limits import DEFAULT_MAX_BODY, AuthThrottle, BodyLimit
from agentflow.server._routes_ops import ops_router
from agentflow.server._sessions import DEFAULT_TTL, Sessions
from agentflow.server._state import Served

STATIC = Path(__file__).parent / "static"
_PAGE_HEADERS = {
    # The page builds its DOM with textContent only; the policy is the second line of defence:
    # no inline script, no remote anything, no framing.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


_DOCS_CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
             "img-src 'self' data:; frame-ancestors 'none'")  # fmt: skip


def _mount_docs(api: FastAPI) -> None:
    """/docs: the API's Swagger UI from the `swagger-ui-bundle` package's files, not a CDN."""
    from swagger_ui_bundle import swagger_ui_path

    api.mount("/static/docs", StaticFiles(directory=str(swagger_ui_path)), name="docs-assets")

    @api.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        page = get_swagger_ui_html(
            openapi_url="/openapi.json", title="agentflow API", swagger_js_url="/static/docs/swagger-ui-bundle.js",
            swagger_css_url="/static/docs/swagger-ui.css", swagger_favicon_url="/static/docs/favicon-32x32.png",
        )  # fmt: skip
        page.headers["Content-Security-Policy"] = _DOCS_CSP
        return page


def create_app(
    app: App,
    *,
    agent: str | None = None,
    run_worker: bool = True,
    secure_cookies: bool = False,
    session_ttl: float = DEFAULT_TTL,
    poll_interval: float = 0.25,
    max_body_bytes: int = DEFAULT_MAX_BODY,
    throttle: AuthThrottle | None = None,
) -> FastAPI:
    """The web chat and JSON API over `app`.

    Args:
        app: the App whose runs, approvals and operators are served.
        agent: the agent chat requests start (default: the app's only registered agent).
        run_worker: also drive runs in this process (False when separate workers run).
        secure_cookies: mark the session cookie Secure (serve behind HTTPS).
        session_ttl: seconds a browser session lasts.
        poll_interval: seconds between looks at the store for live updates.
        max_body_bytes: request bodies over this are refused (413) before they are read.
        throttle: failed-authentication limits per client and the audit budget (default:
            10 failures per client a minute, 60 audited failures a minute in all).
    """
    # Nothing here opens the store: a module that builds the ASGI app at import time opens no
    # connection before a server forks its workers.
    chat = Chat.of(app)
    workflow = agent_workflow(app, agent)
    state = Served(
        chat=chat, sessions=Sessions(chat, ttl=session_ttl), throttle=throttle or AuthThrottle(),
        workflow=workflow, pack=agent_policies(workflow),
        secure_cookies=secure_cookies, session_ttl=session_ttl, poll_interval=poll_interval,
    )  # fmt: skip

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        stop = asyncio.Event()
        task = asyncio.create_task(Worker(app, poll_interval=0.05).run_forever(stop)) if run_worker else None
        try:
            yield
        finally:
            stop.set()
            if task is not None:
                await task

    api = FastAPI(
        title="agentflow",
        summary="Start copilot runs, watch them live, and decide their staged actions.",
        version="1",
        lifespan=lifespan,
        docs_url=None,  # served below from local files: an air-gapped NOC reaches no CDN
        redoc_url=None,
    )
    api.state.served = state
    api.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    api.add_middleware(SecurityHeaders)
    install_error_handlers(api)

    @api.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers=_PAGE_HEADERS)

    _mount_docs(api)
    api.mount("/static", StaticFiles(directory=STATIC), name="static")
    for module in (_routes_session, _routes_runs, _routes_approvals, _routes_doctor):
        api.include_router(module.router)
    api.include_router(ops_router(app))
    return api
