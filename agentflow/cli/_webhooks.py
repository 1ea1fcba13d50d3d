"""`agentflow webhooks ...`: signed event subscriptions (add, list, remove), their deliveries, and
the deliverer in the foreground (`deliver`; `serve` and `worker` run one in the background).

Subscribing is for admins (whoever can write the store): the deliverer POSTs wherever a
subscription says, private addresses included. The signing secret is printed once, by `add`;
`list` never shows it, and URLs are shown with a password, the query and token-like path
segments masked (`agentflow.webhooks.shown_url`).
"""

from __future__ import annotations

import signal
import threading
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich import box
from rich.table import Table

from agentflow.cli._common import DbOption, JsonOption, console, err_console, fail, store
from agentflow.cli._json import emit, iso
from agentflow.errors import AgentflowError
from agentflow.store import DEFAULT_TENANT, EVENT_KINDS

if TYPE_CHECKING:
    from agentflow.engine import App
    from agentflow.store import DeliveryRow
    from agentflow.webhooks import Deliverer, Subscription

#: `--webhooks/--no-webhooks` of `serve` and `worker`.
WebhooksOption = Annotated[
    bool,
    typer.Option(
        "--webhooks/--no-webhooks",
        help="Also deliver webhook events from this process, in the background (`agentflow webhooks`; idle: one "
        "look at the store a second).",
    ),
]


def background_deliverer(the_app: App, *, metrics: bool) -> Deliverer:
    """A deliverer of `the_app`'s store on a thread of its own (`stop()` ends it), counting its
    attempts in the process's metrics when they are served."""
    from agentflow.webhooks import Deliverer

    registry = None
    if metrics:
        from agentflow.engine import Metrics

        registry = Metrics.install(the_app).registry
    return Deliverer(the_app.store, registry=registry).start()


webhooks_app = typer.Typer(
    help="Webhook subscriptions: events (approval requested, decided, expired, escalated; run finished) POSTed "
    "signed to a URL, delivered at least once with the event id as the idempotency key.",
    no_args_is_help=True,
)


def _record(sub: Subscription) -> dict[str, Any]:
    return {"webhook_id": sub.id, "tenant": sub.tenant, "url": sub.shown_url, "events": sub.kinds or ["*"],
            "created_at": iso(sub.created_at)}  # fmt: skip


@webhooks_app.command("add")
def webhooks_add(
    url: Annotated[str, typer.Argument(help="Where to POST the events: an http:// or https:// URL.")],
    events: Annotated[
        str, typer.Option("--events", help=f"Comma-separated kinds (default: all): {', '.join(EVENT_KINDS)}.")
    ] = "",
    tenant: Annotated[str, typer.Option(help="The tenant whose events are sent.")] = DEFAULT_TENANT,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Subscribe URL to a tenant's events; prints the subscription id and its signing secret, once.

    Receivers verify each delivery with the secret (agentflow.webhooks.verify, or any Standard
    Webhooks library) and deduplicate by the webhook-id header. The deliverer POSTs to any address
    given here, private ones included: only admins should have the store's credentials."""
    from agentflow.webhooks import Webhooks

    kinds = [k.strip() for k in events.split(",") if k.strip()]
    try:
        sub, secret = Webhooks(store(db, create=True)).add(url, tenant=tenant, kinds=kinds)
    except AgentflowError as exc:
        fail(exc)
    if as_json:
        emit(_record(sub) | {"secret": secret})
        return
    console.print(f"webhook {sub.id} ({sub.tenant}): {', '.join(sub.kinds) or 'all events'} to {sub.shown_url}",
                  highlight=False, markup=False, soft_wrap=True)  # fmt: skip
    console.print(f"signing secret (shown this once; store it where the receiver reads it): {secret}",
                  highlight=False, markup=False, soft_wrap=True)  # fmt: skip


@webhooks_app.command("list")
def webhooks_list(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's.")] = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """List subscriptions (never their secrets)."""
    from agentflow.webhooks import Webhooks

    try:
        found = Webhooks(store(db)).list(tenant=tenant)
    except AgentflowError as exc:
        fail(exc)
    if as_json:
        emit(_record(s) for s in found)
        return
    if not found:
        console.print("no webhooks: `agentflow webhooks add URL --tenant T` subscribes one", style="dim")
        return
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("id", no_wrap=True)
    for column in ("tenant", "events", "url"):
        table.add_column(column, overflow="fold")
    for s in found:
        table.add_row(s.id, s.tenant, ", ".join(s.kinds) or "all", s.shown_url)
    console.print(table, highlight=False, markup=False)


@webhooks_app.command("remove")
def webhooks_remove(
    webhook_id: Annotated[str, typer.Argument(help="The subscription's id (wh_...).")],
    tenant: Annotated[str | None, typer.Option(help="Only if it is this tenant's.")] = None,
    db: DbOption = None,
) -> None:
    """Remove a subscription and its deliveries (what is pending is not sent)."""
    from agentflow.webhooks import Webhooks

    try:
        gone = Webhooks(store(db)).remove(webhook_id, tenant=tenant)
    except AgentflowError as exc:
        fail(exc)
    console.print(f"webhook {gone.id} ({gone.tenant}) removed", highlight=False, markup=False)


@webhooks_app.command("deliveries")
def webhooks_deliveries(
    status: Annotated[str | None, typer.Option(help="Only pending, delivered or failed ones.")] = None,
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's.")] = None,
    webhook: Annotated[str | None, typer.Option("--webhook", help="Only this subscription's.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 50,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Deliveries, newest first: status, attempts, when the next attempt is due, the last error."""
    from agentflow.webhooks import Webhooks

    try:
        found = Webhooks(store(db)).deliveries(tenant=tenant, status=status, webhook_id=webhook, limit=limit)
    except AgentflowError as exc:
        fail(exc)
    if as_json:
        emit(_delivery(d) for d in found)
        return
    _print_deliveries(found)


def _delivery(d: DeliveryRow) -> dict[str, Any]:
    return {"event_id": d.event_id, "webhook_id": d.webhook_id, "tenant": d.tenant, "kind": d.kind,
            "status": d.status, "attempts": d.attempts, "last_error": d.last_error, "created_at": iso(d.created_at),
            "next_attempt_at": iso(d.next_at) if d.status == "pending" and d.next_at else None,
            "delivered_at": iso(d.delivered_at)}  # fmt: skip


def _print_deliveries(found: list[DeliveryRow]) -> None:
    from agentflow.chat import time_left
    from agentflow.engine import SystemClock

    if not found:
        console.print("no deliveries", style="dim")
        return
    now = SystemClock().now()
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("event", no_wrap=True)
    table.add_column("kind / webhook", overflow="fold")
    table.add_column("status", no_wrap=True)
    table.add_column("last error", overflow="fold", ratio=1)
    for d in found:
        state = f"{d.status} ({d.attempts} attempt{'s' * (d.attempts != 1)})"
        if d.status == "pending":
            state += "\nnext " + ("now" if d.next_at <= now else time_left(d.next_at - now))
        table.add_row(d.event_id, f"{d.kind}\n{d.webhook_id}", state, d.last_error or "-")
    console.print(table, highlight=False, markup=False)


@webhooks_app.command("deliver")
def webhooks_deliver(
    once: Annotated[bool, typer.Option("--once", help="Deliver what is due, then exit (for cron and tests).")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to connect, to send, and for each read of an answer.")] = 10.0,
    concurrency: Annotated[int, typer.Option(help="Most deliveries under way at once.")] = 4,
    max_attempts: Annotated[int, typer.Option(help="Attempts before a delivery is given up (failed).")] = 150,
    poll_interval: Annotated[float, typer.Option(help="Seconds between looks for due deliveries.")] = 1.0,
    db: DbOption = None,
) -> None:
    """Deliver pending webhook events in the foreground until Ctrl-C.

    `serve` and `worker` do it in the background unless --no-webhooks. Several deliverers may run
    at once: each delivery is leased to one of them; one killed mid-delivery leaves its lease
    (3 x timeout + 5 s) to run out, then the delivery is sent again with the same webhook-id."""
    from agentflow.webhooks import Backoff, Deliverer

    try:
        deliverer = Deliverer(store(db), timeout=timeout, concurrency=concurrency, poll_interval=poll_interval,
                              backoff=Backoff(max_attempts=max_attempts))  # fmt: skip
        if once:
            sent = deliverer.drain()
            deliverer.close()
            err_console.print(f"{sent} delivery attempt{'s' * (sent != 1)} made", highlight=False)
            return
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        err_console.print("delivering webhook events (Ctrl-C stops)", highlight=False)
        deliverer.run(stop)
        deliverer.close()
    except AgentflowError as exc:
        fail(exc)
