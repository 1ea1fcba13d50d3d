"""Prometheus metrics of a worker process and of the store it shares, and the health probes.

`Metrics.install(app)` creates the process's metrics (once) and adds them as an `Observer`: from
then on the workers of this process count what they do (steps by kind with their latency, model
tokens and cost, runs claimed, parked and finished, lease takeovers, store errors). What the
database holds for every worker (runs by tenant and status, open approvals and the age of the
oldest, webhook deliveries pending or given up) is read from the store at scrape time, by tenant
or summed over tenants
(`exposition(tenants=False)`: what `agentflow serve` answers an unauthenticated scrape, which must
not list the tenants). `prometheus-client` is imported here only, when metrics are installed: a
process that serves none pays nothing for it.

`Metrics.serve(host, port)` serves `/metrics`, `/healthz` and `/readyz` on a port of their own
(`agentflow worker --metrics-port`); `agentflow serve` mounts the same three on its web app.
"""

from __future__ import annotations

import concurrent.futures
import json
import threading
import weakref
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from agentflow.engine._executor_base import ExecutorBase
from agentflow.engine._host import Host
from agentflow.engine._observe import Observer, add_observer
from agentflow.engine._threads import tool_threads
from agentflow.errors import StoreError
from agentflow.store import OpenApprovals, RunRecord, StepRecord, StoreGauges, WebhookBacklog

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric

#: Step latency buckets (seconds): a policy decision takes milliseconds, a model call seconds,
#: a tool that drives a network element up to minutes.
STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, float("inf"))
#: How long `/readyz` waits for the store's answer.
READY_TIMEOUT = 1.0

_lock = threading.Lock()
_installed: Metrics | None = None


class Metrics(Observer):
    """The process's Prometheus metrics (see the module docstring); get them with `install`.

    Names start with `agentflow_` and carry their unit (`_seconds`, `_total`, `_usd`).
    """

    def __init__(self, app: Host) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
        from prometheus_client.process_collector import ProcessCollector

        self.app = app
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        ProcessCollector(registry=r)
        self.steps = Histogram("agentflow_step_duration_seconds", "Steps executed here, by kind and outcome, "
                               "from first attempt to recorded outcome", ["kind", "status"], buckets=STEP_BUCKETS,
                               registry=r)  # fmt: skip
        self.tokens = Counter("agentflow_model_tokens_total", "Model tokens of the calls made here, by model and "
                              "type (input, output)", ["model", "type"], registry=r)  # fmt: skip
        self.cost = Counter("agentflow_model_cost_usd_total", "Cost of the model calls made here (USD)", ["model"],
                            registry=r)  # fmt: skip
        self.claimed = Counter("agentflow_worker_runs_claimed_total", "Runs claimed by this process's workers",
                               registry=r)  # fmt: skip
        self.takeovers = Counter("agentflow_lease_takeovers_total", "Runs taken over from a dead or silent worker",
                                 registry=r)  # fmt: skip
        self.lost = Counter("agentflow_leases_lost_total", "Runs this process stopped driving because another worker "
                            "took them over", registry=r)  # fmt: skip
        self.parked = Counter("agentflow_worker_runs_parked_total", "Runs parked in the store (waiting for a timer, "
                              "signal or child) by this process", registry=r)  # fmt: skip
        self.finished = Counter("agentflow_worker_runs_finished_total", "Runs ended by this process, by status",
                                ["status"], registry=r)  # fmt: skip
        self.store_errors = Counter("agentflow_store_errors_total", "Store errors met by this process, by type",
                                    ["type"], registry=r)  # fmt: skip
        in_flight = Gauge("agentflow_worker_runs_in_flight", "Runs this process is driving now", registry=r)
        in_flight.set_function(lambda: ExecutorBase.active)
        stuck = Gauge("agentflow_tool_threads_stuck", "Blocking tool calls running for over a minute", registry=r)
        stuck.set_function(lambda: len(tool_threads().stuck()))
        # The store's figures are not in the registry: each scrape adds them, by tenant or not.
        self._store_views = {True: _StoreCollector(self, tenants=True), False: _StoreCollector(self, tenants=False)}

    @classmethod
    def install(cls, app: Host) -> Metrics:
        """The process's metrics, created and added as an observer on the first call; the store
        figures are read from `app`'s store (the latest App given)."""
        global _installed
        with _lock:
            if _installed is None:
                _installed = cls(app)
                add_observer(_installed)
            _installed.app = app
            return _installed

    def exposition(self, *, tenants: bool = True) -> tuple[bytes, str]:
        """The metrics in Prometheus' text format, and its content type.

        Args:
            tenants: label the store's figures by tenant; False sums them over tenants (the
                oldest pending approval's age is the oldest of all), naming no tenant.
        """
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(_Scrape(self.registry, self._store_views[tenants])), CONTENT_TYPE_LATEST

    # -- observer ------------------------------------------------------------------------------
    def run_claimed(self, run: RunRecord, epoch: int, *, recovering: bool) -> None:
        self.claimed.inc()
        if recovering:
            self.takeovers.inc()

    def step_finished(self, run: RunRecord, step: StepRecord) -> None:
        end = step.finished_at if step.finished_at is not None else step.started_at
        self.steps.labels(step.kind, step.status).observe(max(end - step.started_at, 0.0))
        if step.kind == "llm" and step.status == "completed":
            self._usage(step)

    def _usage(self, step: StepRecord) -> None:
        try:
            body = json.loads(step.result or "null")
        except ValueError:
            return
        usage = body.get("usage") if isinstance(body, dict) else None
        if not isinstance(usage, dict):
            return
        model = str(body.get("model") or step.name)
        self.tokens.labels(model, "input").inc(int(usage.get("input_tokens") or 0))
        self.tokens.labels(model, "output").inc(int(usage.get("output_tokens") or 0))
        self.cost.labels(model).inc(float(usage.get("cost_usd") or 0.0))

    def run_parked(self, run: RunRecord) -> None:
        self.parked.inc()

    def run_finished(self, run: RunRecord, status: str, at: float, *, error: dict[str, Any] | None = None) -> None:
        self.finished.labels(status).inc()

    def lease_lost(self, run_id: str) -> None:
        self.lost.inc()

    def store_error(self, exc: BaseException) -> None:
        self.store_errors.labels(type(exc).__name__).inc()

    # -- a port of their own ---------------------------------------------------------------------
    def serve(self, host: str = "127.0.0.1", port: int = 9464) -> WSGIServer:
        """Serve `/metrics`, `/healthz` and `/readyz` on `host:port` from a daemon thread; returns
        the server (`shutdown()` stops it, `server_close()` then closes its socket; port 0 picks a
        free port: `server.server_port`)."""
        server = make_server(host, port, self._wsgi, _ThreadingServer, handler_class=_QuietHandler)
        threading.Thread(target=server.serve_forever, name="agentflow-metrics", daemon=True).start()
        return server

    def _wsgi(self, environ: dict[str, Any], start: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            body, ctype = self.exposition()
            start("200 OK", [("Content-Type", ctype)])
            return [body]
        if path in ("/healthz", "/readyz"):
            code, payload = (200, {"status": "ok"}) if path == "/healthz" else readiness(self.app)
            start(f"{code} {'OK' if code == 200 else 'Service Unavailable'}", [("Content-Type", "application/json")])
            return [json.dumps(payload).encode()]
        start("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found: /metrics, /healthz and /readyz are served here\n"]


class _Scrape:
    """What one scrape reads: the process's registry, then the store's figures."""

    def __init__(self, registry: CollectorRegistry, store: _StoreCollector) -> None:
        self.registry, self.store = registry, store

    def collect(self) -> Iterator[Metric]:
        yield from self.registry.collect()
        yield from self.store.collect()


class _StoreCollector:
    """The store's figures, read at scrape time; a store that does not answer is
    `agentflow_store_up 0` (and a store error counted), never a failed scrape. `tenants=False`
    sums them over tenants (no `tenant` label)."""

    def __init__(self, metrics: Metrics, *, tenants: bool) -> None:
        self.metrics, self.tenants = metrics, tenants

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        up = GaugeMetricFamily("agentflow_store_up", "1 when the store answered this scrape's queries")
        try:
            gauges = StoreGauges(self.metrics.app.store)
            runs, approvals, backlog = gauges.runs_by_status(), gauges.open_approvals(), gauges.webhook_backlog()
        except StoreError as exc:
            self.metrics.store_error(exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        if not self.tenants:
            runs, approvals = _over_tenants(runs, approvals)
            backlog = _backlog_over_tenants(backlog)
        by = ["tenant"] if self.tenants else []
        by_status = GaugeMetricFamily("agentflow_runs", "Runs in the store, by " + ("tenant and " if by else "") +
                                      "status", labels=[*by, "status"])  # fmt: skip
        for tenant, status, count in runs:
            by_status.add_metric([tenant, status] if by else [status], count)
        yield by_status
        pending = GaugeMetricFamily("agentflow_approvals_pending", "Approval requests waiting for a decision",
                                    labels=by)  # fmt: skip
        oldest = GaugeMetricFamily("agentflow_approvals_oldest_pending_age_seconds",
                                   "Age of the oldest approval request waiting for a decision", labels=by)  # fmt: skip
        now = self.metrics.app.clock.now()
        for row in approvals:
            labels = [row.tenant] if by else []
            pending.add_metric(labels, row.count)
            oldest.add_metric(labels, max(now - row.oldest_created_at, 0.0))
        yield pending
        yield oldest
        yield from _webhook_families(backlog, by, now)


def _webhook_families(backlog: list[WebhookBacklog], by: list[str], now: float) -> Iterator[Metric]:
    """Webhook deliveries waiting in the store (a dead endpoint shows as a growing age and, once
    given up, as failed ones)."""
    from prometheus_client.core import GaugeMetricFamily

    pending = GaugeMetricFamily("agentflow_webhook_deliveries_pending", "Webhook deliveries not yet answered 2xx "
                                "and not given up", labels=by)  # fmt: skip
    oldest = GaugeMetricFamily("agentflow_webhook_deliveries_oldest_pending_age_seconds", "Age of the oldest "
                               "pending webhook delivery", labels=by)  # fmt: skip
    failed = GaugeMetricFamily("agentflow_webhook_deliveries_failed", "Webhook deliveries given up after their "
                               "last attempt (kept until pruned, a week)", labels=by)  # fmt: skip
    for row in backlog:
        labels = [row.tenant] if by else []
        pending.add_metric(labels, row.pending)
        failed.add_metric(labels, row.failed)
        if row.oldest_created_at is not None:
            oldest.add_metric(labels, max(now - row.oldest_created_at, 0.0))
    yield from (pending, oldest, failed)


def _backlog_over_tenants(backlog: list[WebhookBacklog]) -> list[WebhookBacklog]:
    """The webhook backlog summed over tenants (the oldest pending delivery: the oldest of all)."""
    if not backlog:
        return []
    ages = [b.oldest_created_at for b in backlog if b.oldest_created_at is not None]
    return [WebhookBacklog("", sum(b.pending for b in backlog), min(ages) if ages else None,
                           sum(b.failed for b in backlog))]  # fmt: skip


def _over_tenants(
    runs: list[tuple[str, str, int]], approvals: list[OpenApprovals]
) -> tuple[list[tuple[str, str, int]], list[OpenApprovals]]:
    """The store's figures summed over tenants (the tenant left empty); the oldest pending
    approval is the oldest of all."""
    by_status: Counter[str] = Counter()
    for _, status, count in runs:
        by_status[status] += count
    summed = [("", status, count) for status, count in sorted(by_status.items())]
    if not approvals:
        return summed, []
    oldest = min(a.oldest_created_at for a in approvals)
    return summed, [OpenApprovals("", sum(a.count for a in approvals), oldest)]


# -- readiness ------------------------------------------------------------------------------------
#: Each App's probe under way or last done: one at a time per App, and an App's probes never wait
#: behind another App's hung store.
_probes: weakref.WeakKeyDictionary[Host, concurrent.futures.Future[None]] = weakref.WeakKeyDictionary()


def readiness(app: Host, timeout: float = READY_TIMEOUT) -> tuple[int, dict[str, Any]]:
    """(HTTP status, JSON body) of a readiness probe: 200 when the store answers a trivial query
    within `timeout` seconds, else 503 with a reason. Nothing about the store (its URL, its
    error's message) is in the answer: probes are unauthenticated.

    The query runs on a thread of its own (with its own connection), one at a time per App: a
    store that hangs holds that thread, and later probes of that App say so at once instead of
    piling up threads; another App's probes (its own store) are not held up."""
    with _lock:
        probe = _probes.get(app)
        if probe is None or probe.done():
            probe = _probes[app] = _start_probe(app)
    try:
        probe.result(timeout=timeout)
    except concurrent.futures.TimeoutError:
        return 503, {"status": "unavailable", "reason": f"the store did not answer within {timeout:g} s"}
    except StoreError as exc:
        return 503, {"status": "unavailable", "reason": f"the store did not answer ({type(exc).__name__})"}
    except Exception as exc:  # noqa: BLE001 - a probe answers, whatever went wrong
        return 503, {"status": "unavailable", "reason": f"the store could not be opened ({type(exc).__name__})"}
    return 200, {"status": "ready"}


def _start_probe(app: Host) -> concurrent.futures.Future[None]:
    """`app`'s store opened and pinged on a daemon thread (a hung store must not keep the
    process from exiting)."""
    probe: concurrent.futures.Future[None] = concurrent.futures.Future()

    def ping() -> None:
        try:
            StoreGauges(app.store).ping()
        except BaseException as exc:  # noqa: BLE001 - handed to the prober
            probe.set_exception(exc)
        else:
            probe.set_result(None)

    threading.Thread(target=ping, name="agentflow-ready", daemon=True).start()
    return probe


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    """One thread per request (a slow scrape does not hold a probe); threads end with the process."""

    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes and probes every few seconds are not worth a log line each."""
