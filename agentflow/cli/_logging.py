"""The log output of every command: `agentflow --log-level LEVEL --log-format text|json|logfmt ...`.

One handler on the root logger (stderr) with one formatter. Events carry their fields as `extra=`
(run_id, tenant, seq, attempt, epoch, ...): `json` writes one object per line (`ts` ISO-8601 UTC,
`level`, `logger`, `msg`, then the fields), `logfmt` writes `key=value` pairs, `text` the message
with its fields after it. Secrets are masked in the message and in every field (the process's
`Redaction`), whichever logger wrote them: a failing step's error may quote a token.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from agentflow.store import Redaction

if TYPE_CHECKING:
    from agentflow.trace import LiveSpans

#: Attributes every LogRecord has: anything else on a record came from `extra=`.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "taskName"}
#: Libraries that log every HTTP request at info (the openai client's model calls): only with --log-level debug.
_CHATTY = ("httpx", "httpcore", "uvicorn.access")


class LogFormat(StrEnum):
    text = "text"
    json = "json"
    logfmt = "logfmt"


class LogLevel(StrEnum):
    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"


class EventFormatter(logging.Formatter):
    """Formats a record and its `extra=` fields as `text`, `json` or `logfmt` (see the module)."""

    def __init__(self, style: LogFormat = LogFormat.text) -> None:
        super().__init__()
        self.style = style

    def format(self, record: logging.LogRecord) -> str:
        redaction = Redaction.current()
        msg = redaction.text(record.getMessage())
        fields = {k: _masked(redaction, v) for k, v in record.__dict__.items() if k not in _STANDARD}
        if record.exc_info and record.exc_info[1] is not None:
            fields["exc"] = redaction.text(self.formatException(record.exc_info))
        elif record.exc_text:
            fields["exc"] = redaction.text(record.exc_text)
        ts = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        level = record.levelname.lower()
        if self.style is LogFormat.json:
            head = {"ts": ts, "level": level, "logger": record.name, "msg": msg}
            return json.dumps({**head, **{k: v for k, v in fields.items() if k not in head}}, default=str)
        if self.style is LogFormat.logfmt:
            pairs = {"ts": ts, "level": level, "logger": record.name, "msg": msg, **fields}
            return " ".join(f"{k}={_logfmt_value(v)}" for k, v in pairs.items())
        exc = fields.pop("exc", None)
        line = f"{ts} {record.levelname:<7} {record.name}: {msg}"
        if fields:
            line += "  " + " ".join(f"{k}={_logfmt_value(v)}" for k, v in fields.items())
        return f"{line}\n{exc}" if exc else line


def _masked(redaction: Redaction, value: Any) -> Any:
    if isinstance(value, str):
        return redaction.text(value)
    if isinstance(value, dict | list):
        return redaction.data(value)
    return value


def _logfmt_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    text = value if isinstance(value, str) else json.dumps(value, default=str, separators=(",", ":"))
    if text and not any(c in text for c in ' "=\\\n\t'):
        return text
    return json.dumps(text)


def configure_logging(level: str, style: LogFormat = LogFormat.text) -> None:
    """Send every logger's records at `level` and above to stderr in `style` (replacing any
    handler a previous call installed)."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_agentflow", False)]:
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(EventFormatter(style))
    handler._agentflow = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    numeric = logging.getLevelName(level.upper())
    root.setLevel(numeric)
    for name in _CHATTY:
        logging.getLogger(name).setLevel(numeric if numeric <= logging.DEBUG else max(numeric, logging.WARNING))


def live_spans_if_asked() -> LiveSpans | None:
    """Live OpenTelemetry spans when `AGENTFLOW_OTEL` asks for them (`worker` and `serve`; see
    `agentflow.trace.live_spans_from_env`); without it, OpenTelemetry is not even imported."""
    if os.environ.get("AGENTFLOW_OTEL", "") in ("", "0"):
        return None
    from agentflow.trace import live_spans_from_env

    return live_spans_from_env()
