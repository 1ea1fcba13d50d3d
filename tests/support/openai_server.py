"""A local OpenAI-compatible chat-completions server for tests: real HTTP on 127.0.0.1.

Each request is answered by the next scripted `Reply` (or by a function of the request body), so
tests drive the real `openai` client through tool calls, parallel tool calls, usage, 429 with
Retry-After, 500, timeouts and malformed bodies. Every request body is kept in `requests`.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    """One HTTP answer: a JSON body (dict) or raw text, a status, headers, a delay."""

    body: dict[str, Any] | str = field(default_factory=dict)
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


def completion(
    content: str | None = None,
    tool_calls: list[tuple[str, str | dict[str, Any]]] | None = None,
    *,
    prompt_tokens: int = 11,
    completion_tokens: int = 7,
    finish_reason: str | None = None,
    refusal: str | None = None,
    model: str = "test-model",
    usage: bool = True,
) -> Reply:
    """A chat completion; tool_calls are (name, arguments) with arguments as JSON text or a dict."""
    calls = [
        {
            "id": f"call_{i}",
            "type": "function",
            "function": {"name": name, "arguments": args if isinstance(args, str) else json.dumps(args)},
        }
        for i, (name, args) in enumerate(tool_calls or [])
    ]
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": refusal}
    if calls:
        message["tool_calls"] = calls
    body: dict[str, Any] = {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": finish_reason or ("tool_calls" if calls else "stop"),
            }
        ],
    }
    if usage:
        body["usage"] = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
    return Reply(body=body)


def error(status: int, message: str = "error", *, headers: dict[str, str] | None = None) -> Reply:
    return Reply(
        body={"error": {"message": message, "type": "test", "code": status}}, status=status, headers=headers or {}
    )


class OpenAIServer:
    """Serve scripted replies on 127.0.0.1 (a thread); use as a context manager.

    Args:
        replies: answers in order; past the end the last one repeats.
        respond: instead, a function of the request body returning a Reply.
        keep_alive: speak HTTP/1.1 and keep connections open between requests, as real
            providers do (the client then reuses pooled connections); default HTTP/1.0, one
            connection per request.
    """

    def __init__(
        self,
        replies: list[Reply] | None = None,
        respond: Callable[[dict[str, Any]], Reply] | None = None,
        *,
        keep_alive: bool = False,
        props: dict[str, Any] | None = None,
    ) -> None:
        self.replies = list(replies or [])
        self.props = props  # served at GET /props (llama.cpp's server facts), else 404
        self.respond = respond
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1" if keep_alive else "HTTP/1.0"

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", 0))
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    body = {"_raw": raw.decode(errors="replace")}
                reply = server._next(body)
                if reply.delay:
                    time.sleep(reply.delay)
                data = reply.body if isinstance(reply.body, str) else json.dumps(reply.body)
                try:
                    self.send_response(reply.status)
                    headers = {k.lower(): v for k, v in reply.headers.items()}
                    if "content-type" not in headers:  # a Reply may set its own
                        content_type = "application/json" if not isinstance(reply.body, str) else "text/html"
                        self.send_header("content-type", content_type)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("content-length", str(len(data.encode())))
                    self.end_headers()
                    self.wfile.write(data.encode())
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

            def do_GET(self) -> None:
                found = self.path == "/props" and server.props is not None
                data = json.dumps(server.props if found else {"error": "not found"}).encode()
                self.send_response(200 if found else 404)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def handle(self) -> None:
                try:
                    super().handle()
                except (BrokenPipeError, ConnectionResetError):
                    pass  # a keep-alive connection dropped by the client (its event loop ended)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    def _next(self, body: dict[str, Any]) -> Reply:
        with self._lock:
            self.requests.append(body)
            if self.respond is not None:
                return self.respond(body)
            index = min(len(self.requests) - 1, len(self.replies) - 1)
            return self.replies[index] if self.replies else completion("ok")

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    @property
    def calls(self) -> int:
        return len(self.requests)

    def __enter__(self) -> OpenAIServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
