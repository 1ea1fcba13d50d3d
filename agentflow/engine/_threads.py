"""`ToolThreads`: where a worker runs blocking code (sync activities, sync langchain tools).

asyncio's default executor is a fixed pool (`min(32, cpus + 4)` threads: 6 on two cores). A
blocking tool that never returns keeps its thread after its timeout fails the attempt (a thread
cannot be killed), so a few hung calls used to take every thread and freeze unrelated runs: their
model calls and tools queued behind them.

This pool grows instead: a call that finds no idle thread gets a new one (up to `max_threads`,
then it queues), idle threads leave after `idle_seconds`. A hung call holds its thread and
nothing else: the next call runs on another. What is still running past `stuck_after` seconds is
listed by `stuck()` (and logged once), so stuck threads are visible, not silent.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

log = logging.getLogger("agentflow.worker")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Busy:
    """A thread's current call: what it runs and since when (monotonic seconds)."""

    thread: str
    call: str
    since: float


class ToolThreads(ThreadPoolExecutor):
    """An elastic thread pool for blocking calls (see the module docstring). A ThreadPoolExecutor
    by type only (so it can also be a loop's default executor): `submit` and `shutdown` are its
    own, the base class never starts a thread."""

    def __init__(self, *, max_threads: int = 256, idle_seconds: float = 30.0, stuck_after: float = 60.0) -> None:
        super().__init__(max_workers=1, thread_name_prefix="agentflow-unused")
        self.max_threads, self.idle_seconds, self.stuck_after = max_threads, idle_seconds, stuck_after
        self._work: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any], str]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._count = 0
        self._idle = 0
        self._busy: dict[int, Busy] = {}
        self._reported: set[tuple[int, float]] = set()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        name = _name(fn)
        with self._lock:
            self._work.put((future, lambda: fn(*args, **kwargs), str(name)))
            if self._idle == 0 and self._count < self.max_threads:
                self._count += 1
                threading.Thread(target=self._serve, name=f"agentflow-tool-{self._count}", daemon=True).start()
            else:
                self._idle -= 1  # one idle thread will take it
        return future

    def _serve(self) -> None:
        me = threading.get_ident()
        while True:
            try:
                item = self._work.get(timeout=self.idle_seconds)
            except queue.Empty:
                with self._lock:
                    if self._idle > 0:  # nobody counts on this thread: it leaves
                        self._idle -= 1
                        self._count -= 1
                        return
                continue
            future, call, name = item
            if future.set_running_or_notify_cancel():
                self._busy[me] = Busy(threading.current_thread().name, name, time.monotonic())
                try:
                    future.set_result(call())
                except BaseException as exc:  # noqa: BLE001 - handed to whoever awaits the call
                    future.set_exception(exc)
                finally:
                    self._busy.pop(me, None)
                    del future, call  # nothing of a finished call is kept alive by an idle thread
            with self._lock:
                self._idle += 1

    def stuck(self) -> list[Busy]:
        """Calls running longer than `stuck_after` seconds (each logged once, when first seen)."""
        now = time.monotonic()
        busy = list(self._busy.items())
        found = [b for _, b in busy if now - b.since > self.stuck_after]
        # Only calls still running are remembered (a thread's next call has another start).
        self._reported &= {(ident, b.since) for ident, b in busy}
        for ident, b in busy:
            if b in found and (ident, b.since) not in self._reported:
                self._reported.add((ident, b.since))
                log.warning("%s has run %s for %.0f s (a blocking call that does not return)", b.thread, b.call,
                            now - b.since)  # fmt: skip
        return found

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Nothing: the pool is the process's, shared by every event loop a worker runs on
        (`asyncio.run` shuts its loop's default executor down at the end of each run); idle
        threads leave by themselves, and a hung one is a daemon that ends with the process."""


def _name(fn: Callable[..., Any]) -> str:
    """What a call runs: the function inside `partial(context.run, fn, ...)` and the like."""
    while isinstance(fn, functools.partial):
        fn = fn.args[0] if fn.args and callable(fn.args[0]) else fn.func
    return str(getattr(fn, "__qualname__", None) or repr(fn)[:80])


_shared: ToolThreads | None = None
_shared_lock = threading.Lock()


def tool_threads() -> ToolThreads:
    """The process's pool for blocking calls (every worker of the process shares it)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = ToolThreads()
        return _shared


async def run_blocking(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """`fn(*args, **kwargs)` on the process's pool for blocking calls, in the caller's context
    (contextvars: the current activity's info), awaited without blocking the event loop."""
    ctx = contextvars.copy_context()
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(tool_threads(), functools.partial(ctx.run, fn, *args, **kwargs))
