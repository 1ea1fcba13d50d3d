"""How `agentflow chat` shows what the server sends: steps, approval cards, outcomes, tables.

Everything the model or a tool wrote is untrusted: it is printed as plain text (`Text`, never
parsed as rich markup) with terminal control characters shown escaped.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

MAX_OUTPUT_CHARS = 800  # tool output / model text shown per step
MAX_OUTPUT_LINES = 12

_UNSAFE = {c: f"\\x{c:02x}" for c in [*range(0x00, 0x09), *range(0x0B, 0x20), *range(0x7F, 0xA0)]}
_UNSAFE.update({c: f"\\u{c:04x}" for c in [*range(0x202A, 0x202F), *range(0x2066, 0x206A)]})


def clean(value: Any) -> str:
    """A server or model string made safe for a terminal: control characters (ESC, CR, BEL...)
    and bidirectional overrides are shown escaped. Markup is left to Text (which never parses it)."""
    text = value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)
    return text.translate(_UNSAFE)


def truncate(text: str, max_chars: int = MAX_OUTPUT_CHARS, max_lines: int = MAX_OUTPUT_LINES) -> str:
    lines = text.splitlines()
    cut = "\n".join(lines[:max_lines])
    cut = cut[:max_chars]
    if len(cut) < len(text.rstrip("\n")):
        more = len(text) - len(cut)
        return f"{cut.rstrip()}\n… ({more} more characters)"
    return text


def untrusted(value: Any, style: str = "", *, limit: bool = True) -> Text:
    """Untrusted text (model words, tool output) as a Text: printed literally, never as markup."""
    s = clean(value)
    return Text(truncate(s) if limit else s, style=style)


def compact(value: Any, max_chars: int = 160) -> str:
    s = clean(value)
    return s if len(s) <= max_chars else s[: max_chars - 1] + "…"


def ts(value: Any) -> str:
    if not isinstance(value, int | float):
        return "-"
    return datetime.fromtimestamp(value, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def until(seconds: float) -> str:
    """A time left in words: `in 7h 59m`, `in 45s`, `2m ago`."""
    left = abs(int(seconds))
    hours, rest = divmod(left, 3600)
    words = f"{hours}h {rest // 60}m" if hours else f"{rest // 60}m" if rest >= 60 else f"{rest}s"
    return f"in {words}" if seconds >= 0 else f"{words} ago"


_EFFECT_STYLE = {"allow": "green", "deny": "bold red", "require_approval": "yellow", "defer": "magenta",
                 "limit": "red"}  # fmt: skip
_KIND_STYLE = {"model": "bold blue", "tool": "bold cyan", "policy": "bold magenta", "approval": "bold yellow",
               "wait": "bold", "plan": "bold blue", "signal": "bold", "step": "bold"}  # fmt: skip


def render_event(event: dict[str, Any]) -> RenderableType:
    """One finished step of a run (an `Event` of API.md), every string from it shown literally."""
    kind = str(event.get("kind", "step"))
    data = event.get("data") if isinstance(event.get("data"), dict) else {}
    assert isinstance(data, dict)
    style = "bold red" if event.get("status") == "failed" else _KIND_STYLE.get(kind, "bold")
    title = event.get("title") or f"{kind} {event.get('name', '')}"
    head = Text.assemble((f"[{clean(event.get('seq', '?'))}] ", "dim"), untrusted(title, style, limit=False))
    parts: list[RenderableType] = [head]
    indent = "    "
    if kind == "model":
        if event.get("text"):
            parts.append(_indented(untrusted(event["text"]), indent))
        for call in data.get("tool_calls") or []:
            if isinstance(call, dict):
                parts.append(Text.assemble((f"{indent}→ ", "cyan"), untrusted(call.get("name", "?"), "cyan", limit=False),
                                           " ", untrusted(compact(call.get("args", {})), "dim")))  # fmt: skip
        if data.get("tokens_in") is not None or data.get("tokens_out") is not None:
            cost = data.get("cost_usd")
            money = f", ${cost:.4f}" if isinstance(cost, int | float) else ""
            used = f"{clean(data.get('tokens_in') or 0)} tokens in, {clean(data.get('tokens_out') or 0)} out{money}"
            parts.append(Text(indent + used, style="dim"))
    elif kind == "tool":
        if data.get("args") is not None:
            parts.append(Text.assemble((f"{indent}args ", "dim"), untrusted(compact(data["args"]), "dim")))
        if data.get("error"):
            parts.append(_indented(Text("error: ", style="bold red") + untrusted(data["error"], "red"), indent))
    elif kind == "policy":
        effect = str(data.get("effect", ""))
        if data.get("reason"):
            line = Text.assemble((indent + clean(effect) + ": ", _EFFECT_STYLE.get(effect, "bold")),
                                 untrusted(data["reason"]))  # fmt: skip
            parts.append(_indented(line, ""))
    elif kind == "plan" and not event.get("text"):
        for i, step in enumerate(data.get("steps") or [], 1):
            if isinstance(step, dict):
                parts.append(Text.assemble(f"{indent}{i}. ", untrusted(step.get("tool", "?"), "cyan", limit=False),
                                           " — ", untrusted(step.get("goal", ""))))  # fmt: skip
    if event.get("text") and kind != "model" and not (kind == "tool" and data.get("error") == event.get("text")):
        parts.append(_indented(untrusted(event["text"]), indent))
    return Group(*parts)


def _indented(text: Text, indent: str) -> Text:
    out = Text()
    for i, line in enumerate(text.split("\n")):
        if i:
            out.append("\n")
        out.append(indent)
        out.append_text(line)
    return out


def render_diff(diff: Any) -> Text:
    if isinstance(diff, dict) and "from" in diff and "to" in diff:
        where = " ".join(clean(diff[k]) for k in ("site", "param") if diff.get(k) is not None)
        return Text.assemble((f"{where}: " if where else "", ""), (clean(diff["from"]), "red"), " → ",
                             (clean(diff["to"]), "green"))  # fmt: skip
    if diff is None:
        return Text("-")
    return untrusted(compact(diff, 400))


def quorum(card: dict[str, Any]) -> str:
    q = card.get("quorum") if isinstance(card.get("quorum"), dict) else {}
    assert isinstance(q, dict)
    return f"{q.get('have', '?')}/{q.get('needed', '?')}"


def render_card(card: dict[str, Any]) -> Table:
    """An approval card (`Card` of API.md): what would run, on what, why it needs a decision."""
    status = str(card.get("status", "?"))
    style = {"approved": "green", "rejected": "red", "expired": "red", "escalated": "bold yellow"}.get(status, "yellow")
    table = Table(show_header=False, box=None, padding=(0, 1), title_justify="left",
                  title=Text.assemble(("approval ", "bold"), (clean(card.get("id", "?")), "bold yellow"),
                                      (f" ({clean(status)})", style)))  # fmt: skip
    table.add_column(style="dim", no_wrap=True)
    table.add_column()
    table.add_row("tool", untrusted(card.get("tool", "?"), "bold cyan", limit=False))
    table.add_row("target", untrusted(card.get("target") if card.get("target") is not None else "-", limit=False))
    table.add_row("args", untrusted(card.get("args", {})))
    table.add_row("diff", render_diff(card.get("diff")))
    table.add_row("rule", untrusted(card.get("rule", "-"), limit=False))
    table.add_row("requested by", untrusted(card.get("requested_by") or "-", limit=False))
    table.add_row("run", untrusted(card.get("run_id", "-"), limit=False))
    needs = f"{quorum(card)} approvals"
    if card.get("deciding_roles"):
        needs += f" by roles {', '.join(clean(r) for r in card['deciding_roles'])}"
    if card.get("four_eyes"):
        needs += ", four-eyes (not by the requester)"
    table.add_row("quorum", Text(needs))
    if card.get("editable_args"):
        table.add_row("editable", Text(", ".join(clean(a) for a in card["editable_args"])))
    expires = ts(card.get("expires_at"))
    if isinstance(card.get("expires_at"), int | float) and isinstance(card.get("now"), int | float):
        expires += f" ({until(card['expires_at'] - card['now'])})"  # the server's clock may be shifted
    table.add_row("expires", Text(expires))
    for vote in card.get("votes") or []:
        if isinstance(vote, dict):
            table.add_row("vote", Text.assemble(untrusted(vote.get("principal", "?"), "bold", limit=False), " ",
                                                clean(vote.get("decision", "?")), " ",
                                                untrusted(vote.get("comment") or "", "italic")))  # fmt: skip
    return table


def card_line(card: dict[str, Any]) -> Text:
    """A change of a card already shown, on one line."""
    status = str(card.get("status", "?"))
    line = Text.assemble(("approval ", "dim"), (clean(card.get("id", "?")), "yellow"), ": ")
    line.append(clean(status), style={"approved": "green", "rejected": "red", "expired": "red"}.get(status, "yellow"))
    line.append(f" ({quorum(card)})", style="dim")
    votes = [v for v in card.get("votes") or [] if isinstance(v, dict)]
    if votes:
        last = votes[-1]
        line.append(" — ")
        line.append_text(untrusted(last.get("principal", "?"), "bold", limit=False))
        line.append(f" {clean(last.get('decision', '?'))}")
        if last.get("comment"):
            line.append(": ")
            line.append_text(untrusted(last["comment"], "italic"))
    return line


def waiting_on(value: Any) -> str:
    """`waiting_on` of a RunSummary (`{"signals", "timers", "children"}`, or its JSON) in words."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return compact(value, 200)
    if not isinstance(value, dict):
        return compact(value, 200)
    signals = [clean(s).replace("approval:", "approval ", 1) for s in value.get("signals") or []]
    timers = sorted(t for t in value.get("timers") or [] if isinstance(t, int | float))
    children = [f"child run {clean(c)}" for c in value.get("children") or []]
    what = ", ".join(signals + children)
    if what and timers:
        return compact(f"{what} (until {ts(timers[0])})", 200)
    return compact(what or (f"a timer at {ts(timers[0])}" if timers else value), 200)


def render_outcome(run: dict[str, Any]) -> RenderableType:
    """The end of a run: status, outcome, answer, tokens and cost."""
    status = str(run.get("status", "?"))
    style = {"completed": "bold green", "failed": "bold red", "cancelled": "bold red"}.get(status, "bold")
    head = Text.assemble(("run ", ""), (clean(run.get("id", "?")), "cyan"), " ", (clean(status), style))
    if run.get("outcome"):
        head.append(f" ({clean(run['outcome'])})")
    facts = []
    if run.get("steps") is not None:
        facts.append(f"{clean(run['steps'])} steps")
    if run.get("tokens") is not None:
        facts.append(f"{clean(run['tokens'])} tokens")
    if isinstance(run.get("cost_usd"), int | float):
        facts.append(f"${run['cost_usd']:.4f}")
    if facts:
        head.append(" · " + " · ".join(facts), style="dim")
    parts: list[RenderableType] = [head]
    if run.get("error"):
        parts.append(Text("error: ", style="bold red") + untrusted(run["error"], "red"))
    if run.get("answer"):
        parts.append(untrusted(run["answer"], limit=False))
    return Group(*parts)


def runs_table(runs: list[dict[str, Any]]) -> Table:
    table = Table("id", "status", "task", "requested by", "steps", "approvals", "updated", title="runs")
    for r in runs:
        table.add_row(untrusted(r.get("id", "?"), "cyan", limit=False), Text(clean(r.get("status", "?"))),
                      untrusted(compact(r.get("task", ""), 60)), untrusted(r.get("requested_by") or "-", limit=False),
                      Text(clean(r.get("steps", "-"))), Text(clean(r.get("open_approvals", 0))),
                      Text(ts(r.get("updated_at"))))  # fmt: skip
    return table


def approvals_table(cards: list[dict[str, Any]]) -> Table:
    table = Table("id", "run", "tool", "change", "rule", "status", "quorum", "requested by", "you",
                  title="approvals")  # fmt: skip
    for c in cards:
        you = Text("can decide", style="green") if c.get("can_decide") else untrusted(c.get("why_not") or "-", "dim")
        change = render_diff(c.get("diff")) if c.get("diff") is not None else untrusted(compact(c.get("args", {}), 60))
        table.add_row(untrusted(c.get("id", "?"), "yellow", limit=False), untrusted(c.get("run_id", "?"), limit=False),
                      untrusted(c.get("tool", "?"), limit=False), change, untrusted(c.get("rule", "-"), limit=False),
                      Text(clean(c.get("status", "?"))), Text(quorum(c)),
                      untrusted(c.get("requested_by") or "-", limit=False), you)  # fmt: skip
    return table
