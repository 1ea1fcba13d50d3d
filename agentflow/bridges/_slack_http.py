"""The Slack bridge's HTTP side: what Slack POSTs (button clicks, modal submissions) is checked
before anything reads it, then handed to the Bolt app.

In order, before the body is parsed: its size (Slack's interaction payloads are small; a bigger
body is refused unread), the signature headers' shape, the timestamp (at most five minutes
from now, Slack's rule), the signature (`v0=HMAC-SHA256(signing secret, "v0:{ts}:{body}")`,
compared in constant time) and, last, that this exact request was not seen before: Slack's
signature covers the timestamp, not a nonce, so a captured request could be sent again within
the five minutes; a request whose (timestamp, signature) was accepted once is refused after.
The Bolt app verifies the signature again (its own middleware); only then are payloads parsed.

Seen requests are remembered in memory, for the window: one bridge process per tenant and
Slack app (run a second one and a request replayed to it is new to it).
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from slack_sdk.signature import Clock, SignatureVerifier

if TYPE_CHECKING:
    from slack_bolt import App as BoltApp
    from starlette.applications import Starlette

log = logging.getLogger("agentflow.bridges.slack")

WINDOW = 5 * 60  # seconds a request's timestamp may be from now (Slack's documented rule)
MAX_BODY = 256 * 1024  # Slack's interaction payloads are a few KiB; a view with many inputs stays far below
MAX_SEEN = 100_000  # seen requests kept per window; only signed requests are remembered


@dataclass
class Refusal:
    status: int
    reason: str


@dataclass
class Guard:
    """Checks a request Slack says it sent, in the order of the module's docstring.

    Args:
        signing_secret: the Slack app's signing secret.
        clock: wall-clock time (Slack's timestamps are Unix time, not an app's shifted clock).
    """

    signing_secret: str
    clock: Clock = field(default_factory=Clock)
    _seen: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._verifier = SignatureVerifier(self.signing_secret, clock=self.clock)

    def check(self, body: bytes, headers: Mapping[str, str]) -> Refusal | None:
        """None when the request is Slack's and new; else why not (nothing is parsed)."""
        timestamp = headers.get("x-slack-request-timestamp", "")
        signature = headers.get("x-slack-signature", "")
        if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 12) or not signature:
            return Refusal(401, "missing or malformed X-Slack-Request-Timestamp / X-Slack-Signature")
        now = self.clock.now()
        if abs(now - int(timestamp)) > WINDOW:
            return Refusal(401, "stale request: its timestamp is more than 5 minutes from now")
        if not self._verifier.is_valid(body, timestamp, signature):
            return Refusal(401, "bad signature")
        return self._first_time(hashlib.sha256(f"{timestamp}:{signature}".encode()).hexdigest(), now)

    def _first_time(self, key: str, now: float) -> Refusal | None:
        with self._lock:
            if key in self._seen:
                return Refusal(401, "replayed request: this exact request was accepted before")
            if len(self._seen) >= MAX_SEEN:
                for old in [k for k, at in self._seen.items() if at < now - 2 * WINDOW]:
                    del self._seen[old]
            if len(self._seen) >= MAX_SEEN:
                return Refusal(429, "too many requests in the replay window")
            self._seen[key] = now
            return None


def asgi_app(bolt: BoltApp, guard: Guard, *, on_ready: Callable[[], bool] = lambda: True) -> Starlette:
    """The bridge's web app: `POST /slack/events` (the Slack app's Interactivity request URL)
    and `GET /healthz` (200 once the bridge reached Slack's API once, else 503)."""
    from slack_bolt.adapter.starlette.handler import to_bolt_request, to_starlette_response
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    async def events(request: Request) -> Response:
        declared = request.headers.get("content-length", "")
        if declared and (not declared.isdigit() or int(declared) > MAX_BODY):
            return JSONResponse({"error": "body too large or malformed Content-Length"}, status_code=413)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY:
                return JSONResponse({"error": "body too large"}, status_code=413)
        refused = guard.check(bytes(body), request.headers)
        if refused is not None:
            log.warning("refused a request to /slack/events: %s", refused.reason)
            return JSONResponse({"error": refused.reason}, status_code=refused.status)
        # Bolt's listeners call the store and Slack's API: a thread, not the event loop.
        answer = await run_in_threadpool(bolt.dispatch, to_bolt_request(request, bytes(body)))
        return to_starlette_response(answer)

    async def healthz(request: Request) -> Response:
        ready = on_ready()
        return JSONResponse({"ok": ready}, status_code=200 if ready else 503)

    return Starlette(routes=[Route("/slack/events", events, methods=["POST"]), Route("/healthz", healthz)])
