"""The one JSON schema of `--json` output, shared by every command.

- Objects are decoded: a field the store keeps as JSON text (a run's input and output, a step's
  args and result, an error) is printed as the JSON value it holds, never as a string of JSON.
- Times are ISO-8601 in UTC (`2026-12-07T14:20:00.123456Z`) or null, never epoch floats. A field
  named `*_at` holds a time.
- A run's id is `run_id` everywhere (a run, a step's run, an approval's run).
- One document per command, on stdout, pretty-printed; errors go to stderr with a non-zero exit.
  A command that follows a run live (`runs watch --json`) prints one compact document per line.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

__all__ = ["JSON_TEXT_FIELDS", "decoded", "emit", "iso", "record"]

# Fields the store keeps as JSON text; `record` decodes them.
JSON_TEXT_FIELDS = frozenset({"input", "output", "error", "args", "result", "meta", "payload", "waiting_on"})


def iso(value: float | None) -> str | None:
    """An epoch time as ISO-8601 UTC with a `Z`, or None."""
    if value is None:
        return None
    return datetime.fromtimestamp(value, tz=UTC).isoformat().replace("+00:00", "Z")


def decoded(text: Any) -> Any:
    """The value a JSON text field holds; text that is not JSON stays the text it is."""
    if not isinstance(text, str):
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


def record(fields: Mapping[str, Any], *, rename: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A store record as printed: JSON text fields decoded, `*_at` times in ISO-8601, `id` of a
    run renamed by `rename` (e.g. `{"id": "run_id"}`)."""
    out: dict[str, Any] = {}
    for key, value in fields.items():
        name = (rename or {}).get(key, key)
        if key.endswith("_at") and isinstance(value, int | float) and not isinstance(value, bool):
            out[name] = iso(float(value))
        elif key in JSON_TEXT_FIELDS:
            out[name] = decoded(value)
        else:
            out[name] = value
    return out


def emit(value: Mapping[str, Any] | Iterable[Mapping[str, Any]] | Any) -> None:
    """Print one JSON document on stdout."""
    if not isinstance(value, Mapping | str | int | float | bool | type(None)) and isinstance(value, Iterable):
        value = list(value)
    print(json.dumps(value, indent=1, ensure_ascii=False, default=str))
