"""Keeping an agent's conversation inside its model's context window.

A long run (every KPI series, every anomaly list) or one huge input (a pasted alarm log) would
otherwise end at a 400 from the server, or at `ContextWindowExceeded` before sending. Before
each model call the agent sends a *view* of the conversation that fits:

1. older tool outputs are elided, oldest first (the results of the latest model turn stay
   whole): each becomes a one-line note naming the tool and how much was cut, so the model can
   call the tool again if it needs the data;
2. if that is not enough, the longest message (the task, a pasted log; never the system
   prompt) is cut in its middle, its head and tail kept, with a note saying how much went.

The recorded conversation is not changed: the view is a pure function of it and the window, so
a replay sends (and matches) the same requests. A conversation that cannot be made to fit
still raises `ContextWindowExceeded` in `chat()`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, SystemMessage, ToolMessage

from agentflow.llm import count_messages, encoding_for

__all__ = ["fit_messages"]

#: A tool output shorter than this (tokens) is not worth eliding.
MIN_ELIDED = 40
#: A message is never cut below this many tokens.
MIN_KEPT = 200


def fit_messages(
    messages: Sequence[BaseMessage],
    model: str,
    window: int,
    *,
    reserve: int = 0,
    tools: Sequence[dict[str, Any]] = (),
) -> tuple[list[BaseMessage], int]:
    """`(view, n)`: the conversation as sent to a model of `window` tokens with `reserve` kept
    for its answer, and how many messages were shortened (0: the view is the conversation)."""
    limit = window - reserve - max(32, window // 50)  # token counts are estimates: a margin
    out = list(messages)
    total = count_messages(out, model, tools).tokens
    if total <= limit:
        return out, 0
    enc = encoding_for(model)[0]

    def size(m: BaseMessage) -> int:
        return len(enc.encode(m.content, disallowed_special=())) if isinstance(m.content, str) else 0

    shortened = 0
    last_turn = max((i for i, m in enumerate(out) if isinstance(m, AIMessage)), default=len(out))
    for i, m in enumerate(out[:last_turn]):
        if total <= limit:
            break
        n = size(m)
        if isinstance(m, ToolMessage) and n > MIN_ELIDED:
            note = (
                f"[agentflow: this output of {m.name or 'the tool'} ({n} tokens) was elided to fit the model's "
                "context window; call the tool again if you need it]"
            )
            out[i] = m.model_copy(update={"content": note})
            total -= n - size(out[i])
            shortened += 1
    for _ in range(8):  # each pass cuts the longest message to what fits; a few always do
        if total <= limit:
            break
        candidates = [(size(m), i) for i, m in enumerate(out) if not isinstance(m, SystemMessage)]
        if not candidates:
            break
        n, i = max(candidates)
        keep = n - (total - limit) - 40  # room for the note
        if keep < MIN_KEPT:
            break  # cannot cut enough: chat() says the request does not fit
        tokens = enc.encode(str(out[i].content), disallowed_special=())
        head = keep * 2 // 3
        text = (
            enc.decode(tokens[:head])
            + f"\n[... agentflow: {n - keep} tokens elided here to fit the model's context window ...]\n"
            + enc.decode(tokens[n - (keep - head) :])
        )
        out[i] = out[i].model_copy(update={"content": text})
        shortened += 1
        total = count_messages(out, model, tools).tokens
    return out, shortened
