"""What a metrics scrape reads from the store: runs by tenant and status, open approvals and the
age of the oldest, webhook deliveries pending (and the oldest's age) or failed, and whether the
store answers at all (a readiness probe).

Each is one aggregate query, run at scrape time (Prometheus scrapes every 15-60 s): the figures
are the database's, shared by every worker, not this process's view. Counting `af_runs` is a scan
of its (tenant, status) index: cheap for thousands of runs, worth a longer scrape interval for
millions.
"""

from __future__ import annotations

from dataclasses import dataclass

from agentflow.store._constants import OPEN_STATUSES
from agentflow.store._store import EventStore


@dataclass(frozen=True, slots=True)
class OpenApprovals:
    """A tenant's approval requests still waiting for a decision."""

    tenant: str
    count: int
    #: When the oldest of them was requested (the app's clock, seconds since the epoch).
    oldest_created_at: float


@dataclass(frozen=True, slots=True)
class WebhookBacklog:
    """A tenant's webhook deliveries not delivered: pending ones (and when the oldest was
    created, the app's clock; None when none is pending) and failed ones (given up)."""

    tenant: str
    pending: int
    oldest_created_at: float | None
    failed: int


class StoreGauges:
    """Aggregate reads for metrics and probes (see the module docstring).

    Args:
        store: the store to read (its schema current: the worker and the server migrate it).
    """

    def __init__(self, store: EventStore) -> None:
        self.backend = store.backend

    def ping(self) -> None:
        """One trivial query; raises the store's error (`StoreError`) when it does not answer."""
        self.backend.query("SELECT 1")

    def runs_by_status(self) -> list[tuple[str, str, int]]:
        """(tenant, status, number of runs) for every pair that has runs."""
        rows = self.backend.query("SELECT tenant, status, count(*) FROM af_runs GROUP BY tenant, status")
        return [(str(t), str(s), int(n)) for t, s, n in rows]

    def webhook_backlog(self) -> list[WebhookBacklog]:
        """Per tenant with any: webhook deliveries pending (and when the oldest was created) and
        those given up (`failed`)."""
        rows = self.backend.query(
            "SELECT tenant, sum(CASE WHEN status = 'pending' THEN 1 ELSE 0 END), "
            "min(CASE WHEN status = 'pending' THEN created_at END), sum(CASE WHEN status = 'failed' THEN 1 ELSE 0 END) "
            "FROM af_deliveries WHERE status IN ('pending', 'failed') GROUP BY tenant"
        )
        return [WebhookBacklog(str(t), int(p), None if o is None else float(o), int(f)) for t, p, o, f in rows]

    def open_approvals(self) -> list[OpenApprovals]:
        """Per tenant with any: the open approval requests and when the oldest was made."""
        marks = ", ".join("?" * len(OPEN_STATUSES))
        rows = self.backend.query(
            f"SELECT tenant, count(*), min(created_at) FROM af_approvals WHERE status IN ({marks}) GROUP BY tenant",
            OPEN_STATUSES,
        )
        return [OpenApprovals(str(t), int(n), float(oldest)) for t, n, oldest in rows]
