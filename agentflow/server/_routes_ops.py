"""`/metrics`, `/healthz`, `/readyz`: what Prometheus and an orchestrator (Kubernetes probes, a
load balancer) read. Unauthenticated, like every scrape target: they say nothing of any run,
tenant or operator beyond counts, and nothing about the store's address or errors."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from agentflow.engine import App, Metrics, readiness


def ops_router(app: App) -> APIRouter:
    """The three routes over `app` (its metrics are installed now, so they count from the start)."""
    metrics = Metrics.install(app)
    router = APIRouter(tags=["operations"])

    @router.get("/metrics", response_class=Response)
    def scrape() -> Response:
        """Prometheus metrics (text format): this process's worker and the store's runs and approvals."""
        body, ctype = metrics.exposition()
        return Response(body, media_type=ctype)

    @router.get("/healthz")
    def healthz() -> dict[str, Any]:
        """The process is alive and serving: always 200."""
        return {"status": "ok"}

    @router.get("/readyz", responses={503: {"description": "the store does not answer"}})
    def readyz() -> JSONResponse:
        """200 when the store answers a trivial query within 1 s, else 503 with a reason."""
        code, body = readiness(app)
        return JSONResponse(body, status_code=code)

    return router
