"""`agentflow worker`: drive an App's runs until stopped (or, with `--until-idle`, until none is left)."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import TYPE_CHECKING, Annotated

import typer

from agentflow.cli._common import DbOption, fail, load_app
from agentflow.cli._logging import live_spans_if_asked
from agentflow.cli._webhooks import WebhooksOption, background_deliverer
from agentflow.errors import AgentflowError, ConfigurationError

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from agentflow.engine import App, Worker

log = logging.getLogger("agentflow.worker")


def worker(
    app_ref: Annotated[str, typer.Option("--app", help="The App to serve, as module:attribute.")],
    db: DbOption = None,
    concurrency: Annotated[
        int,
        typer.Option(help="Most runs driven at once (~12 KB each in flight plus payloads; parked runs cost nothing)."),
    ] = 10_000,
    max_memory_mb: Annotated[
        int | None,
        typer.Option(
            "--max-memory-mb",
            help="Claim no more runs while the worker's resident memory is past this "
            "(default: half the memory available when runs first are in flight; 0: no limit).",
        ),
    ] = None,
    poll_interval: Annotated[float, typer.Option(help="Seconds between looks for work when idle.")] = 0.05,
    until_idle: Annotated[
        bool, typer.Option("--until-idle", help="Exit once no run is pending, running or due.")
    ] = False,
    metrics_port: Annotated[
        int | None,
        typer.Option("--metrics-port", help="Serve Prometheus /metrics, /healthz and /readyz on this port."),
    ] = None,
    metrics_host: Annotated[
        str, typer.Option("--metrics-host", help="Interface of --metrics-port (0.0.0.0: every interface).")
    ] = "127.0.0.1",
    webhooks: WebhooksOption = True,
) -> None:
    """Run a worker: claim runnable runs, recover runs whose owner died, wake due timers.

    With AGENTFLOW_OTEL=1, each step is sent as an OpenTelemetry span when it finishes (see
    `agentflow.trace.live_spans_from_env`)."""
    the_app = load_app(app_ref, db)
    from agentflow.engine import Worker

    try:
        # Opens the store: an unreachable or too-new database is said here, not as a traceback.
        max_memory = None if max_memory_mb is None else max_memory_mb * 2**20
        w = Worker(the_app, concurrency=concurrency, poll_interval=poll_interval, max_memory=max_memory)
        spans = live_spans_if_asked()
        # The deliverer first: once /readyz answers, the worker is starting (no slower start between them).
        deliverer = background_deliverer(the_app, metrics=metrics_port is not None) if webhooks else None
        server = _serve_metrics(the_app, metrics_host, metrics_port) if metrics_port is not None else None
        try:
            asyncio.run(_serve(the_app, w, until_idle=until_idle, poll_interval=poll_interval))
        finally:
            if deliverer is not None:
                deliverer.stop(timeout=5)
            if server is not None:
                server.shutdown()
                server.server_close()  # the listening socket, not only the serving thread
            if spans is not None:
                spans.close()
    except AgentflowError as exc:
        fail(exc)


def _serve_metrics(the_app: App, host: str, port: int) -> WSGIServer:
    from agentflow.engine import Metrics

    try:
        server = Metrics.install(the_app).serve(host, port)
    except OSError as exc:
        raise ConfigurationError(
            f"cannot serve metrics on {host}:{port} ({exc}): choose another --metrics-port"
        ) from None
    log.info("metrics served", extra={"url": f"http://{host}:{server.server_port}/metrics"})
    return server


async def _serve(the_app: App, w: Worker, *, until_idle: bool, poll_interval: float) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if not until_idle:
        await w.run_forever(stop)
        return
    task = asyncio.create_task(w.run_forever(stop))
    while not stop.is_set():
        await asyncio.sleep(poll_interval * 4)
        if _idle(the_app, w):
            stop.set()
    await task


def _idle(the_app: App, w: Worker) -> bool:
    """No run is pending or running, none is being driven here, and no timer is due."""
    if the_app.store.any_active(workflows=the_app.workflow_names) or w.executors:
        return False
    wake = the_app.store.next_wake_at(workflows=the_app.workflow_names)
    return wake is None or wake > the_app.clock.now()
