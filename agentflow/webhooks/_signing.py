"""Signing and verifying deliveries, the Standard Webhooks way (standardwebhooks.com), so a
receiver may use this module or the `standardwebhooks` library (any language's) alike.

Each delivery carries three headers:

    webhook-id: evt_...                 the event's id: the same on every retry (the idempotency key)
    webhook-timestamp: 1733580000       seconds since the epoch when this attempt was signed
    webhook-signature: v1,<base64>      HMAC-SHA256, keyed with the subscription's secret, of
                                        "{webhook-id}.{webhook-timestamp}.{body}"

The secret is `whsec_` and the base64 of 32 random bytes; the HMAC key is those bytes. A receiver
checks the signature (constant-time), refuses a timestamp more than `tolerance` seconds (5
minutes) from its clock (a captured delivery cannot be replayed later), and remembers the ids
it processed (a delivery replayed within the window, or retried because its answer was lost, is
acknowledged and not processed twice): `Receiver` does all three.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from agentflow.errors import ConfigurationError, SignatureError

SECRET_PREFIX = "whsec_"
#: How far (seconds) a delivery's timestamp may be from the receiver's clock, either way.
TOLERANCE = 300
_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")


def new_secret() -> str:
    """A new signing secret: `whsec_` + base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(os.urandom(32)).decode()


def _key(secret: str) -> bytes:
    raw = secret[len(SECRET_PREFIX) :] if secret.startswith(SECRET_PREFIX) else secret
    try:
        key = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if not key:
        raise ConfigurationError(
            "a webhook secret is 'whsec_' followed by base64 (as `agentflow webhooks add` printed it once); this one "
            "is not: copy it whole, or add the subscription again for a new one"
        )
    return key


def _bytes(body: bytes | str) -> bytes:
    return body.encode() if isinstance(body, str) else bytes(body)


def signature(secret: str, event_id: str, timestamp: int, body: bytes | str) -> str:
    """`v1,<base64 HMAC-SHA256 of "{event_id}.{timestamp}.{body}">` under `secret`."""
    mac = hmac.new(_key(secret), f"{event_id}.{timestamp}.".encode() + _bytes(body), hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def sign(secret: str, event_id: str, timestamp: float, body: bytes | str) -> dict[str, str]:
    """The headers of one delivery attempt of `body` (the exact bytes sent).

    Args:
        secret: the subscription's secret (`whsec_...`).
        event_id: the event's id (`webhook-id`: the same on every attempt).
        timestamp: when this attempt is sent (seconds since the epoch; whole seconds are signed).
        body: the request body, byte for byte.
    """
    ts = int(timestamp)
    return {"webhook-id": event_id, "webhook-timestamp": str(ts), "webhook-signature": signature(secret, event_id,
                                                                                                  ts, body)}  # fmt: skip


def verify(
    secret: str, headers: Mapping[str, str], body: bytes | str, *, tolerance: float = TOLERANCE,
    now: float | None = None,
) -> Any:  # fmt: skip
    """Check a delivery and return its body decoded from JSON.

    Args:
        secret: the subscription's secret (`whsec_...`).
        headers: the request's headers (any case).
        body: the raw request body, exactly as received (not a re-encoded JSON).
        tolerance: how far the timestamp may be from `now`, in seconds, either way.
        now: the receiver's time (default: `time.time()`).

    Raises:
        SignatureError: `code` missing_header, bad_header, stale_timestamp, future_timestamp,
            bad_signature (no signature matches: a wrong secret, or a body changed on the way),
            or bad_body (signed, but not JSON).
        ConfigurationError: `secret` is not a webhook secret.
    """
    given = {k.lower(): v for k, v in headers.items()}
    missing = [h for h in _HEADERS if not given.get(h)]
    if missing:
        raise SignatureError(f"not a signed webhook delivery: no {', '.join(missing)} header", code="missing_header")
    event_id, stamp, signatures = (given[h] for h in _HEADERS)
    try:
        ts = int(stamp)
    except ValueError:
        raise SignatureError(f"webhook-timestamp {stamp[:32]!r} is not whole seconds", code="bad_header") from None
    now = time.time() if now is None else now
    if ts < now - tolerance:
        raise SignatureError(
            f"the delivery was signed {now - ts:.0f} s ago, more than the {tolerance:g} s allowed: a replay, or this "
            "host's clock is off (check NTP)",
            code="stale_timestamp",
        )
    if ts > now + tolerance:
        raise SignatureError(
            f"the delivery is signed {ts - now:.0f} s in the future, more than the {tolerance:g} s allowed: a clock is "
            "off (check NTP on both hosts)",
            code="future_timestamp",
        )
    expected = signature(secret, event_id, ts, body).encode()
    if not any(hmac.compare_digest(expected, s.encode()) for s in signatures.split(" ") if s.startswith("v1,")):
        raise SignatureError(
            "no webhook-signature matches: the secret is not this subscription's, or the body was changed on the way "
            "(verify the raw body as received, not re-encoded JSON)",
            code="bad_signature",
        )
    try:
        return json.loads(body)
    except ValueError:
        raise SignatureError("the signed body is not JSON", code="bad_body") from None


@dataclass(frozen=True, slots=True)
class Received:
    """A verified delivery: the event's id, type and tenant, its data, the whole body, and
    whether this id was received before (`duplicate`: acknowledge it, do not act again)."""

    id: str
    type: str
    tenant: str
    data: dict[str, Any]
    body: dict[str, Any]
    duplicate: bool


class Receiver:
    """The receiving side in one call: verify the signature and the timestamp, then deduplicate
    by the event id. A delivery is retried until it is answered 2xx, so the same event may come
    more than once (a lost answer, a sender that crashed mid-delivery): answer 2xx to a duplicate
    and do not act on it twice.

    An id is remembered when it is received, so a retry that comes while the first delivery is
    still being acted on is a duplicate too. When acting fails, `forget` the id before answering
    5xx: the retry must not look like a duplicate, or the event is never acted on.

    The ids are remembered in memory (the last `remember`); a receiver that must never act twice,
    across its own restarts too, stores the ids it acted on in its database, in the transaction
    of the action.

    Args:
        secret: the subscription's secret (`whsec_...`).
        tolerance: seconds a timestamp may be from this host's clock (default 300).
        remember: how many ids to remember.
        clock: the time now (default `time.time`).
    """

    def __init__(
        self, secret: str, *, tolerance: float = TOLERANCE, remember: int = 100_000,
        clock: Callable[[], float] = time.time,
    ) -> None:  # fmt: skip
        _key(secret)  # a bad secret is said now, not at the first delivery
        self.secret, self.tolerance, self.remember, self.clock = secret, tolerance, remember, clock
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def receive(self, headers: Mapping[str, str], body: bytes | str) -> Received:
        """Verify one delivery (see `verify`) and say whether its id was seen before.

        Raises:
            SignatureError: the delivery does not verify (answer 400 or 401; nothing in it is trusted).
        """
        event = verify(self.secret, headers, body, tolerance=self.tolerance, now=self.clock())
        if not isinstance(event, dict):
            raise SignatureError("the signed body is not an event (a JSON object)", code="bad_body")
        event_id = {k.lower(): v for k, v in headers.items()}["webhook-id"]
        with self._lock:
            duplicate = event_id in self._seen
            self._seen[event_id] = None
            self._seen.move_to_end(event_id)
            while len(self._seen) > self.remember:
                self._seen.popitem(last=False)
        data = event.get("data")
        return Received(id=event_id, type=str(event.get("type", "")), tenant=str(event.get("tenant", "")),
                        data=data if isinstance(data, dict) else {}, body=event, duplicate=duplicate)  # fmt: skip

    def forget(self, event_id: str) -> None:
        """Acting on `event_id` failed: its next delivery is not a duplicate (answer 5xx now, and
        the deliverer sends it again)."""
        with self._lock:
            self._seen.pop(event_id, None)
