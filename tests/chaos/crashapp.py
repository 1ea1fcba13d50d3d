"""The App the chaos tests run in worker subprocesses (`--app crashapp:app`).

Every activity appends one row to an external *ledger* (a separate SQLite file named by
`AGENTFLOW_LEDGER`) and commits it before returning, the way a real side effect lands in a
system the engine does not own. The tests count executions in the ledger, never in the workflow
store, so a step the engine recorded once but executed twice cannot hide.

The module-level `app` reads its database from `AGENTFLOW_DB` (as `agentflow worker` sets it);
the test process builds its own App on the test's file with `make_app(url)`.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from contextlib import closing
from typing import Any

from agentflow import App, RetryPolicy, current_activity

LEDGER_ENV = "AGENTFLOW_LEDGER"
# Longer than the App's inline_wait (0): the run is parked in the store, not waited in the worker.
PAUSE = 0.3

LEDGER_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS ledger (id INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL, "
    "seq INTEGER NOT NULL, name TEXT NOT NULL, key TEXT NOT NULL, attempt INTEGER NOT NULL, "
    "pid INTEGER NOT NULL)"
)


def init_ledger(path: str) -> None:
    """Create the ledger file (WAL, so several worker processes append without long waits)."""
    with closing(sqlite3.connect(path, timeout=30)) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(LEDGER_SCHEMA)
        conn.commit()


def ledger_rows(path: str) -> list[tuple[Any, ...]]:
    """(id, run_id, seq, name, key, attempt, pid) for every execution, in commit order."""
    with closing(sqlite3.connect(path, timeout=30)) as conn:
        return conn.execute("SELECT id, run_id, seq, name, key, attempt, pid FROM ledger ORDER BY id").fetchall()


def _record() -> None:
    """Append this execution to the ledger and commit it (the effect has happened)."""
    info = current_activity()
    with closing(sqlite3.connect(os.environ[LEDGER_ENV], timeout=30, isolation_level=None)) as conn:
        conn.execute(LEDGER_SCHEMA)
        conn.execute(
            "INSERT INTO ledger (run_id, seq, name, key, attempt, pid) VALUES (?, ?, ?, ?, ?, ?)",
            (info.run_id, info.seq, info.name, info.idempotency_key, info.attempt, os.getpid()),
        )


def make_app(db: str | None = None) -> App:
    """An App with the chaos workflows registered (db None: `AGENTFLOW_DB`)."""
    app = App(db, inline_wait=0.0, lease_ttl=10.0)
    # No retries: in these tests an activity runs again only because a crash made its outcome
    # unknown, which is exactly what the ledger counts.
    once = RetryPolicy(max_attempts=1)

    @app.activity(name="reserve", retry=once)
    def reserve(n: int) -> int:
        _record()
        return n * 10

    @app.activity(name="lookup", side_effect=False, retry=once)
    def lookup(x: int) -> dict[str, int]:
        _record()
        return {"x": x, "sq": x * x}

    @app.activity(name="charge", retry=once)
    async def charge(account: str, amount: int) -> str:
        _record()
        await asyncio.sleep(0)
        return f"{account}:{amount}"

    @app.activity(name="notify", retry=once)
    def notify(items: list[str]) -> str:
        _record()
        return "+".join(items)

    @app.workflow(name="chaos")
    async def chaos(ctx: Any, n: int) -> dict[str, Any]:
        """Sequential effects, a read, a gather of two effects, a parked timer, a last effect."""
        base = await ctx.run(reserve, n)  # seq 1, side effect
        info = await ctx.run(lookup, base)  # seq 2, read (no intent record)
        a, b = await asyncio.gather(ctx.run(charge, "a", info["sq"]), ctx.run(charge, "b", base))  # seq 3, 4
        await ctx.sleep(PAUSE)  # seq 5: parks the run (inline_wait=0)
        receipt = await ctx.run(notify, [a, b])  # seq 6
        return {"base": base, "info": info, "charges": [a, b], "receipt": receipt}

    @app.workflow(name="leaf")
    async def leaf(ctx: Any, n: int) -> int:
        return await ctx.run(reserve, n + 1)

    @app.workflow(name="race")
    async def race(ctx: Any, n: int) -> dict[str, Any]:
        """No timers (a worker started with --until-idle would leave a parked timer behind); the
        child hands the run between workers: the parent parks until the child ends."""
        base = await ctx.run(reserve, n)  # seq 1
        info = await ctx.run(lookup, base)  # seq 2
        a, b = await asyncio.gather(ctx.run(charge, "a", n), ctx.run(charge, "b", info["sq"]))  # seq 3, 4
        child = await ctx.child(leaf, n)  # seq 5: the child run `<run_id>/5`, one activity
        receipt = await ctx.run(notify, [a, b, str(child)])  # seq 6
        return {"base": base, "charges": [a, b], "child": child, "receipt": receipt}

    return app


def expected_race(n: int) -> dict[str, Any]:
    """What `race(n)` returns, computed without the engine."""
    base = n * 10
    a, b, child = f"a:{n}", f"b:{base * base}", (n + 1) * 10
    return {"base": base, "charges": [a, b], "child": child, "receipt": f"{a}+{b}+{child}"}


# The (seq, kind, name) of the steps a `race` run records, and of its child's.
RACE_SHAPE = [
    (1, "activity", "reserve"),
    (2, "activity", "lookup"),
    (3, "activity", "charge"),
    (4, "activity", "charge"),
    (5, "child", "leaf"),
    (6, "activity", "notify"),
]
RACE_CHILD_SHAPE = [(1, "activity", "reserve")]


app = make_app()
