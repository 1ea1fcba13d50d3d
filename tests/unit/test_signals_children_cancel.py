"""Signals, child runs and cancellation: durable waits that hold no thread, delivered once and in
order; children with derived ids; cancellation that runs compensation durably."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from agentflow import App, ChildWorkflowError, RunFailedError, WaitTimeout, WorkflowContext
from agentflow.errors import RunStateError, UnknownRunError
from agentflow.testing import assert_eventually


def drive(app: App, run_id: str) -> None:
    """Drive the run (and its children) in this thread until it has ended."""
    asyncio.run(app.worker(root_id=run_id).run_until_done(run_id))


def _waiter(app: App) -> Any:
    @app.workflow(name="waiter")
    async def waiter(ctx: WorkflowContext) -> Any:
        return await ctx.wait_signal("approval")

    return waiter


# ------------------------------------------------------------------------------------------
# signals
# ------------------------------------------------------------------------------------------
def test_signal_sent_before_the_wait_starts_is_delivered(app) -> None:
    """A signal sent while the run is still pending is kept and returned by the later wait."""
    waiter = _waiter(app)
    app.start(waiter, run_id="r")
    app.signal("r", "approval", {"by": "noc-oncall", "ok": True})
    drive(app, "r")
    assert app.result_of(app.store.get_run("r")) == {"by": "noc-oncall", "ok": True}


def test_signal_sent_after_the_wait_starts_wakes_the_parked_run(app, worker_thread) -> None:
    """A run waiting for a signal is parked in the store (`waiting`, no owner, no executor in
    the worker) until the signal arrives; then it is woken and gets the payload."""
    waiter = _waiter(app)
    app.start(waiter, run_id="r")
    w = worker_thread(app)
    assert_eventually(lambda: app.get_run("r").status == "waiting")
    parked = app.get_run("r")
    assert parked.wake_at is None
    assert parked.waiting_on == {"timers": [], "signals": ["approval"], "children": []}
    assert app.store.get_run("r").owner is None
    # The park commits before the executor returns and is dropped (another thread).
    assert_eventually(lambda: w.worker.executors == {}, message="a waiting run holds an executor")

    app.signal("r", "approval", "go")
    assert_eventually(lambda: app.get_run("r").status == "completed")
    assert app.result_of(app.store.get_run("r")) == "go"


def test_wait_signal_timeout_raises_wait_timeout(app) -> None:
    """`wait_signal(name, timeout=)` raises `WaitTimeout` in the workflow once the timeout has
    passed on the engine clock, and the step is recorded as failed."""
    t0 = app.clock.now()

    @app.workflow(name="impatient")
    async def impatient(ctx: WorkflowContext) -> str:
        try:
            await ctx.wait_signal("approval", timeout=600)
        except WaitTimeout as exc:
            return f"timed out at step {exc.seq}"
        return "approved"

    assert app.run(impatient, run_id="r") == "timed out at step 1"
    assert app.clock.now() == t0 + 600
    step = app.history("r")[0]
    assert (step.kind, step.status, step.wake_at) == ("signal", "failed", t0 + 600)


def test_uncaught_wait_timeout_fails_the_run(app) -> None:
    """An uncaught `WaitTimeout` fails the run with that error type."""

    @app.workflow(name="impatient")
    async def impatient(ctx: WorkflowContext) -> Any:
        return await ctx.wait_signal("approval", timeout=60)

    with pytest.raises(RunFailedError) as info:
        app.run(impatient, run_id="r")
    assert info.value.error["type"] == "WaitTimeout"


def test_signal_within_timeout_is_delivered(app) -> None:
    """A signal already in when a wait with a timeout starts is returned, not timed out."""

    @app.workflow(name="patient")
    async def patient(ctx: WorkflowContext) -> Any:
        return await ctx.wait_signal("approval", timeout=600)

    app.start(patient, run_id="r")
    app.signal("r", "approval", 7)
    drive(app, "r")
    assert app.result_of(app.store.get_run("r")) == 7


def test_signals_are_consumed_in_order_each_once(app) -> None:
    """Signals of one name are delivered in the order sent, each to exactly one wait, also
    across a replay: a later wait does not see an already consumed signal again."""

    @app.workflow(name="collector")
    async def collector(ctx: WorkflowContext) -> list[Any]:
        got = [await ctx.wait_signal("item") for _ in range(3)]
        await ctx.sleep(3600)  # park: the waits above are replayed from the history
        try:
            got.append(await ctx.wait_signal("item", timeout=60))
        except WaitTimeout:
            got.append("no more")
        return got

    app.start(collector, run_id="r")
    for item in ("first", "second", "third"):
        app.signal("r", "item", item)
    app.signal("r", "other", "not for this wait")
    drive(app, "r")

    assert app.result_of(app.store.get_run("r")) == ["first", "second", "third", "no more"]
    rows = app.store.backend.query("SELECT name, payload, consumed_seq FROM af_signals WHERE run_id = 'r' ORDER BY id")
    assert rows == [
        ("item", '"first"', 1),
        ("item", '"second"', 2),
        ("item", '"third"', 3),
        ("other", '"not for this wait"', None),
    ]


def test_signal_to_unknown_run_raises(app) -> None:
    """A signal to a run id that does not exist raises `UnknownRunError` naming the id."""
    with pytest.raises(UnknownRunError, match="no-such-run") as info:
        app.signal("no-such-run", "approval", True)
    assert info.value.run_id == "no-such-run"


def test_signal_to_finished_run_raises(app) -> None:
    """A signal to a run that has ended raises `RunStateError` and is not stored."""

    @app.workflow(name="quick")
    async def quick(ctx: WorkflowContext) -> int:
        return 1

    app.run(quick, run_id="r")
    with pytest.raises(RunStateError, match="completed"):
        app.signal("r", "approval", True)
    assert app.store.backend.query("SELECT count(*) FROM af_signals") == [(0,)]


# ------------------------------------------------------------------------------------------
# children
# ------------------------------------------------------------------------------------------
def _children(app: App) -> tuple[Any, Any]:
    @app.activity(name="square", side_effect=False)
    def square(n: int) -> int:
        return n * n

    @app.workflow(name="child")
    async def child(ctx: WorkflowContext, n: int) -> int:
        if n < 0:
            raise ValueError(f"negative input {n}")
        return await ctx.run(square, n)

    return square, child


def test_child_run_id_and_result(app) -> None:
    """`ctx.child` starts a run with id `<parent>/<seq>`, parent and root set, and returns its
    result to the parent."""
    _, child = _children(app)

    @app.workflow(name="parent")
    async def parent(ctx: WorkflowContext) -> int:
        ctx.now()  # seq 1, so the child is step 2
        return await ctx.child(child, 7)

    assert app.run(parent, run_id="p") == 49
    kid = app.get_run("p/2")
    assert (kid.status, kid.parent_id, kid.root_id, kid.workflow) == ("completed", "p", "p", "child")
    step = app.history("p")[1]
    assert (step.kind, step.name, step.status, json.loads(step.args)) == ("child", "child", "completed", "p/2")


def test_fan_out_children_with_gather(app) -> None:
    """Several children started with `asyncio.gather` get ids in call order and their results
    come back in call order."""
    _, child = _children(app)

    @app.workflow(name="parent")
    async def parent(ctx: WorkflowContext) -> list[int]:
        return list(await asyncio.gather(*(ctx.child(child, n) for n in (1, 2, 3, 4))))

    assert app.run(parent, run_id="p") == [1, 4, 9, 16]
    kids = {r.run_id: r for r in app.list_runs() if r.parent_id == "p"}
    assert sorted(kids) == ["p/1", "p/2", "p/3", "p/4"]
    assert all(k.status == "completed" for k in kids.values())
    assert [app.result_of(app.store.get_run(f"p/{i}")) for i in (1, 2, 3, 4)] == [1, 4, 9, 16]


def test_child_failure_raises_child_workflow_error_in_parent(app) -> None:
    """A failed child raises `ChildWorkflowError` in the parent, naming the child run and its
    recorded error; the parent can catch it."""
    _, child = _children(app)

    @app.workflow(name="parent")
    async def parent(ctx: WorkflowContext) -> dict[str, Any]:
        try:
            await ctx.child(child, -1)
        except ChildWorkflowError as exc:
            return {"child": exc.child_run_id, "type": exc.error["type"], "message": exc.error["message"]}
        return {}

    assert app.run(parent, run_id="p") == {"child": "p/1", "type": "ValueError", "message": "negative input -1"}
    assert app.get_run("p/1").status == "failed"


def test_uncaught_child_failure_fails_the_parent(app) -> None:
    """An uncaught `ChildWorkflowError` fails the parent run."""
    _, child = _children(app)

    @app.workflow(name="parent")
    async def parent(ctx: WorkflowContext) -> int:
        return await ctx.child(child, -2)

    with pytest.raises(RunFailedError) as info:
        app.run(parent, run_id="p")
    assert info.value.error["type"] == "ChildWorkflowError"
    assert "p/1" in info.value.error["message"]


# ------------------------------------------------------------------------------------------
# cancellation
# ------------------------------------------------------------------------------------------
def test_cancel_waiting_run_runs_recorded_compensation(app, worker_thread) -> None:
    """`app.cancel` on a run waiting for a signal raises `asyncio.CancelledError` at its await;
    compensation activities in the `except` block run and are recorded after a `cancel` step,
    and the run ends `cancelled`."""
    calls: list[str] = []

    @app.activity(name="stage")
    def stage(site: str) -> str:
        calls.append(f"stage {site}")
        return "staged"

    @app.activity(name="unstage")
    def unstage(site: str) -> str:
        calls.append(f"unstage {site}")
        return "unstaged"

    @app.workflow(name="change")
    async def change(ctx: WorkflowContext, site: str) -> str:
        await ctx.run(stage, site)
        try:
            await ctx.wait_signal("approval")
        except asyncio.CancelledError:
            await ctx.run(unstage, site)
            raise
        return "applied"

    app.start(change, "cell-17", run_id="r")
    worker_thread(app)
    assert_eventually(lambda: app.get_run("r").status == "waiting")
    info = app.cancel("r")
    assert info.cancel_requested
    assert_eventually(lambda: app.get_run("r").status == "cancelled")

    assert calls == ["stage cell-17", "unstage cell-17"]
    steps = [(s.seq, s.kind, s.name, s.status) for s in app.history("r")]
    assert steps[0] == (1, "activity", "stage", "completed")
    assert steps[2] == (3, "cancel", "cancel", "completed")
    assert steps[3] == (4, "activity", "unstage", "completed")
    final = app.get_run("r")
    assert final.error is not None and final.error["type"] == "Cancelled"
    with pytest.raises(RunFailedError, match="cancelled"):
        app.result_of(app.store.get_run("r"))


def test_cancel_never_started_run_cancels_it_outright(app) -> None:
    """A run cancelled before any worker claimed it ends `cancelled` at once and never runs."""
    calls: list[int] = []

    @app.activity(name="effect")
    def effect() -> None:
        calls.append(1)

    @app.workflow(name="wf")
    async def wf(ctx: WorkflowContext) -> None:
        await ctx.run(effect)

    app.start(wf, run_id="r")
    assert app.cancel("r").status == "cancelled"
    drive(app, "r")
    assert app.get_run("r").status == "cancelled"
    assert calls == []
    assert app.history("r") == []


@pytest.mark.parametrize("style", ["except-cancelled", "finally"])
def test_parking_does_not_run_compensation(app, worker_thread, style) -> None:
    """Parking a run abandons its coroutine without running its cleanup for real: compensation
    in `except asyncio.CancelledError` or `finally` is neither executed nor recorded when the
    run parks, only when the run really is cancelled or ends."""
    calls: list[str] = []

    @app.activity(name="undo")
    def undo() -> None:
        calls.append("undo")

    @app.workflow(name="guarded")
    async def guarded(ctx: WorkflowContext) -> Any:
        if style == "finally":
            try:
                return await ctx.wait_signal("approval")
            finally:
                await ctx.run(undo)
        try:
            return await ctx.wait_signal("approval")
        except asyncio.CancelledError:
            await ctx.run(undo)
            raise

    app.start(guarded, run_id="r")
    w = worker_thread(app)
    assert_eventually(lambda: app.get_run("r").status == "waiting")
    w.stop()
    assert calls == [], "parking ran the compensation activity"
    assert [(s.seq, s.kind) for s in app.history("r")] == [(1, "signal")]

    app.signal("r", "approval", "yes")
    drive(app, "r")
    assert app.result_of(app.store.get_run("r")) == "yes"
    assert calls == (["undo"] if style == "finally" else [])
    assert [s.kind for s in app.history("r")] == (["signal", "activity"] if style == "finally" else ["signal"])


def test_cancel_reaches_a_workflow_that_never_blocks(make_app: Any) -> None:
    """A cancel requested while a workflow goes from activity to activity (never parked) is
    delivered at the next step boundary, recorded there, and replayed at the same step."""
    app = make_app()
    ran: list[int] = []

    @app.activity(side_effect=False)
    async def step(i: int) -> int:
        ran.append(i)
        if i == 2:
            app.cancel("busy")  # the request arrives while the run is executing
        return i

    @app.activity(side_effect=False)
    async def undo() -> str:
        return "undone"

    @app.workflow
    async def busy(ctx: WorkflowContext) -> str:
        try:
            for i in range(10):
                await ctx.run(step, i)
        except asyncio.CancelledError:
            await ctx.run(undo)
            raise
        return "finished"

    handle = app.start(busy, run_id="busy")

    async def drive() -> None:
        worker = app.worker(root_id="busy")
        # The heartbeat thread reports cancel requests; here the executor is told directly.
        task = asyncio.create_task(worker.run_until_done("busy"))
        while not worker.executors:
            await asyncio.sleep(0.001)
        worker.executors["busy"].cancel_requested = True
        await task

    asyncio.run(drive())
    assert app.get_run(handle.run_id).status == "cancelled"
    assert max(ran) < 9, ran
    kinds = [(s.kind, s.name.rsplit(".", 1)[-1]) for s in app.history("busy")]
    assert ("cancel", "cancel") in kinds
    assert kinds[-1] == ("activity", "undo"), kinds
