"""Export: JSON lines, and spans following the OpenTelemetry GenAI semantic conventions.

Span and trace ids are derived from (run id, seq), so exporting the same run twice (or a replay
of it) yields the same ids: spans can be deduplicated and linked across exports. `step_span` and
`run_span` are also what live spans send as steps finish (`_live`): one mapping for both, so a
run exported after the fact and the same run seen live are the same spans.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from agentflow.store import RunRecord, StepRecord
from agentflow.trace._records import Attempt, Recorded, describe_error, error_of, loads, response_of

_NS = 1_000_000_000


def trace_id(run_id: str) -> str:
    """The 32-hex-digit trace id of a run (a root run's children share their own ids)."""
    return hashlib.sha256(f"agentflow:{run_id}".encode()).hexdigest()[:32]


def span_id(run_id: str, seq: int) -> str:
    """The 16-hex-digit span id of step `seq` (0: the run's own span)."""
    return hashlib.sha256(f"agentflow:{run_id}:{seq}".encode()).hexdigest()[:16]


def jsonl_records(recorded: Recorded) -> list[dict[str, Any]]:
    """The run, then each step (JSON columns decoded), each failed attempt and approval."""
    run = recorded.run
    out: list[dict[str, Any]] = [{
        "type": "run", "run_id": run.id, "workflow": run.workflow, "tenant": run.tenant, "status": run.status,
        "input": loads(run.input), "output": loads(run.output), "error": loads(run.error), "meta": run.meta_dict(),
        "created_at": run.created_at, "completed_at": run.completed_at,
    }]  # fmt: skip
    for s in recorded.steps:
        out.append({
            "type": "step", "run_id": run.id, "seq": s.seq, "kind": s.kind, "name": s.name, "status": s.status,
            "attempt": s.attempt, "args": loads(s.args), "result": loads(s.result), "error": loads(s.error),
            "started_at": s.started_at, "finished_at": s.finished_at,
        })  # fmt: skip
    out.extend({"type": "attempt", "run_id": run.id, **_attempt(a)} for a in recorded.attempts)
    out.extend({"type": "approval", **a.model_dump(mode="json")} for a in recorded.approvals)
    return out


def _attempt(a: Attempt) -> dict[str, Any]:
    return {"seq": a.seq, "attempt": a.attempt, "error": loads(a.error), "started_at": a.started_at,
            "finished_at": a.finished_at, "retry_at": a.retry_at}  # fmt: skip


def jsonl_lines(recorded: Recorded) -> Iterator[str]:
    """`jsonl_records`, one JSON object per line (with its newline)."""
    for record in jsonl_records(recorded):
        yield json.dumps(record, ensure_ascii=False, default=str) + "\n"


def jsonl_text(recorded: Recorded) -> str:
    return "".join(jsonl_lines(recorded))


def write_jsonl(recorded: Recorded, path: str | Path) -> int:
    """Write `jsonl_records` to `path`, one object per line, as they are made; return the number
    of lines."""
    count = 0
    with Path(path).open("w", encoding="utf-8") as f:
        for line in jsonl_lines(recorded):
            f.write(line)
            count += 1
    return count


def step_span(run: RunRecord, s: StepRecord) -> dict[str, Any]:
    """The span of step `s` of `run` (a child of the run's span)."""
    attrs: dict[str, Any] = {"agentflow.run_id": run.id, "agentflow.seq": s.seq, "agentflow.step.kind": s.kind,
                             "agentflow.step.status": s.status, "agentflow.step.attempt": s.attempt}  # fmt: skip
    name, kind = f"{s.kind} {s.name}", "INTERNAL"
    if s.kind == "llm":
        body = response_of(s)
        used = body.get("usage") or {}
        name, kind = f"chat {s.name}", "CLIENT"
        attrs.update({"gen_ai.operation.name": "chat", "gen_ai.request.model": s.name,
                      "gen_ai.system": _system(s.name)})  # fmt: skip
        if body:
            attrs.update({
                "gen_ai.response.model": body.get("model") or s.name,
                "gen_ai.usage.input_tokens": int(used.get("input_tokens", 0)),
                "gen_ai.usage.output_tokens": int(used.get("output_tokens", 0)),
                "gen_ai.response.finish_reasons": [str(body.get("finish_reason"))],
                "agentflow.cost_usd": float(used.get("cost_usd", 0.0)),
            })  # fmt: skip
    elif s.kind == "tool":
        call = loads(s.args)
        call = call if isinstance(call, dict) else {}
        name = f"execute_tool {s.name}"
        attrs.update({"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": s.name, "gen_ai.tool.type": "function",
                      "gen_ai.tool.call.id": str(call.get("call", "")),
                      "agentflow.idempotency_key": f"{run.id}:{s.seq}"})  # fmt: skip
    elif s.kind == "policy":
        decision = loads(s.result)
        if isinstance(decision, dict):
            attrs.update({"agentflow.policy.effect": decision.get("effect"), "agentflow.policy.rule": decision.get("rule"),
                          "agentflow.policy.pack_hash": decision.get("pack_hash")})  # fmt: skip
    error = error_of(s)
    end = s.finished_at if s.finished_at is not None else s.started_at
    return {
        "name": name, "kind": kind, "trace_id": trace_id(run.root_id), "span_id": span_id(run.id, s.seq),
        "parent_span_id": span_id(run.id, 0), "start_time_unix_nano": int(s.started_at * _NS),
        "end_time_unix_nano": int(end * _NS),
        "status": {"code": "ERROR", "description": error} if s.status == "failed" else {"code": "OK" if s.status == "completed" else "UNSET"},
        "attributes": attrs,
    }  # fmt: skip


def _system(model: str) -> str:
    """`gen_ai.system`: the provider named by a `provider:model` name, else the adapter's."""
    provider, sep, _ = model.partition(":")
    return provider if sep and provider else "openai" if model.startswith(("gpt-", "o1", "o3", "o4")) else "agentflow"


def run_span(run: RunRecord, *, end: float, status: str | None = None, error: str | None = None) -> dict[str, Any]:
    """The span of the run itself (`invoke_agent <workflow>`), ended at `end`; `status` and
    `error` default to the record's (a live span knows the outcome before the record says it)."""
    status = status or run.status
    if status == "failed" and error is None:
        error = describe_error(run.error_dict())
    parent = span_id(run.parent_id, run.parent_seq or 0) if run.parent_id else None
    return {
        "name": f"invoke_agent {run.workflow}", "kind": "INTERNAL", "trace_id": trace_id(run.root_id),
        "span_id": span_id(run.id, 0), "parent_span_id": parent, "start_time_unix_nano": int(run.created_at * _NS),
        "end_time_unix_nano": int(end * _NS),
        "status": {"code": "ERROR", "description": error} if status == "failed"
        else {"code": "OK" if status == "completed" else "UNSET"},
        "attributes": {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": run.workflow,
                       "agentflow.run_id": run.id, "agentflow.tenant": run.tenant, "agentflow.status": status},
    }  # fmt: skip


def otel_spans(recorded: Recorded) -> list[dict[str, Any]]:
    """The run's span (`invoke_agent <workflow>`) and one child span per step."""
    run = recorded.run
    end = run.completed_at if run.completed_at is not None else max(
        [s.finished_at or s.started_at for s in recorded.steps], default=run.updated_at
    )  # fmt: skip
    return [run_span(run, end=end), *(step_span(run, s) for s in recorded.steps)]
