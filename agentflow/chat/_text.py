"""Plain-text renderings of the chat's plain data, for surfaces that show text: the terminal chat,
and chat systems whose messages are text (Matrix, Slack fallbacks, mail).

Everything a model, a tool or another user wrote is untrusted: `safe_text` escapes what a
terminal or a chat client would act on (control characters, ANSI escapes, bidirectional
overrides), and nothing here produces markup.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

MAX_CHARS = 800  # untrusted text shown per step or field
MAX_LINES = 12
_UNSAFE = {c: f"\\x{c:02x}" for c in [*range(0x00, 0x09), *range(0x0B, 0x20), *range(0x7F, 0xA0)]}
# Bidirectional embeddings, overrides and isolates: they reorder what a reader sees.
_UNSAFE.update({c: f"\\u{c:04x}" for c in [*range(0x202A, 0x202F), *range(0x2066, 0x206A)]})


def safe_text(value: Any) -> str:
    """A string (or any JSON value) made safe to show: control characters (ESC, CR, BEL, ...) and
    bidirectional overrides are shown escaped; newlines and tabs stay."""
    text = value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)
    return text.translate(_UNSAFE)


def truncate(text: str, max_chars: int = MAX_CHARS, max_lines: int = MAX_LINES) -> str:
    """At most `max_lines` lines and `max_chars` characters, saying how much was left out."""
    cut = "\n".join(text.splitlines()[:max_lines])[:max_chars]
    if len(cut) < len(text.rstrip("\n")):
        return f"{cut.rstrip()}\n… ({len(text) - len(cut)} more characters)"
    return text


def compact(value: Any, max_chars: int = 160) -> str:
    """A value on one short line (safe, cut with an ellipsis)."""
    text = safe_text(value)
    return text if len(text) <= max_chars else text[: max_chars - 1] + "…"


def utc(value: float, *, seconds: bool = False) -> str:
    """A time for people: `2026-01-01 02:00 UTC` (with `seconds`: `02:00:00`)."""
    return datetime.fromtimestamp(value, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC" if seconds else "%Y-%m-%d %H:%M UTC")


def when(value: Any) -> str:
    """A recorded time to the second, `-` when there is none."""
    return utc(value, seconds=True) if isinstance(value, int | float) else "-"


def time_left(seconds: float) -> str:
    """A time left in words: `in 7h 59m`, `in 45s`, `2m ago`, `in 89d 23h` (two days or more)."""
    left = abs(int(seconds))
    hours, rest = divmod(left, 3600)
    if hours >= 48:
        words = f"{hours // 24}d {hours % 24}h"
    else:
        words = f"{hours}h {rest // 60}m" if hours else f"{rest // 60}m" if rest >= 60 else f"{rest}s"
    return f"in {words}" if seconds >= 0 else f"{words} ago"


def diff_text(diff: Any) -> str:
    """A staged change (a tool's preview) in words: `CS-101 hoA3Offset: 8 → 2`."""
    if isinstance(diff, dict) and "from" in diff and "to" in diff:
        where = " ".join(safe_text(diff[k]) for k in ("site", "param") if diff.get(k) is not None)
        return f"{where + ': ' if where else ''}{safe_text(diff['from'])} → {safe_text(diff['to'])}"
    return "-" if diff is None else compact(diff, 400)


def quorum_text(card: dict[str, Any]) -> str:
    """`have/needed` approvals of a card."""
    q = card.get("quorum") if isinstance(card.get("quorum"), dict) else {}
    assert isinstance(q, dict)
    return f"{q.get('have', '?')}/{q.get('needed', '?')}"


def card_rows(card: dict[str, Any]) -> list[tuple[str, str]]:
    """An approval card (`Card` of API.md) as (label, text) rows: what would run, on what, why it
    needs a decision, who decides, until when, and the votes so far."""
    rows = [
        ("tool", safe_text(card.get("tool", "?"))),
        ("target", safe_text(card.get("target") if card.get("target") is not None else "-")),
        ("args", truncate(safe_text(card.get("args", {})))),
        ("diff", diff_text(card.get("diff"))),
        ("rule", safe_text(card.get("rule", "-"))),
        ("requested by", safe_text(card.get("requested_by") or "-")),
        ("run", safe_text(card.get("run_id", "-"))),
        ("quorum", _needs(card)),
    ]
    if card.get("editable_args"):
        rows.append(("editable", ", ".join(safe_text(a) for a in card["editable_args"])))
    expires = when(card.get("expires_at"))
    if isinstance(card.get("expires_at"), int | float) and isinstance(card.get("now"), int | float):
        expires += f" ({time_left(card['expires_at'] - card['now'])})"  # the server's clock may be shifted
    rows.append(("expires", expires))
    for vote in card.get("votes") or []:
        if isinstance(vote, dict):
            comment = f" {truncate(safe_text(vote['comment']))}" if vote.get("comment") else ""
            rows.append(
                ("vote", f"{safe_text(vote.get('principal', '?'))} {safe_text(vote.get('decision', '?'))}{comment}")
            )
    return rows


def _needs(card: dict[str, Any]) -> str:
    needs = f"{quorum_text(card)} approvals"
    if card.get("deciding_roles"):
        needs += f" by roles {', '.join(safe_text(r) for r in card['deciding_roles'])}"
    if card.get("four_eyes"):
        needs += ", four-eyes (not by the requester)"
    return needs


def waiting_words(value: Any) -> str:
    """What a run waits for, in words, from the engine's `waiting_on` (a dict or its JSON) or a
    summary's text."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return compact(value, 200)
    if not isinstance(value, dict):
        return compact(value, 200)
    signals = [safe_text(s).replace("approval:", "approval ", 1) for s in value.get("signals") or []]
    timers = sorted(t for t in value.get("timers") or [] if isinstance(t, int | float))
    children = [f"child run {safe_text(c)}" for c in value.get("children") or []]
    what = ", ".join(signals + children)
    if what and timers:
        return compact(f"{what} (until {when(timers[0])})", 200)
    return compact(what or (f"a timer at {when(timers[0])}" if timers else value), 200)
