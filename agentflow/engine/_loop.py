"""A deterministic event loop for workflow code.

Workflow coroutines run on this loop, never on the worker's. It only runs callbacks that are ready,
in FIFO order, and `drain()` returns when none are left: at that point the workflow is provably
blocked on steps the engine owns (activities in flight, timers, signals, children), which is how the
engine knows it may park the run without holding a thread. Temporal's Python SDK drives workflows
the same way (`_WorkflowInstanceImpl` is an event loop).

asyncio timers are refused: a workflow that calls `asyncio.sleep(5)` would depend on wall time;
it must call `ctx.sleep(5)`, which is recorded and durable.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
from collections.abc import Callable, Coroutine, Generator
from typing import Any, TypeVar

from agentflow.errors import WorkflowError

_T = TypeVar("_T")


class WorkflowEventLoop(asyncio.AbstractEventLoop):
    """Runs ready callbacks only; has no I/O, no timers and no thread of its own."""

    def __init__(self) -> None:
        self._ready: collections.deque[asyncio.Handle] = collections.deque()
        self._closed = False
        self.unhandled: list[dict[str, Any]] = []

    # -- driving ---------------------------------------------------------------------------
    def drain(self) -> None:
        """Run ready callbacks until none are left; the workflow is then blocked or done."""
        events = asyncio.events
        previous = events._get_running_loop()
        events._set_running_loop(self)
        try:
            ready = self._ready
            while ready:
                handle = ready.popleft()
                if not handle._cancelled:
                    handle._run()
        finally:
            events._set_running_loop(previous)

    # -- the parts of AbstractEventLoop that futures and tasks use ---------------------------
    def call_soon(  # type: ignore[override]
        self,
        callback: Callable[..., object],
        *args: Any,
        context: contextvars.Context | None = None,
    ) -> asyncio.Handle:
        handle = asyncio.Handle(callback, args, self, context)
        self._ready.append(handle)
        return handle

    def call_soon_threadsafe(  # type: ignore[override]
        self,
        callback: Callable[..., object],
        *args: Any,
        context: contextvars.Context | None = None,
    ) -> asyncio.Handle:
        raise WorkflowError("workflow code must not use threads; run the work in an activity")

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any, **kw: Any) -> asyncio.TimerHandle:  # type: ignore[override]
        raise WorkflowError(
            "asyncio timers (asyncio.sleep, wait_for, timeouts) are not allowed in workflow code: "
            "they read wall time and are not recorded. Use `await ctx.sleep(seconds)` or "
            "`ctx.wait_signal(name, timeout=...)` instead."
        )

    def call_at(self, when: float, callback: Callable[..., object], *args: Any, **kw: Any) -> asyncio.TimerHandle:  # type: ignore[override]
        return self.call_later(0, callback, *args)

    def time(self) -> float:
        raise WorkflowError("workflow code must not read the loop's clock: use ctx.now()")

    def create_future(self) -> asyncio.Future[Any]:
        return asyncio.Future(loop=self)

    def create_task(
        self,
        coro: Coroutine[Any, Any, _T] | Generator[Any, None, _T],
        *,
        name: str | None = None,
        context: contextvars.Context | None = None,
    ) -> asyncio.Task[_T]:
        return asyncio.Task(coro, loop=self, name=name, context=context)

    def get_debug(self) -> bool:
        return False

    def is_running(self) -> bool:
        return True

    def is_closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        self._closed = True
        self._ready.clear()

    def call_exception_handler(self, context: dict[str, Any]) -> None:
        # "Task exception was never retrieved" and the like: keep them for the run's error
        # report instead of printing from a garbage-collector callback.
        self.unhandled.append(context)

    def default_exception_handler(self, context: dict[str, Any]) -> None:
        self.unhandled.append(context)

    def get_exception_handler(self) -> None:
        return None
