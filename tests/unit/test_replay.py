"""Replay: a resumed run re-runs the workflow from the top and answers recorded steps from the
history, so recorded work is never done twice and the code must still match the history."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import BaseModel

from agentflow import ActivityError, App, RetryPolicy, WorkflowContext
from agentflow.testing import assert_eventually


def drive(app: App, run_id: str) -> None:
    """Drive the run (and its children) in this thread until it has ended."""
    asyncio.run(app.worker(root_id=run_id).run_until_done(run_id))


def park(app: App, start_worker: Callable[..., Any], run_id: str) -> None:
    """Drive the run until it is parked waiting (for a signal), then stop the worker."""
    w = start_worker(app)
    assert_eventually(lambda: app.get_run(run_id).status == "waiting", message=f"run {run_id} never parked")
    w.stop()


# ------------------------------------------------------------------------------------------
# recorded results and errors
# ------------------------------------------------------------------------------------------
def test_replay_returns_recorded_results_without_executing(make_app, worker_thread) -> None:
    """A completed activity is not executed again when the run resumes in a new process: the
    replay returns the recorded result."""
    calls: list[str] = []

    def register(app: App, tag: str) -> Any:
        @app.activity(name="add")
        def add(a: int, b: int) -> int:
            calls.append(tag)
            return a + b

        @app.workflow(name="adder")
        async def adder(ctx: WorkflowContext, x: int) -> int:
            y = await ctx.run(add, x, 1)
            bonus = await ctx.wait_signal("go")
            return y + bonus

        return adder

    first = make_app()
    wf = register(first, "first")
    first.start(wf, 41, run_id="r")
    park(first, worker_thread, "r")
    assert calls == ["first"]

    second = make_app()  # a redeployed process: same code, fresh counters
    register(second, "second")
    second.signal("r", "go", 100)
    drive(second, "r")

    assert second.get_run("r").status == "completed"
    assert second.result_of(second.store.get_run("r")) == 142
    assert calls == ["first"], "the recorded activity was executed again on replay"
    step = second.history("r")[0]
    assert (step.kind, step.name, step.status, step.result) == ("activity", "add", "completed", "42")


def test_recorded_error_is_reraised_on_replay_without_executing(app) -> None:
    """An activity that failed for good is recorded; the replay raises the same `ActivityError`
    (same cause and attempts) without calling the activity again."""
    calls: list[int] = []
    seen: list[tuple[str, str, int, bool]] = []

    @app.activity(name="boom", retry=RetryPolicy(max_attempts=1))
    def boom() -> None:
        calls.append(1)
        raise ValueError("the cell site refused the change")

    @app.workflow(name="catches")
    async def catches(ctx: WorkflowContext) -> str:
        try:
            await ctx.run(boom)
        except ActivityError as exc:
            seen.append((exc.cause_type, exc.cause_message, exc.attempts, ctx.is_replaying))
        await ctx.sleep(7200)  # parks: the rest runs in a new executor, replaying step 1
        return "done"

    assert app.run(catches, run_id="r") == "done"
    assert calls == [1]
    assert seen == [
        ("ValueError", "the cell site refused the change", 1, False),
        ("ValueError", "the cell site refused the change", 1, True),
    ]
    first = app.history("r")[0]
    assert first.status == "failed"
    assert json.loads(first.error)["type"] == "ValueError"


# ------------------------------------------------------------------------------------------
# non-determinism
# ------------------------------------------------------------------------------------------
def _v1(app: App, calls: list[str]) -> Any:
    @app.activity(name="step_a")
    def step_a(n: int) -> int:
        calls.append("step_a")
        return n

    @app.workflow(name="change")
    async def change(ctx: WorkflowContext) -> int:
        n = await ctx.run(step_a, 1)
        await ctx.wait_signal("go")
        return n

    return change


def _v2_same(app: App, calls: list[str]) -> None:
    _v1(app, calls)


def _v2_other_name(app: App, calls: list[str]) -> None:
    @app.activity(name="step_b")
    def step_b(n: int) -> int:
        calls.append("step_b")
        return n

    @app.workflow(name="change")
    async def change(ctx: WorkflowContext) -> int:
        try:
            n = await ctx.run(step_b, 1)
        except Exception:  # user code must not be able to swallow the mismatch
            return -1
        await ctx.wait_signal("go")
        return n


def _v2_other_kind(app: App, calls: list[str]) -> None:
    @app.workflow(name="change")
    async def change(ctx: WorkflowContext) -> int:
        await ctx.sleep(5)
        await ctx.wait_signal("go")
        return 0


def _v2_other_args(app: App, calls: list[str]) -> None:
    @app.activity(name="step_a")
    def step_a(n: int) -> int:
        calls.append("step_a")
        return n

    @app.workflow(name="change")
    async def change(ctx: WorkflowContext) -> int:
        n = await ctx.run(step_a, 2)
        await ctx.wait_signal("go")
        return n


def _run_v2(make_app, worker_thread, v2: Callable[[App, list[str]], None]) -> tuple[App, list[str]]:
    calls: list[str] = []
    first = make_app()
    first.start(_v1(first, calls), run_id="r")
    park(first, worker_thread, "r")
    assert calls == ["step_a"]
    calls.clear()
    second = make_app()
    v2(second, calls)
    second.signal("r", "go")
    drive(second, "r")
    return second, calls


def test_unchanged_code_replays_cleanly(make_app, worker_thread) -> None:
    """Positive control: the same code, redeployed, replays the history and completes."""
    second, calls = _run_v2(make_app, worker_thread, _v2_same)
    assert second.get_run("r").status == "completed"
    assert calls == []


@pytest.mark.parametrize(
    ("v2", "recorded", "requested"),
    [
        pytest.param(_v2_other_name, "activity `step_a`", "activity `step_b`", id="activity-renamed"),
        pytest.param(_v2_other_kind, "activity `step_a`", "sleep `sleep`", id="kind-changed"),
        pytest.param(_v2_other_args, "activity `step_a`", "digest", id="arguments-changed"),
    ],
)
def test_changed_code_under_inflight_run_raises_non_determinism(
    make_app, worker_thread, v2, recorded, requested
) -> None:
    """Negative control: code that asks for a different step than the history recorded (other
    name, other kind, other arguments) fails the run with `NonDeterminismError` naming the seq,
    the recorded and requested steps and the `ctx.patched` fix, without executing anything and
    even when the workflow wraps the call in `except Exception`."""
    second, calls = _run_v2(make_app, worker_thread, v2)
    info = second.get_run("r")
    assert info.status == "failed"
    assert info.error is not None
    assert info.error["type"] == "NonDeterminismError"
    assert info.error["seq"] == 1
    message = info.error["message"]
    assert "step 1 " in message
    assert recorded in message
    assert requested in message
    assert "ctx.patched" in message
    assert calls == [], "a step was executed although the code no longer matches the history"
    step = second.history("r")[0]
    assert (step.name, step.status, step.result) == ("step_a", "completed", "1"), "the history was changed"


def test_returning_early_while_history_has_more_steps_raises(make_app, worker_thread) -> None:
    """Code that returns before reaching recorded steps (a removed call) fails the run with
    `NonDeterminismError` naming the first step it no longer makes, instead of completing."""
    calls: list[str] = []
    first = make_app()

    @first.activity(name="a")
    def a() -> str:
        return "a"

    @first.activity(name="b")
    def b() -> str:
        return "b"

    @first.workflow(name="shrinks")
    async def v1(ctx: WorkflowContext) -> str:
        await ctx.run(a)
        await ctx.run(b)
        await ctx.wait_signal("go")
        return "v1"

    first.start(v1, run_id="r")
    park(first, worker_thread, "r")

    second = make_app()

    @second.activity(name="a")
    def a2() -> str:
        calls.append("a")
        return "a"

    @second.workflow(name="shrinks")
    async def v2(ctx: WorkflowContext) -> str:
        await ctx.run(a2)
        return "v2"

    second.signal("r", "go")
    drive(second, "r")
    info = second.get_run("r")
    assert info.status == "failed"
    assert info.error is not None
    assert info.error["type"] == "NonDeterminismError"
    assert info.error["seq"] == 2
    assert "activity `b`" in info.error["message"]
    assert "ctx.patched" in info.error["message"]
    assert info.output_json is None
    assert calls == []


# ------------------------------------------------------------------------------------------
# concurrency and recorded values
# ------------------------------------------------------------------------------------------
def test_gather_numbers_steps_in_call_order_not_finish_order(app) -> None:
    """`asyncio.gather(ctx.run(a), ctx.run(b), ctx.run(c))` records a, b, c as steps 1, 2, 3
    every time, even though the activities finish in reverse order, and replays them as such."""
    finished: list[str] = []

    @app.activity(name="tick", side_effect=False)
    async def tick(label: str, delay: float) -> str:
        await asyncio.sleep(delay)  # forces the finishing order c, b, a
        finished.append(label)
        return label

    @app.workflow(name="fan")
    async def fan(ctx: WorkflowContext) -> list[str]:
        out = await asyncio.gather(ctx.run(tick, "a", 0.2), ctx.run(tick, "b", 0.1), ctx.run(tick, "c", 0.0))
        await ctx.sleep(7200)  # park: the gather is replayed from the history
        return list(out)

    for i in range(3):
        finished.clear()
        assert app.run(fan, run_id=f"r{i}") == ["a", "b", "c"]
        assert finished == ["c", "b", "a"], "precondition: the activities finish in reverse order"
        steps = app.history(f"r{i}")
        assert [(s.seq, s.kind, json.loads(s.args)[0][0]) for s in steps if s.kind == "activity"] == [
            (1, "activity", "a"),
            (2, "activity", "b"),
            (3, "activity", "c"),
        ]
        assert steps[3].kind == "sleep" and steps[3].epoch == 2, "the run was not parked and replayed"


def test_now_uuid_random_are_recorded_and_identical_on_replay(app) -> None:
    """`ctx.now()`, `ctx.uuid()` and `ctx.random()` are recorded: a replay (at a later clock time)
    sees exactly the values the first execution saw."""
    seen: list[tuple[datetime, uuid.UUID, float]] = []

    @app.workflow(name="values")
    async def values(ctx: WorkflowContext) -> list[Any]:
        got = (ctx.now(), ctx.uuid(), ctx.random())
        seen.append(got)
        await ctx.sleep(7200)
        return [got[0].isoformat(), str(got[1]), got[2]]

    start = app.clock.now()
    result = app.run(values, run_id="r")
    assert len(seen) == 2, "the workflow was not replayed"
    assert seen[0] == seen[1]
    now, uid, rnd = seen[0]
    assert now == datetime.fromtimestamp(start, tz=UTC)  # not the clock at replay time
    assert app.clock.now() == start + 7200
    assert isinstance(uid, uuid.UUID) and 0.0 <= rnd < 1.0
    assert result == [now.isoformat(), str(uid), rnd]
    kinds = [(s.seq, s.kind) for s in app.history("r")]
    assert kinds[:3] == [(1, "now"), (2, "uuid"), (3, "random")]


def test_patched_takes_old_path_for_old_history_and_new_path_for_new_runs(make_app, worker_thread) -> None:
    """`ctx.patched(id)` is False for a run whose history was recorded by the old code (it
    replays the old path without error) and True, recorded, for a new run (also on its replay)."""
    calls: list[str] = []
    old = make_app()

    @old.activity(name="old_step")
    def old_step_v1() -> str:
        calls.append("old@v1")
        return "old"

    @old.workflow(name="patchy")
    async def patchy_v1(ctx: WorkflowContext) -> str:
        out = await ctx.run(old_step_v1)
        await ctx.wait_signal("go")
        return out

    old.start(patchy_v1, run_id="old-run")
    park(old, worker_thread, "old-run")

    new = make_app()
    branches: list[tuple[str, bool]] = []

    @new.activity(name="old_step")
    def old_step() -> str:
        calls.append("old")
        return "old"

    @new.activity(name="new_step")
    def new_step() -> str:
        calls.append("new")
        return "new"

    @new.workflow(name="patchy")
    async def patchy(ctx: WorkflowContext) -> str:
        take_new = ctx.patched("use-new-step")
        branches.append((ctx.run_id, take_new))
        out = await (ctx.run(new_step) if take_new else ctx.run(old_step))
        await ctx.wait_signal("go")
        return out

    new.signal("old-run", "go")
    drive(new, "old-run")
    assert new.get_run("old-run").status == "completed"
    assert new.result_of(new.store.get_run("old-run")) == "old"
    assert branches == [("old-run", False)]
    assert calls == ["old@v1"]

    branches.clear()
    new.start(patchy, run_id="new-run")
    park(new, worker_thread, "new-run")
    new.signal("new-run", "go")
    drive(new, "new-run")
    assert new.result_of(new.store.get_run("new-run")) == "new"
    assert branches == [("new-run", True), ("new-run", True)], "the patch marker did not replay as True"
    assert calls == ["old@v1", "new"]
    marker = new.history("new-run")[0]
    assert (marker.kind, marker.name) == ("patch", "use-new-step")


class Kpis(BaseModel):
    site: str
    drop_rate_pct: float
    measured_at: datetime


def test_live_value_equals_replayed_value(app) -> None:
    """An activity returning a pydantic model hands the workflow a model rebuilt from the
    recorded JSON on the live path too, so the live and replayed values are equal and typed."""
    returned: list[Kpis] = []
    seen: list[Kpis] = []

    @app.activity(name="read_kpis", side_effect=False)
    def read_kpis(site: str) -> Kpis:
        value = Kpis(site=site, drop_rate_pct=2.9, measured_at=datetime(2026, 1, 1, tzinfo=UTC))
        returned.append(value)
        return value

    @app.workflow(name="reads")
    async def reads(ctx: WorkflowContext, site: str) -> Kpis:
        kpis = await ctx.run(read_kpis, site)
        seen.append(kpis)
        await ctx.sleep(7200)
        return kpis

    result = app.run(reads, "cell-17", run_id="r")
    assert len(returned) == 1 and len(seen) == 2
    assert all(isinstance(v, Kpis) for v in seen)
    assert isinstance(seen[0].measured_at, datetime)
    assert seen[0] == seen[1] == returned[0]
    assert seen[0] is not returned[0], "the live path must see the decoded record, not the raw return"
    assert isinstance(result, Kpis) and result == returned[0]


def test_concurrent_multi_step_branches_replay_in_recorded_order(make_app: Any) -> None:
    """Branches that each take several steps interleave in whatever order their results come
    in; every resume (a new App, parked in between) replays that interleaving exactly, because
    outcomes are handed to the workflow in the recorded delivery order."""

    def build(app: App) -> Any:
        @app.activity(side_effect=False, name="slow")
        async def slow(tag: str, delay: float) -> str:
            await asyncio.sleep(delay)
            return tag

        @app.workflow(name="branches")
        async def branches(ctx: WorkflowContext) -> list[str]:
            async def branch(name: str, first: float, second: float, pause: float) -> str:
                a = await ctx.run(slow, f"{name}1", first)
                await ctx.sleep(pause)
                b = await ctx.run(slow, f"{name}2", second)
                return a + b

            async def waiter() -> str:
                return str(await ctx.wait_signal("go"))

            return list(await asyncio.gather(branch("a", 0.03, 0.0, 3600), branch("b", 0.0, 0.02, 7200), waiter()))

        return branches

    first = make_app(inline_wait=0.0)
    wf = build(first)
    first.start(wf, run_id="r")
    # Drive until it parks on the timers and the signal, then resume with fresh Apps each time.
    asyncio.run(first.worker(root_id="r").run_until_blocked("r"))
    for _ in range(6):
        app = make_app(inline_wait=0.0)
        build(app)
        if app.get_run("r").status == "completed":
            break
        if app.get_run("r").status == "waiting" and not app.store.get_run("r").wake_at:
            app.signal("r", "go", "went")
        asyncio.run(app.worker(root_id="r").run_until_blocked("r"))
    final = make_app(inline_wait=0.0)
    build(final)
    record = final.store.get_run("r")
    assert record.status == "completed", record.error
    assert json.loads(record.output or "[]") == ["a1a2", "b1b2", "went"]
    deliveries = [s.delivery for s in final.history("r") if s.delivery is not None]
    assert sorted(deliveries) == list(range(1, len(deliveries) + 1))
    # And one more full replay of the finished history from the top, on fresh code objects.
    again = make_app(inline_wait=0.0)
    assert again.run(build(again), run_id="r") == ["a1a2", "b1b2", "went"]
