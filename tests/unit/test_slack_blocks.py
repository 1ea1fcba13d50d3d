"""The Slack bridge's pure parts: Block Kit rendering of untrusted text, the buttons' values, the
modals' inputs, and the request guard (signature, window, replay) on a clock of the test's."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
from typing import Any

import pytest
from slack_sdk.signature import Clock
from support.slack_api import _blocks_problem

from agentflow.bridges import CardView
from agentflow.bridges._slack_blocks import (
    card_blocks,
    code_block,
    edit_modal,
    edited_args,
    mrkdwn_escape,
    parse_value,
    plain,
)
from agentflow.bridges._slack_http import Guard
from agentflow.errors import ConfigurationError

HOSTILE = "<!channel> *bold* <http://evil.example|click> <@U0BOSS1> &amp; ```x``` \x1b[31m"
HASH = "a" * 64


def view(**changes: Any) -> CardView:
    fields: dict[str, Any] = dict(
        approval_id="apr_0123456789abcdef0123", run_id="r1", status="pending", tool="apply_change",
        target="CS-101", diff="CS-101 hoA3Offset: 8 → 3", args='{"site": "CS-101", "value": 3}',
        rule="config-change-approval", requested_by="alice", quorum="0/1 approvals by roles noc-engineer",
        expires="2026-01-01 10:30:00 UTC", evidence=[], votes=[], editable=["value"], outcome=None, final=False,
        args_hash=HASH, text="card",
    )  # fmt: skip
    return CardView(**{**fields, **changes})


def test_mrkdwn_escape_leaves_nothing_slack_would_act_on() -> None:
    """`&`, `<`, `>` escaped (so no mention, link or entity survives) and fences broken."""
    out = mrkdwn_escape(HOSTILE)
    assert "<" not in out and ">" not in out and "```" not in out
    assert out.startswith("&lt;!channel&gt; *bold* &lt;http://evil.example|click&gt; &lt;@U0BOSS1&gt; &amp;amp;")


@pytest.mark.parametrize("text", ["<" * 10_000, "a" * 10_000, "```" * 4000, "é&" * 5000])
def test_a_code_block_fits_its_limit_and_never_cuts_an_escape(text: str) -> None:
    block = code_block(text, 1200)
    assert len(block) <= 1200
    body = block.removeprefix("```\n").removesuffix("\n```")
    assert body.count("```") == 0 and block.endswith("\n```")
    shown, _, note = body.rpartition("\n… (")
    assert note.endswith("more characters)"), block[-80:]
    assert not shown.endswith(("&", "&l", "&lt", "&a", "&am", "&amp", "&g", "&gt"))


def test_plain_text_escapes_control_characters_and_keeps_its_limit() -> None:
    obj = plain("x" * 5000 + "\x1b[2J", 150)
    assert obj["type"] == "plain_text" and obj["emoji"] is False and len(obj["text"]) == 150
    assert "\x1b" not in plain("\x1b[2Jhi")["text"]


def test_every_card_fits_block_kits_limits_whatever_it_quotes() -> None:
    """Huge arguments, many votes and long evidence still make a card Slack accepts (the
    stand-in checks the documented limits), with the buttons last while it is open."""
    huge = view(args=HOSTILE * 2000, diff=HOSTILE * 500, evidence=[HOSTILE * 300] * 5, rule=HOSTILE * 300,
                votes=[f"op{i} approve {HOSTILE}" for i in range(40)], tool="t" * 500, target=HOSTILE * 10)  # fmt: skip
    blocks = card_blocks(huge)
    assert _blocks_problem({"blocks": blocks, "text": "x"}) is None
    assert blocks[-1]["type"] == "actions"
    assert [e["value"] for e in blocks[-1]["elements"]] == [f"{huge.approval_id}|{HASH}"] * 3
    done = card_blocks(view(status="approved", outcome="approved by bob", final=True, editable=[]))
    assert _blocks_problem({"blocks": done, "text": "x"}) is None
    assert not [b for b in done if b["type"] == "actions"]


@pytest.mark.parametrize(
    "value",
    [None, 3, "", "apr_0123456789abcdef0123", f"apr_0123456789abcdef0123|{HASH}|1", f"apr_XYZ|{HASH}",
     "apr_0123456789abcdef0123|abc", f"<!channel>|{HASH}"],
)  # fmt: skip
def test_a_button_value_the_bridge_did_not_write_is_refused(value: Any) -> None:
    with pytest.raises(ConfigurationError):
        parse_value(value)


def test_a_button_value_round_trips() -> None:
    shown = parse_value(f"apr_0123456789abcdef0123|{HASH}")
    assert (shown.approval_id, shown.args_hash) == ("apr_0123456789abcdef0123", HASH)


def test_the_edit_modal_prefills_and_reads_back_the_editable_arguments() -> None:
    modal = edit_modal(view(), {"site": "CS-101", "value": 3, "note": "n"}, ["value", "note"], "{}")
    inputs = {b["block_id"]: b["element"].get("initial_value") for b in modal["blocks"] if b["type"] == "input"}
    assert inputs == {"af_arg:value": "3", "af_arg:note": "n", "af_comment": None}
    assert _blocks_problem({"blocks": modal["blocks"], "text": "x"}, modal=True) is None

    def typed(**values: str) -> dict[str, Any]:
        return {f"af_arg:{k}": {"value": {"type": "plain_text_input", "value": v}} for k, v in values.items()}

    args = {"site": "CS-101", "value": 3, "note": "n"}
    assert edited_args(typed(value="2.5", note="[1]"), args, ["value", "note"]) == (
        {"site": "CS-101", "value": 2.5, "note": "[1]"},
        {},
    )  # a text argument stays text, whatever it looks like
    edited, errors = edited_args(typed(value="two", note="x"), args, ["value", "note"])
    assert list(errors) == ["af_arg:value"] and edited["value"] == 3


# -- the guard -----------------------------------------------------------------------------------
class FixedClock(Clock):
    def __init__(self, now: float) -> None:
        self.at = now

    def now(self) -> float:
        return self.at


def headers(body: bytes, ts: str, secret: str = "s3cret") -> dict[str, str]:
    mac = hmac.new(secret.encode(), f"v0:{ts}:".encode() + body, hashlib.sha256).hexdigest()
    return {"x-slack-request-timestamp": ts, "x-slack-signature": f"v0={mac}"}


def test_the_guard_accepts_a_signed_request_once_within_the_window() -> None:
    clock = FixedClock(1_800_000_000)
    guard = Guard("s3cret", clock=clock)
    body = b"payload=%7B%7D"
    sent = headers(body, "1800000000")
    assert guard.check(body, sent) is None
    replay = guard.check(body, sent)
    assert replay is not None and replay.status == 401 and "replayed" in replay.reason
    clock.at += 301
    again = guard.check(body, headers(body, "1800000000"))
    assert again is not None and "stale" in again.reason
    fresh = headers(body, str(int(clock.at)))
    assert guard.check(body, fresh) is None


@pytest.mark.parametrize(
    "change",
    [
        {"x-slack-signature": ""},
        {"x-slack-request-timestamp": ""},
        {"x-slack-request-timestamp": "１８００００００００"},  # full-width digits: isdigit() but not ASCII
        {"x-slack-request-timestamp": "1800000000.5"},
        {"x-slack-request-timestamp": "9" * 40},
    ],
)
def test_the_guard_refuses_malformed_headers_without_parsing_the_body(change: dict[str, str]) -> None:
    guard = Guard("s3cret", clock=FixedClock(1_800_000_000))
    body = b"not even a form"
    refused = guard.check(body, {**headers(body, "1800000000"), **change})
    assert refused is not None and refused.status == 401


def test_the_guard_refuses_another_secret_and_a_changed_body() -> None:
    guard = Guard("s3cret", clock=FixedClock(1_800_000_000))
    body = b"payload=%7B%7D"
    assert guard.check(body, headers(body, "1800000000", secret="other")) is not None
    assert guard.check(body + b"x", headers(body, "1800000000")) is not None
    assert dataclasses.is_dataclass(guard)
