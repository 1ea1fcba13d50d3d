"""The runs list of the console: a tenant's latest runs filtered (status, target, tool, who asked,
when, words of the task), with the counts per status and the values the filters can take.

Filtering happens over the tenant's latest `SCAN` runs, read in one query (plus two for their
tools and targets); the figures of the runs shown (steps, tokens, cost, open approvals) are read
for all of them at once (`EventStore.run_totals`: three more), so a list of 100 runs polled every
few seconds costs the same handful of statements as a list of one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agentflow.chat import Chat, run_summary, task_of
from agentflow.store import RUN_STATUSES, RunRecord

SCAN = 500  # the latest runs of a tenant the filters and counts look at


@dataclass(frozen=True, slots=True)
class RunFilters:
    """What the list is narrowed to (None: any)."""

    status: str | None = None
    q: str | None = None
    tool: str | None = None
    target: str | None = None
    requested_by: str | None = None
    since: float | None = None
    until: float | None = None


def run_listing(chat: Chat, *, tenant: str, workflow: str, filters: RunFilters, limit: int) -> dict[str, Any]:
    """`{"runs": [RunSummary + listing fields], "counts", "facets", "matched", "scanned"}` (API.md)."""
    runs = chat.store.list_runs(tenant=tenant, workflow=workflow, limit=SCAN)
    calls = chat.store.run_calls([r.id for r in runs], tenant=tenant) if runs else {}
    counts = dict.fromkeys(RUN_STATUSES, 0)
    for run in runs:
        counts[run.status] = counts.get(run.status, 0) + 1
    matched = [r for r in runs if _matches(r, calls[r.id], filters)]
    page = matched[:limit]
    totals = chat.store.run_totals([r.id for r in page], tenant=tenant) if page else {}
    shown = [_listed(chat, r, calls[r.id], totals[r.id]) for r in page]
    askers = {str(r.meta_dict().get("requested_by") or "") for r in runs} - {""}
    return {
        "runs": shown,
        "counts": counts,
        "facets": {
            "tools": sorted({t for tools, _ in calls.values() for t in tools}),
            "targets": sorted({t for _, targets in calls.values() for t in targets}),
            "requested_by": sorted(askers),
        },
        "matched": len(matched),
        "scanned": len(runs),
    }


def _matches(run: RunRecord, calls: tuple[set[str], set[str]], f: RunFilters) -> bool:
    tools, targets = calls
    meta = run.meta_dict()
    if f.status is not None and run.status != f.status:
        return False
    if f.tool is not None and f.tool not in tools:
        return False
    if f.target is not None and f.target.strip().upper() not in {t.upper() for t in targets}:
        return False
    if f.requested_by is not None and meta.get("requested_by") != f.requested_by:
        return False
    if (f.since is not None and run.created_at < f.since) or (f.until is not None and run.created_at >= f.until):
        return False
    if f.q:
        haystack = " ".join([run.local_id, task_of(run), str(meta.get("requested_by") or ""), *targets]).lower()
        return all(word in haystack for word in f.q.lower().split())
    return True


def _listed(
    chat: Chat, run: RunRecord, calls: tuple[set[str], set[str]], totals: tuple[int, int, float, int]
) -> dict[str, Any]:
    tools, targets = calls
    end = run.completed_at if run.completed_at is not None else chat.clock.now()
    return {
        **run_summary(chat, run, totals=totals),
        "completed_at": run.completed_at,
        "duration_s": max(0.0, end - run.created_at),
        "tools": sorted(tools),
        "targets": sorted(targets),
    }
