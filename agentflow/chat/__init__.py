"""Surface-neutral chat: what a run, an event, an approval card and a chat command look like, as
plain data, for every surface (the web page and JSON API, the terminal chat, Slack, Matrix).

    chat = Chat.of(app)                         # or Chat(client, approvals)
    run_summary(chat, run); events(chat.store, steps); card(chat, request, viewer, steps)
    reply(chat, run, viewer, "approve looks right")    # `approve`, `reject <why>`, `status`, `why?`

A surface adds only its transport and rendering; decisions go through `agentflow.approvals`, with
the same checks and audit wherever they are typed.
"""

from agentflow.chat._cards import card, run_cards, why_not_decide
from agentflow.chat._commands import HELP, reply, status_text, why_text
from agentflow.chat._context import Chat
from agentflow.chat._views import TEXT_LIMIT, events, run_summary, task_of, utc, waiting_text

__all__ = [
    "HELP",
    "TEXT_LIMIT",
    "Chat",
    "card",
    "events",
    "reply",
    "run_cards",
    "run_summary",
    "status_text",
    "task_of",
    "utc",
    "waiting_text",
    "why_not_decide",
    "why_text",
]
