"""Regressions found in review: each test failed on the code before its fix."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import subprocess
import sys
import threading
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
                backend = current_activity().app.store.backend
                pages = backend.conn.execute("PRAGMA page_count").fetchone()[0]
                # Every connection of this process, the group commit's writer thread's included
                # (it is idle: the run's last write is committed).
                for conn in backend._all:
                    conn.execute(f"PRAGMA max_page_count = {pages}")
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


_RUN_AND_CLOSE = """
import sys
import threading
from agentflow import App, WorkflowContext

app = App(f"sqlite:///{sys.argv[1]}", lease_ttl=0.06)  # a heartbeat every 50 ms


@app.workflow(name="w")
async def w(ctx: WorkflowContext, i: int) -> int:
    await ctx.sleep(0.05)  # a heartbeat is often on its way when the run ends
    return i


for i in range(int(sys.argv[2])):
    assert app.run(w, i, run_id=f"r{i}") == i
    app.close()
print("CLOSED-CLEANLY")
"""


@pytest.mark.slow
def test_closing_the_app_right_after_a_run_never_crashes_the_interpreter(tmp_path: Path) -> None:
    """Issue 14: `app.run` then `app.close()`, 150 times, with a 60 ms lease (a heartbeat every
    50 ms). The worker's loop used to end without joining its heartbeat thread, and close()
    closed that thread's connection under a write in flight: SIGSEGV within ~50 iterations.
    Run in a child process, so a crash is a failed test and not a dead test session."""
    script = tmp_path / "run_and_close.py"
    script.write_text(_RUN_AND_CLOSE)
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "wf.db"), "150"], capture_output=True,
                          text=True, timeout=300, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0 and "CLOSED-CLEANLY" in done.stdout, (done.returncode, done.stderr[-2000:])


def test_a_worker_backs_off_while_the_store_does_not_answer(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Issue 14: while another process holds the store's write lock for 3 s, an idle worker
    whose parked run comes due retries its claim with a growing wait (a handful of warnings, not
    one every poll: ~30 at the 50 ms poll), says when the store answers again, and finishes the run."""
    app = App(f"sqlite:///{tmp_path / 'wf.db'}", busy_timeout=0.05, inline_wait=0.1)  # the timer parks the run

    @app.workflow(name="napper")
    async def napper(ctx: WorkflowContext) -> int:
        await ctx.sleep(1.0)
        return 1

    async def scenario() -> None:
        stop = asyncio.Event()
        worker = asyncio.create_task(app.worker().run_forever(stop))
        try:
            app.start(napper, run_id="r")
            await asyncio.sleep(0.4)  # claimed, parked on its timer (due in 0.6 s)
            assert app.get_run("r").status == "waiting"
            holder = sqlite3.connect(sqlite_path(app.db), isolation_level=None)
            holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
            await asyncio.sleep(3.0)
            holder.execute("ROLLBACK")
            holder.close()
            for _ in range(100):
                if app.get_run("r").status == "completed":
                    break
                await asyncio.sleep(0.05)
        finally:
            stop.set()
            await worker

    try:
        with caplog.at_level(logging.WARNING, logger="agentflow"):
            asyncio.run(scenario())
        assert app.get_run("r").status == "completed"
    finally:
        app.close()
    retries = [r.getMessage() for r in caplog.records if r.getMessage().startswith("claiming runs")]
    assert 2 <= len(retries) <= 8, retries
    assert "next try in" in retries[-1]
    assert any("the store answers again" in r.getMessage() for r in caplog.records)


def test_hung_blocking_tools_do_not_starve_other_runs(tmp_path: Path) -> None:
    """Issue 14: eight runs of a blocking tool that never returns (timeout 0.3 s, 2 attempts)
    beside a run of quick blocking steps. asyncio's default pool has 6 threads here: the hung
    calls took them all and the quick run waited for them. Each hung call now holds one thread
    of an elastic pool: the quick run finishes at once, the hung runs fail at their timeouts,
    and the hung threads are listed as stuck."""
    from agentflow.engine import tool_threads

    release = threading.Event()
    app = App(f"sqlite:///{tmp_path / 'wf.db'}", synchronous="NORMAL")

    @app.activity(timeout=0.3, retry=RetryPolicy(max_attempts=2, initial_interval=0.01))
    def hang() -> None:
        release.wait(60)

    @app.activity
    def quick(i: int) -> int:
        return i

    @app.workflow(name="hung")
    async def hung(ctx: WorkflowContext) -> None:
        await ctx.run(hang)

    @app.workflow(name="busy")
    async def busy(ctx: WorkflowContext) -> int:
        return sum([await ctx.run(quick, i) for i in range(5)])

    async def scenario() -> float:
        stop = asyncio.Event()
        worker = asyncio.create_task(app.worker(concurrency=32).run_forever(stop))
        try:
            for i in range(8):
                app.start(hung, run_id=f"h{i}")
            await asyncio.sleep(0.2)  # every hung call is in its thread
            started = time.monotonic()
            app.start(busy, run_id="b")
            while app.get_run("b").status != "completed":
                assert time.monotonic() - started < 5, "the quick run waited behind the hung tools"
                await asyncio.sleep(0.02)
            took = time.monotonic() - started
            while any(app.get_run(f"h{i}").status not in ("completed", "failed") for i in range(8)):
                await asyncio.sleep(0.05)
            return took
        finally:
            stop.set()
            await worker

    pool = tool_threads()
    pool.stuck_after = 0.2
    try:
        took = asyncio.run(scenario())
        assert took < 1.0, took
        assert {app.get_run(f"h{i}").status for i in range(8)} == {"failed"}
        assert len([b for b in pool.stuck() if b.call.endswith("hang")]) == 16  # 8 runs x 2 attempts
    finally:
        pool.stuck_after = 60.0
        release.set()
        app.close()


def test_an_agents_blocking_tool_runs_on_the_elastic_pool(app: App) -> None:
    """A sync langchain tool of an Agent runs on the engine's pool for blocking calls (langchain's
    own ainvoke would put it on the loop's small default pool); an async one on the loop."""
    import agentflow.llm as llm
    from agentflow.agent import Agent

    where: dict[str, str] = {}

    @llm.tool(side_effect="none")
    def blocking_read(site: str) -> str:
        """Read a site, blocking."""
        where["blocking"] = threading.current_thread().name
        return "ok"

    @llm.tool(side_effect="none")
    async def async_read(site: str) -> str:
        """Read a site, async."""
        where["async"] = threading.current_thread().name
        return "ok"

    calls = [{"name": "blocking_read", "args": {"site": "CS-1"}}, {"name": "async_read", "args": {"site": "CS-1"}}]
    model = llm.LangChainChat(llm.ScriptedChatModel(responses=[{"tool_calls": calls}, "done"]))
    agent = Agent(name="reader", model=model, tools=[blocking_read, async_read])
    handle = agent.start(app, "read CS-1", run_id="reader")
    asyncio.run(app.worker().run_until_done(handle.run_id))
    assert app.get_run(handle.run_id).status == "completed"
    assert where["blocking"].startswith("agentflow-tool-") and where["async"] == "MainThread", where


@pytest.mark.parametrize("limited", [True, False])
def test_a_worker_past_its_memory_limit_claims_no_more_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, limited: bool
) -> None:
    """Issue 14: the backpressure of a worker that drives as many runs as memory allows. Past
    `max_memory` (here 1 byte) it takes no new run while runs are in flight, so it drives one
    claim's slice at a time; every run still completes. Without a limit the same 40 runs are
    driven at once."""
    import agentflow.engine._worker as worker_module

    monkeypatch.setattr(worker_module, "CLAIM_SLICE", 5)
    app = App(f"sqlite:///{tmp_path / 'wf.db'}")
    in_flight = peak = 0

    @app.activity(side_effect=False)
    async def think(i: int) -> int:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.2)
        in_flight -= 1
        return i

    @app.workflow(name="agent")
    async def agent(ctx: WorkflowContext, i: int) -> int:
        return await ctx.run(think, i)

    for i in range(40):
        app.start(agent, i, run_id=f"a{i}")

    async def drain() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(app.worker(max_memory=1 if limited else 0).run_forever(stop))
        while len(app.list_runs(status="completed")) < 40:
            await asyncio.sleep(0.05)
        stop.set()
        await task

    try:
        with caplog.at_level(logging.WARNING, logger="agentflow.worker"):
            asyncio.run(asyncio.wait_for(drain(), 60))
        if limited:
            assert peak <= 5, peak
            assert any("claiming no more" in r.getMessage() for r in caplog.records)
        else:
            assert peak > 5, peak
    finally:
        app.close()


def test_sequential_app_runs_share_one_heartbeat_thread(tmp_path: Path) -> None:
    """Issue 14 (fast app.run): the workers of one store share a heartbeat thread, so 30
    `app.run` calls do not start and join 30 threads; a run longer than the lease is still
    renewed (its worker's heartbeat moves on) and never taken over."""
    app = App(f"sqlite:///{tmp_path / 'wf.db'}", lease_ttl=0.3)
    seen: set[threading.Thread] = set()
    beats: list[float] = []
    before = set(threading.enumerate())  # other stores' heartbeat threads, lingering

    @app.activity(side_effect=False)
    async def look(i: int) -> int:
        seen.update(t for t in threading.enumerate() if t.name == "agentflow-heartbeat" and t not in before)
        if i == -1:  # a long step: three lease periods
            for _ in range(9):
                await asyncio.sleep(0.1)
                beats.append(app.store.backend.query("SELECT max(heartbeat_at) FROM af_workers WHERE dead = 0")[0][0])
        return i

    @app.workflow(name="wf")
    async def wf(ctx: WorkflowContext, i: int) -> int:
        return await ctx.run(look, i)

    try:
        for i in range(30):
            assert app.run(wf, i, run_id=f"r{i}") == i
        assert len(seen) == 1, seen
        assert app.run(wf, -1, run_id="long") == -1
        assert len(set(beats)) >= 3, beats  # renewed every lease_ttl / 3
        assert [s.epoch for s in app.history("long")] == [1]  # never taken over
    finally:
        app.close()
