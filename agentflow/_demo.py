"""`agentflow demo`: a staged network change that survives a crash.

The workflow reads a cell site's KPIs, stages a change, waits for the maintenance window (two
hours, skipped by the test clock), applies the change, watches the KPIs and opens a ticket. The
"network" is a separate SQLite file with an audit ledger of every effect and its idempotency key,
so the summary can prove that a crash and resume pushed the config exactly once.

(The NOC copilot, with a model in the loop, replaces this workflow in a later release.)
"""

from __future__ import annotations

import os
import sqlite3
import time
from typing import Any

from rich.console import Console
from rich.table import Table

from agentflow import App, RetryPolicy, WorkflowContext, current_activity
from agentflow._crash import configure
from agentflow.testing import TestClock

console = Console()
_quiet = False
app = App(clock=TestClock(start=1_767_225_600.0))  # db is set by main()


def _say(text: str) -> None:
    if not _quiet:
        console.print(text)


def _ledger_path() -> str:
    return app.store.backend.path + ".network.db"


def _ledger() -> sqlite3.Connection:
    conn = sqlite3.connect(_ledger_path(), isolation_level=None, timeout=30)
    # One row per effect actually applied (no uniqueness here, so a double apply would show),
    # and one per repeated call that the key turned into a no-op.
    conn.execute(
        "CREATE TABLE IF NOT EXISTS effects (id INTEGER PRIMARY KEY, key TEXT, kind TEXT, site TEXT, detail TEXT)"
    )
    conn.execute("CREATE TABLE IF NOT EXISTS noops (id INTEGER PRIMARY KEY, key TEXT)")
    return conn


def _effect(kind: str, site: str, detail: str) -> str:
    """Apply an effect once per idempotency key; a repeat with the same key is a recorded no-op."""
    key = current_activity().idempotency_key
    conn = _ledger()
    conn.execute("BEGIN IMMEDIATE")
    if conn.execute("SELECT 1 FROM effects WHERE key = ?", (key,)).fetchone():
        conn.execute("INSERT INTO noops (key) VALUES (?)", (key,))
    else:
        conn.execute("INSERT INTO effects (key, kind, site, detail) VALUES (?, ?, ?, ?)", (key, kind, site, detail))
    conn.execute("COMMIT")
    conn.close()
    return key


@app.activity(side_effect=False)
def read_kpis(site: str) -> dict[str, float]:
    drop = 2.9 if not _applied(site) else 0.6
    _say(f"  [cyan]read_kpis[/] {site}: drop rate {drop}%")
    return {"drop_rate_pct": drop, "handover_success_pct": 100 - drop * 3}


def _applied(site: str) -> bool:
    conn = _ledger()
    try:
        return conn.execute("SELECT 1 FROM effects WHERE kind = 'apply' AND site = ?", (site,)).fetchone() is not None
    finally:
        conn.close()


@app.activity(side_effect=False)
def stage_change(site: str, kpis: dict[str, float]) -> dict[str, Any]:
    diff = {"param": "hoA3Offset", "from": 6, "to": 2}
    _say(f"  [cyan]stage_change[/] {site}: {diff['param']} {diff['from']} -> {diff['to']} (dry run)")
    return diff


@app.activity(retry=RetryPolicy(max_attempts=5, initial_interval=2))
def apply_change(site: str, diff: dict[str, Any]) -> str:
    key = _effect("apply", site, f"{diff['param']}={diff['to']}")
    _say(f"  [bold magenta]apply_change[/] {site}: pushed {diff['param']}={diff['to']} (key {key})")
    return key


@app.activity()
def open_ticket(site: str, summary: str) -> str:
    key = _effect("ticket", site, summary)
    _say(f"  [bold magenta]open_ticket[/] {site}: {summary}")
    return key


@app.workflow(name="demo.change_rollout")
async def change_rollout(ctx: WorkflowContext, site: str) -> dict[str, Any]:
    before = await ctx.run(read_kpis, site)
    diff = await ctx.run(stage_change, site, before)
    if not ctx.is_replaying:
        _say("  [yellow]waiting[/] for the maintenance window (2 h, durable timer)")
    await ctx.sleep(2 * 3600)
    await ctx.run(apply_change, site, diff)
    after = before
    for _ in range(3):
        await ctx.sleep(600)
        after = await ctx.run(read_kpis, site)
    ok = after["drop_rate_pct"] < before["drop_rate_pct"]
    await ctx.run(
        open_ticket, site, f"{diff['param']} changed; drop rate {before['drop_rate_pct']}% -> {after['drop_rate_pct']}%"
    )
    return {"site": site, "resolved": ok, "before": before, "after": after}


def main(*, db: str, crash_at: int | None, resume: bool, quiet: bool) -> dict[str, Any]:
    global _quiet
    _quiet = quiet
    app.db = db
    store = app.store
    started = time.perf_counter()
    run_id = None
    if resume:
        pending = [r for r in store.list_runs(limit=20) if r.workflow == change_rollout.name and not r.terminal]
        if not pending:
            raise SystemExit("no unfinished demo run to resume in " + db)
        run_id = pending[0].id
        _say(f"[bold]resuming[/] run {run_id}")
    else:
        run_id = f"demo-{os.getpid()}-{int(time.time())}"
        _say(f"[bold]agentflow demo[/]: run {run_id} on {db}")
    if crash_at is not None:
        configure(f"after_result:{crash_at}")
    result = app.run(change_rollout, "CS-101", run_id=run_id)
    steps = app.history(run_id)
    conn = _ledger()
    like = (f"{run_id}:%",)
    effects = conn.execute("SELECT count(*) FROM effects WHERE key LIKE ?", like).fetchone()[0]
    duplicates = conn.execute(
        "SELECT count(*) FROM (SELECT key FROM effects WHERE key LIKE ? GROUP BY key HAVING count(*) > 1)", like
    ).fetchone()[0]
    noops = conn.execute("SELECT count(*) FROM noops WHERE key LIKE ?", like).fetchone()[0]
    conn.close()
    summary = {
        "run_id": run_id,
        "status": app.get_run(run_id).status,
        "result": result,
        "steps": len(steps),
        "activities": sum(1 for s in steps if s.kind == "activity"),
        "effects_applied": effects,
        "duplicate_effects": duplicates,
        "deduplicated_calls": noops,
        "seconds": round(time.perf_counter() - started, 3),
    }
    if not quiet:
        table = Table("seq", "kind", "name", "status", "attempt")
        for s in steps:
            table.add_row(str(s.seq), s.kind, s.name, s.status, str(s.attempt))
        console.print(table)
        console.print(summary)
    return summary
