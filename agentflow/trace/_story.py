"""What happened in a run, in a few sentences, from its timeline: who asked for what, what the
agent read, what the policy decided and who approved, crashes and resumes, waits, the changes
made, retries, how it ended and what it cost. The sentences quote recorded values (a task, a
comment, an answer): surfaces show them as text, never as markup."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

_EFFECT = {"allow": "allowed", "deny": "denied", "require_approval": "needs an approval", "defer": "deferred"}


def duration_words(seconds: float) -> str:
    """`340 ms`, `4.2 s`, `3 min 20 s`, `2 h 0 min`, `3 d 4 h`."""
    s = max(0.0, seconds)
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60)} s"
    if s < 172_800:
        return f"{int(s // 3600)} h {int(s % 3600 // 60)} min"
    return f"{int(s // 86400)} d {int(s % 86400 // 3600)} h"


def iso(value: Any) -> str:
    """A recorded time as `2026-01-01 02:00:00 UTC` (`?` when there is none)."""
    if not isinstance(value, int | float):
        return "?"
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _quote(text: Any, limit: int = 200) -> str:
    value = text if isinstance(text, str) else json.dumps(text, ensure_ascii=False, default=str)
    value = " ".join(value.split())
    return f"“{value if len(value) <= limit else value[: limit - 1] + '…'}”"


def _call(detail: dict[str, Any]) -> str:
    args = detail.get("args")
    args = args if isinstance(args, dict) else {}
    shown = ", ".join(f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in args.items())
    return f"{detail.get('tool')}({shown if len(shown) <= 80 else shown[:79] + '…'})"


def rerun_words(rerun: list[int]) -> str:
    """What a resume ran again: nothing recorded, or the steps a crash left with an unknown
    outcome (a side-effecting call records its intent before it runs)."""
    if not rerun:
        return "no recorded step ran again"
    which = f"step {rerun[0]}" if len(rerun) == 1 else "steps " + ", ".join(str(q) for q in rerun)
    return f"{which} had begun before (intent recorded, outcome unknown) and ran again with the same idempotency key"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def story(timeline: dict[str, Any]) -> list[str]:
    """The sentences (see the module docstring), in the order things happened."""
    run, rows, totals = timeline["run"], timeline["rows"], timeline["totals"]
    lines = [f"Run {run['id']} ({run['workflow']}, tenant {run['tenant']}) was started at {iso(run['created_at'])}"
             f" by {run['requested_by'] or 'an unnamed caller'}" + (f": {_quote(run['task'])}" if run["task"] else ".")]  # fmt: skip
    markers = {m["before_seq"]: m for m in timeline["markers"] if m["kind"] == "resume"}
    groups = {g["seqs"][0]: g for g in timeline["groups"]}
    said: set[tuple[Any, ...]] = set()
    for row in rows:
        if row["seq"] in markers:
            m = markers[row["seq"]]
            after = f"{duration_words(m['gap_s'])} later" if m["gap_s"] > 0 else "at once (recorded clock)"
            lines.append(f"The worker was lost after step {m['after_seq']} (lease {m['epoch_from']}); another took the "
                         f"run over under lease {m['epoch_to']} {after} and resumed at step {m['before_seq']}, "
                         f"replaying the history: {rerun_words(m.get('rerun', []))}.")  # fmt: skip
        if row["seq"] in groups:
            g = groups[row["seq"]]
            lines.append(f"The agent read {', '.join(g['tools'])} ({_plural(g['model_calls'], 'model call')}).")
        line = _row_sentence(row, said)
        if line:
            lines.append(line)
    lines.append(_ending(run, totals, timeline["axis"]))
    return lines


def _row_sentence(row: dict[str, Any], said: set[tuple[Any, ...]]) -> str | None:
    detail = row["detail"]
    if "unreadable" in detail:
        return f"Step {row['seq']} ({row['step_kind']} {row['name']}): its record could not be read ({detail['unreadable']})."
    if row["kind"] == "policy" and detail["effect"] != "allow":
        key = ("policy", detail["tool"], detail["effect"], detail["rule"])
        if key in said:
            return None
        said.add(key)
        until = f" until {iso(detail['defer_until'])}" if detail.get("defer_until") else ""
        reason = f": {detail['reason']}" if detail.get("reason") else ""
        verdict = f"{_EFFECT.get(str(detail['effect']), detail['effect'])}{until}"
        return f"Policy: {_call(detail)} {verdict} (rule {detail['rule']}){reason}."
    if row["kind"] == "approval" and row.get("approval"):
        return _approval_sentence(row["approval"], said)
    if row["kind"] == "wait" and row["duration_s"] > 0:
        state = "is waiting" if row["open"] else "waited"
        return f"The run {state} {duration_words(row['duration_s'])} ({row['title']}) holding no worker."
    if row["kind"] == "tool" and not row["read"]:
        outcome = "failed: " + str(row["error"]) if row["status"] == "failed" else row["status"]
        again = f", attempt {row['attempt']}" if row["attempt"] > 1 else ""
        return f"Step {row['seq']}: {_call(detail)} {outcome} at {iso(row['finished_at'] or row['started_at'])}{again}."
    if row["retries"]:
        errors = "; ".join(str(a["error"]) for a in row["retries"][:3])
        return f"Step {row['seq']} ({row['title']}) failed {len(row['retries'])} time(s) and was retried: {errors}."
    return None


def _approval_sentence(approval: dict[str, Any], said: set[tuple[Any, ...]]) -> str | None:
    key = ("approval", approval.get("id"))
    if key in said:
        return None
    said.add(key)
    line = (f"Approval {approval['id']} of {approval.get('tool')} (rule {approval.get('rule')}), asked at "
            f"{iso(approval.get('created_at'))} in {approval.get('requested_by') or 'the agent'}'s run")  # fmt: skip
    votes = [f"{v['decision']}d by {v['principal']} at {iso(v['at'])}" + (f" ({_quote(v['comment'], 120)})"
             if v.get("comment") else "") for v in approval.get("votes") or []]  # fmt: skip
    if votes:
        return f"{line}; {'; '.join(votes)}: {approval.get('status')}."
    return f"{line}: {approval.get('status')}."


def _ending(run: dict[str, Any], totals: dict[str, Any], axis: dict[str, Any]) -> str:
    spent = (f"{_plural(totals['model_calls'], 'model call')}, {totals['tokens_in'] + totals['tokens_out']:,} tokens, "
             f"${totals['cost_usd']:.4f}; {_plural(totals['tool_calls'], 'tool call')} ({totals['changes']} with effects)")  # fmt: skip
    if run["status"] == "completed":
        answer = f" — answer {_quote(run['answer'])}" if run.get("answer") else ""
        return (f"It completed at {iso(run['completed_at'])}, {duration_words(axis['seconds'])} after it started"
                f" (outcome {run.get('outcome') or 'none'}){answer}. {spent}.")  # fmt: skip
    if run["status"] in ("failed", "cancelled"):
        return f"It {run['status']} at {iso(run['completed_at'])}: {run.get('error') or 'no error recorded'}. {spent}."
    return f"It is {run['status']} ({duration_words(axis['seconds'])} so far). {spent}."
