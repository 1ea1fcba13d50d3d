"""What keeps one client from taking the server down: a request body limit enforced before any
parsing, and a throttle on failed authentication that also bounds how many audit rows failures
can write.

- `BodyLimit` (ASGI middleware): a declared `Content-Length` over the limit is answered 413 at
  once; a body sent without one is counted as it arrives and cut off at the limit. Nothing over
  the limit is ever held in memory or parsed.
- `AuthThrottle`: each client (by address) may fail authentication `per_client` times per
  `window` seconds; beyond that it gets 429 with `Retry-After` before its token is even looked
  up. Every failure is audited while all clients together stay under `audit_cap` per window;
  past it, failures are only counted, and the count is written as one summary row with the next
  failure audited: a botnet of guessers cannot turn the audit trail into a write flood.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

DEFAULT_MAX_BODY = 1 << 20  # 1 MiB: a chat message or an edited approval is a few KiB


class BodyLimit:
    """Refuse request bodies over `max_bytes` (413), before the application reads them."""

    def __init__(self, app: ASGIApp, *, max_bytes: int = DEFAULT_MAX_BODY) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await _too_large(send, self.max_bytes)
            return
        # Read the body here (at most the limit), then hand it over: a body sent without a
        # Content-Length is cut off at the limit, and the application only ever sees whole ones.
        messages: list[Message] = []
        seen = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                await _too_large(send, self.max_bytes)
                return
            if not message.get("more_body", False):
                break
        queued = iter(messages)

        async def replay() -> Message:
            return next(queued, None) or await receive()

        await self.app(scope, replay, send)


async def _too_large(send: Send, limit: int) -> None:
    body = json.dumps({"error": {"code": "too_large", "message": f"the request body is over {limit} bytes"}}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})  # fmt: skip
    await send({"type": "http.response.body", "body": body})


class AuthThrottle:
    """Failed authentications per client and in all, over a sliding window (one process)."""

    def __init__(
        self, *, per_client: int = 10, audit_cap: int = 60, window: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:  # fmt: skip
        self.per_client, self.audit_cap, self.window, self._clock = per_client, audit_cap, window, clock
        self._failures: dict[str, deque[float]] = {}
        self._all: deque[float] = deque()
        self._unaudited = 0
        self._lock = threading.Lock()

    def retry_after(self, client: str) -> float | None:
        """Seconds until `client` may try again, or None when it may now."""
        with self._lock:
            now = self._clock()
            seen = self._trim(self._failures.get(client), now)
            if seen is None or len(seen) < self.per_client:
                return None
            return max(1.0, seen[0] + self.window - now)

    def failed(self, client: str) -> bool:
        """Count a failure of `client`; True when it may still be audited on its own."""
        with self._lock:
            now = self._clock()
            self._failures.setdefault(client, deque()).append(now)
            self._trim(self._all, now)
            self._all.append(now)
            if len(self._all) > self.audit_cap:
                self._unaudited += 1
                return False
            return True

    def unaudited(self) -> int:
        """Failures not audited one by one since the last call (for a summary row), reset."""
        with self._lock:
            found, self._unaudited = self._unaudited, 0
            return found

    def _trim(self, seen: deque[float] | None, now: float) -> deque[float] | None:
        while seen and seen[0] <= now - self.window:
            seen.popleft()
        if len(self._failures) > 10_000:  # bound the memory a scan of many addresses can take
            for key in [k for k, v in self._failures.items() if not v or v[-1] <= now - self.window]:
                del self._failures[key]
        return seen
