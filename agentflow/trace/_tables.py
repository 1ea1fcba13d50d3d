"""The tables of a trace, as pandas DataFrames built from the recorded rows."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import pandas as pd

from agentflow.approvals import ApprovalRequest
from agentflow.store import StepRecord
from agentflow.trace._records import Recorded, error_of, loads, response_of

STEP_COLUMNS = ["seq", "kind", "name", "status", "attempt", "started_at", "finished_at", "duration_s", "epoch", "error"]
TOOL_COLUMNS = ["seq", "call_id", "tool", "args", "result", "status", "attempt", "decision", "idempotency_key",
                "error", "started_at", "finished_at"]  # fmt: skip
DECISION_COLUMNS = ["seq", "call_id", "tool", "args", "approved", "effect", "rule", "reason", "pack", "pack_hash",
                    "defer_until", "at"]  # fmt: skip
APPROVAL_COLUMNS = ["id", "call_id", "tool", "args", "status", "rule", "requested_by", "approved_by", "votes",
                    "created_at", "decided_at", "expires_at", "revision", "args_hash"]  # fmt: skip
USAGE_COLUMNS = ["seq", "model", "input_tokens", "output_tokens", "total_tokens", "cost_usd", "source",
                 "finish_reason", "duration_s"]  # fmt: skip
MESSAGE_COLUMNS = ["index", "seq", "role", "content", "tool_calls", "tool_call_id", "name"]
ATTEMPT_COLUMNS = ["seq", "attempt", "error", "started_at", "finished_at", "retry_at"]
EFFECT_COLUMNS = ["effect_id", "kind", "idempotency_key", "seq", "tool", "step_status", "call_id", "at", "detail"]
# Tool steps whose outcome is unknown (intent recorded, worker gone) or being retried.
_TOOL_STATUS = {"completed": "ok", "failed": "error", "started": "unknown", "retrying": "retrying"}


def frame(rows: Sequence[dict[str, Any]], columns: list[str], times: Iterable[str] = ()) -> pd.DataFrame:
    """A DataFrame with these columns (also when empty), epoch-second columns as UTC datetimes."""
    df = pd.DataFrame.from_records(list(rows), columns=columns)
    for col in times:
        df[col] = pd.to_datetime(df[col].astype("float64"), unit="s", utc=True)
    return df


def steps_table(recorded: Recorded) -> pd.DataFrame:
    rows = [
        {
            "seq": s.seq, "kind": s.kind, "name": s.name, "status": s.status, "attempt": s.attempt,
            "started_at": s.started_at, "finished_at": s.finished_at,
            "duration_s": None if s.finished_at is None else s.finished_at - s.started_at,
            "epoch": s.epoch, "error": error_of(s),
        }
        for s in recorded.steps
    ]  # fmt: skip
    df = frame(rows, STEP_COLUMNS, times=("started_at", "finished_at"))
    df["duration_s"] = df["duration_s"].astype("float64")
    return df


def attempts_table(recorded: Recorded) -> pd.DataFrame:
    rows = [
        {"seq": a.seq, "attempt": a.attempt, "error": error_of(a), "started_at": a.started_at,
         "finished_at": a.finished_at, "retry_at": a.retry_at}
        for a in recorded.attempts
    ]  # fmt: skip
    return frame(rows, ATTEMPT_COLUMNS, times=("started_at", "finished_at", "retry_at"))


def _call(step: StepRecord) -> dict[str, Any]:
    value = loads(step.args)
    return value if isinstance(value, dict) else {}


def decision_rows(recorded: Recorded) -> list[dict[str, Any]]:
    """The recorded policy decisions, as dicts (also what `what_if` re-evaluates)."""
    rows = []
    for s in recorded.steps:
        if s.kind != "policy":
            continue
        call, decision = _call(s), loads(s.result) if s.status == "completed" else None
        decision = decision if isinstance(decision, dict) else {}
        rows.append({
            "seq": s.seq, "call_id": call.get("call"), "tool": call.get("tool", s.name), "args": call.get("args", {}),
            "approved": call.get("approved"), "effect": decision.get("effect"), "rule": decision.get("rule"),
            "reason": decision.get("reason", error_of(s)), "pack": decision.get("pack"),
            "pack_hash": decision.get("pack_hash"), "defer_until": decision.get("defer_until"), "at": s.started_at,
            "facts": decision.get("call"),
        })  # fmt: skip
    return rows


def decisions_table(recorded: Recorded) -> pd.DataFrame:
    return frame(decision_rows(recorded), DECISION_COLUMNS, times=("defer_until", "at"))


def tool_calls_table(recorded: Recorded) -> pd.DataFrame:
    last_effect: dict[str, str | None] = {}
    rows = []
    for s in recorded.steps:
        call = _call(s)
        if s.kind == "policy":
            decision = loads(s.result)
            last_effect[str(call.get("call"))] = decision.get("effect") if isinstance(decision, dict) else None
        if s.kind != "tool":
            continue
        result = loads(s.result) if s.status == "completed" else None
        rows.append({
            "seq": s.seq, "call_id": call.get("call"), "tool": call.get("tool", s.name), "args": call.get("args", {}),
            "result": result if isinstance(result, str) or result is None else str(result),
            "status": _TOOL_STATUS.get(s.status, s.status), "attempt": s.attempt,
            "decision": last_effect.get(str(call.get("call"))), "idempotency_key": f"{recorded.run_id}:{s.seq}",
            "error": error_of(s), "started_at": s.started_at, "finished_at": s.finished_at,
        })  # fmt: skip
    return frame(rows, TOOL_COLUMNS, times=("started_at", "finished_at"))


def _approval_row(req: ApprovalRequest) -> dict[str, Any]:
    votes = [
        {"who": v.principal, "decision": v.decision, "when": pd.Timestamp(v.at, unit="s", tz="UTC"),
         "comment": v.comment, "revision": v.revision}
        for v in req.votes
    ]  # fmt: skip
    approvers = [v.principal for v in req.votes if v.decision == "approve" and v.revision == req.revision]
    return {
        "id": req.id, "call_id": req.call_id, "tool": req.tool, "args": req.args, "status": req.status,
        "rule": req.rule, "requested_by": req.requested_by, "approved_by": ", ".join(approvers) or None,
        "votes": votes, "created_at": req.created_at, "decided_at": req.decided_at, "expires_at": req.expires_at,
        "revision": req.revision, "args_hash": req.args_hash,
    }  # fmt: skip


def approvals_table(recorded: Recorded) -> pd.DataFrame:
    rows = [_approval_row(a) for a in recorded.approvals]
    return frame(rows, APPROVAL_COLUMNS, times=("created_at", "decided_at", "expires_at"))


def audit_table(recorded: Recorded) -> pd.DataFrame:
    rows = [e.model_dump() for e in recorded.audit]
    columns = ["id", "at", "tenant", "actor", "action", "approval_id", "run_id", "outcome", "reason"]
    return frame(rows, columns, times=("at",))


def usage_rows(recorded: Recorded) -> list[dict[str, Any]]:
    rows = []
    for s in recorded.steps:
        if s.kind != "llm" or s.status != "completed":
            continue
        body = response_of(s)
        used = body.get("usage") or {}
        tokens_in, tokens_out = int(used.get("input_tokens", 0)), int(used.get("output_tokens", 0))
        rows.append({
            "seq": s.seq, "model": body.get("model") or s.name, "input_tokens": tokens_in,
            "output_tokens": tokens_out, "total_tokens": tokens_in + tokens_out,
            "cost_usd": float(used.get("cost_usd", 0.0)), "source": used.get("source"),
            "finish_reason": body.get("finish_reason"),
            "duration_s": None if s.finished_at is None else s.finished_at - s.started_at,
        })  # fmt: skip
    return rows


def usage_table(recorded: Recorded) -> pd.DataFrame:
    df = frame(usage_rows(recorded), USAGE_COLUMNS)
    df["duration_s"] = df["duration_s"].astype("float64")
    return df


def usage_total(recorded: Recorded) -> dict[str, Any]:
    rows = usage_rows(recorded)
    return {
        "calls": len(rows),
        "input_tokens": sum(r["input_tokens"] for r in rows),
        "output_tokens": sum(r["output_tokens"] for r in rows),
        "total_tokens": sum(r["total_tokens"] for r in rows),
        "cost_usd": round(sum(r["cost_usd"] for r in rows), 8),
    }


def messages_table(recorded: Recorded) -> pd.DataFrame:
    # Loaded here: decoding messages needs langchain-core, which the other tables do not.
    from agentflow.trace._messages import final_conversation, message_row

    rows = [message_row(seq, i, m) for i, (seq, m) in enumerate(final_conversation(recorded))]
    return frame(rows, MESSAGE_COLUMNS)


def effects_table(recorded: Recorded, effects: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Ledger rows whose idempotency key `<run_id>:<seq>` names a step of this run, beside it."""
    by_seq = {s.seq: s for s in recorded.steps}
    rows = []
    for effect in effects:
        key = str(effect.get("idempotency_key", ""))
        run_id, _, seq_text = key.rpartition(":")
        if run_id != recorded.run_id or not seq_text.isdigit():
            continue
        step = by_seq.get(int(seq_text))
        rows.append({
            "effect_id": effect.get("id"), "kind": effect.get("kind"), "idempotency_key": key,
            "seq": int(seq_text), "tool": step.name if step else None, "step_status": step.status if step else None,
            "call_id": _call(step).get("call") if step else None, "at": effect.get("at"),
            "detail": effect.get("detail"),
        })  # fmt: skip
    return frame(rows, EFFECT_COLUMNS, times=("at",))
