"""Events out: the outbox (`af_events`), webhook subscriptions (`af_webhooks`) and their
deliveries (`af_deliveries`). The SQL for `agentflow.webhooks`; the rules (signing, backoff) live
there.

An event is written in the transaction of what it reports (an approval decided, a run finished),
with one delivery row per subscription of its tenant that takes its kind, so a commit records
both or neither. A tenant without such a subscription records nothing: the two statements
find no subscription (one index lookup each) and write no row, and a subscription created later
is seen by the next event's statements, never missed by a cache. The body a receiver gets is
composed here once and stored (sealed when the tenant is): every retry sends the same bytes.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from agentflow.store._backend import Op, Records
from agentflow.store._seal import Sealer
from agentflow.store._tenants import local_id

#: The kinds of event, in the order the docs list them.
EVENT_KINDS = ("approval.requested", "approval.decided", "approval.expired", "approval.escalated", "run.finished")
DELIVERY_STATUSES = ("pending", "delivered", "failed")
#: The longest last error kept per delivery (characters).
ERROR_CHARS = 500


def _statements(kind: str) -> tuple[str, str]:
    """The two statements that record an event of `kind` and its deliveries. The kind is written
    into them, not bound: SQLite prepares a statement again at every execution when a LIKE's
    pattern is a parameter (~50 us instead of ~3 us, on the path of every run's end), and the
    kinds are a fixed set of constants (`EVENT_KINDS`), never input."""
    if kind not in EVENT_KINDS:
        raise ValueError(f"unknown event kind {kind!r}: one of {EVENT_KINDS}")
    takes = f"w.tenant = ? AND w.disabled = 0 AND (w.kinds = '[]' OR w.kinds LIKE '%\"{kind}\"%')"
    event = (
        "INSERT INTO af_events (id, tenant, kind, subject, payload, created_at) SELECT ?, ?, ?, ?, ?, ? "
        f"WHERE EXISTS (SELECT 1 FROM af_webhooks w WHERE {takes}) ON CONFLICT (id) DO NOTHING"
    )
    # Selected through the event just written: a subscription created between the two statements
    # (PostgreSQL reads each statement's own snapshot) gets no delivery of an event that is not there.
    deliveries = (
        "INSERT INTO af_deliveries (webhook_id, event_id, tenant, status, attempts, next_at, created_at) "
        "SELECT w.id, e.id, w.tenant, 'pending', 0, 0.0, e.created_at FROM af_webhooks w "
        f"JOIN af_events e ON e.id = ? AND e.tenant = w.tenant WHERE {takes} ON CONFLICT DO NOTHING"
    )
    return event, deliveries


_STATEMENTS = {kind: _statements(kind) for kind in EVENT_KINDS}
#: A delivery a deliverer may claim at `now` (bound twice): pending, due, not leased.
_DUE = "status = 'pending' AND next_at <= ? AND (lease_until IS NULL OR lease_until <= ?)"
#: ... and its subscription has no attempt under way (`now` bound once): one at a time each.
_FREE = "webhook_id NOT IN (SELECT webhook_id FROM af_deliveries WHERE status = 'pending' AND lease_until > ?)"
_WEBHOOK_COLUMNS = "id, tenant, url, secret, kinds, created_at, disabled"
_DELIVERY_COLUMNS = (
    "d.webhook_id, d.event_id, d.tenant, d.status, d.attempts, d.next_at, d.lease_until, d.last_error, "
    "d.created_at, d.delivered_at, e.kind"
)


def iso(at: float) -> str:
    """An epoch time as ISO 8601 UTC with a `Z`."""
    return datetime.fromtimestamp(at, tz=UTC).isoformat().replace("+00:00", "Z")


def _timed(value: Any) -> Any:
    """`value` with every time (a number under a key `at` or `*_at`) as ISO 8601 UTC, and the
    number beside it under `<key>_epoch`."""
    if isinstance(value, list):
        return [_timed(v) for v in value]
    if not isinstance(value, dict):
        return value
    out: dict[str, Any] = {}
    for key, item in value.items():
        if (key == "at" or key.endswith("_at")) and isinstance(item, int | float) and not isinstance(item, bool):
            out[key], out[f"{key}_epoch"] = iso(float(item)), float(item)
        else:
            out[key] = _timed(item)
    return out


def event_body(event_id: str, tenant: str, kind: str, data: dict[str, Any], now: float) -> str:
    """The JSON a receiver gets: `id` (also the `webhook-id` header, the idempotency key), `type`,
    `tenant`, `timestamp` (+ `timestamp_epoch`) and `data`, times as ISO 8601 plus epoch."""
    body = {"id": event_id, "type": kind, "tenant": tenant, "timestamp": iso(now), "timestamp_epoch": float(now),
            "data": _timed(data)}  # fmt: skip
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False, default=str)


def event_ops(
    seals: Sealer, clean: Callable[[str], str], *, tenant: str, kind: str, subject: str, data: dict[str, Any],
    now: float,
) -> tuple[str, list[Op]]:  # fmt: skip
    """(the event's id, the two statements that record it and its deliveries when a subscription
    of `tenant` takes `kind`; nothing otherwise)."""
    event_id = _new_id()
    body = clean(event_body(event_id, tenant, kind, data, now))
    return event_id, _ops(seals, event_id, tenant, kind, subject, body, now)


def _new_id() -> str:
    return "evt_" + secrets.token_hex(12)


def _ops(seals: Sealer, event_id: str, tenant: str, kind: str, subject: str, body: str, now: float) -> list[Op]:
    sealed = seals.seal(body, tenant, "af_events.payload", event_id)
    event, deliveries = _STATEMENTS.get(kind) or _statements(kind)
    return [
        (event, (event_id, tenant, kind, subject, sealed, now, tenant), False),
        (deliveries, (event_id, tenant), False),
    ]


_json = json.JSONEncoder(ensure_ascii=False).encode


def run_finished_ops(
    seals: Sealer, *, run_id: str, tenant: str, workflow: str, status: str, error: str | None, now: float
) -> list[Op]:
    """`run.finished` of a run ending with `status` (its error's type only: a message may quote
    what the run saw).

    On the path of every run's end, subscribed or not, so the body is written out directly: the
    bytes `event_body` makes (a test pins it), in a few microseconds, with no redaction pass (it
    holds ids, names, a status and an error's type: no free text)."""
    error_type = None
    if error:
        try:
            error_type = json.loads(error).get("type")
        except (ValueError, AttributeError):
            error_type = "Error"
    event_id, at, epoch = _new_id(), iso(now), repr(float(now))
    body = (
        f'{{"id":"{event_id}","type":"run.finished","tenant":{_json(tenant)},"timestamp":"{at}",'
        f'"timestamp_epoch":{epoch},"data":{{"run_id":{_json(local_id(run_id, tenant))},"workflow":{_json(workflow)},'
        f'"status":{_json(status)},"error_type":{_json(error_type)},"finished_at":"{at}","finished_at_epoch":{epoch}}}}}'
    )
    return _ops(seals, event_id, tenant, "run.finished", run_id, body, now)


@dataclass(frozen=True, slots=True)
class EventRow:
    """An event as recorded: its id, tenant, kind, subject (an approval's or a run's id), the body
    receivers get (JSON text) and when it was recorded."""

    seq: int
    id: str
    tenant: str
    kind: str
    subject: str
    payload: str
    created_at: float


@dataclass(frozen=True, slots=True)
class WebhookRow:
    """A subscription: where (`url`), the signing secret, which kinds (empty: all)."""

    id: str
    tenant: str
    url: str = field(repr=False)  # an incoming-webhook URL may carry a token: never in a log line
    secret: str = field(repr=False)
    kinds: list[str]
    created_at: float
    disabled: bool = False


@dataclass(frozen=True, slots=True)
class DeliveryRow:
    """One event to one subscription: its state, attempts so far, when the next is due
    (`next_at`), the last error (redacted, truncated), and the event's kind."""

    webhook_id: str
    event_id: str
    tenant: str
    status: str
    attempts: int
    next_at: float
    lease_until: float | None
    last_error: str | None
    created_at: float
    delivered_at: float | None
    kind: str


@dataclass(frozen=True, slots=True)
class DueDelivery:
    """A delivery a deliverer claimed: what to POST where, and the lease it holds it under."""

    webhook_id: str
    event_id: str
    tenant: str
    attempts: int
    lease_until: float
    url: str = field(repr=False)
    secret: str = field(repr=False)
    payload: str = field(repr=False)


def _require_transaction(records: Records) -> None:
    """Raise StoreError (through `Records._write`) for writes outside a transaction."""
    if not records.writable:
        records._write("", ())


class EventRecords(Records):
    """The outbox of events, appended in the transaction of what they report."""

    def append(self, *, tenant: str, kind: str, subject: str, data: dict[str, Any], now: float) -> str | None:
        """Record an event of `tenant` (and its deliveries) in this transaction; its id, or None
        when no subscription of the tenant takes `kind` (nothing is recorded)."""
        event_id, ops = event_ops(self.seals, self.clean, tenant=tenant, kind=kind, subject=subject, data=data,
                                  now=now)  # fmt: skip
        _require_transaction(self)
        recorded = self.conn.execute(ops[0][0], ops[0][1]).rowcount
        self.conn.execute(ops[1][0], ops[1][1])
        return event_id if recorded else None

    def list(self, *, tenant: str, kind: str | None = None, subject: str | None = None) -> list[EventRow]:
        """The tenant's events, oldest first (by kind, by subject)."""
        sql = "SELECT seq, id, tenant, kind, subject, payload, created_at FROM af_events WHERE tenant = ?"
        params: list[Any] = [tenant]
        for column, value in (("kind", kind), ("subject", subject)):
            if value is not None:
                sql += f" AND {column} = ?"
                params.append(value)
        rows = self.conn.execute(sql + " ORDER BY seq", params).fetchall()
        opened = self.seals.open
        return [EventRow(seq=r[0], id=r[1], tenant=r[2], kind=r[3], subject=r[4], created_at=r[6],
                         payload=opened(r[5], r[2], "af_events.payload", r[1]) or "") for r in rows]  # fmt: skip


class WebhookRecords(Records):
    """Webhook subscriptions per tenant; every statement names the tenant."""

    def add(self, row: WebhookRow) -> None:
        seal = self.seals.seal
        self._write(
            f"INSERT INTO af_webhooks ({_WEBHOOK_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (row.id, row.tenant, seal(row.url, row.tenant, "af_webhooks.url", row.id),
             seal(row.secret, row.tenant, "af_webhooks.secret", row.id), json.dumps(sorted(row.kinds)),
             row.created_at, int(row.disabled)),
        )  # fmt: skip

    def get(self, webhook_id: str, *, tenant: str | None = None) -> WebhookRow | None:
        """The subscription (with `tenant`: only that tenant's, in the query)."""
        sql, params = f"SELECT {_WEBHOOK_COLUMNS} FROM af_webhooks WHERE id = ?", [webhook_id]
        if tenant is not None:
            sql, params = sql + " AND tenant = ?", [*params, tenant]
        row = self.conn.execute(sql, params).fetchone()
        return None if row is None else self._opened(row)

    def list(self, *, tenant: str | None = None) -> list[WebhookRow]:
        """Subscriptions by tenant, then age (every tenant's when `tenant` is None)."""
        sql, params = f"SELECT {_WEBHOOK_COLUMNS} FROM af_webhooks", []
        if tenant is not None:
            sql, params = sql + " WHERE tenant = ?", [tenant]
        rows = self.conn.execute(sql + " ORDER BY tenant, created_at, id", params).fetchall()
        return [self._opened(r) for r in rows]

    def remove(self, webhook_id: str, *, tenant: str) -> bool:
        """Remove the subscription and its deliveries; False when the tenant has none by that id."""
        _require_transaction(self)
        self.conn.execute("DELETE FROM af_deliveries WHERE webhook_id = ? AND tenant = ?", (webhook_id, tenant))
        n = self.conn.execute("DELETE FROM af_webhooks WHERE id = ? AND tenant = ?", (webhook_id, tenant)).rowcount
        return bool(n)

    def _opened(self, row: Sequence[Any]) -> WebhookRow:
        opened, (wid, tenant) = self.seals.open, row[:2]
        return WebhookRow(id=wid, tenant=tenant, url=opened(row[2], tenant, "af_webhooks.url", wid) or "",
                          secret=opened(row[3], tenant, "af_webhooks.secret", wid) or "", kinds=json.loads(row[4]),
                          created_at=float(row[5]), disabled=bool(row[6]))  # fmt: skip


class DeliveryRecords(Records):
    """One row per (subscription, event): claimed with a lease, retried, marked delivered.

    The deliverer's statements (`claim`, `delivered`, `retry`, `give_up`) act on any tenant's rows,
    like a worker's claim of runs: it serves the whole store. An outcome is written only while the
    deliverer still holds the lease it claimed with (`lease_until` as claimed): one whose lease ran
    out and was taken over writes nothing, except a success, which is a success whoever sent it.

    A subscription has one attempt under way at a time: a receiver that hangs (a host that drops
    packets) with a backlog holds one of the deliverers' threads, not all of them, so the other
    subscriptions (other tenants') are not held behind it; and a subscription's deliveries go
    out in order, retries aside."""

    def any_due(self, *, now: float) -> bool:
        """Whether a claim now would find a delivery (a read: an idle deliverer takes no write lock)."""
        sql = f"SELECT 1 FROM af_deliveries WHERE {_DUE} AND {_FREE} LIMIT 1"
        return self.conn.execute(sql, (now, now, now)).fetchone() is not None

    def claim(self, *, now: float, lease_until: float, limit: int) -> list[DueDelivery]:
        """Claim up to `limit` pending deliveries that are due and not leased (or whose lease ran
        out), the oldest due of each subscription with no attempt under way, counting the
        attempt; the claim is a conditional update checked by its row count, so two deliverers
        never hold the same delivery at once (claims take the `webhooks:claim` lock)."""
        _require_transaction(self)
        hooks = self.conn.execute(
            f"SELECT webhook_id, MIN(next_at) AS first FROM af_deliveries WHERE {_DUE} AND {_FREE} "
            "GROUP BY webhook_id ORDER BY first, webhook_id LIMIT ?",
            (now, now, now, limit),
        ).fetchall()
        claimed: list[DueDelivery] = []
        for webhook_id, _ in hooks:
            (event_id,) = self.conn.execute(
                f"SELECT event_id FROM af_deliveries WHERE webhook_id = ? AND {_DUE} ORDER BY next_at, created_at "
                "LIMIT 1",
                (webhook_id, now, now),
            ).fetchone()
            n = self.conn.execute(
                "UPDATE af_deliveries SET lease_until = ?, attempts = attempts + 1 WHERE webhook_id = ? "
                f"AND event_id = ? AND {_DUE}",
                (lease_until, webhook_id, event_id, now, now),
            ).rowcount
            found = self._due(webhook_id, event_id) if n == 1 else None
            claimed += [found] if found is not None else []
        return claimed

    def _due(self, webhook_id: str, event_id: str) -> DueDelivery | None:
        row = self.conn.execute(
            "SELECT d.tenant, d.attempts, d.lease_until, w.url, w.secret, e.payload FROM af_deliveries d "
            "JOIN af_webhooks w ON w.id = d.webhook_id AND w.tenant = d.tenant "
            "JOIN af_events e ON e.id = d.event_id AND e.tenant = d.tenant WHERE d.webhook_id = ? AND d.event_id = ?",
            (webhook_id, event_id),
        ).fetchone()
        if row is None:  # its subscription or event is gone (removed in the meantime): nothing to send
            return None
        tenant, opened = row[0], self.seals.open
        return DueDelivery(
            webhook_id=webhook_id, event_id=event_id, tenant=tenant, attempts=int(row[1]), lease_until=float(row[2]),
            url=opened(row[3], tenant, "af_webhooks.url", webhook_id) or "",
            secret=opened(row[4], tenant, "af_webhooks.secret", webhook_id) or "",
            payload=opened(row[5], tenant, "af_events.payload", event_id) or "",
        )  # fmt: skip

    def delivered(self, due: DueDelivery, *, at: float) -> None:
        self._write(
            "UPDATE af_deliveries SET status = 'delivered', delivered_at = ?, lease_until = NULL, last_error = NULL "
            "WHERE webhook_id = ? AND event_id = ? AND status = 'pending'",
            (at, due.webhook_id, due.event_id),
        )

    def retry(self, due: DueDelivery, *, next_at: float, error: str) -> None:
        """Another attempt at `next_at`; the lease is given back."""
        self._outcome("status = 'pending', next_at = ?", (next_at,), due, error)

    def give_up(self, due: DueDelivery, *, error: str) -> None:
        """`failed`: no more attempts."""
        self._outcome("status = 'failed'", (), due, error)

    def _outcome(self, change: str, values: tuple[Any, ...], due: DueDelivery, error: str) -> None:
        self._write(
            f"UPDATE af_deliveries SET {change}, lease_until = NULL, last_error = ? WHERE webhook_id = ? "
            "AND event_id = ? AND status = 'pending' AND lease_until = ?",
            (*values, self.clean(error)[:ERROR_CHARS], due.webhook_id, due.event_id, due.lease_until),
        )

    def list(
        self, *, tenant: str | None = None, status: str | None = None, webhook_id: str | None = None,
        limit: int = 100,
    ) -> list[DeliveryRow]:  # fmt: skip
        """Deliveries, newest first, with their event's kind."""
        clauses, params = [], []
        for column, value in (("d.tenant", tenant), ("d.status", status), ("d.webhook_id", webhook_id)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self.conn.execute(
            f"SELECT {_DELIVERY_COLUMNS} FROM af_deliveries d JOIN af_events e ON e.id = d.event_id{where} "
            "ORDER BY d.created_at DESC, d.event_id LIMIT ?",
            (*params, limit),
        ).fetchall()
        return [DeliveryRow(*r) for r in rows]

    def prune(self, *, before: float) -> int:
        """Forget delivered and failed deliveries created before `before`, and the events left
        with no delivery; how many deliveries were removed."""
        _require_transaction(self)
        n = self.conn.execute(
            "DELETE FROM af_deliveries WHERE status IN ('delivered', 'failed') AND created_at < ?", (before,)
        ).rowcount
        self.conn.execute(
            "DELETE FROM af_events WHERE created_at < ? AND NOT EXISTS "
            "(SELECT 1 FROM af_deliveries d WHERE d.event_id = af_events.id)",
            (before,),
        )
        return int(n)
