"""The surface-neutral chat core (`agentflow.chat`): the plain text every surface shows keeps
hostile text inert, a card's rows say what an approver needs, and commands typed on any surface
go through the same approvals service (same checks, same audit)."""

from __future__ import annotations

from typing import Any

import pytest

from agentflow import App, WorkflowContext
from agentflow.approvals import Approvals
from agentflow.chat import (
    HELP,
    START_HELP,
    Chat,
    bare_command,
    card,
    card_rows,
    reply,
    run_summary,
    safe_text,
    time_left,
    truncate,
    waiting_words,
)
from agentflow.errors import ApprovalRefused, UnknownRunError
from agentflow.policy import ApprovalSpec, PolicyDecision

HOSTILE = "ok\x1b[2J\x1b]0;pwned\x07\r\u202eevil\u2066x\u2069 [bold]y[/bold] <b>z</b>"


def test_safe_text_escapes_what_a_terminal_or_chat_client_would_act_on() -> None:
    """ESC, BEL, CR and bidirectional overrides come out escaped; markup-like text stays literal."""
    out = safe_text(HOSTILE)
    assert "\x1b" not in out and "\x07" not in out and "\r" not in out
    assert "\u202e" not in out and "\u2066" not in out and "\u2069" not in out
    assert "\\x1b[2J" in out and "\\u202e" in out and "[bold]y[/bold] <b>z</b>" in out
    assert safe_text("line 1\n\tline 2") == "line 1\n\tline 2"
    assert safe_text({"a": "\x1b"}) == '{"a": "\\u001b"}'  # JSON values are shown as JSON, escaped


def test_truncate_and_time_words() -> None:
    text = "\n".join(f"line {i}" for i in range(40))
    cut = truncate(text, max_chars=1000, max_lines=3)
    assert cut.splitlines()[:3] == ["line 0", "line 1", "line 2"] and "more characters" in cut
    assert truncate("short") == "short"
    assert (time_left(7 * 3600 + 59 * 60), time_left(45), time_left(-120)) == ("in 7h 59m", "in 45s", "2m ago")
    assert (time_left(47 * 3600 + 60), time_left(90 * 86400 - 1), time_left(-3 * 86400)) == (
        "in 47h 1m",
        "in 89d 23h",
        "3d 0h ago",
    )
    assert waiting_words({"signals": ["approval:apr_1"], "timers": [], "children": []}) == "approval apr_1"


def _card(**over: Any) -> dict[str, Any]:
    base = {"id": "apr_1", "tool": "apply_change", "target": "CS-101", "args": {"site": "CS-101", "value": 2},
            "diff": {"site": "CS-101", "param": "hoA3Offset", "from": 8, "to": 2}, "rule": "changes-need-approval",
            "requested_by": "alice", "run_id": "r1", "quorum": {"needed": 2, "have": 1},
            "deciding_roles": ["noc-engineer"], "four_eyes": True, "editable_args": ["value"],
            "expires_at": 1000.0 + 3600, "now": 1000.0,
            "votes": [{"principal": "bob", "decision": "approve", "comment": HOSTILE}]}  # fmt: skip
    return {**base, **over}


def test_card_rows_say_what_an_approver_needs_in_plain_text() -> None:
    rows = dict((label, text) for label, text in card_rows(_card()) if label != "vote")
    assert rows["diff"] == "CS-101 hoA3Offset: 8 → 2"
    assert rows["quorum"] == "1/2 approvals by roles noc-engineer, four-eyes (not by the requester)"
    assert rows["expires"].endswith("(in 1h 0m)") and rows["editable"] == "value"
    votes = [text for label, text in card_rows(_card()) if label == "vote"]
    assert len(votes) == 1 and votes[0].startswith("bob approve ") and "\x1b" not in votes[0]
    assert all("\x1b" not in text and "\u202e" not in text for _, text in card_rows(_card(tool=HOSTILE)))


@pytest.fixture
def staged(app: App) -> tuple[Chat, str, Any]:
    """A run waiting on one approval request (made through the service, as the gate does)."""

    @app.workflow(name="wf")
    async def wf(ctx: WorkflowContext) -> str:
        return str(await ctx.wait_signal("never"))

    app.start(wf, run_id="r1", tenant="noc-east", meta={"requested_by": "alice"})
    approvals = Approvals.of(app)
    decision = PolicyDecision(effect="require_approval", rule="r", approval=ApprovalSpec(roles=["noc-engineer"]),
                              approval_rule="r")  # fmt: skip
    req = approvals.request(run_id="noc-east:r1", call_id="c1", tenant="noc-east", requested_by="alice",
                            tool="apply_change", args={"site": "CS-101", "value": 2}, decision=decision)  # fmt: skip
    return Chat.of(app), req.id, approvals


def test_commands_on_any_surface_use_the_approvals_service(staged: tuple[Chat, str, Any]) -> None:
    """`approve` from a chat decides through `Approvals` (its checks, its audit); a viewer of
    another tenant is refused the same way as through the API; `status` and `why?` answer."""
    chat, approval_id, approvals = staged
    bob, _ = approvals.add_operator("bob", tenant="noc-east", roles=["noc-engineer"])
    mallory, _ = approvals.add_operator("mallory", tenant="noc-west", roles=["noc-engineer"])
    run = chat.store.get_run("noc-east:r1")  # run ids are per tenant: the store keys it by both
    assert "Waiting for approval" in reply(chat, run, bob, "status")["reply"]
    for text in ("approve", f"approve {approval_id}", "status", "why?"):
        with pytest.raises(UnknownRunError, match="no run r1 in tenant noc-west"):
            reply(chat, run, mallory, text)  # another tenant's run is not described, nor decided
    with pytest.raises(ApprovalRefused) as refused:
        approvals.approve(approval_id, by=mallory)
    assert refused.value.code == "unknown"  # read in mallory's tenant: like no request at all
    answer = reply(chat, run, bob, "approve looks right")
    assert answer["kind"] == "approval" and answer["card"]["status"] == "approved"
    assert answer["card"]["run_id"] == "r1"  # shown as its tenant knows it
    actions = [(a.actor, a.action, a.outcome) for a in approvals.audit(approval_id=approval_id)]
    assert ("mallory", "approve", "refused") in actions and ("bob", "approve", "done") in actions
    summary = run_summary(chat, run)
    assert summary["open_approvals"] == 0 and summary["requested_by"] == "alice"
    shown = card(chat, approvals.get(approval_id), bob)
    assert shown["can_decide"] is False and shown["now"] == chat.clock.now()


def test_a_bare_command_word_is_a_command_not_a_task() -> None:
    """Issue 15: what an operator types alone (`help`, `?`, `/help`, `quit`, `exit`, `status`,
    `why?`) is a command on every surface; a sentence that starts with such a word is a task."""
    commands = {"help": "help", "HELP": "help", " /help ": "help", "?": "help", "help?": "help", "h": "help",
                "quit": "quit", "exit": "quit", "/q": "quit", "status": "status", "why?": "why", "Why": "why",
                "approve": "approve", "reject.": "reject"}  # fmt: skip
    assert {text: bare_command(text) for text in commands} == commands
    for task in ("help me fix CS-101", "helpful", "status of CS-101?", "why is CS-101 down", "approve CS-101 fix", ""):
        assert bare_command(task) is None, task
    assert START_HELP.startswith("Type a task") and HELP in START_HELP
