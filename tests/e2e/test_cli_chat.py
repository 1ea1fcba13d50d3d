"""`agentflow chat`, the terminal chat of `agentflow serve`.

The end-to-end tests start a real server (`agentflow serve --app agentflow_noc.app:app` on a fresh
SQLite file and a free port) and drive chat subprocesses through pipes, the way an operator
types: read stdout until a prompt shows, write a line. The pieces (the SSE parser, rendering of
untrusted text, cards, the follow loop with its reconnect) are tested in-process against
`httpx.MockTransport`.
"""

from __future__ import annotations

import codecs
import io
import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from rich.console import Console
from rich.text import Text
from support.served import ROOT, Served, env, free_port

from agentflow.chat import time_left as until
from agentflow.chat import truncate
from agentflow.chat import waiting_words as waiting_on
from agentflow.cli._chat import Chat
from agentflow.cli._chat_api import Api, ApiError, Unreachable, parse_sse
from agentflow.cli._chat_input import parse_answer, parse_command
from agentflow.cli._chat_render import render_card, render_event, render_outcome

CHAT = [sys.executable, "-m", "agentflow.cli", "chat"]
HOSTILE = "[red]x[/red] [link=http://evil]y[/link] [bold]\x1b[2J\x1b]8;;http://evil\x07z"
TASK = "CS-101 drop rate is high, investigate"


# -- a real server ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The server on a fresh store, CS-101 in trouble, operators alice and bob (noc-engineers)."""
    server = Served(tmp_path_factory.mktemp("served"))
    try:
        server.add_operators({"alice": "noc-engineer"})  # the first creates the schema
        server.start()
        server.add_operators({"bob": "noc-engineer"})  # while the server starts
        server.wait_ready()
        yield server
    finally:
        server.stop()


class Driven:
    """A chat subprocess driven through pipes: `expect` a pattern in its output, `send` a line."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen([*CHAT, *args], cwd=ROOT, env=env(), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
        self.output = ""
        self.pos = 0
        self.chunks: queue.Queue[str | None] = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        while chunk := os.read(self.proc.stdout.fileno(), 65536):
            self.chunks.put(decoder.decode(chunk))
        self.chunks.put(None)

    def expect(self, pattern: str, timeout: float = 60) -> re.Match[str]:
        """The first match of `pattern` in the output after the previous match (waits for it)."""
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while True:
            found = regex.search(self.output, self.pos)
            if found:
                self.pos = found.end()
                return found
            left = deadline - time.monotonic()
            try:
                chunk = self.chunks.get(timeout=max(left, 0))
            except queue.Empty:
                pytest.fail(f"no {pattern!r} within {timeout:.0f}s; output after the last match:\n{self.tail()}")
            if chunk is None:
                self.chunks.put(None)
                pytest.fail(f"the chat exited ({self.proc.wait()}) before {pattern!r}:\n{self.tail()}")
            self.output += chunk

    def tail(self) -> str:
        return self.output[self.pos :][-4000:]

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def close(self, timeout: float = 30) -> int:
        """Close stdin (end of input) and wait for the chat to exit; its exit code."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        if not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        finally:
            self.reader.join(timeout=10)
            self.proc.stdout.close()
        while not self.chunks.empty():
            self.output += self.chunks.get_nowait() or ""
        return code


def test_a_second_operator_approves_in_the_chat_what_the_first_asked_for(served: Served) -> None:
    """alice asks the copilot about CS-101 and follows the run: she sees its steps and the
    approval card of the change it stages, but may not approve it (four-eyes). The server
    restarts: alice's chat reconnects. bob lists the pending approvals (skips), then watches
    alice's run and approves at its prompt with a comment; the change is pushed exactly once and
    both chats print the outcome."""
    alice = Driven("--server", served.url, "--token", served.tokens["alice"])
    bob = Driven("--server", served.url, "--token", served.tokens["bob"])
    try:
        alice.expect(r"signed in to \S+ as alice · tenant noc-east · roles noc-engineer")
        alice.expect(r"you> ")
        alice.send(TASK)
        run_id = alice.expect(r"run (\w+) started").group(1)
        alice.expect(r"\] tool get_kpis")
        approval = alice.expect(r"approval (apr_\w+) \(pending\)").group(1)
        alice.expect(r"diff +CS-101 hoA3Offset: 8 → 3")
        alice.expect(r"requested by +alice")
        alice.expect(r"quorum +0/1 approvals by roles noc-engineer, four-eyes")
        alice.expect(r"expires +2026-01-01 10:30:\d\d UTC \(in (7h 59m|8h 0m)\)")  # 8 h on the server's clock
        alice.expect(rf"you cannot decide {approval}: self_approval: .*four-eyes")
        alice.expect(rf"run {run_id}: waiting on approval {approval}")

        bob.expect(r"you> ")
        served.restart()  # alice's stream drops: her chat reconnects and goes on where it was
        alice.expect(r"connection lost \(.*\); reconnecting…")
        alice.expect(r"reconnected")
        bob.send("/approvals")
        bob.expect(rf"{approval[:8]}.*apply_change.*pending.*can decide")
        bob.expect(rf"approve {approval} as bob\? \[y/n/s\] ")
        bob.send("s")
        bob.expect(rf"skipped {approval}")
        bob.expect(r"you> ")
        bob.send(f"/watch {run_id}")
        bob.expect(rf"approve {approval} as bob\? \[y/n/s\] ")
        bob.send("y checked the diff")
        bob.expect(rf"approval {approval}: approved \(1/1\) — bob approve: checked the diff")
        outcome = rf"run {run_id} completed \(answered\) · \d+ steps · \d+ tokens · \$[\d.]+\n.*CS-101"
        bob.expect(outcome)
        bob.expect(r"you> ")
        bob.send("/quit")
        assert bob.close() == 0

        alice.expect(outcome)  # the card's change and the steps after it come in either order
        assert re.search(rf"approval {approval}: approved \(1/1\) — bob approve: checked the diff", alice.output)
        assert re.search(r"\] tool apply_change\n +args .*hoA3Offset", alice.output)
        alice.expect(r"you> ")
        alice.send("/runs")
        alice.expect(rf"{run_id[:8]}.*completed.*{TASK[:15]}")
        assert alice.close() == 0  # end of input quits
    finally:
        for chat in (alice, bob):
            if chat.proc.poll() is None:
                chat.proc.kill()
            if chat.proc.stdout is not None and not chat.proc.stdout.closed:
                chat.close()
    for chat in (alice, bob):
        assert "Traceback" not in chat.output, chat.output
        shown = re.findall(r"^\[(\d+)\] ", chat.output, re.MULTILINE)
        assert len(shown) == len(set(shown)) > 20, shown  # every step once, across the reconnect too
    served.assert_one_apply()


def test_a_wrong_token_exits_2_with_a_message(served: Served) -> None:
    """A token the server does not know: the server's error, a hint, exit 2, no traceback."""
    out = subprocess.run([*CHAT, "--server", served.url, "--token", "aft_not-a-token"], cwd=ROOT, env=env(),
                         input="", capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 2, out
    assert "error: bad_token: " in out.stderr and "--token" in out.stderr
    assert "Traceback" not in out.stderr + out.stdout and "you> " not in out.stdout


def test_no_server_or_no_token_exits_2_with_a_message() -> None:
    """Nothing listens on the port: said so (with the URL), exit 2; no token at all: exit 2."""
    url = f"http://127.0.0.1:{free_port()}"
    gone = subprocess.run([*CHAT, "--server", url, "--token", "aft_x"], cwd=ROOT, env=env(), input="",
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert gone.returncode == 2, gone
    assert f"error: unreachable: cannot reach the agentflow server at {url}" in gone.stderr
    assert "Traceback" not in gone.stderr
    none = subprocess.run([*CHAT], cwd=ROOT, env=env(AGENTFLOW_SERVER=url), input="", capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert none.returncode == 2 and "no token" in none.stderr and "Traceback" not in none.stderr


# -- the pieces, in-process ---------------------------------------------------------------------
def printed(renderable: Any, *, terminal: bool = False) -> str:
    out = io.StringIO()
    console = Console(file=out, width=200, force_terminal=terminal, color_system="truecolor" if terminal else None)
    console.print(renderable)
    return out.getvalue()


def test_sse_parser() -> None:
    """Fields, multi-line data, comments (keep-alives), CRLF, `retry`, and a cut last message."""
    lines = ["retry: 1000", "", ": keepalive", "id: 7", "event: step", 'data: {"seq": 7}', "",
             "event: approval\r", "data: line one", "data:line two", "", "event: empty", "", "id: 8",
             "data: cut"]  # fmt: skip
    messages = list(parse_sse(lines))
    assert [(m.event, m.id, m.data) for m in messages] == [
        ("step", "7", '{"seq": 7}'),
        ("approval", None, "line one\nline two"),
        ("message", "8", "cut"),
    ]
    assert messages[0].json() == {"seq": 7}


def test_untrusted_text_is_printed_literally() -> None:
    """Markup and terminal escapes in model words, tool output, names and arguments are shown as
    they are: no style, no link, no escape sequence reaches the terminal."""
    hostile_event = {"seq": 3, "kind": "tool", "name": HOSTILE, "status": "completed", "title": f"tool {HOSTILE}",
                     "text": HOSTILE, "untrusted": True, "data": {"args": {"q": HOSTILE}, "error": None}}  # fmt: skip
    model_event = {"seq": 4, "kind": "model", "title": "model runbook", "text": HOSTILE, "status": "completed",
                   "data": {"tool_calls": [{"name": HOSTILE, "args": {"x": HOSTILE}}], "tokens_in": 1}}  # fmt: skip
    card = {"id": "apr_1", "tool": HOSTILE, "args": {"value": HOSTILE}, "diff": {"from": HOSTILE, "to": 3},
            "rule": "r", "requested_by": HOSTILE, "status": "pending", "quorum": {"needed": 1, "have": 0},
            "votes": [{"principal": "bob", "decision": "approve", "comment": HOSTILE}]}  # fmt: skip
    run = {"id": "r1", "status": "completed", "outcome": "answered", "answer": HOSTILE}
    for renderable in (render_event(hostile_event), render_event(model_event), render_card(card), render_outcome(run)):
        for terminal in (False, True):
            out = printed(renderable, terminal=terminal)
            assert "[red]x[/red] [link=http://evil]y[/link] [bold]" in out
            assert "\\x1b[2J\\x1b]8;;http://evil\\x07z" in out
            assert "\x1b]8;" not in out and "\x1b[2J" not in out and "\x07" not in out
    assert printed(Text(HOSTILE)).count("evil") == 2


def test_long_output_is_truncated_and_cards_show_the_change() -> None:
    text = "\n".join(f"line {i} " + "x" * 50 for i in range(100))
    cut = truncate(text)
    assert cut.startswith("line 0 ") and "line 11 " in cut and "line 12 " not in cut
    assert cut.endswith(f"… ({len(text) - len(cut.rsplit(chr(10), 1)[0].rstrip())} more characters)")
    assert truncate("short") == "short"
    event = {"seq": 1, "kind": "tool", "title": "tool get_kpis", "text": "y" * 5000, "data": {"args": {}}}
    assert len(printed(render_event(event))) < 1200
    card = {"id": "apr_9", "tool": "apply_change", "target": "CS-101", "args": {"site": "CS-101", "value": 3},
            "diff": {"site": "CS-101", "param": "hoA3Offset", "from": 8, "to": 3}, "rule": "config-change-approval",
            "requested_by": "alice", "status": "pending", "expires_at": 1767254400.0, "now": 1767225540.0, "quorum": {"needed": 2, "have": 1},
            "deciding_roles": ["noc-engineer"], "four_eyes": True, "editable_args": ["value"],
            "votes": [{"principal": "carol", "decision": "approve", "comment": "ok"}]}  # fmt: skip
    out = printed(render_card(card))
    for expected in ("approval apr_9 (pending)", "CS-101 hoA3Offset: 8 → 3", "requested by  alice",
                     "1/2 approvals by roles noc-engineer, four-eyes", "2026-01-01 08:00:00 UTC (in 8h 1m)", "carol approve ok",
                     "editable      value"):  # fmt: skip
        assert expected in out, out


def test_prompt_answers_and_commands() -> None:
    assert parse_answer("y") == ("y", "") and parse_answer(" Y  looks right ") == ("y", "looks right")
    assert parse_answer("n wrong site") == ("n", "wrong site") and parse_answer("no") == ("n", "")
    assert parse_answer("") == ("s", "") and parse_answer("s") == ("s", "") and parse_answer("maybe") == (None, "")
    assert parse_command("/watch run-1") == ("watch", ["run-1"]) and parse_command("/QUIT") == ("quit", [])
    assert parse_command("CS-101 is /slow") is None and parse_command("/") == ("", [])
    blocked = {"timers": [1767263400.5], "signals": ["approval:apr_1"], "children": []}
    assert waiting_on(json.dumps(blocked)) == waiting_on(blocked) == "approval apr_1 (until 2026-01-01 10:30:00 UTC)"
    assert waiting_on({"timers": [1767263400]}) == "a timer at 2026-01-01 10:30:00 UTC"
    assert (
        waiting_on("approval apr_1 (expires 2026-01-01 10:30 UTC)") == "approval apr_1 (expires 2026-01-01 10:30 UTC)"
    )
    assert (until(45), until(61), until(3 * 3600 + 125), until(-120)) == ("in 45s", "in 1m", "in 3h 2m", "2m ago")


# -- the follow loop against a scripted server --------------------------------------------------
def sse(*messages: tuple[str, Any, int | None]) -> bytes:
    out = ": hello\n\n"
    for event, data, seq in messages:
        out += (f"id: {seq}\n" if seq is not None else "") + f"event: {event}\ndata: {json.dumps(data)}\n\n"
    return out.encode()


CARD = {"id": "apr_1", "run_id": "r1", "tool": "apply_change", "target": "CS-101", "args": {"value": 3},
        "args_hash": "h1", "diff": {"from": 8, "to": 3}, "rule": "change", "requested_by": "alice",
        "status": "pending", "quorum": {"needed": 1, "have": 0}, "votes": [], "can_decide": True,
        "why_not": None}  # fmt: skip
APPROVED = CARD | {"status": "approved", "quorum": {"needed": 1, "have": 1}, "can_decide": False,
                   "votes": [{"principal": "bob", "decision": "approve", "comment": "lgtm"}],
                   "why_not": "already decided"}  # fmt: skip
RUN = {"id": "r1", "status": "running"}
END = {"id": "r1", "status": "completed", "outcome": "answered", "answer": "fixed", "tokens": 120, "cost_usd": 0.0,
       "steps": 9}  # fmt: skip


def scripted_chat(handler: Callable[[httpx.Request], httpx.Response], answers: list[str]) -> tuple[Chat, io.StringIO]:
    out = io.StringIO()
    console = Console(file=out, width=200, color_system=None)
    lines = iter(answers)

    def read(prompt: Text) -> str | None:
        console.print(prompt, end="")
        return next(lines, None)

    api = Api("http://agentflow.test", "aft_test", transport=httpx.MockTransport(handler))
    chat = Chat(api, console=console, err=console, read=read, reconnect_deadline=5, sleep=lambda s: None)
    chat.operator = "bob"
    return chat, out


def test_follow_reconnects_after_the_last_step_and_decides_once() -> None:
    """The stream drops twice (a refused connection, then a stream closed before `end`): the chat
    reconnects with Last-Event-ID, shows nothing twice, asks once about the card it may decide
    and approves with the hash it was shown."""
    seen: list[tuple[str, str, str | None, Any]] = []
    streams = iter([
        lambda: httpx.Response(200, content=sse(("run", RUN, None), ("step", {"seq": 1, "kind": "tool",
                               "title": "tool get_kpis", "text": HOSTILE}, 1), ("approval", CARD, None))),
        lambda: (_ for _ in ()).throw(httpx.ConnectError("refused")),
        lambda: httpx.Response(200, content=sse(("approval", APPROVED, None), ("run", RUN, None),
                               ("step", {"seq": 1, "kind": "tool", "title": "tool get_kpis"}, 1),
                               ("step", {"seq": 2, "kind": "model", "title": "model runbook", "text": "done"}, 2),
                               ("end", END, None))),
    ])  # fmt: skip

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        seen.append((request.method, request.url.path, request.headers.get("last-event-id"), body))
        assert request.headers["authorization"] == "Bearer aft_test"
        if request.url.path.endswith("/approve"):
            return httpx.Response(200, json=APPROVED)
        result: httpx.Response = next(streams)()
        return result

    chat, out = scripted_chat(handler, ["what?", "y lgtm"])
    assert chat.follow("r1") == END
    assert seen == [
        ("GET", "/api/runs/r1/stream", None, None),
        ("POST", "/api/approvals/apr_1/approve", None, {"comment": "lgtm", "seen_hash": "h1"}),
        ("GET", "/api/runs/r1/stream", "1", None),
        ("GET", "/api/runs/r1/stream", "1", None),
    ]
    text = out.getvalue()
    assert text.count("[1] tool get_kpis") == 1 and text.count("[2] model runbook") == 1
    assert text.count("approve apr_1 as bob? [y/n/s] ") == 2  # "what?" is asked again
    assert text.count("approval apr_1: approved (1/1) — bob approve: lgtm") == 1
    assert "connection lost" in text and "reconnected" in text
    assert "    [red]x[/red] [link=http://evil]y[/link] [bold]\\x1b[2J" in text  # the tool's output, as it is
    assert "run r1 completed (answered) · 9 steps · 120 tokens · $0.0000\nfixed" in text


def test_follow_refusals_and_a_server_that_stays_away() -> None:
    """An unknown run is the server's error (no retry); a server that never comes back gives up
    after the reconnect deadline; a card the operator may not decide shows why, and no prompt."""

    def unknown(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"error": {"code": "unknown_run", "message": "no run r9"}})

    chat, _ = scripted_chat(unknown, [])
    with pytest.raises(ApiError, match="unknown_run: no run r9"):
        chat.follow("r9")

    def away(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    chat, out = scripted_chat(away, [])
    chat.reconnect_deadline = -1
    with pytest.raises(Unreachable, match="lost the stream of run r1"):
        chat.follow("r1")

    mine = CARD | {"can_decide": False, "why_not": "self_approval: alice asked for this run"}
    chat, out = scripted_chat(
        lambda r: httpx.Response(200, content=sse(("approval", mine, None), ("end", END, None))), []
    )
    chat.follow("r1")
    assert "you cannot decide apr_1: self_approval: alice asked for this run" in out.getvalue()
    assert "[y/n/s]" not in out.getvalue()


def test_reject_asks_for_a_reason_and_a_changed_request_is_shown_again() -> None:
    """`n` asks for the reason (the agent is told it); an approve refused as `stale_args` (the
    request was edited meanwhile) shows the card again and asks about the new arguments."""
    edited = CARD | {"args": {"value": 2}, "args_hash": "h2"}
    posted: list[tuple[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "GET" and request.url.path == "/api/approvals/apr_1":
            return httpx.Response(200, json=edited)
        posted.append((request.url.path, json.loads(request.content)))
        if json.loads(request.content).get("seen_hash") == "h1":
            return httpx.Response(409, json={"error": {"code": "stale_args", "message": "the arguments changed"}})
        return httpx.Response(200, json=APPROVED)

    chat, out = scripted_chat(handler, ["y", "n", "", "value 2 is too low"])
    assert chat.decide(CARD) == APPROVED
    assert posted == [
        ("/api/approvals/apr_1/approve", {"comment": "", "seen_hash": "h1"}),
        ("/api/approvals/apr_1/reject", {"comment": "value 2 is too low"}),
    ]
    text = out.getvalue()
    assert "error: stale_args: the arguments changed" in text and '{"value": 2}' in text
    assert text.count("reason> ") == 2


def test_the_loop_prints_api_errors_and_keeps_going() -> None:
    """`error: <code>: <message>` for a refused request, then the prompt again; /quit ends."""

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/runs" and request.method == "POST":
            return httpx.Response(422, json={"error": {"code": "invalid", "message": "task: too long"}})
        return httpx.Response(200, json={"approvals": []})

    chat, out = scripted_chat(handler, ["x" * 10, "/approvals", "/nope", "/watch", "/help", "/quit", "never read"])
    chat.loop()
    text = out.getvalue()
    assert "error: invalid: task: too long" in text and "no pending approvals" in text
    assert "error: unknown_command: /nope" in text and "error: usage: /watch <run_id>" in text
    assert "/approvals" in text and text.endswith("you> ")


def test_a_bare_help_is_help_and_help_with_words_is_a_task() -> None:
    """Issue 15: `help`, `?` and `HELP` typed without the slash print the help (no run is
    started); `help me fix CS-101` is a task (one POST /api/runs with it); a bare `quit` leaves."""
    posted: list[Any] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/runs" and request.method == "POST":
            posted.append(json.loads(request.content)["task"])
            return httpx.Response(422, json={"error": {"code": "invalid", "message": "stop here"}})
        return httpx.Response(200, json={"approvals": []})

    chat, out = scripted_chat(handler, ["help", "?", " HELP ", "help me fix CS-101", "quit", "never read"])
    chat.loop()
    text = out.getvalue()
    assert posted == ["help me fix CS-101"]
    assert text.count("/watch <run_id>   follow a run") == 3 and "error: invalid: stop here" in text
    assert text.endswith("you> ")  # `quit` left: "never read" was not


def test_help_in_a_real_chat_starts_no_run(served: Served) -> None:
    """Against the real server: a bare `help` prints the help and starts nothing (the server
    lists the same runs before and after); `exit` ends the chat with code 0."""
    before = served.api("bob", "GET", "/api/runs")["runs"]
    chat = Driven("--server", served.url, "--token", served.tokens["bob"])
    try:
        chat.expect(r"you> ")
        chat.send("help")
        chat.expect(r"/help +this text")
        chat.expect(r"you> ")
        chat.send("exit")
        assert chat.close() == 0
    finally:
        if chat.proc.poll() is None:
            chat.proc.kill()
            chat.close()
    assert not re.search(r"run \S+ started", chat.output) and "Traceback" not in chat.output
    assert served.api("bob", "GET", "/api/runs")["runs"] == before
