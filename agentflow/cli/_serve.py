"""`agentflow serve`: the web chat and JSON API over an App (needs the `server` extra)."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from agentflow.cli._common import DbOption, err_console, fail, load_app, missing_extra
from agentflow.cli._logging import live_spans_if_asked
from agentflow.cli._webhooks import WebhooksOption, background_deliverer
from agentflow.errors import AgentflowError
from agentflow.store import redact_url


def serve(
    app_ref: Annotated[str, typer.Option("--app", help="The App to serve, as module:attribute.")],
    agent: Annotated[
        str | None, typer.Option("--agent", help="The agent chat requests start (default: the app's only agent).")
    ] = None,
    db: DbOption = None,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    worker: Annotated[bool, typer.Option("--worker/--no-worker", help="Also drive runs in this process.")] = True,
    secure_cookies: Annotated[
        bool, typer.Option("--secure-cookies", help="Mark the session cookie Secure (behind HTTPS).")
    ] = False,
    webhooks: WebhooksOption = True,
) -> None:
    """Serve the web chat and JSON API: operators start runs, watch them live, approve staged actions.

    Also serves Prometheus `/metrics` (by tenant only with the bearer token AGENTFLOW_METRICS_TOKEN,
    summed over tenants without one set), `/healthz` and `/readyz` (API.md); with AGENTFLOW_OTEL=1
    each step is sent as an OpenTelemetry span when it finishes."""
    try:
        import uvicorn

        from agentflow.server import create_app
    except ImportError as exc:
        missing_extra("agentflow serve", "server", exc)
    the_app = load_app(app_ref, db)
    try:
        api = create_app(the_app, agent=agent, run_worker=worker, secure_cookies=secure_cookies)
        _ = the_app.store  # an unreachable or too-new database is said here, not as a traceback at start-up
        spans = live_spans_if_asked()
        deliverer = background_deliverer(the_app, metrics=True) if webhooks else None
    except AgentflowError as exc:
        fail(exc)
    err_console.print(
        f"agentflow serve: http://{host}:{port}/ (store {redact_url(the_app.db)}, worker {'on' if worker else 'off'}, "
        f"webhooks {'on' if webhooks else 'off'})"
    )
    # uvicorn's records go through the root handler (`--log-format`); one line per request only
    # at debug (probes and scrapes come every few seconds). A short grace period: live streams
    # would otherwise hold a shutdown until they end.
    level = logging.getLogger().getEffectiveLevel()
    try:
        uvicorn.run(api, host=host, port=port, log_config=None, log_level=level, access_log=level <= logging.DEBUG,
                    timeout_graceful_shutdown=2)  # fmt: skip
    finally:
        if deliverer is not None:
            deliverer.stop(timeout=5)
        if spans is not None:
            spans.close()
