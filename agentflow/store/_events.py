"""Events out: the outbox (`af_events`), webhook subscriptions (`af_webhooks`) and their
deliveries (`af_deliveries`). The SQL for `agentflow.webhooks`; the rules (signing, backoff) live
there."""

from __future__ import annotations

from agentflow.store._backend import Records


class EventRecords(Records):
    """The outbox of events, appended in the transaction of what they report."""


class WebhookRecords(Records):
    """Webhook subscriptions per tenant."""


class DeliveryRecords(Records):
    """One row per (subscription, event): claimed with a lease, retried, marked delivered."""
