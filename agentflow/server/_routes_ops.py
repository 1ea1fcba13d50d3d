"""`/metrics`, `/healthz`, `/readyz`: what Prometheus and an orchestrator (Kubernetes probes, a
load balancer) read. The probes are unauthenticated and say nothing of any run, tenant or
operator, nor the store's address or errors. `/metrics` names tenants only to a scraper that
sends `Authorization: Bearer $AGENTFLOW_METRICS_TOKEN` (when that is set; without the token it
answers 401): otherwise anyone who reaches the server could list the tenants and watch their
activity, which the API never confirms across tenants. With no token set, it sums the store's
figures over tenants and names none."""

from __future__ import annotations

import os
import secrets
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from agentflow.engine import App, Metrics, readiness
from agentflow.server._auth import ApiError

#: The bearer token a scraper sends to read `/metrics` by tenant.
METRICS_TOKEN = "AGENTFLOW_METRICS_TOKEN"


def ops_router(app: App) -> APIRouter:
    """The three routes over `app` (its metrics are installed now, so they count from the start;
    `AGENTFLOW_METRICS_TOKEN` is read now)."""
    metrics = Metrics.install(app)
    token = os.environ.get(METRICS_TOKEN, "").strip()
    router = APIRouter(tags=["operations"])

    @router.get("/metrics", response_class=Response, responses={401: {"description": "the metrics token is wrong"}})
    def scrape(request: Request) -> Response:
        """Prometheus metrics (text format): this process's worker and the store's runs and
        approvals; by tenant with the metrics token, summed over tenants without one set."""
        if token:
            _check_token(request, token)
        body, ctype = metrics.exposition(tenants=bool(token))
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


def _check_token(request: Request, token: str) -> None:
    header = request.headers.get("authorization", "")
    sent = header[7:].strip() if header.lower().startswith("bearer ") else ""
    if not secrets.compare_digest(sent.encode(), token.encode()):
        raise ApiError(401, "bad_metrics_token", f"/metrics needs the token of {METRICS_TOKEN}: send it as "
                       "`Authorization: Bearer <token>` (Prometheus: authorization.credentials_file)",
                       headers={"WWW-Authenticate": "Bearer"})  # fmt: skip
