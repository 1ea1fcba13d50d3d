"""Surface-neutral chat: what a run, an event, an approval card and a chat command look like, as
plain data, for every surface (the web page and JSON API, the terminal chat, Slack, Matrix).

    chat = Chat.of(app)                         # or Chat(client)
    run_summary(chat, run); events(chat, steps); card(chat, request, viewer, steps)
    evidence(chat, request, steps, pack=pack)         # reason, diagnosis, reads, rule in words, limits
    why_not_text(chat, request, viewer)                 # why they may not decide, in words
    reply(chat, run, viewer, "approve looks right")    # `approve`, `reject <why>`, `status`, `why?`
    bare_command("help")                                # "help": a command, not a task to start
    card_rows(card); safe_text(tool_output)             # plain text, for surfaces that show text

A surface adds only its transport and rendering; decisions go through `agentflow.approvals`, with
the same checks and audit wherever they are typed.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

from agentflow.chat._text import (
    card_rows,
    compact,
    diff_text,
    quorum_text,
    safe_text,
    time_left,
    truncate,
    utc,
    waiting_words,
    when,
)
from agentflow.chat._words import HELP, START_HELP, bare_command

if TYPE_CHECKING:
    from agentflow.chat._cards import card, run_cards, why_not_decide
    from agentflow.chat._commands import reply, status_text, why_text
    from agentflow.chat._context import Chat
    from agentflow.chat._evidence import evidence, rule_text
    from agentflow.chat._refusals import refusal_text, why_not_text
    from agentflow.chat._views import TEXT_LIMIT, events, run_summary, task_of, waiting_text

# What reads the store loads the engine, approvals and policies: loaded on first use, so a surface
# that only renders text (the terminal chat, a client of the JSON API) starts fast.
_LAZY = {
    "card": "_cards", "run_cards": "_cards", "why_not_decide": "_cards",
    "reply": "_commands", "status_text": "_commands", "why_text": "_commands",
    "Chat": "_context",
    "evidence": "_evidence", "rule_text": "_evidence",
    "refusal_text": "_refusals", "why_not_text": "_refusals",
    "TEXT_LIMIT": "_views", "events": "_views", "run_summary": "_views", "task_of": "_views", "waiting_text": "_views",
}  # fmt: skip


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f"agentflow.chat.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'agentflow.chat' has no attribute {name!r}")


__all__ = [
    "HELP",
    "START_HELP",
    "TEXT_LIMIT",
    "Chat",
    "bare_command",
    "card",
    "card_rows",
    "compact",
    "diff_text",
    "events",
    "evidence",
    "quorum_text",
    "refusal_text",
    "reply",
    "rule_text",
    "run_cards",
    "run_summary",
    "safe_text",
    "status_text",
    "task_of",
    "time_left",
    "truncate",
    "utc",
    "waiting_text",
    "waiting_words",
    "when",
    "why_not_decide",
    "why_not_text",
    "why_text",
]
