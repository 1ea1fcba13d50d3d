"""Security headers on every answer, not only the page: no content sniffing, no referrer, no
framing, and for anything that does not set its own policy a Content-Security-Policy that lets
it load nothing (JSON answers, server-sent events, static files)."""

from __future__ import annotations

from agentflow.server._limits import ASGIApp, Message, Receive, Scope, Send

_ALWAYS = {b"x-content-type-options": b"nosniff", b"referrer-policy": b"no-referrer", b"x-frame-options": b"DENY"}
_CSP = b"content-security-policy"
_NOTHING = b"default-src 'none'; frame-ancestors 'none'"


class SecurityHeaders:
    """Adds the headers above to each response that does not carry them already."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers") or [])
                present = {name.lower() for name, _ in headers}
                headers += [(k, v) for k, v in _ALWAYS.items() if k not in present]
                if _CSP not in present:
                    headers.append((_CSP, _NOTHING))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)
