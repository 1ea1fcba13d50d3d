"""`agentflow chat`: the terminal chat of an `agentflow serve` server (its JSON API, API.md).

Type a task and the server's copilot starts a run on it; the chat follows the run's event
stream step by step (reconnecting with `Last-Event-ID` if the connection drops, e.g. while the
server restarts) and asks you about the approvals you may decide. Everything the model or a
tool wrote is untrusted: it is printed as plain text (no rich markup, no terminal escapes).

Works with stdin a pipe as well as a terminal: each prompt (`you> `, `approve apr_x as bob?
[y/n/s] `, `reason> `) starts on a line of its own and is flushed before reading.
"""

from __future__ import annotations

import io
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import httpx
import typer
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

DEFAULT_SERVER = "http://127.0.0.1:8000"
TIMEOUT = 10.0  # seconds, for every request but the stream's reads
STREAM_READ_TIMEOUT = 30.0  # a quiet stream is reopened (quietly) after this long
RECONNECT_DEADLINE = 30.0  # give up following after this long without a connection
MAX_OUTPUT_CHARS = 800  # tool output / model text shown per step
MAX_OUTPUT_LINES = 12
OPEN = ("pending", "escalated")

HELP = """\
Type a task (e.g. "CS-101 drop rate is high, investigate") to start a copilot run and follow it.
  /approvals        pending approvals of your tenant; decide those you may
  /runs             recent runs
  /watch <run_id>   follow a run (started by you or someone else) and decide its approvals
  /help             this text
  /quit             leave (so does end of input)
At an approval prompt: y [comment] approves, n [reason] rejects, s (or nothing) skips.
Ctrl-C stops following a run (it goes on on the server)."""


# -- HTTP ---------------------------------------------------------------------------------------
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


# -- rendering ----------------------------------------------------------------------------------
_UNSAFE = {c: f"\\x{c:02x}" for c in [*range(0x00, 0x09), *range(0x0B, 0x20), *range(0x7F, 0xA0)]}
_UNSAFE.update({c: f"\\u{c:04x}" for c in [*range(0x202A, 0x202F), *range(0x2066, 0x206A)]})


def clean(value: Any) -> str:
    """A server or model string made safe for a terminal: control characters (ESC, CR, BEL...)
    and bidirectional overrides are shown escaped. Markup is left to Text (which never parses it)."""
    text = value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)
    return text.translate(_UNSAFE)


def truncate(text: str, max_chars: int = MAX_OUTPUT_CHARS, max_lines: int = MAX_OUTPUT_LINES) -> str:
    lines = text.splitlines()
    cut = "\n".join(lines[:max_lines])
    cut = cut[:max_chars]
    if len(cut) < len(text.rstrip("\n")):
        more = len(text) - len(cut)
        return f"{cut.rstrip()}\n… ({more} more characters)"
    return text


def untrusted(value: Any, style: str = "", *, limit: bool = True) -> Text:
    """Untrusted text (model words, tool output) as a Text: printed literally, never as markup."""
    s = clean(value)
    return Text(truncate(s) if limit else s, style=style)


def compact(value: Any, max_chars: int = 160) -> str:
    s = clean(value)
    return s if len(s) <= max_chars else s[: max_chars - 1] + "…"


def ts(value: Any) -> str:
    if not isinstance(value, int | float):
        return "-"
    return datetime.fromtimestamp(value, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def until(seconds: float) -> str:
    """A time left in words: `in 7h 59m`, `in 45s`, `2m ago`."""
    left = abs(int(seconds))
    hours, rest = divmod(left, 3600)
    words = f"{hours}h {rest // 60}m" if hours else f"{rest // 60}m" if rest >= 60 else f"{rest}s"
    return f"in {words}" if seconds >= 0 else f"{words} ago"


_EFFECT_STYLE = {"allow": "green", "deny": "bold red", "require_approval": "yellow", "defer": "magenta",
                 "limit": "red"}  # fmt: skip
_KIND_STYLE = {"model": "bold blue", "tool": "bold cyan", "policy": "bold magenta", "approval": "bold yellow",
               "wait": "bold", "plan": "bold blue", "signal": "bold", "step": "bold"}  # fmt: skip


def render_event(event: dict[str, Any]) -> RenderableType:
    """One finished step of a run (an `Event` of API.md), every string from it shown literally."""
    kind = str(event.get("kind", "step"))
    data = event.get("data") if isinstance(event.get("data"), dict) else {}
    assert isinstance(data, dict)
    style = "bold red" if event.get("status") == "failed" else _KIND_STYLE.get(kind, "bold")
    title = event.get("title") or f"{kind} {event.get('name', '')}"
    head = Text.assemble((f"[{clean(event.get('seq', '?'))}] ", "dim"), untrusted(title, style, limit=False))
    parts: list[RenderableType] = [head]
    indent = "    "
    if kind == "model":
        if event.get("text"):
            parts.append(_indented(untrusted(event["text"]), indent))
        for call in data.get("tool_calls") or []:
            if isinstance(call, dict):
                parts.append(Text.assemble((f"{indent}→ ", "cyan"), untrusted(call.get("name", "?"), "cyan", limit=False),
                                           " ", untrusted(compact(call.get("args", {})), "dim")))  # fmt: skip
        if data.get("tokens_in") is not None or data.get("tokens_out") is not None:
            cost = data.get("cost_usd")
            money = f", ${cost:.4f}" if isinstance(cost, int | float) else ""
            used = f"{clean(data.get('tokens_in') or 0)} tokens in, {clean(data.get('tokens_out') or 0)} out{money}"
            parts.append(Text(indent + used, style="dim"))
    elif kind == "tool":
        if data.get("args") is not None:
            parts.append(Text.assemble((f"{indent}args ", "dim"), untrusted(compact(data["args"]), "dim")))
        if data.get("error"):
            parts.append(_indented(Text("error: ", style="bold red") + untrusted(data["error"], "red"), indent))
    elif kind == "policy":
        effect = str(data.get("effect", ""))
        if data.get("reason"):
            line = Text.assemble((indent + clean(effect) + ": ", _EFFECT_STYLE.get(effect, "bold")),
                                 untrusted(data["reason"]))  # fmt: skip
            parts.append(_indented(line, ""))
    elif kind == "plan" and not event.get("text"):
        for i, step in enumerate(data.get("steps") or [], 1):
            if isinstance(step, dict):
                parts.append(Text.assemble(f"{indent}{i}. ", untrusted(step.get("tool", "?"), "cyan", limit=False),
                                           " — ", untrusted(step.get("goal", ""))))  # fmt: skip
    if event.get("text") and kind != "model" and not (kind == "tool" and data.get("error") == event.get("text")):
        parts.append(_indented(untrusted(event["text"]), indent))
    return Group(*parts)


def _indented(text: Text, indent: str) -> Text:
    out = Text()
    for i, line in enumerate(text.split("\n")):
        if i:
            out.append("\n")
        out.append(indent)
        out.append_text(line)
    return out


def render_diff(diff: Any) -> Text:
    if isinstance(diff, dict) and "from" in diff and "to" in diff:
        where = " ".join(clean(diff[k]) for k in ("site", "param") if diff.get(k) is not None)
        return Text.assemble((f"{where}: " if where else "", ""), (clean(diff["from"]), "red"), " → ",
                             (clean(diff["to"]), "green"))  # fmt: skip
    if diff is None:
        return Text("-")
    return untrusted(compact(diff, 400))


def quorum(card: dict[str, Any]) -> str:
    q = card.get("quorum") if isinstance(card.get("quorum"), dict) else {}
    assert isinstance(q, dict)
    return f"{q.get('have', '?')}/{q.get('needed', '?')}"


def render_card(card: dict[str, Any]) -> Table:
    """An approval card (`Card` of API.md): what would run, on what, why it needs a decision."""
    status = str(card.get("status", "?"))
    style = {"approved": "green", "rejected": "red", "expired": "red", "escalated": "bold yellow"}.get(status, "yellow")
    table = Table(show_header=False, box=None, padding=(0, 1), title_justify="left",
                  title=Text.assemble(("approval ", "bold"), (clean(card.get("id", "?")), "bold yellow"),
                                      (f" ({clean(status)})", style)))  # fmt: skip
    table.add_column(style="dim", no_wrap=True)
    table.add_column()
    table.add_row("tool", untrusted(card.get("tool", "?"), "bold cyan", limit=False))
    table.add_row("target", untrusted(card.get("target") if card.get("target") is not None else "-", limit=False))
    table.add_row("args", untrusted(card.get("args", {})))
    table.add_row("diff", render_diff(card.get("diff")))
    table.add_row("rule", untrusted(card.get("rule", "-"), limit=False))
    table.add_row("requested by", untrusted(card.get("requested_by") or "-", limit=False))
    table.add_row("run", untrusted(card.get("run_id", "-"), limit=False))
    needs = f"{quorum(card)} approvals"
    if card.get("deciding_roles"):
        needs += f" by roles {', '.join(clean(r) for r in card['deciding_roles'])}"
    if card.get("four_eyes"):
        needs += ", four-eyes (not by the requester)"
    table.add_row("quorum", Text(needs))
    if card.get("editable_args"):
        table.add_row("editable", Text(", ".join(clean(a) for a in card["editable_args"])))
    expires = ts(card.get("expires_at"))
    if isinstance(card.get("expires_at"), int | float) and isinstance(card.get("now"), int | float):
        expires += f" ({until(card['expires_at'] - card['now'])})"  # the server's clock may be shifted
    table.add_row("expires", Text(expires))
    for vote in card.get("votes") or []:
        if isinstance(vote, dict):
            table.add_row("vote", Text.assemble(untrusted(vote.get("principal", "?"), "bold", limit=False), " ",
                                                clean(vote.get("decision", "?")), " ",
                                                untrusted(vote.get("comment") or "", "italic")))  # fmt: skip
    return table


def card_line(card: dict[str, Any]) -> Text:
    """A change of a card already shown, on one line."""
    status = str(card.get("status", "?"))
    line = Text.assemble(("approval ", "dim"), (clean(card.get("id", "?")), "yellow"), ": ")
    line.append(clean(status), style={"approved": "green", "rejected": "red", "expired": "red"}.get(status, "yellow"))
    line.append(f" ({quorum(card)})", style="dim")
    votes = [v for v in card.get("votes") or [] if isinstance(v, dict)]
    if votes:
        last = votes[-1]
        line.append(" — ")
        line.append_text(untrusted(last.get("principal", "?"), "bold", limit=False))
        line.append(f" {clean(last.get('decision', '?'))}")
        if last.get("comment"):
            line.append(": ")
            line.append_text(untrusted(last["comment"], "italic"))
    return line


def waiting_on(value: Any) -> str:
    """`waiting_on` of a RunSummary (`{"signals", "timers", "children"}`, or its JSON) in words."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return compact(value, 200)
    if not isinstance(value, dict):
        return compact(value, 200)
    signals = [clean(s).replace("approval:", "approval ", 1) for s in value.get("signals") or []]
    timers = sorted(t for t in value.get("timers") or [] if isinstance(t, int | float))
    children = [f"child run {clean(c)}" for c in value.get("children") or []]
    what = ", ".join(signals + children)
    if what and timers:
        return compact(f"{what} (until {ts(timers[0])})", 200)
    return compact(what or (f"a timer at {ts(timers[0])}" if timers else value), 200)


def render_outcome(run: dict[str, Any]) -> RenderableType:
    """The end of a run: status, outcome, answer, tokens and cost."""
    status = str(run.get("status", "?"))
    style = {"completed": "bold green", "failed": "bold red", "cancelled": "bold red"}.get(status, "bold")
    head = Text.assemble(("run ", ""), (clean(run.get("id", "?")), "cyan"), " ", (clean(status), style))
    if run.get("outcome"):
        head.append(f" ({clean(run['outcome'])})")
    facts = []
    if run.get("steps") is not None:
        facts.append(f"{clean(run['steps'])} steps")
    if run.get("tokens") is not None:
        facts.append(f"{clean(run['tokens'])} tokens")
    if isinstance(run.get("cost_usd"), int | float):
        facts.append(f"${run['cost_usd']:.4f}")
    if facts:
        head.append(" · " + " · ".join(facts), style="dim")
    parts: list[RenderableType] = [head]
    if run.get("error"):
        parts.append(Text("error: ", style="bold red") + untrusted(run["error"], "red"))
    if run.get("answer"):
        parts.append(untrusted(run["answer"], limit=False))
    return Group(*parts)


def runs_table(runs: list[dict[str, Any]]) -> Table:
    table = Table("id", "status", "task", "requested by", "steps", "approvals", "updated", title="runs")
    for r in runs:
        table.add_row(untrusted(r.get("id", "?"), "cyan", limit=False), Text(clean(r.get("status", "?"))),
                      untrusted(compact(r.get("task", ""), 60)), untrusted(r.get("requested_by") or "-", limit=False),
                      Text(clean(r.get("steps", "-"))), Text(clean(r.get("open_approvals", 0))),
                      Text(ts(r.get("updated_at"))))  # fmt: skip
    return table


def approvals_table(cards: list[dict[str, Any]]) -> Table:
    table = Table("id", "run", "tool", "change", "rule", "status", "quorum", "requested by", "you",
                  title="approvals")  # fmt: skip
    for c in cards:
        you = Text("can decide", style="green") if c.get("can_decide") else untrusted(c.get("why_not") or "-", "dim")
        change = render_diff(c.get("diff")) if c.get("diff") is not None else untrusted(compact(c.get("args", {}), 60))
        table.add_row(untrusted(c.get("id", "?"), "yellow", limit=False), untrusted(c.get("run_id", "?"), limit=False),
                      untrusted(c.get("tool", "?"), limit=False), change, untrusted(c.get("rule", "-"), limit=False),
                      Text(clean(c.get("status", "?"))), Text(quorum(c)),
                      untrusted(c.get("requested_by") or "-", limit=False), you)  # fmt: skip
    return table


# -- input --------------------------------------------------------------------------------------
Answer = Literal["y", "n", "s"]


def parse_answer(line: str) -> tuple[Answer | None, str]:
    """`y [comment]` / `n [reason]` / `s` (or nothing) at an approval prompt; None if neither."""
    word, _, rest = line.strip().partition(" ")
    word = word.lower()
    if word in ("y", "yes", "approve"):
        return "y", rest.strip()
    if word in ("n", "no", "reject"):
        return "n", rest.strip()
    if word in ("", "s", "skip"):
        return "s", ""
    return None, ""


def parse_command(line: str) -> tuple[str, list[str]] | None:
    """`/name arg...` → (name, args); None for a task (anything not starting with /)."""
    text = line.strip()
    if not text.startswith("/"):
        return None
    name, *args = text[1:].split() or [""]
    return name.lower(), args


class Quit(Exception):
    """The operator left (/quit or end of input)."""


class LineReader:
    """Lines from stdin, a pipe or a terminal; each prompt flushed before reading."""

    def __init__(self, console: Console, stream: Any = None) -> None:
        self.console = console
        self.stream = stream if stream is not None else sys.stdin
        self.eof = False

    def __call__(self, prompt: Text) -> str | None:
        if self.eof:
            return None
        self.console.print(prompt, end="")
        self.console.file.flush()
        if self.stream is sys.stdin and self.stream.isatty():
            try:
                import readline  # noqa: F401 - line editing and history for input()
            except ImportError:
                pass
            try:
                return input()
            except EOFError:
                self.console.print()
                self.eof = True
                return None
        line = self.stream.readline()
        if not line:
            self.console.print()
            self.eof = True
            return None
        text = str(line).rstrip("\r\n")
        self.console.print(Text(clean(text)))  # not a terminal: nothing echoed it; keep the transcript readable
        return text


# -- the chat -----------------------------------------------------------------------------------
@dataclass
class Following:
    """What the chat knows of the run it follows (kept across reconnects)."""

    run_id: str
    last_id: str | None = None
    max_seq: int = 0
    status: str | None = None
    cards: dict[str, tuple[Any, ...]] = field(default_factory=dict)  # id -> what was last shown
    hashes: dict[str, Any] = field(default_factory=dict)  # id -> args_hash last shown in full
    asked: set[tuple[str, Any, Any]] = field(default_factory=set)


class Chat:
    def __init__(
        self, api: Api, *, console: Console, err: Console, read: Callable[[Text], str | None],
        reconnect_deadline: float = RECONNECT_DEADLINE, sleep: Callable[[float], None] = time.sleep,
    ) -> None:  # fmt: skip
        self.api, self.console, self.err, self.read = api, console, err, read
        self.reconnect_deadline, self.sleep = reconnect_deadline, sleep
        self.operator = "?"

    # the loop
    def start(self) -> dict[str, Any]:
        session: dict[str, Any] = self.api.call("GET", "/api/session")
        self.operator = str(session.get("operator", "?"))
        line = Text.assemble("signed in to ", (self.api.server, "cyan"), " as ", (clean(self.operator), "bold"),
                             " · tenant ", (clean(session.get("tenant", "?")), "bold"),
                             " · roles ", clean(", ".join(map(str, session.get("roles") or [])) or "none"))  # fmt: skip
        others = [t for t in session.get("tenants") or [] if t != session.get("tenant")]
        if others:
            line.append(f" (also {clean(', '.join(map(str, others)))})", style="dim")
        self.console.print(line)
        self.console.print(Text("Type a task for the copilot, or /help.", style="dim"))
        return session

    def loop(self) -> None:
        while True:
            try:
                line = self.read(Text("you> ", style="bold green"))
            except KeyboardInterrupt:
                self.console.print()
                return
            if line is None:
                return
            if not line.strip():
                continue
            try:
                self.handle(line)
            except Quit:
                return
            except KeyboardInterrupt:
                self.console.print(Text("\ninterrupted", style="dim"))
            except ApiError as exc:
                self.error(exc.code, exc.message)
                if exc.status == 401:
                    raise
            except Unreachable as exc:
                self.error("unreachable", f"{self.api.server}: {exc}")

    def handle(self, line: str) -> None:
        command = parse_command(line)
        if command is None:
            run = self.api.call("POST", "/api/runs", {"task": line.strip()})
            self.console.print(Text.assemble("run ", (clean(run.get("id", "?")), "cyan"), " started"))
            self.follow(str(run["id"]))
            return
        name, args = command
        if name in ("quit", "exit", "q"):
            raise Quit
        if name in ("help", "h", "?"):
            self.console.print(Text(HELP))
        elif name == "runs":
            found = self.api.call("GET", "/api/runs", limit=20)
            self.console.print(runs_table(found.get("runs", [])))
        elif name == "approvals":
            self.approvals()
        elif name == "watch" and len(args) == 1:
            self.follow(args[0])
        elif name == "watch":
            self.error("usage", "/watch <run_id>")
        else:
            self.error("unknown_command", f"/{name} (try /help)")

    def error(self, code: str, message: str) -> None:
        self.err.print(Text.assemble(("error: ", "bold red"), (f"{clean(code)}: {clean(message)}", "red")))

    # approvals
    def approvals(self) -> None:
        cards = self.api.call("GET", "/api/approvals", status="pending").get("approvals", [])
        if not cards:
            self.console.print(Text("no pending approvals", style="dim"))
            return
        self.console.print(approvals_table(cards))
        for card in cards:
            if card.get("can_decide"):
                self.console.print(render_card(card))
                decided = self.decide(card)
                if decided is not None:
                    self.console.print(Text(f"/watch {clean(card.get('run_id', '?'))} to follow its run", style="dim"))

    def decide(self, card: dict[str, Any]) -> dict[str, Any] | None:
        """Ask about one card the operator may decide; the card the server answered, or None (skipped)."""
        while True:
            prompt = Text.assemble("approve ", (clean(card.get("id", "?")), "bold yellow"), " as ",
                                   (clean(self.operator), "bold"), "? [y/n/s] ")  # fmt: skip
            line = self.read(prompt)
            if line is None:
                return None
            answer, comment = parse_answer(line)
            if answer is None:
                self.console.print(Text("y [comment] approves, n [reason] rejects, s skips", style="dim"))
                continue
            if answer == "s":
                self.console.print(Text(f"skipped {clean(card.get('id', '?'))}", style="dim"))
                return None
            if answer == "n":
                while not comment:
                    reason = self.read(Text("reason> "))
                    if reason is None:
                        return None
                    comment = reason.strip()
            path = f"/api/approvals/{card['id']}/{'approve' if answer == 'y' else 'reject'}"
            body = {"comment": comment, "seen_hash": card.get("args_hash")} if answer == "y" else {"comment": comment}
            try:
                decided: dict[str, Any] = self.api.call("POST", path, body)
            except ApiError as exc:
                self.error(exc.code, exc.message)
                if exc.code != "stale_args":
                    return None
                card = self.api.call("GET", f"/api/approvals/{card['id']}")  # changed under us: show it again
                self.console.print(render_card(card))
                if card.get("status") not in OPEN or not card.get("can_decide"):
                    return None
                continue
            self.console.print(card_line(decided))
            return decided

    # following a run
    def follow(self, run_id: str) -> dict[str, Any] | None:
        """Follow a run's stream until its `end` (returned), deciding approvals on the way."""
        state = Following(run_id)
        lost_at: float | None = None
        backoff = 0.2
        try:
            while True:
                try:
                    with self.api.stream(run_id, state.last_id) as resp:
                        if resp.status_code >= 400:
                            resp.read()
                            error = api_error(resp)
                            if resp.status_code < 500:
                                raise error
                            raise httpx.TransportError(str(error))  # a proxy's 502 while the server restarts
                        for msg in parse_sse(resp.iter_lines()):
                            if lost_at is not None:
                                self.console.print(Text("reconnected", style="dim"))
                            lost_at, backoff = None, 0.2
                            end = self.on_message(state, msg)
                            if end is not None:
                                self.console.print(render_outcome(end))
                                return end
                except httpx.ReadTimeout:
                    continue  # a quiet stream (a long wait): reopen it
                except httpx.TransportError as exc:
                    reason = str(exc) or type(exc).__name__
                else:
                    reason = "the server closed the stream"
                now = time.monotonic()
                if lost_at is None:
                    lost_at = now
                    self.console.print(Text(f"connection lost ({clean(reason)}); reconnecting…", style="dim"))
                elif now - lost_at > self.reconnect_deadline:
                    raise Unreachable(f"lost the stream of run {run_id} for {self.reconnect_deadline:.0f}s: {reason}")
                self.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
        except KeyboardInterrupt:
            self.console.print(Text(f"\nstopped following {run_id} (it goes on: /watch {run_id})", style="dim"))
            return None

    def on_message(self, state: Following, msg: SseMessage) -> dict[str, Any] | None:
        if msg.id is not None:
            state.last_id = msg.id
        try:
            data = msg.json()
        except ValueError:
            self.error("bad_event", f"{msg.event}: {compact(msg.data, 200)}")
            return None
        if not isinstance(data, dict):
            return None
        if msg.event == "step":
            seq = data.get("seq")
            if isinstance(seq, int):
                if seq <= state.max_seq:
                    return None  # seen before a reconnect
                state.max_seq = seq
            self.console.print(render_event(data))
        elif msg.event == "approval":
            self.on_card(state, data)
        elif msg.event == "run":
            status = data.get("status")
            if status != state.status:
                state.status = str(status)
                line = Text.assemble(("run ", "dim"), (clean(data.get("id", state.run_id)), "cyan"), (": ", "dim"),
                                     (clean(status), "bold"))  # fmt: skip
                if status == "waiting" and data.get("waiting_on"):
                    line.append_text(Text(f" on {waiting_on(data['waiting_on'])}", style="dim"))
                self.console.print(line)
        elif msg.event == "end":
            return data
        return None

    def on_card(self, state: Following, card: dict[str, Any]) -> None:
        cid = str(card.get("id", "?"))
        q = card.get("quorum") if isinstance(card.get("quorum"), dict) else {}
        assert isinstance(q, dict)
        shown = (card.get("status"), card.get("args_hash"), q.get("have"), len(card.get("votes") or []),
                 card.get("can_decide"), card.get("why_not"))  # fmt: skip
        if state.cards.get(cid) == shown:
            return  # re-sent on reconnect
        first = cid not in state.cards or state.hashes.get(cid) != card.get("args_hash")
        state.cards[cid] = shown
        if first:
            state.hashes[cid] = card.get("args_hash")
            self.console.print(render_card(card))
        else:
            self.console.print(card_line(card))
        if card.get("status") not in OPEN:
            return
        if not card.get("can_decide"):
            why = card.get("why_not") or "you may not decide it"
            self.console.print(Text.assemble(("you cannot decide ", "dim"), (clean(cid), "yellow"), ": ",
                                             untrusted(why, "italic"), (" (waiting for someone who can)", "dim")))  # fmt: skip
            return
        key = (cid, card.get("args_hash"), card.get("status"))
        if key in state.asked:
            return
        state.asked.add(key)
        decided = self.decide(card)
        if decided is not None:
            dq = decided.get("quorum") if isinstance(decided.get("quorum"), dict) else {}
            assert isinstance(dq, dict)
            state.cards[cid] = (decided.get("status"), decided.get("args_hash"), dq.get("have"),
                                len(decided.get("votes") or []), decided.get("can_decide"), decided.get("why_not"))  # fmt: skip


# -- the command --------------------------------------------------------------------------------
def _utf8(stream: Any) -> Any:
    """stdin (a pipe) read as UTF-8 whatever the locale; a terminal is left to `input()`."""
    buffer = getattr(stream, "buffer", None)
    if buffer is None or stream.isatty():
        return stream
    return io.TextIOWrapper(buffer, encoding="utf-8", errors="replace")


def chat(
    server: Annotated[
        str | None,
        typer.Option("--server", help=f"The agentflow server (default: $AGENTFLOW_SERVER, else {DEFAULT_SERVER})."),
    ] = None,
    token: Annotated[
        str | None, typer.Option("--token", help="Your operator token (default: $AGENTFLOW_TOKEN).", show_default=False)
    ] = None,
) -> None:
    """Chat with the copilot of an `agentflow serve` server: give it tasks, follow its runs step
    by step, approve or reject the changes it stages."""
    console = Console()
    err = Console(stderr=True)
    url = server or os.environ.get("AGENTFLOW_SERVER") or DEFAULT_SERVER
    secret = token or os.environ.get("AGENTFLOW_TOKEN")
    if not secret:
        err.print(Text.assemble(("error: ", "bold red"), "no token: pass --token or set AGENTFLOW_TOKEN "
                                "(an operator's token, from `agentflow operators add`)"))  # fmt: skip
        raise typer.Exit(code=2)
    if not url.startswith(("http://", "https://")):
        err.print(Text.assemble(("error: ", "bold red"), f"--server must be an http(s) URL, got {clean(url)!r}"))
        raise typer.Exit(code=2)
    api = Api(url, secret)
    the_chat = Chat(api, console=console, err=err, read=LineReader(console, _utf8(sys.stdin)))
    try:
        try:
            the_chat.start()
        except Unreachable as exc:
            the_chat.error(
                "unreachable", f"cannot reach the agentflow server at {url} ({exc}); is `agentflow serve` running?"
            )
            raise typer.Exit(code=2) from None
        except ApiError as exc:
            the_chat.error(exc.code, exc.message)
            if exc.status == 401:
                err.print(Text("check the token (--token or $AGENTFLOW_TOKEN): `agentflow operators add` prints it"))
            raise typer.Exit(code=2) from None
        try:
            the_chat.loop()
        except ApiError:  # 401 mid-session (token revoked): already printed
            raise typer.Exit(code=2) from None
    finally:
        api.close()


if __name__ == "__main__":  # `python -m agentflow._cli_chat` (the same as `agentflow chat`)
    typer.run(chat)
