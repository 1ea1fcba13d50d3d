"""Chat commands typed in a run's conversation: `approve [comment]`, `reject <reason>`,
`status`, `why?`, `help`. They act on the run's open approval through the same service (and
so the same checks and audit) as the approval buttons and the API, whatever the surface.
Outside a run, a message that is only a command word (`help`, `?`, `quit`) is a command too,
never a task (`bare_command`)."""

from __future__ import annotations

import json
import re
from typing import Any

from agentflow.approvals import ApprovalRequest, Principal
from agentflow.chat._cards import card
from agentflow.chat._context import Chat
from agentflow.chat._text import utc
from agentflow.chat._views import run_summary
from agentflow.chat._words import HELP
from agentflow.errors import ApprovalRefused, UnknownRunError
from agentflow.store import RunRecord, StepRecord

_ID = re.compile(r"^(apr_[0-9a-f]{6,40})\b\s*(.*)$", re.DOTALL)
_COMMAND = re.compile(r"^\s*/?(approve|reject|status|why\??|help)\b\s*(.*)$", re.IGNORECASE | re.DOTALL)


def reply(chat: Chat, run: RunRecord, viewer: Principal, text: str) -> dict[str, Any]:
    """`ChatReply` of API.md for `text` typed in `run`'s conversation by `viewer`.

    Raises:
        UnknownRunError: `run` is another tenant's (it is not described, as for no run).
    """
    if viewer.tenant != run.tenant:
        raise UnknownRunError(f"no run {run.local_id} in tenant {viewer.tenant}", run_id=run.local_id)
    found = _COMMAND.match(text)
    if found is None:
        return {"reply": HELP, "kind": "help", "card": None}
    verb, rest = found.group(1).lower().rstrip("?"), found.group(2).strip()
    if verb == "help":
        return {"reply": HELP, "kind": "help", "card": None}
    if verb == "status":
        return {"reply": status_text(chat, run), "kind": "status", "card": None}
    steps = chat.store.load_steps(run.id)
    if verb == "why":
        return {"reply": why_text(chat, run, steps), "kind": "why", "card": None}
    req, rest = _target(chat, run, rest)
    if verb == "approve":
        decided = chat.approvals.approve(req.id, by=viewer, comment=rest, seen_hash=req.args_hash)
    else:
        if not rest:
            raise ApprovalRefused("say why: `reject <reason>`", code="invalid", approval_id=req.id, run_id=run.id)
        decided = chat.approvals.reject(req.id, by=viewer, comment=rest)
    shown = card(chat, decided, viewer, steps)
    progress = f"{decided.approvals}/{decided.spec.quorum} approvals"
    return {"reply": f"{decided.tool} {decided.id}: {decided.status} ({progress})", "kind": "approval", "card": shown}


def _target(chat: Chat, run: RunRecord, rest: str) -> tuple[ApprovalRequest, str]:
    """The approval a command is about: the one named, else the run's only open one."""
    named = _ID.match(rest)
    if named is not None:
        req = chat.approvals.get(named.group(1), tenant=run.tenant)
        if req.run_id != run.id:
            raise ApprovalRefused(f"no approval request {named.group(1)} in this run", code="unknown")
        return req, named.group(2).strip()
    open_ = chat.approvals.list(tenant=run.tenant, run_id=run.id, status="pending")
    if not open_:
        raise ApprovalRefused("nothing in this run waits for an approval", code="unknown", run_id=run.id)
    if len(open_) > 1:
        ids = ", ".join(r.id for r in open_)
        raise ApprovalRefused(f"several approvals are open ({ids}): name one, e.g. `approve {open_[0].id}`",
                           code="ambiguous", run_id=run.id)  # fmt: skip
    return open_[0], rest


def status_text(chat: Chat, run: RunRecord) -> str:
    """One paragraph: where the run stands and what it waits for."""
    summary = run_summary(chat, run)
    parts = [f"Run {run.local_id} is {run.status} after {summary['steps']} steps, {summary['tokens']} tokens, "
             f"${summary['cost_usd']:.4f}."]  # fmt: skip
    for req in chat.approvals.list(tenant=run.tenant, run_id=run.id, status="pending"):
        left = f", expires {utc(req.expires_at)}" if req.expires_at else ""
        parts.append(
            f"Waiting for approval {req.id}: {req.tool}({_args(req.args)}) under rule {req.rule}, "
            f"{req.approvals}/{req.spec.quorum} approvals by {', '.join(req.deciding_roles)}{left}."
        )
    if run.status == "waiting" and run.wake_at and not parts[1:]:
        parts.append(f"Sleeping until {utc(run.wake_at)} (a maintenance window or a timer).")
    if summary["answer"]:
        parts.append(f"Answer: {summary['answer']}")
    if summary["error"]:
        parts.append(f"Error: {summary['error']}")
    return " ".join(parts)


def why_text(chat: Chat, run: RunRecord, steps: list[StepRecord]) -> str:
    """Why the run is where it is: the policy decisions on its side-effecting calls, latest first."""
    lines = []
    for step in reversed(steps):
        if step.kind != "policy" or not step.result:
            continue
        decision = json.loads(step.result)
        call = json.loads(step.args or "{}")
        effect = decision.get("effect")
        if effect == "allow" and not (decision.get("call") or {}).get("side_effect"):
            continue  # reads are allowed by default; they explain nothing
        line = f"{call.get('tool')}({_args(call.get('args', {}))}): {effect} by rule {decision.get('rule')}"
        if decision.get("reason"):
            line += f" — {decision['reason']}"
        if decision.get("defer_until"):
            line += f" (deferred until {utc(decision['defer_until'])})"
        if decision.get("approval_rule"):
            line += f"; approval rule {decision['approval_rule']}"
        lines.append(line + f" [pack {decision.get('pack')} {decision.get('pack_hash')}]")
        if len(lines) == 5:
            break
    if not lines:
        return f"No side-effecting call was decided in run {run.local_id} yet; {status_text(chat, run)}"
    return "Policy decisions, latest first: " + "; ".join(lines)


def _args(args: dict[str, Any]) -> str:
    return ", ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in args.items())
