"""A local stand-in for the Slack Web API (https://slack.com/api/<method>), for tests: Slack
itself cannot be reached from CI.

`SlackApi` is a real HTTP server on 127.0.0.1 (a thread of the test process). It answers the
methods the Slack bridge calls the way Slack documents them (`{"ok": true, ...}` with HTTP 200;
`{"ok": false, "error": ...}` for a refused call), keeps each channel's messages (so
`conversations.history` shows what `chat.postMessage` posted, metadata included when asked) and
records every call in `calls`. It checks what Slack checks and a bridge could get wrong: the bot
token, the required arguments, and Block Kit's limits (block count, text lengths, button values,
unique action ids), answering `invalid_blocks` like Slack.

    api = SlackApi(token="xoxb-test"); api.start()    # api.url is the bridge's --api-url
    api.posted("C123")          # chat.postMessage calls to a channel
    api.down = True             # every call fails with 503 until set back (Slack is down)
    api.stop()
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

BOT_USER, BOT_ID, TEAM = "UBOT0001", "BBOT0001", "T0TEST01"


@dataclass
class Call:
    """One request: the method (`chat.postMessage`), its arguments (JSON, form or query), the
    Authorization header, and what was answered (None: the stand-in was down)."""

    method: str
    args: dict[str, Any]
    auth: str
    answer: dict[str, Any] | None = None


@dataclass
class Channel:
    messages: list[dict[str, Any]] = field(default_factory=list)  # oldest first


class SlackApi:
    """The stand-in; nothing listens until `start()`."""

    def __init__(self, *, token: str = "xoxb-test") -> None:
        self.token = token
        self.calls: list[Call] = []
        self.channels: dict[str, Channel] = {}
        self.down = False
        self.fail_next: dict[str, int] = {}  # method -> how many of its next calls answer 503
        self._lock = threading.Lock()
        self._ts = 1_765_000_000
        self._server: ThreadingHTTPServer | None = None

    # -- the server -----------------------------------------------------------------------------
    def start(self) -> None:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                api._serve(self)

            def do_GET(self) -> None:
                api._serve(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def url(self) -> str:
        """The base URL to give the bridge (`--api-url`): `http://127.0.0.1:<port>/api/`."""
        assert self._server is not None, "start() the stand-in first"
        return f"http://127.0.0.1:{self._server.server_address[1]}/api/"

    # -- what tests read ------------------------------------------------------------------------
    def called(self, method: str) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if c.method == method]

    def posted(self, channel: str) -> list[Call]:
        """The successful chat.postMessage calls to `channel`."""
        return [c for c in self.called("chat.postMessage") if c.args.get("channel") == channel and _ok(c)]

    def updates(self, ts: str) -> list[Call]:
        """The successful chat.update calls of the message `ts`."""
        return [c for c in self.called("chat.update") if c.args.get("ts") == ts and _ok(c)]

    def message(self, channel: str, ts: str) -> dict[str, Any]:
        """A message as it stands now (after its updates)."""
        with self._lock:
            return next(m for m in self.channels[channel].messages if m["ts"] == ts)

    # -- answering ------------------------------------------------------------------------------
    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        method = handler.path.split("?", 1)[0].rsplit("/", 1)[-1]
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        call = Call(method, _arguments(handler, raw), handler.headers.get("Authorization", ""))
        with self._lock:
            self.calls.append(call)
            failing = self.fail_next.get(method, 0)
            if failing:
                self.fail_next[method] = failing - 1
            if self.down or failing:
                status, answer = 503, None
            else:
                status, answer = 200, self._answer(call)
            call.answer = answer
        body = b"service unavailable" if answer is None else json.dumps(answer).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json; charset=utf-8" if answer else "text/plain")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    def _answer(self, call: Call) -> dict[str, Any]:
        if call.auth != f"Bearer {self.token}":
            return {"ok": False, "error": "invalid_auth" if call.auth else "not_authed"}
        handler = getattr(self, "_" + call.method.replace(".", "_"), None)
        if handler is None:
            return {"ok": False, "error": "unknown_method"}
        answer: dict[str, Any] = handler(call.args)
        return answer

    def _auth_test(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "url": "https://test.slack.com/", "team": "Test", "user": "agentflow", "team_id": TEAM,
                "user_id": BOT_USER, "bot_id": BOT_ID, "is_enterprise_install": False}  # fmt: skip

    def _chat_postMessage(self, args: dict[str, Any]) -> dict[str, Any]:
        problem = _missing(args, "channel") or _blocks_problem(args)
        if problem:
            return {"ok": False, "error": problem}
        self._ts += 1
        message = {"type": "message", "user": BOT_USER, "bot_id": BOT_ID, "ts": f"{self._ts}.000100",
                   "text": args.get("text", ""), "blocks": args.get("blocks", [])}  # fmt: skip
        if isinstance(args.get("metadata"), dict):
            message["metadata"] = args["metadata"]
        self.channels.setdefault(args["channel"], Channel()).messages.append(message)
        return {"ok": True, "channel": args["channel"], "ts": message["ts"], "message": message}

    def _chat_update(self, args: dict[str, Any]) -> dict[str, Any]:
        problem = _missing(args, "channel", "ts") or _blocks_problem(args)
        if problem:
            return {"ok": False, "error": problem}
        found = [m for m in self.channels.get(args["channel"], Channel()).messages if m["ts"] == args["ts"]]
        if not found:
            return {"ok": False, "error": "message_not_found"}
        found[0].update(text=args.get("text", ""), blocks=args.get("blocks", []))
        if isinstance(args.get("metadata"), dict):
            found[0]["metadata"] = args["metadata"]
        return {"ok": True, "channel": args["channel"], "ts": args["ts"], "text": args.get("text", "")}

    def _chat_postEphemeral(self, args: dict[str, Any]) -> dict[str, Any]:
        problem = _missing(args, "channel", "user") or _blocks_problem(args)
        if problem:
            return {"ok": False, "error": problem}
        self._ts += 1
        return {"ok": True, "message_ts": f"{self._ts}.000200"}

    def _views_open(self, args: dict[str, Any]) -> dict[str, Any]:
        problem = _missing(args, "trigger_id", "view")
        view = args.get("view")
        if problem or not isinstance(view, dict):
            return {"ok": False, "error": problem or "invalid_arguments"}
        problem = _blocks_problem({"blocks": view.get("blocks", []), "text": "x"}, modal=True)
        if problem or len(str(view.get("private_metadata", ""))) > 3000:
            return {"ok": False, "error": problem or "invalid_arguments"}
        return {"ok": True, "view": {**view, "id": f"V{len(self.calls):08d}"}}

    def _conversations_history(self, args: dict[str, Any]) -> dict[str, Any]:
        if _missing(args, "channel"):
            return {"ok": False, "error": "channel_not_found"}
        with_metadata = str(args.get("include_all_metadata", "")).lower() in ("1", "true")
        limit = int(args.get("limit") or 100)
        newest_first = list(reversed(self.channels.get(args["channel"], Channel()).messages))
        shown = [m if with_metadata else {k: v for k, v in m.items() if k != "metadata"} for m in newest_first]
        return {"ok": True, "messages": shown[:limit], "has_more": len(shown) > limit}


def _ok(call: Call) -> bool:
    return call.answer is not None and call.answer.get("ok") is True


def _arguments(handler: BaseHTTPRequestHandler, raw: bytes) -> dict[str, Any]:
    """JSON bodies (what slack_sdk sends with blocks), form bodies and query strings, like Slack."""
    query = handler.path.split("?", 1)[1] if "?" in handler.path else ""
    args: dict[str, Any] = {k: v[0] for k, v in parse_qs(query).items()}
    kind = handler.headers.get("Content-Type", "")
    if raw and kind.startswith("application/json"):
        args.update(json.loads(raw))
    elif raw:
        form = {k: v[0] for k, v in parse_qs(raw.decode()).items()}
        for key in ("blocks", "metadata", "view"):  # JSON-encoded fields of a form body
            if isinstance(form.get(key), str):
                form[key] = json.loads(form[key])
        args.update(form)
    return args


def _missing(args: dict[str, Any], *names: str) -> str | None:
    return next((f"{n}_not_found" if n == "channel" else "invalid_arguments" for n in names if not args.get(n)), None)


def _blocks_problem(args: dict[str, Any], *, modal: bool = False) -> str | None:
    """Block Kit's documented limits, checked like Slack does (`invalid_blocks`)."""
    blocks = args.get("blocks") or []
    if not isinstance(blocks, list) or len(blocks) > (100 if modal else 50):
        return "invalid_blocks"
    if not blocks and not args.get("text"):
        return "no_text"
    action_ids: list[str] = []
    for block in blocks:
        if not isinstance(block, dict) or not _block_ok(block, action_ids):
            return "invalid_blocks"
    return None if len(action_ids) == len(set(action_ids)) else "invalid_blocks"


def _text_ok(obj: Any, limit: int) -> bool:
    return (isinstance(obj, dict) and obj.get("type") in ("plain_text", "mrkdwn")
            and isinstance(obj.get("text"), str) and 0 < len(obj["text"]) <= limit)  # fmt: skip


def _block_ok(block: dict[str, Any], action_ids: list[str]) -> bool:
    kind = block.get("type")
    if len(str(block.get("block_id", ""))) > 255:
        return False
    if kind == "header":
        return _text_ok(block.get("text"), 150) and block["text"]["type"] == "plain_text"
    if kind == "section":
        fields = block.get("fields") or []
        return (("text" not in block or _text_ok(block["text"], 3000)) and len(fields) <= 10
                and all(_text_ok(f, 2000) for f in fields) and ("text" in block or bool(fields)))  # fmt: skip
    if kind == "context":
        elements = block.get("elements") or []
        return 0 < len(elements) <= 10 and all(_text_ok(e, 3000) for e in elements)
    if kind == "actions":
        elements = block.get("elements") or []
        for e in elements:
            action_ids.append(str(e.get("action_id")))
            if not (_text_ok(e.get("text"), 75) and len(str(e.get("value", ""))) <= 2000
                    and len(str(e.get("action_id", ""))) <= 255):  # fmt: skip
                return False
        return 0 < len(elements) <= 25
    if kind == "input":
        return _text_ok(block.get("label"), 2000) and isinstance(block.get("element"), dict)
    return kind in ("divider", "rich_text")
