"""How `agentflow chat` shows what the server sends: steps, approval cards, outcomes, tables.

Everything the model or a tool wrote is untrusted: it is printed as plain text (`Text`, never
parsed as rich markup) with terminal control characters shown escaped.
"""

from __future__ import annotations

from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

# The text of every surface comes from agentflow.chat: escaping, cutting, times, cards in rows.
from agentflow.chat import card_rows, compact, quorum_text, truncate, when
from agentflow.chat import safe_text as clean


def untrusted(value: Any, style: str = "", *, limit: bool = True) -> Text:
    """Untrusted text (model words, tool output) as a Text: printed literally, never as markup."""
    s = clean(value)
    return Text(truncate(s) if limit else s, style=style)


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


def render_card(card: dict[str, Any]) -> Table:
    """An approval card (`Card` of API.md): what would run, on what, why it needs a decision.
    The rows are `agentflow.chat.card_rows` (every surface shows the same facts); the terminal
    adds colour."""
    status = str(card.get("status", "?"))
    style = {"approved": "green", "rejected": "red", "expired": "red", "escalated": "bold yellow"}.get(status, "yellow")
    table = Table(show_header=False, box=None, padding=(0, 1), title_justify="left",
                  title=Text.assemble(("approval ", "bold"), (clean(card.get("id", "?")), "bold yellow"),
                                      (f" ({clean(status)})", style)))  # fmt: skip
    table.add_column(style="dim", no_wrap=True)
    table.add_column()
    votes = iter(v for v in card.get("votes") or [] if isinstance(v, dict))
    for label, text in card_rows(card):
        if label == "diff":
            cell = render_diff(card.get("diff"))
        elif label == "vote":
            vote = next(votes)
            cell = Text.assemble(untrusted(vote.get("principal", "?"), "bold", limit=False), " ",
                                 clean(vote.get("decision", "?")), " ",
                                 untrusted(vote.get("comment") or "", "italic"))  # fmt: skip
        else:
            cell = Text(text, style=_ROW_STYLE.get(label, ""))
        table.add_row(label, cell)
    return table


_ROW_STYLE = {"tool": "bold cyan"}


def card_line(card: dict[str, Any]) -> Text:
    """A change of a card already shown, on one line."""
    status = str(card.get("status", "?"))
    line = Text.assemble(("approval ", "dim"), (clean(card.get("id", "?")), "yellow"), ": ")
    line.append(clean(status), style={"approved": "green", "rejected": "red", "expired": "red"}.get(status, "yellow"))
    line.append(f" ({quorum_text(card)})", style="dim")
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
                      Text(when(r.get("updated_at"))))  # fmt: skip
    return table


def approvals_table(cards: list[dict[str, Any]]) -> Table:
    table = Table("id", "run", "tool", "change", "rule", "status", "quorum", "requested by", "you",
                  title="approvals")  # fmt: skip
    for c in cards:
        you = Text("can decide", style="green") if c.get("can_decide") else untrusted(c.get("why_not") or "-", "dim")
        change = render_diff(c.get("diff")) if c.get("diff") is not None else untrusted(compact(c.get("args", {}), 60))
        table.add_row(untrusted(c.get("id", "?"), "yellow", limit=False), untrusted(c.get("run_id", "?"), limit=False),
                      untrusted(c.get("tool", "?"), limit=False), change, untrusted(c.get("rule", "-"), limit=False),
                      Text(clean(c.get("status", "?"))), Text(quorum_text(c)),
                      untrusted(c.get("requested_by") or "-", limit=False), you)  # fmt: skip
    return table
