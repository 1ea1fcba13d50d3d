"""A webhook receiver on 127.0.0.1 for tests: a real HTTP server that verifies every delivery with
the `standardwebhooks` library (not agentflow's own code), answers the first requests as scripted
(500, a dropped connection, a hung request, an answer trickled a byte at a time, a redirect, a
huge answer) and then 204, and acts on
each event once by its `webhook-id`, the way a receiver should."""

from __future__ import annotations

import json
import threading
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook, WebhookVerificationError

#: What the receiver can do with a request, in script order; "ok" once the script is done.
BEHAVIOURS = ("ok", "500", "drop", "hang", "trickle", "redirect", "huge")


@dataclass(frozen=True)
class Attempt:
    """One request received: its webhook-id, whether its signature verified, what was answered."""

    id: str
    verified: bool
    behaviour: str
    body: bytes


class WebhookReceiver:
    """`url` receives deliveries; `secret` must be set (the subscription's) before the first.

    `events` holds each event acted on (by id), `acted` how often each id was acted on (once: a
    repeat is acknowledged, not acted on again), `attempts` every request in order. A "hang"
    request sets `hung` and holds until `release` is set (then drops the connection)."""

    def __init__(self, script: list[str] | None = None, *, secret: str = "") -> None:
        assert all(b in BEHAVIOURS for b in script or [])
        self.secret = secret
        self.script = list(script or [])
        self.attempts: list[Attempt] = []
        self.events: dict[str, dict[str, Any]] = {}
        self.acted: Counter[str] = Counter()
        self.hung, self.release = threading.Event(), threading.Event()
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, name="webhook-receiver", daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/hooks/agentflow"

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()

    def ids(self) -> list[str]:
        """The webhook-id of every request, in order."""
        with self._lock:
            return [a.id for a in self.attempts]

    def receive(self, headers: dict[str, str], body: bytes) -> tuple[str, bool]:
        """(what to do, verified) for one request; acts on a verified "ok" delivery once."""
        try:
            event = Webhook(self.secret).verify(body, headers)
            verified = True
        except WebhookVerificationError:
            event, verified = None, False
        with self._lock:
            behaviour = self.script.pop(0) if self.script else "ok"
            self.attempts.append(Attempt(headers.get("webhook-id", ""), verified, behaviour, body))
            if verified and behaviour == "ok":
                event_id = headers["webhook-id"]
                if event_id not in self.events:  # a repeat (a retry, a replay) is acknowledged only
                    self.events[event_id] = event
                    self.acted[event_id] += 1
        return behaviour, verified


def _handler(receiver: WebhookReceiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            behaviour, verified = receiver.receive({k.lower(): v for k, v in self.headers.items()}, body)
            if not verified:
                self._answer(401, b"bad signature")
            elif behaviour == "ok":
                self._answer(204, b"")
            elif behaviour == "500":
                self._answer(500, b"try again later")
            elif behaviour == "redirect":
                self.send_response(307)
                self.send_header("Location", receiver.url + "/elsewhere")  # followed, it would be counted
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif behaviour == "huge":
                self._huge()
            elif behaviour == "trickle":
                self._trickle()
            else:  # drop, hang: no answer at all
                if behaviour == "hang":
                    receiver.hung.set()
                    receiver.release.wait(120)
                self.close_connection = True

        def _answer(self, code: int, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _trickle(self) -> None:
            """A 200 whose header lines come a byte every 0.2 s, never ending (until `release`):
            each read gets data well within any timeout, so only a limit on the whole attempt ends it."""
            try:
                self.wfile.write(b"HTTP/1.1 200 OK\r\n")
                while not receiver.release.wait(0.2):
                    self.wfile.write(b"X")
                    self.wfile.flush()
            except OSError:
                pass  # the sender hung up, as it should
            self.close_connection = True

        def _huge(self) -> None:
            """A 500 whose body would be 1 GB: the sender must stop reading long before."""
            self.send_response(500)
            self.send_header("Content-Length", str(2**30))
            self.end_headers()
            chunk = json.dumps({"error": "x" * 60_000}).encode()
            try:
                for _ in range(2**30 // len(chunk)):
                    self.wfile.write(chunk)
            except OSError:
                pass  # the sender hung up, as it should

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler
