"""A run as a timeline: one row per recorded step on the run's recorded clock, with the lease
changes between them (a worker lost and another resuming; a run woken after a durable wait), the
reads folded into groups, and positions on an axis where long waits are drawn shortened.

`build_timeline` returns plain JSON values: the web console (`GET /api/runs/{id}/timeline`) and
the notebook HTML (`Trace._repr_html_`) draw the same data. Text that came from a model, a tool
or an operator (previews, details, comments) is untrusted: surfaces show it as text only.

How lease changes are read: every claim of a run increments its epoch, and every step is written
under the epoch of the claim that recorded it (a step finished under a later claim carries the
later epoch). Each epoch after the first is a claim: after a durable wait (the claim's first step
by seq completes a timer, a signal or a child run: the run was parked and woken) or because the
worker that held it stopped without parking it (a crash, a kill, a lost lease, a worker stopped
mid-run: another worker took the run over and replayed it). Epochs are read in claim order, not
step by step: reads run together finish out of seq order. A side-effecting step of the new claim
at an attempt beyond its failed ones had its intent recorded before the crash: it ran again.
"""

from __future__ import annotations

import json
from bisect import bisect_left, insort
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import pairwise
from typing import Any

from agentflow.engine import App, Client
from agentflow.errors import CorruptRecordError
from agentflow.store import StepRecord
from agentflow.trace._detail import decoded, step_detail
from agentflow.trace._records import Attempt, Recorded, error_of, load_recorded, loads, open_client
from agentflow.trace._story import rerun_words, story

#: Steps whose length is time spent waiting (for a timer, a signal, a child run), not working.
WAIT_KINDS = frozenset({"sleep", "signal", "child"})
#: Determinism bookkeeping (the time, a uuid, a random number, a patch marker).
BOOKKEEPING = frozenset({"now", "uuid", "random", "patch"})
#: A wait or an idle gap longer than this (seconds) is drawn shortened, its real length labelled.
COMPRESS_S = 30.0
_UNITS = 2.0  # axis units per step that the recorded work (not waits) is spread over
_BREAK = 0.12  # a shortened stretch: this share of the recorded work's units (at least _MIN * 2)
_MIN = 1.0  # axis units of the shortest bar: steps of no recorded length still show, in order
_KIND = {"llm": "model", "sleep": "wait"}
_PREVIEW = 240


@dataclass(slots=True)
class _Span:
    seq: int
    start: float
    end: float
    wait: bool


def build_timeline(recorded: Recorded, *, now: float | None = None) -> dict[str, Any]:
    """The timeline of a recorded run (see the module docstring); `now` ends steps still open
    (default: the latest time recorded)."""
    steps = sorted(recorded.steps, key=lambda s: s.seq)
    now = _latest(recorded) if now is None else now
    facts = _call_facts(steps)
    retries: dict[int, list[Attempt]] = defaultdict(list)
    for attempt in recorded.attempts:
        retries[attempt.seq].append(attempt)
    rows = [_row(recorded, s, facts, retries.get(s.seq, []), now) for s in steps]
    markers = _markers(steps, {seq: len(tries) for seq, tries in retries.items()})
    groups = _groups(rows, markers)
    start = min([recorded.run.created_at, *(r["started_at"] for r in rows)])
    axis = _layout(rows, markers, groups, start)
    built = {
        "run": _run(recorded),
        "rows": rows,
        "groups": groups,
        "markers": markers,
        "axis": axis,
        "totals": _totals(rows, markers, recorded),
    }
    built["story"] = story(built)
    return built


def timeline(source: App | Client | str, run_id: str, *, now: float | None = None) -> dict[str, Any]:
    """A recorded run as a timeline, in plain JSON values: what the web console draws
    (`GET /api/runs/{id}/timeline`) and `Trace._repr_html_` renders.

    Args:
        source: an App, a Client, or a store URL (`sqlite:///path`, `postgresql://...`).
        run_id: the run (its store key: `<tenant>:<id>` outside the default tenant).
        now: the time that ends steps still open (a run waiting now); default: the latest
            time recorded.

    Returns:
        `run` (id, status, task, who asked, outcome), `rows` (one per step, in seq order: kind,
        title, times, lease epoch, attempt, retries, tokens and cost of model calls, decisions,
        approvals with their votes, `x0`/`x1` on the axis, `detail`: what the step carried),
        `groups` (reads folded together), `markers` (`crash`, `resume`, `wake`: lease changes),
        `axis` (start, end, the shortened stretches), `totals` and `story` (what happened, in
        sentences). Text from models, tools and operators is untrusted: show it as text only.

    Raises:
        UnknownRunError: no such run in the store.
    """
    client, owned = open_client(source)
    try:
        return build_timeline(load_recorded(client, run_id), now=now)
    finally:
        if owned:
            client.close()


def _latest(recorded: Recorded) -> float:
    times = [recorded.run.updated_at, recorded.run.completed_at or 0.0]
    times += [s.finished_at or s.started_at for s in recorded.steps]
    return max(times)


def _run(recorded: Recorded) -> dict[str, Any]:
    run = recorded.run
    raw, output = loads(run.input), loads(run.output) if run.status == "completed" else None
    task = raw[0][0] if isinstance(raw, list) and raw and isinstance(raw[0], list) and raw[0] else None
    outcome = output if isinstance(output, dict) else {}
    meta, error = run.meta_dict(), run.error_dict()
    return {
        "id": run.local_id, "key": run.id, "workflow": run.workflow, "tenant": run.tenant, "status": run.status,
        "task": task if isinstance(task, str) else None, "requested_by": meta.get("requested_by"),
        "created_at": run.created_at, "completed_at": run.completed_at, "epoch": run.epoch,
        "outcome": outcome.get("status") if isinstance(outcome.get("status"), str) else None,
        "answer": outcome.get("answer") if isinstance(outcome.get("answer"), str) else None,
        "error": f"{error.get('type')}: {error.get('message')}" if error else None,
    }  # fmt: skip


def _call_facts(steps: list[StepRecord]) -> dict[str, dict[str, Any]]:
    """What the policy saw of each gated call (call id -> side_effect, target, region)."""
    found: dict[str, dict[str, Any]] = {}
    for s in steps:
        if s.kind == "policy" and s.status == "completed":
            decision, call = loads(s.result), loads(s.args)
            facts = decision.get("call") if isinstance(decision, dict) else None
            if isinstance(facts, dict) and isinstance(call, dict):
                found[str(call.get("call"))] = facts
    return found


def _args_text(args: Any, limit: int = 160) -> str:
    if not isinstance(args, dict):
        return "" if args is None else str(args)[:limit]
    text = ", ".join(f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in args.items())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _utc(value: Any) -> str:
    if not isinstance(value, int | float):
        return "?"
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _row(
    recorded: Recorded, s: StepRecord, facts: dict[str, dict[str, Any]], tries: list[Attempt], now: float
) -> dict[str, Any]:
    end = s.finished_at if s.finished_at is not None else max(now, s.started_at)
    row: dict[str, Any] = {
        "seq": s.seq, "kind": _KIND.get(s.kind, "bookkeeping" if s.kind in BOOKKEEPING else s.kind),
        "step_kind": s.kind, "name": s.name, "title": f"{s.kind} {s.name}", "status": s.status,
        "attempt": s.attempt, "epoch": s.epoch, "started_at": s.started_at, "finished_at": s.finished_at,
        "duration_s": end - s.started_at, "open": s.finished_at is None, "wait": s.kind in WAIT_KINDS,
        "read": False, "group": None, "preview": None, "error": error_of(s),
        "retries": [{"attempt": a.attempt, "error": error_of(a), "started_at": a.started_at,
                     "finished_at": a.finished_at, "retry_at": a.retry_at} for a in tries],
        "detail": {},
    }  # fmt: skip
    try:
        row["detail"] = step_detail(recorded, s)
        _fill(row, recorded, s, facts)
    except (CorruptRecordError, ValueError, TypeError, KeyError, AttributeError, OverflowError, OSError) as exc:
        # One record this view cannot read is one row saying so: the rest of the run is still
        # drawn (an incident's timeline must not go blank over one odd value).
        row["title"] = f"{s.kind} {s.name} (unreadable: {type(exc).__name__})"
        row["detail"] = {"unreadable": f"{type(exc).__name__}: {exc}"[:_PREVIEW], "args": s.args, "result": s.result}
        if s.kind == "llm":
            row["usage"] = {}
    return row


def _fill(row: dict[str, Any], recorded: Recorded, s: StepRecord, facts: dict[str, dict[str, Any]]) -> None:
    """The kind-specific fields of a step's row (title, read or not, usage, decision, ...)."""
    detail = row["detail"]
    if s.kind == "llm":
        _model_row(row, s, detail)
    elif s.kind == "tool":
        call = facts.get(str(detail.get("call_id")), {})
        row["read"] = call.get("side_effect") is False
        row["target"] = call.get("target")
        row["title"] = f"{detail['tool']}({_args_text(detail['args'])})"
        row["preview"] = _preview(detail["result"] if s.status == "completed" else row["error"])
    elif s.kind == "policy":
        call = facts.get(str(detail.get("call_id")), {})
        row["read"] = detail["effect"] == "allow" and call.get("side_effect") is False
        row["policy"] = {k: detail[k] for k in ("effect", "rule", "reason", "defer_until", "tool")}
        until = f", until {_utc(detail['defer_until'])}" if detail["defer_until"] else ""
        row["title"] = f"policy {detail['effect']} ({detail['rule']}) for {detail['tool']}{until}"
    elif s.kind == "approval":
        _approval_row(row, s, recorded)
    elif s.kind in WAIT_KINDS:
        _wait_row(row, s, recorded)
    elif s.kind in BOOKKEEPING:
        row["title"] = {"now": "recorded the time", "uuid": "recorded a uuid", "random": "recorded a random number",
                        "patch": f"code change marker {s.name}"}[s.kind]  # fmt: skip
    elif s.kind == "plan":
        planned = (loads(s.result) or {}).get("steps", []) if s.status == "completed" else []
        row["title"] = "plan: " + " → ".join(str(p.get("tool") or "?") for p in planned if isinstance(p, dict))


def _preview(value: Any) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= _PREVIEW else text[: _PREVIEW - 1] + "…"


def _model_row(row: dict[str, Any], s: StepRecord, detail: dict[str, Any]) -> None:
    used = detail["usage"]
    response = detail["response"] or {}
    calls = [c["name"] for c in response.get("tool_calls", [])]
    row["usage"] = {"model": detail["model"], "tokens_in": used.get("input_tokens"),
                    "tokens_out": used.get("output_tokens"), "cost_usd": used.get("cost_usd"),
                    "cost_source": used.get("cost_source")}  # fmt: skip
    row["title"] = f"model {detail['model']}" + (f" → {', '.join(calls)}" if calls else " → answer" if response else "")
    row["calls"] = calls
    row["preview"] = _preview(response.get("content") or None)


def _approval_row(row: dict[str, Any], s: StepRecord, recorded: Recorded) -> None:
    body = loads(s.result) if s.status == "completed" else None
    body = body if isinstance(body, dict) else {}
    request = next((a for a in recorded.approvals if a.id == body.get("id")), None)
    status = request.status if request is not None else body.get("status")
    what = {"read": f"approval decided: {body.get('status')}", "expire": "approval expired"}.get(
        s.name, "approval requested"
    )
    row["title"] = f"{what} · {body.get('tool', '')} ({body.get('rule', '')})"
    row["approval"] = _approval(request, body, status)


def _approval(request: Any, body: dict[str, Any], status: Any) -> dict[str, Any]:
    votes = body.get("votes", [])
    if request is not None:
        votes = [{"principal": v.principal, "decision": v.decision, "comment": v.comment, "at": v.at}
                 for v in request.votes if v.revision == request.revision]  # fmt: skip
    return {"id": body.get("id"), "tool": body.get("tool"), "rule": body.get("rule"), "status": status,
            "requested_by": body.get("requested_by"), "created_at": body.get("created_at"),
            "decided_at": request.decided_at if request is not None else body.get("decided_at"),
            "args": body.get("args"), "diff": body.get("diff"), "votes": votes}  # fmt: skip


def _wait_row(row: dict[str, Any], s: StepRecord, recorded: Recorded) -> None:
    if s.kind == "sleep":
        until = loads(s.args)
        when = datetime.fromisoformat(until).timestamp() if isinstance(until, str) else s.wake_at
        row["title"] = f"durable wait until {_utc(when)}"
        row["until"] = when
    elif s.kind == "signal" and s.name.startswith("approval:"):
        approval_id = s.name.split(":", 1)[1]
        request = next((a for a in recorded.approvals if a.id == approval_id), None)
        row["title"] = f"waited for approval {approval_id}"
        if request is not None:
            body = {"id": request.id, "tool": request.tool, "rule": request.rule, "requested_by": request.requested_by,
                    "created_at": request.created_at, "args": request.args, "diff": request.diff}  # fmt: skip
            row["approval"] = _approval(request, body, request.status)
    elif s.kind == "signal":
        row["title"] = f"waited for signal {s.name}"
        row["preview"] = _preview(decoded(loads(s.result)))
    else:
        row["title"] = f"child run {decoded(loads(s.args))} ({s.name})"
    if s.status == "waiting":
        row["title"] += " (waiting)"


# -- lease changes ---------------------------------------------------------------------------
def _markers(steps: list[StepRecord], failed: dict[int, int]) -> list[dict[str, Any]]:
    """The lease changes, read lease by lease (not step by step: reads run together finish out of
    seq order, so a crash amid them leaves epochs 1, 2, 1, 2 by seq; children end in any order).
    Each lease after the first begins at its first step by seq; what the earlier leases recorded
    last (by seq and by time) is where the one before it ended. `failed`: seq -> failed attempts."""
    firsts: dict[int, StepRecord] = {}
    last_seq: dict[int, int] = {}
    last_at: dict[int, float] = {}
    for s in steps:
        firsts.setdefault(s.epoch, s)
        last_seq[s.epoch] = max(last_seq.get(s.epoch, 0), s.seq)
        last_at[s.epoch] = max(last_at.get(s.epoch, s.started_at), s.finished_at or s.started_at)
    epochs = sorted(firsts)
    markers: list[dict[str, Any]] = []
    before_seq, before_at = 0, 0.0
    for old, new in pairwise(epochs):
        before_seq, before_at = max(before_seq, last_seq[old]), max(before_at, last_at[old])
        cur = firsts[new]
        base = {"after_seq": before_seq, "before_seq": cur.seq, "epoch_from": old, "epoch_to": new,
                "at": before_at, "resumed_at": cur.started_at, "gap_s": max(0.0, cur.started_at - before_at)}  # fmt: skip
        skipped = new - old - 1
        extra = f" ({skipped} claim{'s' * (skipped > 1)} in between recorded nothing)" if skipped > 0 else ""
        if cur.kind in WAIT_KINDS:
            markers.append({**base, "kind": "wake",
                            "text": f"woken after the wait: claimed again under lease {new}{extra}"})  # fmt: skip
            continue
        rerun = [s.seq for s in steps if s.epoch == new and s.kind not in WAIT_KINDS
                 and s.attempt > 1 + failed.get(s.seq, 0)]  # fmt: skip
        markers.append({**base, "kind": "crash",
                        "text": f"worker lost after step {before_seq}: lease {old} ended without the run being "
                                "parked (a crash, a kill, a lost lease or a worker stopped mid-run)"})  # fmt: skip
        markers.append({**base, "kind": "resume", "rerun": rerun,
                        "text": f"resumed at step {cur.seq} by a worker under lease {new}{extra}: the history was "
                                f"replayed, {rerun_words(rerun)}"})  # fmt: skip
    return markers


# -- folding: reads ----------------------------------------------------------------------------
def _turns(rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Rows cut before each model call: a call and what it led to."""
    turns: list[list[dict[str, Any]]] = []
    for row in rows:
        if row["kind"] == "model" or not turns:
            turns.append([])
        turns[-1].append(row)
    return turns


def _is_read_turn(turn: list[dict[str, Any]]) -> bool:
    tools = [r for r in turn if r["kind"] == "tool"]
    quiet = all(r["status"] == "completed" and not r["retries"] for r in turn)
    kinds_ok = all(r["kind"] in ("model", "tool", "policy", "bookkeeping") for r in turn)
    return bool(tools) and quiet and kinds_ok and all(r["read"] for r in turn if r["kind"] in ("tool", "policy"))


def _groups(rows: list[dict[str, Any]], markers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Consecutive read turns, folded together (a lease change between two turns cuts them)."""
    cuts = {m["before_seq"] for m in markers}
    runs: list[list[dict[str, Any]]] = []
    previous_read = False
    for turn in _turns(rows):
        read = _is_read_turn(turn)
        if read and previous_read and turn[0]["seq"] not in cuts:
            runs[-1].extend(turn)
        elif read:
            runs.append(list(turn))
        previous_read = read
    groups = []
    for members in runs:
        gid = f"reads-{members[0]['seq']}"
        tools = [r for r in members if r["kind"] == "tool"]
        models = [r["usage"] for r in members if r["kind"] == "model"]
        for r in members:
            r["group"] = gid
        names = list(dict.fromkeys(r["detail"]["tool"] for r in tools))
        groups.append({
            "id": gid, "kind": "reads", "seqs": [r["seq"] for r in members], "tools": names,
            "title": f"{len(tools)} read{'s' * (len(tools) != 1)}: {', '.join(names)}",
            "model_calls": len(models), "tokens": sum(_tokens(u) for u in models),
            "cost_usd": round(sum(float(u.get("cost_usd") or 0.0) for u in models), 8),
            "started_at": members[0]["started_at"], "finished_at": members[-1]["finished_at"],
        })  # fmt: skip
    return groups


def _tokens(usage: dict[str, Any]) -> int:
    return int(usage.get("tokens_in") or 0) + int(usage.get("tokens_out") or 0)


# -- the axis ----------------------------------------------------------------------------------
def _layout(
    rows: list[dict[str, Any]], markers: list[dict[str, Any]], groups: list[dict[str, Any]], start: float
) -> dict[str, Any]:
    """Positions (0..100) of every row's bar: linear in recorded time, waits and idle gaps over
    COMPRESS_S shortened to a fixed width (their real length kept for the label), and every bar
    at least _MIN wide, so steps recorded at one instant still read left to right in order."""
    spans = [_Span(r["seq"], r["started_at"], r["started_at"] + r["duration_s"], r["wait"]) for r in rows]
    linear = sum(s.end - s.start for s in spans if not (s.wait and s.end - s.start > COMPRESS_S))
    scale = _UNITS * len(spans) / linear if linear > 0 else 0.0
    brk = max(2 * _MIN, _BREAK * _UNITS * len(spans))
    knots: list[tuple[float, float]] = [(start, 0.0)]
    breaks: list[dict[str, Any]] = []
    cursor_t, cursor_x = start, 0.0
    placed: dict[int, tuple[float, float, bool]] = {}
    for s in spans:
        if s.start >= cursor_t:
            gap = s.start - cursor_t
            x0 = cursor_x + (brk if gap > COMPRESS_S else gap * scale)
            if gap > COMPRESS_S:
                breaks.append({"x0": cursor_x, "x1": x0, "seconds": gap, "kind": "idle", "before_seq": s.seq})
        else:  # concurrent with an earlier step: where its start falls on the axis so far
            x0 = _interpolate(knots, s.start)
        shortened = s.wait and s.end - s.start > COMPRESS_S
        x1 = x0 + max(_MIN, brk if shortened else (s.end - s.start) * scale)
        if shortened:
            breaks.append({"x0": x0, "x1": x1, "seconds": s.end - s.start, "kind": "wait", "seq": s.seq})
        placed[s.seq] = (x0, x1, shortened)
        insort(knots, (s.start, x0))  # kept sorted as it grows: no sort per step (runs of thousands)
        insort(knots, (s.end, x1))
        if s.end >= cursor_t:
            cursor_t = s.end
        cursor_x = max(cursor_x, x1)
    total = cursor_x or 1.0

    def pct(x: float) -> float:
        return round(100.0 * x / total, 3)

    for r in rows:
        x0, x1, shortened = placed[r["seq"]]
        r.update(x0=pct(x0), x1=pct(x1), shortened=shortened, offset_s=r["started_at"] - start)
    by_seq = {r["seq"]: r for r in rows}
    for m in markers:
        m["x"] = by_seq[m["before_seq"]]["x0"]
    for g in groups:
        g.update(x0=by_seq[g["seqs"][0]]["x0"], x1=max(by_seq[q]["x1"] for q in g["seqs"]))
    for b in breaks:
        b.update(x0=pct(b["x0"]), x1=pct(b["x1"]))
    return {"start": start, "end": cursor_t, "seconds": cursor_t - start, "breaks": breaks}


def _interpolate(knots: list[tuple[float, float]], t: float) -> float:
    """The x of time `t` on the piecewise-linear map the placed steps drew (`knots` sorted): on
    the first segment that holds `t` (a binary search, not a walk: steps run together are placed
    this way, and a run may have thousands)."""
    i = bisect_left(knots, t, key=lambda k: k[0])
    if i == 0:
        return knots[0][1]
    if i == len(knots):  # after every knot (not reached while placing: a step starts before the last end)
        return max((x for _, x in knots[:-1]), default=0.0)
    (t0, x0), (t1, x1) = knots[i - 1], knots[i]
    return x0 if t1 == t0 else x0 + (x1 - x0) * (t - t0) / (t1 - t0)


# -- totals --------------------------------------------------------------------------------------
def _totals(rows: list[dict[str, Any]], markers: list[dict[str, Any]], recorded: Recorded) -> dict[str, Any]:
    models = [r["usage"] for r in rows if r["kind"] == "model"]
    tools = [r for r in rows if r["kind"] == "tool"]
    return {
        "steps": len(rows),
        "model_calls": len(models),
        "tokens_in": sum(int(u.get("tokens_in") or 0) for u in models),
        "tokens_out": sum(int(u.get("tokens_out") or 0) for u in models),
        "cost_usd": round(sum(float(u.get("cost_usd") or 0.0) for u in models), 8),
        "tool_calls": len(tools),
        "reads": sum(1 for r in tools if r["read"]),
        "changes": sum(1 for r in tools if not r["read"]),
        "retries": len(recorded.attempts),
        "crashes": sum(1 for m in markers if m["kind"] == "crash"),
        "wakes": sum(1 for m in markers if m["kind"] == "wake"),
        "lease_changes": len({m["before_seq"] for m in markers}),
        "waited_s": sum(r["duration_s"] for r in rows if r["wait"]),
        "approvals": len(recorded.approvals),
    }


def model_usage_rows(timeline: dict[str, Any]) -> list[dict[str, Any]]:
    """(seq, model, tokens in/out, cost) of each model call of a timeline, for plots."""
    return [{"seq": r["seq"], **r["usage"]} for r in timeline["rows"] if r["kind"] == "model"]
