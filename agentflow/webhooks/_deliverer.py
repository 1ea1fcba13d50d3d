"""`Deliverer`: POSTs the store's pending webhook deliveries, signed, until each is answered 2xx
or given up; durable like an activity with retries and an idempotency key.

- **Claimed with a lease.** A delivery is taken by a conditional update (`lease_until` in the
  past or unset), counted as an attempt, and held for `lease` seconds, longer than a POST may
  take. Two deliverers (threads, processes, hosts) never POST the same delivery at once; one
  killed mid-POST leaves its lease to run out, and another (or itself, restarted) sends it again.
- **At least once, one id.** Every attempt sends the body as stored (byte-identical) with the
  event's id as `webhook-id`: a receiver that deduplicates by it acts once per event
  (`agentflow.webhooks.Receiver`). Order is not guaranteed across retries.
- **Bounded attempts.** Each attempt (connect, send, the answer) is over within
  `3 x timeout` whatever the receiver does (one trickling its answer a byte at a time included):
  less than the lease, so a lease runs out only under a deliverer that stopped, and a receiver
  cannot hold a deliverer's thread, nor its host's shutdown.
- **Backoff.** A failed attempt (not 2xx, a redirect, no connection, no answer within
  `timeout`, not over within the attempt's deadline) is tried again after 1 s, 2 s, 4 s, ... up to 10 min apart, with jitter, and given up
  (`failed`) after `Backoff.max_attempts` (about a day); its last error is kept (redacted,
  truncated) for `agentflow webhooks deliveries`.
- **Never takes its host down.** A store that does not answer (down, busy, disk full) is logged
  and retried after a pause; a receiver's answer is read no further than its first bytes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import random
import re
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agentflow.engine import Clock, SystemClock
from agentflow.errors import ConfigurationError, StoreError
from agentflow.store import DueDelivery, EventStore, Tx
from agentflow.webhooks._metrics import DeliveryMetrics
from agentflow.webhooks._signing import sign

if TYPE_CHECKING:
    import ssl

    import httpx
    from prometheus_client import CollectorRegistry

log = logging.getLogger("agentflow.webhooks")

#: How much of a refusing receiver's answer is kept in the delivery's last error.
_ANSWER_BYTES = 256
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
#: The longest pause after store errors, and how often old deliveries are pruned.
_MAX_PAUSE = 30.0
_PRUNE_EVERY = 3600.0


@dataclass(frozen=True, slots=True)
class Backoff:
    """When a failed delivery is tried again: `first` seconds after the first attempt, then
    `factor` times longer each time up to `cap`, each delay shortened by up to `jitter` (a
    fraction) at random so many deliveries to one endpoint do not come back in step; given up
    after `max_attempts` attempts (the defaults: about 23 hours of tries)."""

    first: float = 1.0
    factor: float = 2.0
    cap: float = 600.0
    jitter: float = 0.2
    max_attempts: int = 150

    def delay(self, attempts: int, rng: random.Random) -> float:
        """Seconds before the next attempt, after `attempts` attempts."""
        try:
            base = min(self.cap, self.first * self.factor ** max(attempts - 1, 0))
        except OverflowError:  # float ** past ~1e308 (2.0 after 1024 attempts): long past the cap
            base = self.cap
        return base * (1.0 - self.jitter * rng.random())


class Deliverer:
    """Delivers pending webhook deliveries (see the module docstring).

    Args:
        store: the store whose deliveries to send.
        clock: the time attempts are scheduled by (default: the system's; a `TestClock` in tests).
        timeout: seconds to connect, to send, and to wait for each read of the answer; a whole
            attempt is over within 3 x `timeout`.
        backoff: the retry schedule.
        concurrency: most POSTs at once (a hung receiver holds one).
        poll_interval: seconds between looks for due deliveries when idle.
        retention: delivered and failed deliveries older than this (seconds) are forgotten.
        registry: a Prometheus registry to count attempts in (`Metrics.install(app).registry`).
        rng: the jitter's random numbers.
    """

    def __init__(
        self, store: EventStore, *, clock: Clock | None = None, timeout: float = 10.0, backoff: Backoff | None = None,
        concurrency: int = 4, poll_interval: float = 1.0, retention: float = 7 * 86400.0,
        registry: CollectorRegistry | None = None, rng: random.Random | None = None,
    ) -> None:  # fmt: skip
        backoff = backoff or Backoff()
        for name, value, least in (("timeout", timeout, 0.1), ("poll_interval", poll_interval, 0.01),
                                   ("max_attempts", backoff.max_attempts, 1), ("retention", retention, 0)):  # fmt: skip
            if not value >= least:  # (NaN included)
                raise ConfigurationError(f"the webhook deliverer's {name} must be at least {least:g}, not {value!r}: "
                                         f"give --{name.replace('_', '-')} a larger value")  # fmt: skip
        self.store, self.clock = store, clock or SystemClock()
        self.timeout, self.backoff = timeout, backoff
        self.concurrency, self.poll_interval, self.retention = max(concurrency, 1), poll_interval, retention
        #: The longest an attempt may take, all of it (connect, send, read the answer).
        self.deadline = 3 * timeout
        #: Longer than any attempt may take, so a lease runs out only under a deliverer that stopped.
        self.lease = self.deadline + 5.0
        self.metrics = DeliveryMetrics.of(registry) if registry is not None else None
        self.rng = rng or random.Random()
        # Made on the first delivery: httpx and its TLS context cost ~0.3 s of start-up, which a
        # worker with no subscriptions never pays.
        self._tls: ssl.SSLContext | None = None
        self._tls_lock = threading.Lock()
        self._pause = 0.0
        self._pruned_at = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- one pass, a drain, a loop ---------------------------------------------------------------
    def deliver_due(self) -> int:
        """Claim the deliveries due now (at most `concurrency`), POST them at once, record each
        outcome; how many were attempted."""
        claimed = self._claim(self.concurrency)
        if claimed:  # on threads of their own (an attempt runs an event loop: the caller may be in one)
            with concurrent.futures.ThreadPoolExecutor(len(claimed), thread_name_prefix="agentflow-webhook") as pool:
                list(pool.map(self._attempt, claimed))
        return len(claimed)

    def drain(self) -> int:
        """Deliver until nothing is due (retries scheduled later are left for later), and forget
        old delivered and failed deliveries (as `run` does hourly: a cron's `deliver --once`
        prunes too); how many attempts were made."""
        self._prune()
        total = 0
        while n := self.deliver_due():
            total += n
        return total

    def run(self, stop: threading.Event | None = None) -> None:
        """Deliver until `stop` is set (default: `self.stop()`), keeping up to `concurrency` POSTs
        under way; what is in flight when it stops is finished (each within the timeout)."""
        stop = stop or self._stop
        inflight: set[concurrent.futures.Future[None]] = set()
        with concurrent.futures.ThreadPoolExecutor(self.concurrency, thread_name_prefix="agentflow-webhook") as pool:
            while not stop.is_set():
                try:
                    claimed = self._claim(self.concurrency - len(inflight)) if len(inflight) < self.concurrency else []
                    inflight |= {pool.submit(self._attempt, d) for d in claimed}
                    if not self._pause:  # (not while the store fails)
                        self._prune()
                except Exception:  # a bug here must not end deliveries for good
                    log.exception("webhook deliverer: unexpected error; going on")
                    claimed = []
                if inflight:
                    done, inflight = concurrent.futures.wait(
                        inflight, timeout=self.poll_interval, return_when=concurrent.futures.FIRST_COMPLETED
                    )
                    for failed in [f.exception() for f in done if f.exception() is not None]:
                        log.error("webhook deliverer: an attempt failed unexpectedly; its lease runs out and it is "
                                  "tried again", exc_info=failed)  # fmt: skip
                elif not claimed:
                    stop.wait(max(self.poll_interval, self._pause))

    def start(self) -> Deliverer:
        """`run` on a daemon thread of its own; `stop()` ends it."""
        self._stop.clear()
        self._thread = threading.Thread(target=self.run, name="agentflow-webhooks", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Stop `run` (started by `start`: joined, waiting at most `timeout` seconds) and close."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.close()

    def close(self) -> None:
        """Nothing stays open between attempts (each makes its own connection); kept for callers."""

    def _tls_context(self) -> ssl.SSLContext:
        with self._tls_lock:
            if self._tls is None:
                import httpx

                self._tls = httpx.create_ssl_context()  # certifi's roots, or SSL_CERT_FILE / SSL_CERT_DIR
            return self._tls

    # -- the steps -------------------------------------------------------------------------------
    def _claim(self, limit: int) -> list[DueDelivery]:
        now = self.clock.now()
        try:
            if not self.store.read(lambda tx: tx.deliveries.any_due(now=now)):
                self._pause = 0.0
                return []
            claimed = self.store.transaction(
                lambda tx: tx.deliveries.claim(now=now, lease_until=now + self.lease, limit=limit),
                what="claiming webhook deliveries", locks=("webhooks:claim",),
            )  # fmt: skip
        except StoreError as exc:
            self._store_failed(exc, "claiming deliveries")
            return []
        self._pause = 0.0
        return claimed

    def _attempt(self, due: DueDelivery) -> None:
        outcome, error = self._post(due)
        now = self.clock.now()
        give_up = outcome != "delivered" and due.attempts >= self.backoff.max_attempts

        def record(tx: Tx) -> None:
            records = tx.deliveries
            if outcome == "delivered":
                records.delivered(due, at=now)
            elif give_up:
                records.give_up(due, error=error)
            else:
                records.retry(due, next_at=now + self.backoff.delay(due.attempts, self.rng), error=error)

        try:
            self.store.transaction(record, what="recording a webhook delivery", locks=(f"webhook:{due.webhook_id}",))
        except StoreError as exc:
            # Unrecorded: the lease runs out and the delivery is sent again (at least once).
            self._store_failed(exc, f"recording delivery {due.event_id}")
        if outcome != "delivered":
            log.info("webhook delivery failed", extra={"webhook_id": due.webhook_id, "event_id": due.event_id,
                                                       "tenant": due.tenant, "attempts": due.attempts,
                                                       "given_up": give_up, "error": error})  # fmt: skip
        if self.metrics is not None:
            self.metrics.attempted(outcome, given_up=give_up)

    def _post(self, due: DueDelivery) -> tuple[str, str]:
        """POST one delivery, within `deadline`: ("delivered" | "refused" | "unreachable", the error).

        The attempt runs on an event loop of its own, so the deadline cancels it wherever it is
        (a socket read that keeps getting a byte within `timeout` included), which a blocking
        client's per-operation timeouts cannot do. Each attempt makes its own connection."""
        import httpx

        body = due.payload.encode()
        headers = sign(due.secret, due.event_id, time.time(), body) | {"content-type": "application/json"}
        try:
            return asyncio.run(self._exchange(due.url, body, headers))
        except httpx.TimeoutException as exc:
            return "unreachable", f"no answer within {self.timeout:g} s ({type(exc).__name__})"
        except TimeoutError:  # the deadline (asyncio's), not one operation's timeout (httpx's, above)
            return "unreachable", f"no complete answer within {self.deadline:g} s (the limit of one attempt)"
        except Exception as exc:  # noqa: BLE001 - no connection, a bad URL, a library error: recorded and retried
            return "unreachable", f"{type(exc).__name__}: {exc}"

    async def _exchange(self, url: str, body: bytes, headers: dict[str, str]) -> tuple[str, str]:
        import httpx

        client = httpx.AsyncClient(verify=self._tls_context(), timeout=httpx.Timeout(self.timeout),
                                   follow_redirects=False, headers={"user-agent": "agentflow-webhooks/1"})  # fmt: skip
        async with asyncio.timeout(self.deadline), client, client.stream("POST", url, content=body,
                                                                         headers=headers) as answer:  # fmt: skip
            code = answer.status_code
            if 200 <= code < 300:
                return "delivered", ""
            if answer.is_redirect:
                where = answer.headers.get("location", "")[:200]
                return "refused", f"HTTP {code}: a redirect (to {where!r}) is not followed; fix the webhook's URL"
            return "refused", f"HTTP {code} {answer.reason_phrase}: {await _first_bytes(answer)}".rstrip(": ")

    def _prune(self) -> None:
        now = self.clock.now()
        if now - self._pruned_at < _PRUNE_EVERY:
            return
        self._pruned_at = now
        try:
            self.store.transaction(lambda tx: tx.deliveries.prune(before=now - self.retention),
                                   what="pruning webhook deliveries", locks=("webhooks:prune",))  # fmt: skip
        except StoreError as exc:
            self._store_failed(exc, "pruning old deliveries")

    def _store_failed(self, exc: StoreError, doing: str) -> None:
        self._pause = min(_MAX_PAUSE, max(self._pause * 2, self.poll_interval))
        log.warning("webhook deliverer: the store failed %s (%s: %s); trying again in %.0f s", doing,
                    type(exc).__name__, exc, self._pause)  # fmt: skip


async def _first_bytes(answer: httpx.Response) -> str:
    """The start of an answer's body as one line of text (the rest is never read)."""
    got = b""
    try:
        async for chunk in answer.aiter_bytes():
            got += chunk
            if len(got) >= _ANSWER_BYTES:
                break
    except Exception:  # noqa: BLE001 - the answer broke off: what came is enough
        pass
    return _CONTROL.sub(" ", got[:_ANSWER_BYTES].decode(errors="replace")).strip()
