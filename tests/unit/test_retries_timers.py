"""Retries and timers run on the engine clock: backoff follows the policy, every failed attempt is
recorded, and durable timers park the run instead of holding a thread."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from agentflow import ActivityError, App, RetryPolicy, RunFailedError, WorkflowContext
from agentflow.errors import ConfigurationError
from agentflow.testing import TestClock, assert_eventually


def _attempts(app: App, run_id: str) -> list[dict[str, Any]]:
    rows = app.store.load_attempts(run_id)
    keys = ("seq", "attempt", "error", "started_at", "finished_at", "retry_at")
    return [dict(zip(keys, row, strict=True)) for row in rows]


# ------------------------------------------------------------------------------------------
# retries
# ------------------------------------------------------------------------------------------
def test_delay_after_follows_the_policy() -> None:
    """`delay_after(n)` is initial_interval * backoff^(n-1), capped at max_interval."""
    policy = RetryPolicy(max_attempts=6, initial_interval=10, backoff=3, max_interval=50)
    assert [policy.delay_after(n) for n in range(1, 6)] == [10, 30, 50, 50, 50]


@pytest.mark.parametrize(
    ("policy", "expected", "claims"),
    [
        # Long backoffs park the run in the store between attempts: one claim per attempt.
        pytest.param(
            RetryPolicy(max_attempts=5, initial_interval=10, backoff=3, max_interval=50), [10, 30, 50], 4, id="parked"
        ),
        # Backoffs shorter than App.inline_wait are waited inside the worker: one claim.
        pytest.param(
            RetryPolicy(max_attempts=5, initial_interval=0.25, backoff=2, max_interval=0.6),
            [0.25, 0.5, 0.6],
            1,
            id="inline",
        ),
    ],
)
def test_retries_back_off_on_the_clock_and_record_each_attempt(app, policy, expected, claims) -> None:
    """Each failed attempt is recorded in af_step_attempts with its error, and the next attempt
    is due `initial_interval * backoff^(n-1)` (capped) after it: on the engine clock, so a test
    clock skips the waits."""
    calls: list[float] = []

    @app.activity(name="flaky", retry=policy)
    def flaky() -> str:
        calls.append(app.clock.now())
        if len(calls) < 4:
            raise ConnectionError(f"gNB unreachable (attempt {len(calls)})")
        return "ok"

    @app.workflow(name="retrying")
    async def retrying(ctx: WorkflowContext) -> str:
        return await ctx.run(flaky)

    t0 = app.clock.now()
    wall = time.monotonic()
    assert app.run(retrying, run_id="r") == "ok"
    assert time.monotonic() - wall < 10, "the backoff was waited in real time"

    rows = _attempts(app, "r")
    assert [(r["seq"], r["attempt"]) for r in rows] == [(1, 1), (1, 2), (1, 3)]
    assert [r["retry_at"] - r["finished_at"] for r in rows] == pytest.approx(expected)
    for n, r in enumerate(rows, start=1):
        err = json.loads(r["error"])
        assert err["type"] == "ConnectionError"
        assert err["message"] == f"gNB unreachable (attempt {n})"
        assert err["retryable"] is True
    # Each attempt ran when the previous one's retry was due, not earlier.
    assert [c - t0 for c in calls] == pytest.approx([0, *[sum(expected[:i]) for i in range(1, 4)]])
    step = app.history("r")[0]
    assert (step.status, step.attempt, step.result, step.epoch) == ("completed", 4, '"ok"', claims)


@pytest.mark.parametrize(
    "non_retryable", [(KeyError,), ("KeyError",), ("builtins.KeyError",)], ids=["type", "name", "qualified"]
)
def test_non_retryable_errors_fail_at_once(app, non_retryable) -> None:
    """An exception listed in `non_retryable` (by type or name) fails the step on the first
    attempt, however many attempts the policy allows."""
    calls: list[int] = []

    @app.activity(name="lookup", retry=RetryPolicy(max_attempts=5, non_retryable=non_retryable))
    def lookup() -> str:
        calls.append(1)
        raise KeyError("cell-17")

    @app.workflow(name="looks_up")
    async def looks_up(ctx: WorkflowContext) -> list[Any]:
        try:
            return await ctx.run(lookup)
        except ActivityError as exc:
            return [exc.activity, exc.cause_type, exc.attempts]

    assert app.run(looks_up, run_id="r") == ["lookup", "KeyError", 1]
    assert calls == [1]
    rows = _attempts(app, "r")
    assert len(rows) == 1 and rows[0]["retry_at"] is None
    assert json.loads(rows[0]["error"])["retryable"] is False


def test_non_retryable_agentflow_error_fails_at_once(app) -> None:
    """An agentflow error whose `retryable` is False (e.g. a ConfigurationError raised in an
    activity) is not retried by the default policy."""
    calls: list[int] = []

    @app.activity(name="misconfigured")
    def misconfigured() -> None:
        calls.append(1)
        raise ConfigurationError("no such cell site")

    @app.workflow(name="wf")
    async def wf(ctx: WorkflowContext) -> None:
        await ctx.run(misconfigured)

    with pytest.raises(RunFailedError):
        app.run(wf, run_id="r")
    assert calls == [1]


def test_exhausted_attempts_raise_activity_error_in_the_workflow(app) -> None:
    """After `max_attempts` failed attempts the workflow gets `ActivityError` with the cause and
    the attempt count; it can catch it and carry on."""
    calls: list[int] = []

    @app.activity(name="always_fails", retry=RetryPolicy(max_attempts=3, initial_interval=5))
    def always_fails() -> None:
        calls.append(1)
        raise RuntimeError("still down")

    @app.workflow(name="catches")
    async def catches(ctx: WorkflowContext) -> dict[str, Any]:
        try:
            await ctx.run(always_fails)
        except ActivityError as exc:
            return {"cause": exc.cause_type, "message": exc.cause_message, "attempts": exc.attempts, "seq": exc.seq}
        return {}

    assert app.run(catches, run_id="r") == {"cause": "RuntimeError", "message": "still down", "attempts": 3, "seq": 1}
    assert calls == [1, 1, 1]
    rows = _attempts(app, "r")
    assert [r["attempt"] for r in rows] == [1, 2, 3]
    assert rows[-1]["retry_at"] is None
    step = app.history("r")[0]
    assert (step.status, step.attempt) == ("failed", 3)


def test_exhausted_attempts_fail_the_run_when_not_caught(app) -> None:
    """An uncaught `ActivityError` fails the run; the recorded error says which activity and
    why, and `result()` raises `RunFailedError`."""

    @app.activity(name="always_fails", retry=RetryPolicy(max_attempts=2, initial_interval=5))
    def always_fails() -> None:
        raise RuntimeError("still down")

    @app.workflow(name="doesnt_catch")
    async def doesnt_catch(ctx: WorkflowContext) -> None:
        await ctx.run(always_fails)

    with pytest.raises(RunFailedError) as info:
        app.run(doesnt_catch, run_id="r")
    assert info.value.error["type"] == "ActivityError"
    assert "always_fails" in info.value.error["message"]
    assert "still down" in info.value.error["message"]
    run = app.get_run("r")
    assert run.status == "failed"
    assert run.error is not None and run.error["type"] == "ActivityError"


def test_timeout_of_async_activity_is_a_failed_attempt(app) -> None:
    """An async activity that exceeds its `timeout` is cancelled and recorded as a failed,
    retryable attempt (TimeoutError); the next attempt can succeed."""
    calls: list[int] = []

    @app.activity(name="hangs_once", timeout=0.05, retry=RetryPolicy(max_attempts=3, initial_interval=30))
    async def hangs_once() -> str:
        calls.append(1)
        if len(calls) == 1:
            await asyncio.Event().wait()  # never set: only the timeout ends this attempt
        return "answered"

    @app.workflow(name="wf")
    async def wf(ctx: WorkflowContext) -> str:
        return await ctx.run(hangs_once)

    assert app.run(wf, run_id="r") == "answered"
    assert calls == [1, 1]
    rows = _attempts(app, "r")
    assert len(rows) == 1
    err = json.loads(rows[0]["error"])
    assert err["type"] == "TimeoutError"
    assert "timed out after 0.05s" in err["message"]
    assert rows[0]["retry_at"] - rows[0]["finished_at"] == 30
    assert app.history("r")[0].attempt == 2


# ------------------------------------------------------------------------------------------
# timers
# ------------------------------------------------------------------------------------------
def test_two_hour_sleep_takes_no_real_time(app) -> None:
    """`ctx.sleep(7200)` with a test clock completes in well under a second of wall time; the run
    was parked (the sleep completed under a new claim) and the clock moved exactly two hours."""

    @app.workflow(name="window")
    async def window(ctx: WorkflowContext) -> str:
        before = ctx.now()
        await ctx.sleep(2 * 3600)
        return str(ctx.now() - before)

    t0 = app.clock.now()
    wall = time.monotonic()
    assert app.run(window, run_id="r") == "2:00:00"
    assert time.monotonic() - wall < 5
    assert app.clock.now() == t0 + 7200
    sleep = app.history("r")[1]
    assert (sleep.kind, sleep.status, sleep.wake_at, sleep.finished_at) == ("sleep", "completed", t0 + 7200, t0 + 7200)
    assert sleep.epoch == 2, "the sleep was not parked in the store and resumed by a new claim"


def test_sleeping_run_is_parked_with_wake_at(make_app, worker_thread) -> None:
    """Between `ctx.sleep` and its wake time the run is `waiting` in the store with `wake_at`
    set and no owner, and the worker holds no executor for it; once the clock reaches wake_at
    the run resumes and completes."""
    clock = TestClock(start=1_700_000_000)
    clock.skips = False  # the test moves time itself, to look at the parked run
    app = make_app(clock=clock)
    calls: list[int] = []

    @app.activity(name="after_window")
    def after_window() -> str:
        calls.append(1)
        return "applied"

    @app.workflow(name="window")
    async def window(ctx: WorkflowContext) -> str:
        await ctx.sleep(2 * 3600)
        return await ctx.run(after_window)

    app.start(window, run_id="r")
    w = worker_thread(app)
    assert_eventually(lambda: app.get_run("r").status == "waiting")
    parked = app.get_run("r")
    assert parked.wake_at == 1_700_000_000 + 7200
    assert parked.waiting_on == {"timers": [1_700_000_000 + 7200], "signals": [], "children": []}
    assert app.store.get_run("r").owner is None
    assert w.worker.executors == {}
    assert calls == []

    clock.advance(7200)
    assert_eventually(lambda: app.get_run("r").status == "completed")
    assert calls == [1]


def test_sleep_until_aware_datetimes(app) -> None:
    """`ctx.sleep_until` wakes at the instant an aware datetime names, whatever its time zone;
    a time in the past does not wait."""
    t0 = app.clock.now()
    cet = timezone(timedelta(hours=2))

    @app.workflow(name="until")
    async def until(ctx: WorkflowContext) -> list[float]:
        woke = []
        await ctx.sleep_until(datetime.fromtimestamp(t0 + 3600, tz=UTC))
        woke.append(ctx.now().timestamp())
        await ctx.sleep_until(datetime.fromtimestamp(t0 + 5400, tz=cet))
        woke.append(ctx.now().timestamp())
        await ctx.sleep_until(datetime.fromtimestamp(t0, tz=UTC))  # already past
        woke.append(ctx.now().timestamp())
        return woke

    assert app.run(until, run_id="r") == [t0 + 3600, t0 + 5400, t0 + 5400]
    wakes = [s.wake_at for s in app.history("r") if s.kind == "sleep"]
    assert wakes == [t0 + 3600, t0 + 5400, t0]


def test_sleep_until_refuses_naive_datetimes(app) -> None:
    """A naive datetime is ambiguous: `sleep_until` raises ValueError saying so, and records no
    timer."""

    @app.workflow(name="naive")
    async def naive(ctx: WorkflowContext) -> str:
        try:
            await ctx.sleep_until(datetime(2030, 1, 1))
        except ValueError as exc:
            return str(exc)
        return "slept"

    assert "aware datetime" in app.run(naive, run_id="r")
    assert app.history("r") == []
