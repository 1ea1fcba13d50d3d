"""Pinned tool definitions: what a run holds an MCP server's tools to.

A tool's definition is its name, description, input schema and annotations, as the server lists
them; its hash is the sha256 of that definition's canonical JSON (sorted keys, no spaces). A
server's pin is the hash of its offered tools' definitions, sorted by name, and each tool's own
hash. Recorded when a run first uses the server, a pin makes a definition changed mid-run (a
"rug pull": a read turned into a write under the same name) a refused call, not a surprise.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict

#: The fields of a listed tool a pin covers (MCP's wire names).
PINNED_FIELDS = ("name", "description", "inputSchema", "annotations")

Definition = dict[str, Any]


class Pin(BaseModel):
    """An MCP server's tool definitions as a run first saw them (recorded in its history).

    Attributes:
        server: the server's name.
        hash: `sha256:<hex>` of the offered tools' definitions, sorted by name.
        tools: each offered tool's own definition hash.
    """

    model_config = ConfigDict(frozen=True)

    server: str
    hash: str
    tools: dict[str, str]


def definition(listed: Mapping[str, Any]) -> Definition:
    """The pinned part of a tool as listed (a `tools/list` entry in its JSON form)."""
    return {k: listed[k] for k in PINNED_FIELDS if listed.get(k) is not None}


def _digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def tool_hash(defn: Definition) -> str:
    """The hash of one tool's definition."""
    return _digest(definition(defn))


def make_pin(server: str, defs: Iterable[Definition]) -> Pin:
    """The pin of these definitions (the tools a server offers an agent)."""
    ordered = sorted((definition(d) for d in defs), key=lambda d: str(d["name"]))
    return Pin(server=server, hash=_digest(ordered), tools={str(d["name"]): _digest(d) for d in ordered})
