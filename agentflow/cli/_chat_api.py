"""The HTTP side of `agentflow chat`: the JSON API of `agentflow serve` (API.md) as one
operator, and a parser for its server-sent event streams."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx

DEFAULT_SERVER = "http://127.0.0.1:8000"
TIMEOUT = 10.0  # seconds, for every request but the stream's reads
STREAM_READ_TIMEOUT = 30.0  # a quiet stream is reopened (quietly) after this long
RECONNECT_DEADLINE = 30.0  # give up following after this long without a connection


class ApiError(Exception):
    """An error answer of the API: `{"error": {"code", "message"}}` with a 4xx status."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.status, self.code, self.message = status, code, message


class Unreachable(Exception):
    """The server did not answer (refused, timed out, dropped the connection)."""


def api_error(resp: httpx.Response) -> ApiError:
    """The ApiError an error response stands for (also for non-JSON answers, e.g. a proxy's)."""
    try:
        err = resp.json()["error"]
        return ApiError(resp.status_code, str(err["code"]), str(err.get("message", "")))
    except (ValueError, KeyError, TypeError):
        text = resp.text.strip()[:200] or resp.reason_phrase
        return ApiError(resp.status_code, f"http_{resp.status_code}", text)


class Api:
    """The JSON API of `agentflow serve`, as one operator (bearer token)."""

    def __init__(self, server: str, token: str, *, transport: httpx.BaseTransport | None = None) -> None:
        self.server = server.rstrip("/")
        self.client = httpx.Client(
            base_url=self.server,
            headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
            timeout=TIMEOUT,
            transport=transport,
        )

    def close(self) -> None:
        self.client.close()

    def call(self, method: str, path: str, body: Any = None, **params: Any) -> Any:
        try:
            resp = self.client.request(method, path, json=body, params=params or None)
        except httpx.TransportError as exc:
            raise Unreachable(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__) from None
        if resp.status_code >= 400:
            raise api_error(resp)
        if resp.status_code == 204 or not resp.content:
            return None
        try:
            return resp.json()
        except ValueError:
            raise ApiError(resp.status_code, "bad_response", f"not JSON: {resp.text[:200]!r}") from None

    @contextmanager
    def stream(self, run_id: str, last_event_id: str | None) -> Iterator[httpx.Response]:
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        timeout = httpx.Timeout(TIMEOUT, read=STREAM_READ_TIMEOUT)
        with self.client.stream("GET", f"/api/runs/{run_id}/stream", headers=headers, timeout=timeout) as resp:
            yield resp


# -- server-sent events -------------------------------------------------------------------------
@dataclass
class SseMessage:
    event: str = "message"
    data: str = ""
    id: str | None = None

    def json(self) -> Any:
        return json.loads(self.data) if self.data else None


def parse_sse(lines: Iterable[str]) -> Iterator[SseMessage]:
    """Messages of a `text/event-stream` given its lines (without their line ends).

    `event:`, `id:` and `data:` fields (several `data:` lines join with newlines), a blank line
    dispatches; `:` lines are comments (keep-alives); a message without data is dropped, as a
    browser does; an `id` containing NUL is ignored. Unknown fields (`retry:`) are ignored.
    """
    event, msg_id, has_data = "", None, False
    data: list[str] = []
    for raw in lines:
        line = raw.rstrip("\r\n")
        if not line:
            if has_data:
                yield SseMessage(event=event or "message", data="\n".join(data), id=msg_id)
            event, data, msg_id, has_data = "", [], None, False
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
            has_data = True
        elif name == "id" and "\0" not in value:
            msg_id = value
    if has_data:  # a last message without its blank line: the stream was cut, but it is whole
        yield SseMessage(event=event or "message", data="\n".join(data), id=msg_id)
