"""The deliverer's Prometheus counters, in the registry of the process's metrics (`agentflow
serve`'s /metrics, `agentflow worker --metrics-port`). Process counters carry no tenant label,
like the worker's; what waits in the store (pending deliveries and the oldest's age, failed ones)
is read at scrape time with the store's other figures, by tenant only for an authorized scrape."""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

_lock = threading.Lock()
_made: weakref.WeakKeyDictionary[CollectorRegistry, DeliveryMetrics] = weakref.WeakKeyDictionary()


class DeliveryMetrics:
    """`agentflow_webhook_attempts_total{outcome}` (delivered, refused: an answer that is not 2xx,
    unreachable: no connection or no answer in time) and `agentflow_webhook_deliveries_failed_total`
    (deliveries given up)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        from prometheus_client import Counter

        self.attempts = Counter("agentflow_webhook_attempts_total", "Webhook delivery attempts made here, by outcome "
                                "(delivered, refused, unreachable)", ["outcome"], registry=registry)  # fmt: skip
        self.failed = Counter("agentflow_webhook_deliveries_failed_total", "Webhook deliveries given up here after "
                              "their last attempt", registry=registry)  # fmt: skip

    @classmethod
    def of(cls, registry: CollectorRegistry) -> DeliveryMetrics:
        """The counters in `registry` (made on first use: a registry refuses a name twice)."""
        with _lock:
            made = _made.get(registry)
            if made is None:
                made = _made[registry] = cls(registry)
            return made

    def attempted(self, outcome: str, *, given_up: bool) -> None:
        self.attempts.labels(outcome).inc()
        if given_up:
            self.failed.inc()
