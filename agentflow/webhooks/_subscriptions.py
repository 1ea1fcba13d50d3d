"""`Webhooks(store)`: a tenant's subscriptions (add, list, remove) and their deliveries.

Who may subscribe: whoever can write the store (`agentflow webhooks add --db ...`): an admin.
The deliverer POSTs to any http(s) URL an admin gives it, loopback and private addresses
included (an on-premises NOC's receivers live there); that is why subscribing is not offered to
operators through the API or chat. A URL's host is not resolved or filtered: keep the
deliverer's network egress as narrow as the receivers need.
"""

from __future__ import annotations

import builtins
import re
import secrets
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from agentflow.errors import ConfigurationError
from agentflow.store import EVENT_KINDS, DeliveryRow, EventStore, Tx, WebhookRow, check_tenant
from agentflow.webhooks._signing import new_secret

#: The longest URL accepted.
MAX_URL = 2048


@dataclass(frozen=True, slots=True)
class Subscription:
    """A webhook subscription as listed (never its secret): id, tenant, URL (a password or a
    query in it shown masked by `shown_url`), the kinds it takes (empty: all), when it was added."""

    id: str
    tenant: str
    url: str
    kinds: list[str]
    created_at: float

    def __repr__(self) -> str:  # an incoming-webhook URL may carry a token: never in a log line
        return (f"Subscription(id={self.id!r}, tenant={self.tenant!r}, url={self.shown_url!r}, kinds={self.kinds!r}, "
                f"created_at={self.created_at!r})")  # fmt: skip

    @property
    def shown_url(self) -> str:
        """The URL with a password, the query and token-like path segments masked (see `shown_url`)."""
        return shown_url(self.url)


def shown_url(url: str) -> str:
    """`url` with its userinfo password, its query and the path segments that look like tokens
    (long ones: Slack's, Discord's, Teams' incoming-webhook URLs carry their secret there)
    replaced by `***`."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user.split(':', 1)[0]}:***@{host}" if ":" in user else netloc
    path = "/".join("***" if _TOKEN.search(part) else part for part in parts.path.split("/"))
    return urllib.parse.urlunsplit((parts.scheme, netloc, path, "***" if parts.query else "", ""))


# 20 characters or more, or 16 with letters and digits mixed (a random token may lack digits).
_TOKEN = re.compile(r"^(.{20,}|(?=.{16,}$)(?=.*[A-Za-z])(?=.*[0-9]).*)$")


def check_url(url: str) -> str:
    """`url` if the deliverer may POST to it (http or https, a host, no spaces), else a
    ConfigurationError that says what is accepted."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        host = None
    if parts.scheme not in ("http", "https") or not host or len(url) > MAX_URL or any(c.isspace() for c in url):
        raise ConfigurationError(
            f"webhook URL {shown_url(url)[:100]!r} is not accepted: give an http:// or https:// URL with a host (at "
            f"most {MAX_URL} characters, no spaces), e.g. https://hooks.example.org/agentflow"
        )
    return url


def check_kinds(kinds: Sequence[str]) -> list[str]:
    """The kinds, checked against `EVENT_KINDS` (empty: every kind)."""
    unknown = sorted(set(kinds) - set(EVENT_KINDS))
    if unknown:
        raise ConfigurationError(f"unknown event kind {', '.join(unknown)}: choose from {', '.join(EVENT_KINDS)}")
    return sorted(set(kinds))


class Webhooks:
    """The webhook subscriptions of a store, per tenant, and their deliveries.

    Args:
        store: the event store.
        clock: the time subscriptions are added at (default `time.time`).
    """

    def __init__(self, store: EventStore, *, clock: Callable[[], float] = time.time) -> None:
        self.store, self.clock = store, clock

    def add(self, url: str, *, tenant: str, kinds: Sequence[str] = ()) -> tuple[Subscription, str]:
        """Subscribe `url` to `tenant`'s events of `kinds` (empty: all); returns the subscription
        and its signing secret, which is stored (sealed when the tenant is) and shown only here.

        Raises:
            ConfigurationError: a URL that is not http(s), an unknown kind, a bad tenant name.
        """
        row = WebhookRow(id="wh_" + secrets.token_hex(8), tenant=check_tenant(tenant), url=check_url(url),
                         secret=new_secret(), kinds=check_kinds(kinds), created_at=self.clock())  # fmt: skip
        self.store.transaction(lambda tx: tx.webhooks.add(row), what="adding a webhook", locks=(f"webhooks:{tenant}",))
        return _subscription(row), row.secret

    def list(self, *, tenant: str | None = None) -> builtins.list[Subscription]:
        """Subscriptions (of `tenant`, or all), without their secrets."""
        return [_subscription(r) for r in self.store.read(lambda tx: tx.webhooks.list(tenant=tenant))]

    def remove(self, webhook_id: str, *, tenant: str | None = None) -> Subscription:
        """Remove a subscription (of `tenant`; None: whichever tenant's it is) and its deliveries
        (pending ones are not sent); returns what was removed.

        Raises:
            ConfigurationError: no subscription by that id (in `tenant`).
        """

        def body(tx: Tx) -> WebhookRow | None:
            row = tx.webhooks.get(webhook_id, tenant=tenant)
            return row if row is not None and tx.webhooks.remove(webhook_id, tenant=row.tenant) else None

        gone = self.store.transaction(body, what="removing a webhook", locks=(f"webhooks:{tenant or '*'}",))
        if gone is None:
            where = f"tenant {tenant} has" if tenant else "the store has"
            raise ConfigurationError(
                f"{where} no webhook {webhook_id}: `agentflow webhooks list` lists the subscriptions"
            )
        return _subscription(gone)

    def deliveries(
        self, *, tenant: str | None = None, status: str | None = None, webhook_id: str | None = None,
        limit: int = 100,
    ) -> builtins.list[DeliveryRow]:  # fmt: skip
        """Deliveries, newest first: attempts so far, the last error, when the next is due."""
        if status is not None and status not in ("pending", "delivered", "failed"):
            raise ConfigurationError(f"unknown delivery status {status!r}: pending, delivered or failed")
        return self.store.read(
            lambda tx: tx.deliveries.list(tenant=tenant, status=status, webhook_id=webhook_id, limit=limit)
        )


def _subscription(row: WebhookRow) -> Subscription:
    return Subscription(id=row.id, tenant=row.tenant, url=row.url, kinds=list(row.kinds), created_at=row.created_at)
