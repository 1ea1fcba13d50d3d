"""Leases and fencing: a run has one owner at a time. A claim bumps the run's epoch, every write
of its history is conditional on that epoch, a dead owner on this host is replaced at once and a
silent one after the lease TTL. On both backends: the fencing is the store's SQL, which each
backend must run with the same meaning."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from typing import Any

import pytest
from support.pg import execute

from agentflow import App, WorkflowContext
from agentflow.engine._executor import RunExecutor
from agentflow.errors import LeaseLostError
from agentflow.store._store import process_start_time

pytestmark = pytest.mark.backends("sqlite", "postgresql")

NO_SUCH_PID = 2**22 + 7  # above any Linux pid_max: no process can have it


def _bump_epoch(db_url: str, run_id: str) -> None:
    """What a takeover does to the run, done behind the executor's back (on a connection of its
    own, as another process would)."""
    execute(db_url, "UPDATE af_runs SET epoch = epoch + 1 WHERE id = ?", (run_id,))


def _claim(app: App, run_id: str, worker_id: str = "test-worker") -> RunExecutor:
    claimed = app.store.claim(worker_id, now=app.clock.now(), lease_ttl=app.lease_ttl, limit=10)
    assert [c[0] for c in claimed] == [run_id]
    (_, epoch, _) = claimed[0]
    return RunExecutor(app, app.store.get_run(run_id), epoch)


def _add_worker(db_url: str, worker_id: str, *, host: str, pid: int, pid_start: str, heartbeat_at: float) -> None:
    execute(
        db_url,
        "INSERT INTO af_workers (id, host, pid, pid_start, started_at, heartbeat_at, dead) VALUES (?, ?, ?, ?, ?, ?, 0)",
        (worker_id, host, pid, pid_start, heartbeat_at, heartbeat_at),
    )


def _worker_dead(app: App, worker_id: str) -> int:
    return app.store.backend.query("SELECT dead FROM af_workers WHERE id = ?", (worker_id,))[0][0]


# ------------------------------------------------------------------------------------------
# fencing
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("side_effect", [False, True], ids=["read", "side-effect"])
def test_write_after_takeover_mid_activity_is_refused(app, db_url, side_effect) -> None:
    """When the run's epoch moves on while an activity runs (another worker took the run over),
    the executor's next write raises `LeaseLostError` and appends nothing under the stale epoch:
    the result is not recorded (an intent written before the takeover stays an intent)."""
    calls: list[int] = []

    @app.activity(name="slow_effect", side_effect=side_effect)
    def slow_effect() -> str:
        calls.append(1)
        _bump_epoch(db_url, "r")
        return "done"

    @app.workflow(name="wf")
    async def wf(ctx: WorkflowContext) -> str:
        return await ctx.run(slow_effect)

    app.start(wf, run_id="r")
    executor = _claim(app, "r")
    with pytest.raises(LeaseLostError) as info:
        asyncio.run(executor.execute())
    assert info.value.run_id == "r"
    assert calls == [1]
    steps = [(s.seq, s.status, s.result, s.epoch) for s in app.history("r")]
    assert steps == ([(1, "started", None, 1)] if side_effect else [])
    run = app.store.get_run("r")
    assert (run.status, run.epoch, run.output) == ("running", 2, None)


def test_stale_executor_records_nothing(app, db_url) -> None:
    """An executor whose epoch is already stale when it starts cannot record anything: neither
    the local records (`ctx.now()`) nor the timer nor the park; it stops with
    `LeaseLostError`."""

    @app.workflow(name="wf")
    async def wf(ctx: WorkflowContext) -> None:
        ctx.now()
        await ctx.sleep(3600)

    app.start(wf, run_id="r")
    executor = _claim(app, "r")
    _bump_epoch(db_url, "r")
    with pytest.raises(LeaseLostError):
        asyncio.run(executor.execute())
    assert app.history("r") == []
    assert app.store.get_run("r").status == "running"


def test_stale_executor_cannot_finish_the_run(app, db_url) -> None:
    """The final write (the run's status and output) is fenced too: a stale executor's finish
    raises `LeaseLostError` (not an internal control-flow exception) and the run stays open."""

    @app.workflow(name="wf")
    async def wf(ctx: WorkflowContext) -> str:
        return "finished"

    app.start(wf, run_id="r")
    executor = _claim(app, "r")
    _bump_epoch(db_url, "r")
    with pytest.raises(LeaseLostError):
        asyncio.run(executor.execute())
    run = app.store.get_run("r")
    assert (run.status, run.output, run.completed_at) == ("running", None, None)


# ------------------------------------------------------------------------------------------
# takeover
# ------------------------------------------------------------------------------------------
def _counting_workflow(app: App) -> tuple[Any, list[int]]:
    calls: list[int] = []

    @app.activity(name="effect")
    def effect() -> str:
        calls.append(1)
        return "applied"

    @app.workflow(name="wf")
    async def wf(ctx: WorkflowContext) -> str:
        return await ctx.run(effect)

    return wf, calls


def test_dead_owner_on_this_host_is_taken_over_at_once(make_app, db_url) -> None:
    """A run owned by a worker of this host whose process is gone is taken over by the next
    worker at once (pid check), long before its lease would expire; the dead worker is marked
    dead and the claim bumps the epoch."""
    app = make_app(lease_ttl=3600)
    wf, calls = _counting_workflow(app)
    app.start(wf, run_id="r")
    _add_worker(db_url, "ghost", host=socket.gethostname(), pid=NO_SUCH_PID, pid_start="1", heartbeat_at=time.time())
    assert app.store.claim("ghost", now=app.clock.now(), lease_ttl=3600, limit=1) == [("r", 1, False)]

    wall = time.monotonic()
    asyncio.run(app.worker().run_until_done("r"))
    assert time.monotonic() - wall < 10
    run = app.store.get_run("r")
    assert (run.status, run.epoch, run.owner) == ("completed", 2, None)
    assert _worker_dead(app, "ghost") == 1
    assert calls == [1]


def test_live_owner_keeps_its_run(app, db_url) -> None:
    """Control: a run owned by a live worker of this host with a fresh heartbeat is neither
    reaped nor claimable."""
    wf, _ = _counting_workflow(app)
    app.start(wf, run_id="r")
    me = os.getpid()
    _add_worker(
        db_url, "alive", host=socket.gethostname(), pid=me, pid_start=process_start_time(me), heartbeat_at=time.time()
    )
    assert app.store.claim("alive", now=app.clock.now(), lease_ttl=10, limit=1) == [("r", 1, False)]

    assert app.store.reap_dead_workers("other") == 0
    assert app.store.claim("other", now=app.clock.now(), lease_ttl=10, limit=1) == []
    assert _worker_dead(app, "alive") == 0


@pytest.mark.parametrize("heartbeat_age", [0.0, 100.0], ids=["fresh", "stale"])
def test_owner_silent_past_lease_ttl_loses_its_runs(make_app, db_url, heartbeat_age) -> None:
    """A worker on another host (no pid check possible) keeps its runs while its heartbeat is
    younger than `lease_ttl` and loses them once it is older: the run is claimed (as a
    recovery) with a new epoch, and the old owner's writes are refused from then on (so it
    does not even start a side-effecting activity, whose intent it cannot record)."""
    app = make_app(lease_ttl=10)
    wf, calls = _counting_workflow(app)
    app.start(wf, run_id="r")
    _add_worker(
        db_url, "remote", host="another-host", pid=os.getpid(), pid_start="", heartbeat_at=time.time() - heartbeat_age
    )
    stale_executor = _claim(app, "r", worker_id="remote")

    claimed = app.store.claim("new", now=app.clock.now(), lease_ttl=10, limit=1)
    if heartbeat_age < 10:
        assert claimed == []
        return
    assert claimed == [("r", 2, True)]
    with pytest.raises(LeaseLostError):
        asyncio.run(stale_executor.execute())
    assert app.history("r") == []
    assert calls == []  # its intent write was refused first, so the effect never ran

    app.store.release("r", 2)  # hand the run to a real worker
    asyncio.run(app.worker().run_until_done("r"))
    run = app.store.get_run("r")
    assert (run.status, run.epoch) == ("completed", 3)
    assert [(s.seq, s.status, s.epoch) for s in app.history("r")] == [(1, "completed", 3)]
