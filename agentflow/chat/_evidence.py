"""What an approver needs beside the staged call, as plain data for every surface: the agent's
stated reason (its words with the call), its diagnosis and the reads it made (a KPI series, an
anomaly list) before asking, the rule in words, and the limits that bound the change (how many
sites or calls the policy's rate and blast-radius limits allow, and how many are used now).

Everything quoted from the run (model words, tool output) is untrusted: surfaces show it as text.
Tool output is decoded from its recorded JSON so a surface can lay it out (tables, times).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from agentflow.approvals import ApprovalRequest
from agentflow.chat._context import Chat
from agentflow.chat._views import json_or_text
from agentflow.policy import PolicyPack, Rule
from agentflow.store import StepRecord

#: Fields of a read's result shown as the agent's diagnosis (first level of a JSON object).
DIAGNOSIS_FIELDS = ("diagnosis", "top_cause", "cause", "confidence", "rationale", "evidence", "summary")
READS = 6  # reads of the staged call's target shown as evidence (the latest of each tool)
TEXT_LIMIT = 20_000


def evidence(
    chat: Chat, req: ApprovalRequest, steps: Sequence[StepRecord], *, pack: PolicyPack | None = None
) -> dict[str, Any]:
    """The evidence of an approval request (see the module docstring).

    Args:
        chat: the store and clock.
        req: the request.
        steps: its run's history (`chat.store.load_steps(req.run_id)`).
        pack: the policy pack that decided (`agentflow.agent.agent_policies(workflow)`): its
            limits and rule descriptions; without it the limits are not counted.

    Returns:
        `{"reason": str | None, "reason_seq": int | None, "diagnosis": [{"seq", "tool", "field",
        "value"}], "reads": [{"seq", "tool", "args", "result", "at"}], "rule": {"id", "text"},
        "deferred": {"rule", "until", "text"} | None, "limits": [{"rule", "kind", "scope", "used",
        "limit", "window_s", "after", "text"}], "target", "region"}`.
    """
    asked = _asked_at(req, steps)
    before = [s for s in steps if s.seq < asked]
    decisions = [d for d in (_decision(s) for s in before) if d.get("call_id") == req.call_id]
    facts = decisions[-1].get("call") if decisions else None
    facts = facts if isinstance(facts, dict) else {}
    reads = _reads(before, facts.get("target"))
    reason, reason_seq = _reason(chat, req, before)
    deferred = next((d for d in reversed(decisions) if d.get("effect") == "defer"), None)
    matched = decisions[-1].get("matched", []) if decisions else []
    return {
        "reason": reason,
        "reason_seq": reason_seq,
        "diagnosis": _diagnosis(reads),
        "reads": reads,
        "rule": {"id": req.rule, "text": rule_text(req, pack)},
        "deferred": _deferred(deferred, pack) if deferred else None,
        "limits": limits(chat, req, facts, matched, pack),
        "target": facts.get("target"),
        "region": facts.get("region"),
    }


def _diagnosis(reads: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The diagnosis fields of the reads' results, each value once (a later read repeating a
    cause adds nothing)."""
    found: list[dict[str, Any]] = []
    seen: set[str] = set()
    for r in reads:
        result = r["result"] if isinstance(r["result"], dict) else {}
        for k in (k for k in DIAGNOSIS_FIELDS if k in result):
            value = json.dumps(result[k], sort_keys=True, default=str)
            if value not in seen:
                seen.add(value)
                found.append({"seq": r["seq"], "tool": r["tool"], "field": k, "value": result[k]})
    return found


def _asked_at(req: ApprovalRequest, steps: Sequence[StepRecord]) -> int:
    """The seq of the step that asked for `req` (every step, if none did)."""
    for s in steps:
        if (
            s.kind == "approval"
            and s.name.startswith("request")
            and (json_or_text(s.args) or {}).get("call") == req.call_id
        ):
            return s.seq
    return max((s.seq for s in steps), default=0) + 1


def _decision(step: StepRecord) -> dict[str, Any]:
    if step.kind != "policy" or step.status != "completed":
        return {}
    call, result = json_or_text(step.args), json_or_text(step.result)
    if not isinstance(call, dict) or not isinstance(result, dict):
        return {}
    return {**result, "call_id": call.get("call"), "seq": step.seq}


def _decoded(text: str | None) -> Any:
    value: Any = text
    for _ in range(2):  # a tool's output is the JSON string of its (usually JSON) text
        if isinstance(value, str) and value.strip()[:1] in ("{", "["):
            try:
                value = json.loads(value)
            except ValueError:
                break
        elif isinstance(value, str) and value.startswith('"'):
            value = json_or_text(value)
    if isinstance(value, str) and len(value) > TEXT_LIMIT:
        value = value[:TEXT_LIMIT] + f" … ({len(value) - TEXT_LIMIT} more characters)"
    return value


def _reads(before: Sequence[StepRecord], target: Any) -> list[dict[str, Any]]:
    """The latest read-only tool results before the request, of its target when it has one: a
    read whose tool declares a target counts when that target is the request's (a read of
    CS-1010, or of CS-102 listing CS-101 as a neighbour, is no evidence for a change on CS-101);
    one without, when its arguments or output name the target as a whole word."""
    read_targets = {  # call id -> the target its decision named (None: the tool declares none)
        d.get("call_id"): d["call"].get("target")
        for d in (_decision(s) for s in before)
        if isinstance(d.get("call"), dict) and d["call"].get("side_effect") is False
    }
    found = []
    for s in before:
        call = json_or_text(s.args) if s.kind == "tool" else None
        if not isinstance(call, dict) or call.get("call") not in read_targets or s.status != "completed":
            continue
        result = _decoded(s.result)
        if target and not _about(str(target), read_targets[call.get("call")], call.get("args", {}), result):
            continue
        found.append({"seq": s.seq, "tool": call.get("tool", s.name), "args": call.get("args", {}), "result": result,
                      "at": s.finished_at})  # fmt: skip
    latest = {r["tool"]: r for r in found}  # a tool read again: its latest result
    return sorted(latest.values(), key=lambda r: r["seq"])[-READS:]


def _about(target: str, declared: Any, args: Any, result: Any) -> bool:
    """Whether a read is about `target`: its declared target, else the target as a whole word
    (not inside a longer site id) in its arguments or the start of its output."""
    if declared is not None:
        return str(declared) == target
    text = json.dumps(args, default=str) + json.dumps(result, default=str)[:2000]
    return re.search(rf"(?<![\w-]){re.escape(target)}(?![\w-])", text) is not None


def _reason(chat: Chat, req: ApprovalRequest, before: Sequence[StepRecord]) -> tuple[str | None, int | None]:
    """The model's words with the staged call, else the last words it said before it."""
    models = [s for s in before if s.kind == "llm" and s.status == "completed"]
    refs = {s.seq: (json_or_text(s.result) or {}).get("message") for s in models}
    blobs = chat.store.get_blobs([r for r in refs.values() if isinstance(r, str)])
    if not blobs:
        return None, None
    from agentflow.llm import message_from_blob  # langchain-core: loaded when a card shows evidence

    said: list[tuple[int, str, bool]] = []
    for seq, ref in refs.items():
        if isinstance(ref, str) and ref in blobs:
            message = message_from_blob(blobs[ref])
            text = message.content if isinstance(message.content, str) else json.dumps(message.content)
            calls = {c.get("id") for c in getattr(message, "tool_calls", [])}
            said.append((seq, text.strip(), req.call_id in calls))
    with_call = [(seq, text) for seq, text, made in said if made and text]
    spoken = with_call or [(seq, text) for seq, text, _ in said if text]
    return (spoken[-1][1][:TEXT_LIMIT], spoken[-1][0]) if spoken else (None, None)


def _words(seconds: float) -> str:
    hours, rest = divmod(int(seconds), 3600)
    return f"{hours} h {rest // 60} min" if hours and rest else f"{hours} h" if hours else f"{rest // 60} min"


def _rule(pack: PolicyPack | None, rule_id: str) -> Rule | None:
    return next((r for r in pack.rules if r.id == rule_id), None) if pack is not None else None


def rule_text(req: ApprovalRequest, pack: PolicyPack | None = None) -> str:
    """The approval rule of `req` in words: who decides, how many, four-eyes, expiry, edits (and
    the rule's description from the pack, when it has one)."""
    spec = req.spec
    who = "any operator of the tenant" if "*" in spec.roles else " or ".join(spec.roles)
    text = f"{req.tool} needs {spec.quorum} approval{'s' if spec.quorum != 1 else ''} by {who}"
    if spec.four_eyes:
        text += ", not by the one who asked for the run (four-eyes)"
    then = f"escalates to {' or '.join(spec.escalate_to)}" if spec.on_expiry == "escalate" else "is refused"
    text += f"; without a decision within {_words(spec.expires_in)} it {then}"
    if spec.editable_args:
        text += f"; an approver may change {', '.join(spec.editable_args)}"
    found = _rule(pack, req.rule)
    return f"{found.description.strip()} {text}." if found is not None and found.description else f"{text}."


def _deferred(decision: dict[str, Any], pack: PolicyPack | None) -> dict[str, Any]:
    found = _rule(pack, str(decision.get("rule")))
    text = "the change runs only in a maintenance window"
    if found is not None and found.description:
        text = found.description.strip()
    return {"rule": decision.get("rule"), "until": decision.get("defer_until"), "text": text}


def limits(
    chat: Chat, req: ApprovalRequest, facts: dict[str, Any], matched: Sequence[str], pack: PolicyPack | None
) -> list[dict[str, Any]]:
    """The pack's limits on the staged call (those its decision matched), with what they allow
    and what the tenant has used now: the blast radius of approving."""
    rules = [r for r in (_rule(pack, m) for m in matched) if r is not None and r.effect == "limit"]
    if not rules:
        return []
    now, tenant, target, region = chat.clock.now(), req.tenant, facts.get("target"), facts.get("region")

    def count(rule: Rule) -> dict[str, Any]:
        if rule.blast_radius is not None:
            br = rule.blast_radius
            scope = region if br.per == "region" else None
            where = f"region {scope}" if scope else f"tenant {tenant}"
            seen = chat.store.read(lambda tx: tx.usage().targets(tenant, scope, now - br.window))
            after = len(seen) + (0 if target in seen or not target else 1)
            text = (f"{len(seen)} of at most {br.max_targets} sites in {where} changed in the last "
                    f"{_words(br.window)}; approving makes it {after}")  # fmt: skip
            return {"rule": rule.id, "kind": "blast_radius", "scope": where, "used": len(seen), "limit": br.max_targets,
                    "window_s": br.window, "after": after, "targets": sorted(seen), "text": text}  # fmt: skip
        if rule.rate is not None:
            rate = rule.rate
            used = chat.store.read(lambda tx: tx.usage().calls(tenant, req.tool, now - rate.window))
            text = f"{req.tool} ran {used} of at most {rate.max_calls} times in the last {_words(rate.window)}"
            return {"rule": rule.id, "kind": "rate", "scope": f"tenant {tenant}", "used": used, "limit": rate.max_calls,
                    "window_s": rate.window, "after": used + 1, "text": text}  # fmt: skip
        text = f"one change at a time on {target or 'a target'}: another run's open change on it is refused"
        return {"rule": rule.id, "kind": "one_change_per_target", "scope": target, "used": None, "limit": 1,
                "window_s": None, "after": None, "text": text}  # fmt: skip

    return [count(r) for r in rules]
