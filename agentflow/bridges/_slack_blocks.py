"""Block Kit for the Slack bridge: an approval card, its Reject and Edit modals, and what a
modal's submission says. Plain data in, plain JSON out (no Slack client here).

Everything a model, a tool or a person wrote is untrusted. It goes out either as a `plain_text`
object (Slack formats nothing in it: no mentions, no links, no bold) or inside a `mrkdwn` code
block with `&`, `<` and `>` escaped (so `<!channel>`, `<@U123>` and `<http://x|y>` are shown as
typed and notify or link nothing) and its backtick fences broken (so it cannot close the block
and format what follows). `safe_text` has already shown control characters and bidirectional
overrides escaped. Slack's length limits are kept by cutting text with a note of how much was
left out, never by letting Slack refuse the message.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agentflow.bridges._core import CardView
from agentflow.chat import safe_text
from agentflow.errors import ConfigurationError

APPROVE, REJECT, EDIT = "af_approve", "af_reject", "af_edit"  # action ids of the card's buttons
REASON, COMMENT = "af_reason", "af_comment"  # block ids of the modals' text inputs
_ARG = "af_arg:"  # block id prefix of an editable argument's input
_FENCE = "```"
_ZWSP = "\u200b"  # a zero-width space: breaks a backtick fence without changing what is read
_TICKS = re.compile(r"`(?=`)")  # a backtick followed by another: no two touch, so no fence forms
MAX_EVIDENCE = 3
_OPEN = ("pending", "escalated")
_ID, _HASH = re.compile(r"apr_[0-9a-f]{6,40}"), re.compile(r"[0-9a-f]{64}")


def mrkdwn_escape(text: str) -> str:
    """Text made inert for a `mrkdwn` field: the three characters Slack's markup is made of
    (`&`, `<`, `>`) escaped as Slack documents, and no two backticks side by side (no fence)."""
    escaped = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _TICKS.sub(f"`{_ZWSP}", escaped)


def code_block(value: Any, limit: int = 2900) -> str:
    """An untrusted value as a `mrkdwn` code block of at most `limit` characters."""
    body = _fit(safe_text(value if value is not None else "-"), limit - 2 * len(_FENCE) - 2)
    return f"{_FENCE}\n{body}\n{_FENCE}"


def plain(value: Any, limit: int = 2000) -> dict[str, Any]:
    """A `plain_text` object (never formatted by Slack) of at most `limit` characters."""
    text = safe_text(value)
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return {"type": "plain_text", "text": text or "-", "emoji": False}


def _fit(text: str, limit: int) -> str:
    """`mrkdwn_escape(text)`, cut so that it and its note fit in `limit` characters (an escape is
    never cut in half)."""
    escaped = mrkdwn_escape(text)
    if len(escaped) <= limit:
        return escaped
    budget = limit - 40
    n = budget
    while len(escaped := mrkdwn_escape(text[:n])) > budget:
        n -= max(1, (len(escaped) - budget) // 5)
    return f"{escaped}\n… ({len(text) - n} more characters)"


def headline(view: CardView) -> str:
    """`Approval needed: apply_change on CS-101` (or what became of it), plain text."""
    verb = {"pending": "Approval needed", "escalated": "Approval needed (escalated)", "approved": "Approved",
            "rejected": "Rejected", "expired": "Expired", "withdrawn": "Withdrawn"}.get(view.status, view.status)  # fmt: skip
    target = f" on {view.target}" if view.target not in ("", "-") else ""
    return f"{verb}: {view.tool}{target}"


def fallback_text(view: CardView) -> str:
    """The message's `text` (notifications, screen readers): the headline, escaped for mrkdwn."""
    return mrkdwn_escape(headline(view))[:3000]


def card_blocks(view: CardView) -> list[dict[str, Any]]:
    """The card as Block Kit blocks, with Approve / Reject (and Edit) buttons while it is open."""
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": plain(headline(view), 150)},
        {"type": "section", "fields": [plain(f"{k}: {v}") for k, v in _fields(view)]},
        {"type": "section", "text": plain(f"Rule {view.rule}", 3000)},
        {"type": "section", "text": {"type": "mrkdwn", "text": "*Staged change*\n" + code_block(_change(view))}},
    ]
    for text in view.evidence[-MAX_EVIDENCE:]:
        blocks.append({"type": "context", "elements": [plain("Evidence the agent read before it asked", 300)]})
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": code_block(text, 1200)}})
    if view.votes:
        blocks.append({"type": "context", "elements": [plain(f"Vote: {v}", 300) for v in view.votes[-10:]]})
    if view.outcome:
        blocks.append({"type": "section", "text": plain(f"Outcome: {view.outcome}", 3000)})
    if view.status in _OPEN:
        blocks.append({"type": "actions", "block_id": "af_actions", "elements": _buttons(view)})
    return blocks


def _fields(view: CardView) -> list[tuple[str, str]]:
    return [
        ("Tool", view.tool),
        ("Target", view.target),
        ("Status", view.status),
        ("Quorum", view.quorum),
        ("Requested by", view.requested_by),
        ("Expires", view.expires),
        ("Run", view.run_id),
        ("Request", view.approval_id),
    ]


def _change(view: CardView) -> str:
    return f"{view.diff}\n\narguments: {view.args}" if view.diff not in ("", "-") else f"arguments: {view.args}"


def button_value(view: CardView) -> str:
    """What a button carries: the request and the hash of the arguments the card showed."""
    return f"{view.approval_id}|{view.args_hash}"


@dataclass(frozen=True, slots=True)
class Shown:
    """What a card's button or a modal says the clicker was shown."""

    approval_id: str
    args_hash: str


def parse_value(value: Any) -> Shown:
    """A button's value (`button_value`), checked.

    Raises:
        ConfigurationError: not a value this bridge wrote.
    """
    parts = value.split("|") if isinstance(value, str) else []
    if len(parts) != 2 or not _ID.fullmatch(parts[0]) or not _HASH.fullmatch(parts[1]):
        raise ConfigurationError("not an approval button of this bridge")
    return Shown(parts[0], parts[1])


def _buttons(view: CardView) -> list[dict[str, Any]]:
    value = button_value(view)
    buttons = [
        {"type": "button", "action_id": APPROVE, "style": "primary", "text": plain("Approve", 75), "value": value},
        {"type": "button", "action_id": REJECT, "style": "danger", "text": plain("Reject…", 75), "value": value},
    ]
    if view.editable:
        buttons.append({"type": "button", "action_id": EDIT, "text": plain("Edit and approve…", 75), "value": value})
    return buttons


# -- modals ------------------------------------------------------------------------------------
def reject_modal(view: CardView, metadata: str) -> dict[str, Any]:
    """The modal a Reject click opens: the reason is required."""
    return _modal(REJECT, "Reject change", "Reject", metadata, [
        {"type": "section", "text": plain(f"{headline(view)} ({view.approval_id})", 3000)},
        _input(REASON, "Why reject? (the agent and the audit trail see it)", multiline=True),
    ])  # fmt: skip


def edit_modal(view: CardView, args: Mapping[str, Any], editable: Sequence[str], metadata: str) -> dict[str, Any]:
    """The modal an Edit click opens: one input per argument the rule lets approvers change
    (prefilled with the staged value), and a comment."""
    blocks = [{"type": "section", "text": plain(f"{headline(view)} ({view.approval_id}): change what the rule "
                                                "lets approvers change, then approve.", 3000)}]  # fmt: skip
    for name in editable:
        shown = _as_text(args.get(name))
        blocks.append(_input(_ARG + name, f"{name} (staged: {shown})", initial=shown))
    blocks.append(_input(COMMENT, "Comment (optional)", multiline=True, optional=True))
    return _modal(EDIT, "Edit and approve", "Approve", metadata, blocks)


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _modal(callback: str, title: str, submit: str, metadata: str, blocks: list[dict[str, Any]]) -> dict[str, Any]:
    return {"type": "modal", "callback_id": callback, "title": plain(title, 24), "submit": plain(submit, 24),
            "close": plain("Cancel", 24), "private_metadata": metadata, "blocks": blocks}  # fmt: skip


def _input(block_id: str, label: str, *, multiline: bool = False, optional: bool = False,
           initial: str | None = None) -> dict[str, Any]:  # fmt: skip
    element: dict[str, Any] = {"type": "plain_text_input", "action_id": "value", "multiline": multiline,
                               "max_length": 2000}  # fmt: skip
    if initial:
        element["initial_value"] = initial[:2000]
    return {"type": "input", "block_id": block_id, "label": plain(label), "element": element, "optional": optional}


def submitted_text(values: Mapping[str, Any], block_id: str) -> str:
    """The text typed in one input of a submitted modal ('' when empty or absent)."""
    block = values.get(block_id)
    field = block.get("value") if isinstance(block, Mapping) else None
    text = field.get("value") if isinstance(field, Mapping) else None
    return text.strip() if isinstance(text, str) else ""


def edited_args(values: Mapping[str, Any], args: Mapping[str, Any], editable: Sequence[str]) -> tuple[
    dict[str, Any], dict[str, str]
]:  # fmt: skip
    """The arguments after an Edit modal's submission, and the inputs that are not valid
    (block id -> why). A string argument takes the text as typed; any other takes a JSON value
    (`2`, `8.5`, `true`)."""
    edited, errors = dict(args), {}
    for name in editable:
        text = submitted_text(values, _ARG + name)
        if isinstance(args.get(name), str):
            edited[name] = text
            continue
        try:
            edited[name] = json.loads(text)
        except ValueError:
            errors[_ARG + name] = f"{name} takes a JSON value such as 2, 8.5 or true, not {text[:40]!r}"
    return edited, errors
