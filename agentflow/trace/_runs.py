"""`runs()`: the runs of a store as a DataFrame, filtered like an investigation needs."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pandas as pd

from agentflow.engine import App
from agentflow.store._backend import Backend
from agentflow.trace._records import open_app
from agentflow.trace._tables import frame

RUN_COLUMNS = ["run_id", "workflow", "tenant", "status", "created_at", "completed_at", "duration_s", "steps",
               "model_calls", "tool_calls", "tokens", "cost_usd", "requested_by", "forked_from", "error"]  # fmt: skip


def _select(backend: Backend) -> str:
    """Per-run step aggregates in one pass (the database's JSON functions read the recorded usage)."""
    num, text = backend.json_num, backend.json_text
    return f"""
SELECT r.id, r.workflow, r.tenant, r.status, r.created_at, r.completed_at,
       (SELECT count(*) FROM af_steps s WHERE s.run_id = r.id),
       (SELECT count(*) FROM af_steps s WHERE s.run_id = r.id AND s.kind = 'llm' AND s.status = 'completed'),
       (SELECT count(*) FROM af_steps s WHERE s.run_id = r.id AND s.kind = 'tool'),
       (SELECT coalesce(sum({num("s.result", "usage.input_tokens")}
                            + {num("s.result", "usage.output_tokens")}), 0)
          FROM af_steps s WHERE s.run_id = r.id AND s.kind = 'llm' AND s.status = 'completed'),
       (SELECT coalesce(sum({num("s.result", "usage.cost_usd")}), 0.0)
          FROM af_steps s WHERE s.run_id = r.id AND s.kind = 'llm' AND s.status = 'completed'),
       {text("r.meta", "requested_by")}, {text("r.meta", "forked_from")},
       {text("r.error", "type")} || ': ' || {text("r.error", "message")}
FROM af_runs r
"""


def _epoch(value: datetime | float | None) -> float | None:
    if value is None or isinstance(value, int | float):
        return value
    if value.tzinfo is None:
        raise ValueError(
            "since/until must be aware datetimes (e.g. datetime(..., tzinfo=timezone.utc)) or epoch seconds"
        )
    return value.timestamp()


def _where(
    tenant: str | None, status: str | None, since: float | None, until: float | None, tool: str | None,
    approved_by: str | None,
) -> tuple[str, list[Any]]:  # fmt: skip
    clauses: list[str] = []
    params: list[Any] = []
    for clause, value in (
        ("r.tenant = ?", tenant),
        ("r.status = ?", status),
        ("r.created_at >= ?", since),
        ("r.created_at < ?", until),
        ("EXISTS (SELECT 1 FROM af_steps s WHERE s.run_id = r.id AND s.kind = 'tool' AND s.name = ?)", tool),
        ("EXISTS (SELECT 1 FROM af_approvals a JOIN af_approval_votes v ON v.approval_id = a.id "
         "WHERE a.run_id = r.id AND v.decision = 'approve' AND v.principal = ?)", approved_by),
    ):  # fmt: skip
        if value is not None:
            clauses.append(clause)
            params.append(value)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


def runs(
    source: App | str, *, tenant: str | None = None, status: str | None = None,
    since: datetime | float | None = None, until: datetime | float | None = None, tool: str | None = None,
    approved_by: str | None = None, limit: int = 1000,
) -> pd.DataFrame:  # fmt: skip
    """The runs of a store, newest first, as a DataFrame.

    Args:
        source: an App or a store URL (`sqlite:///path`, `postgresql://...`).
        tenant: only this tenant's runs.
        status: only runs in this status (pending, running, waiting, completed, failed, cancelled).
        since: only runs created at or after this time (aware datetime or epoch seconds).
        until: only runs created before this time.
        tool: only runs that called this tool.
        approved_by: only runs with an approval this operator (principal name) voted for.
        limit: at most this many rows.

    Returns:
        run_id, workflow, tenant, status, created_at, completed_at, duration_s, steps,
        model_calls, tool_calls, tokens, cost_usd, requested_by, forked_from, error.
    """
    app, owned = open_app(source)
    try:
        where, params = _where(tenant, status, _epoch(since), _epoch(until), tool, approved_by)
        sql = _select(app.store.backend) + where + " ORDER BY r.created_at DESC, r.id LIMIT ?"
        rows = app.store.backend.query(sql, (*params, limit))
    finally:
        if owned:
            app.close()
    records = [
        {"run_id": r[0], "workflow": r[1], "tenant": r[2], "status": r[3], "created_at": r[4], "completed_at": r[5],
         "duration_s": None if r[5] is None else r[5] - r[4], "steps": r[6], "model_calls": r[7],
         "tool_calls": r[8], "tokens": int(r[9] or 0), "cost_usd": float(r[10] or 0.0), "requested_by": r[11],
         "forked_from": r[12], "error": r[13]}
        for r in rows
    ]  # fmt: skip
    df = frame(records, RUN_COLUMNS, times=("created_at", "completed_at"))
    df["duration_s"] = df["duration_s"].astype("float64")
    return df
