"""Messages as content-addressed blobs: a conversation stores each message once."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from langchain_core.messages import BaseMessage, message_to_dict, messages_from_dict

from agentflow.errors import CorruptRecordError


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def blob_hash(data: str) -> str:
    return hashlib.sha256(data.encode()).hexdigest()[:32]


def message_blob(message: BaseMessage) -> tuple[str, str]:
    """(hash, JSON) of a message; equal messages get equal hashes."""
    data = canonical_json(message_to_dict(message))
    return blob_hash(data), data


def message_from_blob(data: str) -> BaseMessage:
    try:
        return messages_from_dict([json.loads(data)])[0]
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptRecordError(f"a stored message does not decode: {exc}") from None
