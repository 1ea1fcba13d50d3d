"""The HTML timeline of a run for Jupyter (`Trace._repr_html_`): the same timeline as the web
console's (`agentflow.trace.timeline`), drawn as a waterfall: one row per step, long waits
shortened with their real length labelled, crashes, resumes and wakes marked between the rows,
reads folded into `<details>` (no script needed to unfold them), and what happened in sentences.

Everything recorded (model text, tool output, arguments, comments) may come from an untrusted
source (a model, a device, an operator), so every value is passed through `html.escape` and the
markup has no links, images, scripts or styles that load anything.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from agentflow.trace._story import duration_words, iso

_LIMIT = 300
_COLORS = {"model": "#6f86a8", "tool": "#2f7d5b", "policy": "#c58a12", "approval": "#b5541c", "wait": "#5b6fd6",
           "signal": "#5b6fd6", "child": "#5b6fd6", "plan": "#3a9fb0", "bookkeeping": "#b8c0c9",
           "reads": "#7fa8c9"}  # fmt: skip
_MARKS = {"crash": ("#b3261e", "#fbe6e4", "⚠ crash"), "resume": ("#1c7c3a", "#e4f4e8", "↻ resume"),
          "wake": ("#4c5a99", "#f3f5fd", "→ wake")}  # fmt: skip
_GRID = "display:grid;grid-template-columns:44px minmax(0,34%) minmax(0,1fr) 96px;gap:0 8px;align-items:center;"
_ROW = _GRID + "padding:1px 6px;border-bottom:1px solid #eef1f4;font:12px/1.5 sans-serif"


def esc(value: Any, limit: int = _LIMIT) -> str:
    """Escaped text of a value, cut at `limit` characters."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    if len(text) > limit:
        text = text[:limit] + " …"
    return html.escape(text, quote=True)


def _clock(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%H:%M:%S")


def _bar(x0: float, x1: float, color: str, breaks: Iterable[dict[str, Any]], shortened: bool = False) -> str:
    bands = "".join(
        f'<span style="position:absolute;top:-4px;bottom:-4px;left:{b["x0"]}%;width:{b["x1"] - b["x0"]}%;'
        'background:repeating-linear-gradient(135deg,rgba(91,111,214,.12) 0 4px,transparent 4px 8px)"></span>'
        for b in breaks
    )
    fill = f"repeating-linear-gradient(90deg,{color} 0 6px,#fff 6px 9px)" if shortened else color
    bar = (f'<span style="position:absolute;top:2px;height:10px;min-width:3px;border-radius:2px;left:{x0}%;'
           f'width:{max(x1 - x0, 0.6)}%;background:{fill}"></span>')  # fmt: skip
    return f'<div style="position:relative;height:14px">{bands}{bar}</div>'


def _chips(row: dict[str, Any]) -> str:
    chips = []
    if row.get("usage"):
        u = row["usage"]
        chips.append(
            f"{u.get('tokens_in') or 0:,} in · {u.get('tokens_out') or 0:,} out · ${u.get('cost_usd') or 0:.4f}"
        )
    if row.get("policy"):
        chips.append(str(row["policy"]["effect"]))
    for vote in (row.get("approval") or {}).get("votes") or []:
        chips.append(f"{vote['decision']}d by {vote['principal']} {_clock(vote['at'])} UTC")
    if row["retries"]:
        chips.append(f"{len(row['retries'])} failed attempt(s)")
    if row["attempt"] > 1:
        chips.append(f"attempt {row['attempt']}")
    if row["status"] not in ("completed",):
        chips.append(str(row["status"]))
    style = (
        "font:11px monospace;color:#5f6b78;background:#f4f6f8;border:1px solid #d5dbe2;border-radius:3px;padding:0 4px"
    )
    return "".join(f' <span style="{style}">{esc(c, 120)}</span>' for c in chips)


def _row(row: dict[str, Any], breaks: list[dict[str, Any]]) -> str:
    color = "#b3261e" if row["status"] == "failed" else _COLORS.get(row["kind"], "#8a97a6")
    took = duration_words(row["duration_s"]) + (" ⋯ shortened" if row["shortened"] else "")
    detail = f" — {esc(row['preview'], 160)}" if row.get("preview") else ""
    return (
        f'<div data-seq="{row["seq"]}" data-kind="{esc(row["kind"])}" style="{_ROW}" '
        f'title="{esc(row["title"])} · +{esc(duration_words(row["offset_s"]))} · {esc(iso(row["started_at"]))}">'
        f'<span style="color:#5f6b78;font-family:monospace">#{row["seq"]}</span>'
        f'<span style="overflow:hidden;white-space:nowrap;text-overflow:ellipsis">'
        f'<b style="color:{color};font:600 10px monospace;text-transform:uppercase">{esc(row["kind"])}</b> '
        f"{esc(row['title'], 160)}{_chips(row)}"
        f'<span style="color:#5f6b78">{detail}</span></span>'
        f"{_bar(row['x0'], row['x1'], color, breaks, row['shortened'])}"
        f'<span style="font:11px monospace;color:#5f6b78;text-align:right">{esc(took)}</span></div>'
    )


def _marker(m: dict[str, Any]) -> str:
    fg, bg, label = _MARKS.get(m["kind"], ("#333", "#eee", m["kind"]))
    when = m["at"] if m["kind"] == "crash" else m["resumed_at"]
    return (
        f'<div data-marker="{esc(m["kind"])}" style="padding:3px 8px 3px 52px;background:{bg};color:{fg};'
        f'border-top:2px solid {fg};font:12px sans-serif"><b>{esc(label)}</b> {esc(m["text"])} '
        f'<span style="font:11px monospace">{esc(iso(when))}</span></div>'
    )


def _group_head(g: dict[str, Any], breaks: list[dict[str, Any]]) -> str:
    return (
        f'<summary style="{_GRID}cursor:pointer;padding:2px 6px;background:#f7fafd;font:12px sans-serif">'
        f'<span style="color:#1f5fbf">▸</span><span><b>{esc(g["title"], 200)}</b> '
        f'<span style="color:#5f6b78">{g["model_calls"]} model calls · {g["tokens"]:,} tokens · '
        f"${g['cost_usd']:.4f}</span></span>{_bar(g['x0'], g['x1'], _COLORS['reads'], breaks)}"
        f'<span style="font:11px monospace;color:#5f6b78;text-align:right">{len(g["seqs"])} steps</span></summary>'
    )


def _head(tl: dict[str, Any]) -> str:
    run, t, axis = tl["run"], tl["totals"], tl["axis"]
    stats = (
        f"{esc(run['status'])} · took {duration_words(axis['seconds'])} · {t['steps']} steps · {t['model_calls']} model "
        f"calls · {t['tokens_in'] + t['tokens_out']:,} tokens · ${t['cost_usd']:.4f} · waited "
        f"{duration_words(t['waited_s'])} · {t['lease_changes']} lease changes ({t['crashes']} crash, "
        f"{t['wakes']} wakes) · {t['retries']} retries"
    )
    story = "".join(f"<li>{esc(line, 600)}</li>" for line in tl["story"])
    return (
        f'<p style="margin:0 0 2px"><b>run {esc(run["id"])}</b> · {esc(run["workflow"])} · tenant '
        f"{esc(run['tenant'])} · started {esc(iso(run['created_at']))}</p>"
        f'<p style="margin:0 0 6px;color:#5f6b78">{stats}</p>'
        f'<details open><summary style="cursor:pointer"><b>What happened</b></summary><ol>{story}</ol></details>'
    )


def _axis(axis: dict[str, Any]) -> str:
    breaks = "".join(
        f'<span style="position:absolute;left:{b["x0"]}%;width:{max(b["x1"] - b["x0"], 0.5)}%;text-align:center;'
        f'color:#3c4fb8;white-space:nowrap;overflow:hidden">⋯ {esc(duration_words(b["seconds"]))} ⋯</span>'
        for b in axis["breaks"]
    )
    return (
        f'<div style="{_GRID}padding:2px 6px;background:#f7f9fb;border-bottom:1px solid #d5dbe2;font:11px monospace;'
        f'color:#5f6b78"><span></span><span>recorded clock (long waits shortened)</span>'
        f'<div style="position:relative;height:16px"><span style="position:absolute;left:0">+0 s</span>{breaks}'
        f'<span style="position:absolute;right:0">+{esc(duration_words(axis["seconds"]))}</span></div><span></span></div>'
    )


def timeline_html(tl: dict[str, Any]) -> str:
    """A run's timeline (`agentflow.trace.timeline`'s data) as escaped HTML."""
    breaks = tl["axis"]["breaks"]
    markers: dict[int, list[dict[str, Any]]] = {}
    for m in tl["markers"]:
        markers.setdefault(m["before_seq"], []).append(m)
    groups = {g["seqs"][0]: g for g in tl["groups"]}
    last = {g["seqs"][-1] for g in tl["groups"]}
    parts = [_head(tl), '<div style="border:1px solid #d5dbe2;border-radius:4px;margin-top:6px">', _axis(tl["axis"])]
    for row in tl["rows"]:
        parts += [_marker(m) for m in markers.get(row["seq"], [])]
        if row["seq"] in groups:
            parts.append(
                f'<details data-group="{esc(groups[row["seq"]]["id"])}">{_group_head(groups[row["seq"]], breaks)}'
            )
        parts.append(_row(row, breaks))
        if row["seq"] in last:
            parts.append("</details>")
    parts.append("</div>")
    return f'<div class="agentflow-trace">{"".join(parts)}</div>'
