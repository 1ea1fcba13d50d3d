"""The HTML timeline of a run for Jupyter: every step with what it carried, escaped.

Everything recorded (model text, tool output, arguments, comments) may come from an untrusted
source (a model, a device, an operator), so every value is passed through `html.escape` and the
markup has no links, images, scripts or styles that load anything.
"""

from __future__ import annotations

import html
import json
from datetime import UTC, datetime
from typing import Any

from agentflow.store import StepRecord
from agentflow.trace._messages import text_of
from agentflow.trace._records import Recorded, error_of, loads, response_of

_LIMIT = 300
_COLORS = {"llm": "#e8f0fe", "tool": "#e6f4ea", "policy": "#fef7e0", "approval": "#fce8e6", "signal": "#f3e8fd",
           "sleep": "#e8eaed", "plan": "#e0f7fa"}  # fmt: skip


def esc(value: Any, limit: int = _LIMIT) -> str:
    """Escaped text of a value, cut at `limit` characters."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    if len(text) > limit:
        text = text[:limit] + " …"
    return html.escape(text, quote=True)


def _when(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _llm(recorded: Recorded, step: StepRecord) -> str:
    body = response_of(step)
    used = body.get("usage") or {}
    head = f"{used.get('input_tokens', '?')} tokens in, {used.get('output_tokens', '?')} out"
    data = recorded.blobs.get(str(body.get("message")))
    if data is None:
        return esc(head)
    from agentflow.llm import message_from_blob

    message = message_from_blob(data)
    calls = getattr(message, "tool_calls", [])
    said = "; ".join(f"calls {c['name']}({esc(c['args'], 120)})" for c in calls)
    text = esc(text_of(message)) if text_of(message) else ""
    return "<br>".join(part for part in (esc(head), text, said) if part)


def _detail(recorded: Recorded, step: StepRecord) -> str:
    args, result = loads(step.args), loads(step.result)
    if step.kind == "llm":
        return _llm(recorded, step)
    if step.kind == "tool" and isinstance(args, dict):
        out = result if step.status == "completed" else error_of(step)
        return f"args {esc(args.get('args'))}<br>→ {esc(out)}"
    if step.kind == "policy" and isinstance(result, dict):
        return esc(f"{result.get('effect')} by rule {result.get('rule')} ({result.get('pack')}) {result.get('reason')}")
    if step.kind == "approval" and isinstance(result, dict):
        votes = ", ".join(
            f"{v.get('principal')} {v.get('decision')}: {v.get('comment')}" for v in result.get("votes", [])
        )
        return esc(f"{result.get('status')} {result.get('id')} {votes}".strip())
    if step.kind == "sleep":
        return esc(f"durable wait until {args}")
    return esc(result if step.status == "completed" else error_of(step) or step.status)


def timeline_html(recorded: Recorded) -> str:
    """A table of the run's steps, one row each, every recorded value escaped."""
    run = recorded.run
    start = recorded.steps[0].started_at if recorded.steps else run.created_at
    rows = []
    for s in recorded.steps:
        color = _COLORS.get(s.kind, "#ffffff")
        offset = s.started_at - start
        rows.append(
            f'<tr style="background:{color}"><td>{s.seq}</td><td>+{offset:.3f}s</td><td>{esc(s.kind)}</td>'
            f"<td>{esc(s.name, 80)}</td><td>{esc(s.status)}</td><td>{_detail(recorded, s)}</td></tr>"
        )
    title = (
        f"run {esc(run.id)} · workflow {esc(run.workflow)} · tenant {esc(run.tenant)} · {esc(run.status)} · "
        f"{len(recorded.steps)} steps · started {esc(_when(run.created_at))} UTC"
    )
    head = "<tr><th>seq</th><th>t</th><th>kind</th><th>name</th><th>status</th><th>what happened</th></tr>"
    return (
        f'<div class="agentflow-trace"><p><b>{title}</b></p>'
        f'<table style="border-collapse:collapse;font-size:12px;text-align:left">{head}{"".join(rows)}</table></div>'
    )
