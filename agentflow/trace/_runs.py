"""`runs()`: the runs of a store as a DataFrame, filtered like an investigation needs."""

from __future__ import annotations

from datetime import datetime

import pandas as pd

from agentflow.engine import App, Client
from agentflow.trace._records import open_client
from agentflow.trace._tables import frame

RUN_COLUMNS = ["run_id", "workflow", "tenant", "status", "created_at", "completed_at", "duration_s", "steps",
               "model_calls", "tool_calls", "tokens", "cost_usd", "requested_by", "forked_from", "error"]  # fmt: skip


def _epoch(value: datetime | float | None) -> float | None:
    if value is None or isinstance(value, int | float):
        return value
    if value.tzinfo is None:
        raise ValueError(
            "since/until must be aware datetimes (e.g. datetime(..., tzinfo=timezone.utc)) or epoch seconds"
        )
    return value.timestamp()


def runs(
    source: App | Client | str, *, tenant: str | None = None, status: str | None = None,
    since: datetime | float | None = None, until: datetime | float | None = None, tool: str | None = None,
    approved_by: str | None = None, limit: int = 1000,
) -> pd.DataFrame:  # fmt: skip
    """The runs of a store, newest first, as a DataFrame.

    Args:
        source: an App, a Client or a store URL (`sqlite:///path`, `postgresql://...`).
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
    client, owned = open_client(source)
    try:
        rows = client.store.run_table(
            tenant=tenant, status=status, since=_epoch(since), until=_epoch(until), tool=tool,
            approved_by=approved_by, limit=limit,
        )  # fmt: skip
    finally:
        if owned:
            client.close()
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
