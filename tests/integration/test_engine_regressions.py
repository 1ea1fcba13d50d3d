"""Regressions found in review: each test failed on the code before its fix."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from agentflow import ActivityError, App, RetryPolicy, WorkflowContext
from agentflow.engine._executor import RunExecutor
from agentflow.store._codec import digest
from agentflow.store._sqlite import sqlite_path


def _worker_row(app: App, worker_id: str, heartbeat_age: float) -> None:
    conn = sqlite3.connect(sqlite_path(app.db), isolation_level=None)
    conn.execute(
        "INSERT INTO af_workers (id, host, pid, pid_start, started_at, heartbeat_at, dead) VALUES (?, 'elsewhere', 1, '', ?, ?, 0)",
        (worker_id, time.time(), time.time() - heartbeat_age),
    )
    conn.close()


def test_no_takeover_when_every_heartbeat_is_equally_old(app: App) -> None:
    """After a stall of the whole database (a long lock), every heartbeat is old at once: a
    worker whose own heartbeat is just as old takes nobody's runs; once it has beaten again
    and the owner has not, it takes over (a claim is never made on a run the claimer owns)."""

    @app.workflow(name="wf")
    async def wf(ctx: WorkflowContext) -> int:
        return 1

    app.start(wf, run_id="r")
    _worker_row(app, "owner", heartbeat_age=30)
    _worker_row(app, "claimer", heartbeat_age=30)
    assert app.store.claim("owner", now=app.clock.now(), lease_ttl=10, limit=5) == [("r", 1, False)]
    assert app.store.claim("claimer", now=app.clock.now(), lease_ttl=10, limit=5) == []
    assert app.store.claim("owner", now=app.clock.now(), lease_ttl=10, limit=5) == []  # its own run
    app.store.heartbeat("claimer")
    assert app.store.claim("claimer", now=app.clock.now(), lease_ttl=10, limit=5) == [("r", 2, True)]


def test_cancelling_a_child_that_never_started_wakes_its_parent(app: App) -> None:
    """A pending child cancelled before any worker ran it ends `cancelled` and its parent,
    parked on it, is woken and gets ChildWorkflowError (no lost wake-up)."""

    @app.workflow(name="child")
    async def child(ctx: WorkflowContext) -> int:
        return 1

    @app.workflow(name="parent")
    async def parent(ctx: WorkflowContext) -> str:
        try:
            await ctx.child(child)
        except Exception as exc:
            return type(exc).__name__
        return "no error"

    app.start(parent, run_id="p")
    # Drive the parent alone until it parks on the child (no worker runs the child).
    app.store.register_worker("t")
    [(run_id, epoch, _)] = app.store.claim("t", now=app.clock.now(), lease_ttl=10, limit=1, workflows=["parent"])
    assert asyncio.run(RunExecutor(app, app.store.get_run(run_id), epoch).execute()) == "waiting"
    assert app.get_run("p/1").status == "pending"
    app.cancel("p/1")
    assert app.get_run("p/1").status == "cancelled"
    assert app.store.get_run("p").wake_at == 0
    assert app.run(parent, run_id="p") == "ChildWorkflowError"


def test_an_activity_raising_cancelled_error_fails_instead_of_hanging(app: App) -> None:
    """CancelledError raised by an activity's own code (not by the engine) is a recorded
    failure; the run ends instead of staying `running` or parking on nothing."""

    @app.activity(side_effect=False, retry=RetryPolicy(max_attempts=2, initial_interval=0))
    async def grumpy() -> int:
        raise asyncio.CancelledError()

    @app.workflow(name="wf")
    async def wf(ctx: WorkflowContext) -> str:
        try:
            await ctx.run(grumpy)
        except Exception as exc:
            return type(exc).__name__
        return "ok"

    assert app.run(wf, run_id="r") == "ActivityError"
    assert len(app.store.load_attempts("r")) == 2


def started_intent(app: App, run_id: str, name: str) -> None:
    """Step 1 of `run_id` as a crash leaves it: an intent recorded, no result (outcome unknown)."""
    conn = sqlite3.connect(sqlite_path(app.db), isolation_level=None)
    conn.execute(
        "INSERT INTO af_steps (run_id, seq, kind, name, digest, status, attempt, args, started_at, epoch) "
        "VALUES (?, 1, 'activity', ?, ?, 'started', 1, '[[],{}]', 0, 0)",
        (run_id, name, digest("[[],{}]")),
    )
    conn.close()


def test_a_failing_reconcile_is_retried_under_the_policy(app: App) -> None:
    """A reconcile that raises is a failed attempt under the step's retry policy, not an
    internal error that fails the run at once."""
    calls: list[str] = []

    def reconcile(key: str) -> Any:
        calls.append(key)
        if len(calls) < 3:
            raise ConnectionError("ledger unreachable")
        return "found"

    @app.activity(reconcile=reconcile, retry=RetryPolicy(max_attempts=5, initial_interval=0))
    def push() -> str:
        return "pushed"

    @app.workflow(name="wf")
    async def wf(ctx: WorkflowContext) -> str:
        return await ctx.run(push)

    app.start(wf, run_id="r")
    # An intent without a result: the outcome is unknown, so reconcile is asked first.
    started_intent(app, "r", push.name)
    assert app.run(wf, run_id="r") == "found"
    assert calls == ["r:1"] * 3


def test_a_reconcile_of_the_wrong_type_is_a_failed_attempt_not_a_corrupt_row(app: App) -> None:
    """A reconcile answering with a value the activity's result type rejects is refused before
    it is recorded (it would fail every later replay as a corrupt row): a failed attempt whose
    error names the fix, after which the run goes on under the retry policy."""

    def reconcile(key: str) -> Any:
        return {"effect_id": 1}  # the activity returns str

    @app.activity(reconcile=reconcile, retry=RetryPolicy(max_attempts=2, initial_interval=0))
    def push() -> str:
        return "pushed"

    @app.workflow(name="wf")
    async def wf(ctx: WorkflowContext) -> str:
        try:
            return await ctx.run(push)
        except ActivityError as exc:
            return f"{exc.cause_type}: {exc.cause_message}"

    app.start(wf, run_id="r")
    started_intent(app, "r", push.name)
    out = app.run(wf, run_id="r")
    assert out.startswith("TypeError: reconcile() of activity") and "declared result type" in out
    assert [s.status for s in app.history("r")] == ["failed"]
    assert app.get_run("r").status == "completed"  # replays cleanly: nothing undecodable was stored


def test_blocked_on_nothing_fails_with_a_clear_error(app: App) -> None:
    """A workflow awaiting something no step can resolve fails with WorkflowError instead of
    parking forever with nothing to wake it."""

    @app.workflow(name="wf")
    async def wf(ctx: WorkflowContext) -> None:
        await asyncio.Event().wait()

    app.start(wf, run_id="r")
    asyncio.run(app.worker(root_id="r").run_until_done("r"))
    record = app.store.get_run("r")
    assert record.status == "failed"
    assert json.loads(record.error or "{}")["type"] == "WorkflowError"


def test_a_full_disk_stops_the_worker_with_a_clear_error_and_fails_no_run(tmp_path: Path) -> None:
    """Issue 13 hole 9: a store that refuses writes (SQLite's "database or disk is full", made
    here with max_page_count) used to be taken for an engine bug: the run was retried forever and
    the worker logged tracebacks. Now the worker gives the run back untouched and stops with the
    store's error (saying what to do); started again with room, the run resumes and completes."""
    from agentflow import App, current_activity
    from agentflow.errors import StoreError
    from agentflow.testing import TestClock

    url = f"sqlite:///{tmp_path / 'full.db'}"
    room = {"full": True}

    def build() -> App:
        app = App(url, clock=TestClock(start=1_700_000_000))

        @app.activity(side_effect=False)
        async def fill(i: int) -> str:
            if i == 2 and room["full"]:  # the disk fills up while the run is under way
                conn = current_activity().app.store.backend.conn
                conn.execute(f"PRAGMA max_page_count = {conn.execute('PRAGMA page_count').fetchone()[0]}")
            return "x" * 50_000

        @app.workflow(name="wf")
        async def wf(ctx: WorkflowContext) -> int:
            for i in range(5):
                await ctx.run(fill, i)
            return 5

        return app

    first = build()
    with pytest.raises(StoreError, match=r"disk is full or failing.*free space"):
        first.run(first.workflow_named("wf"), run_id="r")
    assert first.get_run("r").status == "pending"  # given back, not failed
    assert [s.status for s in first.history("r")] == ["completed", "completed"]
    first.close()
    room["full"] = False
    again = build()  # a new process: its connections have room again
    assert again.run(again.workflow_named("wf"), run_id="r") == 5
    assert len(again.history("r")) == 5
    again.close()
