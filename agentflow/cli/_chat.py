"""`agentflow chat`: the terminal chat of an `agentflow serve` server (its JSON API, API.md).

Type a task and the server's copilot starts a run on it; the chat follows the run's event
stream step by step (reconnecting with `Last-Event-ID` if the connection drops, e.g. while the
server restarts) and asks you about the approvals you may decide. Everything the model or a
tool wrote is untrusted: it is printed as plain text (no rich markup, no terminal escapes).

Works with stdin a pipe as well as a terminal: each prompt (`you> `, `approve apr_x as bob?
[y/n/s] `, `reason> `) starts on a line of its own and is flushed before reading.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.text import Text

from agentflow.chat import bare_command, compact, safe_text, waiting_words
from agentflow.cli._chat_api import (
    DEFAULT_SERVER,
    RECONNECT_DEADLINE,
    Api,
    ApiError,
    SseMessage,
    Unreachable,
    api_error,
    parse_sse,
)
from agentflow.cli._chat_input import LineReader, Quit, as_utf8, parse_answer, parse_command
from agentflow.cli._chat_render import (
    approvals_table,
    card_line,
    render_card,
    render_event,
    render_outcome,
    runs_table,
    untrusted,
)

OPEN = ("pending", "escalated")  # the approval statuses a vote can still change
# A bare command word of the chat core as this chat's slash command (`approve` alone: the queue).
_BARE_TO_SLASH = {"approve": "approvals", "reject": "approvals", "status": "runs"}

HELP = """\
Type a task (e.g. "CS-101 drop rate is high, investigate") to start a copilot run and follow it.
A command word alone is a command, with or without the slash (help, ?, quit, exit, approvals, runs).
  /approvals        pending approvals of your tenant; decide those you may
  /runs             recent runs
  /watch <run_id>   follow a run (started by you or someone else) and decide its approvals
  /help             this text
  /quit             leave (so does end of input)
At an approval prompt: y [comment] approves, n [reason] rejects, s (or nothing) skips.
Ctrl-C stops following a run (it goes on on the server)."""


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
        line = Text.assemble("signed in to ", (self.api.server, "cyan"), " as ", (safe_text(self.operator), "bold"),
                             " · tenant ", (safe_text(session.get("tenant", "?")), "bold"),
                             " · roles ", safe_text(", ".join(map(str, session.get("roles") or [])) or "none"))  # fmt: skip
        others = [t for t in session.get("tenants") or [] if t != session.get("tenant")]
        if others:
            line.append(f" (also {safe_text(', '.join(map(str, others)))})", style="dim")
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
        bare = bare_command(line) if command is None else None
        if bare is not None:  # `help`, `?`, `quit` typed without the slash: a command, not a task
            command = (_BARE_TO_SLASH.get(bare, bare), [])
        if command is None:
            run = self.api.call("POST", "/api/runs", {"task": line.strip()})
            self.console.print(Text.assemble("run ", (safe_text(run.get("id", "?")), "cyan"), " started"))
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
        self.err.print(Text.assemble(("error: ", "bold red"), (f"{safe_text(code)}: {safe_text(message)}", "red")))

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
                    self.console.print(
                        Text(f"/watch {safe_text(card.get('run_id', '?'))} to follow its run", style="dim")
                    )

    def decide(self, card: dict[str, Any]) -> dict[str, Any] | None:
        """Ask about one card the operator may decide; the card the server answered, or None (skipped)."""
        while True:
            prompt = Text.assemble("approve ", (safe_text(card.get("id", "?")), "bold yellow"), " as ",
                                   (safe_text(self.operator), "bold"), "? [y/n/s] ")  # fmt: skip
            line = self.read(prompt)
            if line is None:
                return None
            answer, comment = parse_answer(line)
            if answer is None:
                self.console.print(Text("y [comment] approves, n [reason] rejects, s skips", style="dim"))
                continue
            if answer == "s":
                self.console.print(Text(f"skipped {safe_text(card.get('id', '?'))}", style="dim"))
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
                    self.console.print(Text(f"connection lost ({safe_text(reason)}); reconnecting…", style="dim"))
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
                line = Text.assemble(("run ", "dim"), (safe_text(data.get("id", state.run_id)), "cyan"), (": ", "dim"),
                                     (safe_text(status), "bold"))  # fmt: skip
                if status == "waiting" and data.get("waiting_on"):
                    line.append_text(Text(f" on {waiting_words(data['waiting_on'])}", style="dim"))
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
            self.console.print(Text.assemble(("you cannot decide ", "dim"), (safe_text(cid), "yellow"), ": ",
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
        err.print(Text.assemble(("error: ", "bold red"), f"--server must be an http(s) URL, got {safe_text(url)!r}"))
        raise typer.Exit(code=2)
    api = Api(url, secret)
    the_chat = Chat(api, console=console, err=err, read=LineReader(console, as_utf8(sys.stdin)))
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
