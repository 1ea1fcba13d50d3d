"""The clock the engine owns.

Workflow time (timers, `ctx.now()`, retry backoff, signal timeouts) comes from a `Clock`, never from
`time.time()` directly, so tests and demos can skip time: with a `TestClock` a two-hour maintenance
window wait takes milliseconds. Leases and heartbeats always use real time (a lease is about
processes being alive, which no test clock can fake).
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    """Where workflow time comes from."""

    #: True when the clock may jump to the next timer when nothing else can run.
    skips: bool

    def now(self) -> float:
        """Seconds since the epoch."""
        ...

    async def sleep_until(self, when: float) -> None:
        """Return once `now() >= when`."""
        ...

    def advance_to(self, when: float) -> None:
        """Jump forward (time-skipping clocks only; others ignore it)."""
        ...


class SystemClock:
    """Wall-clock time, optionally shifted by `offset` seconds (time still flows at real speed:
    e.g. a demo server that starts inside tonight's maintenance window)."""

    skips = False

    def __init__(self, *, offset: float = 0.0) -> None:
        self.offset = offset

    def now(self) -> float:
        return time.time() + self.offset

    async def sleep_until(self, when: float) -> None:
        delay = when - self.now()
        if delay > 0:
            await asyncio.sleep(delay)

    def advance_to(self, when: float) -> None:
        return None


class TestClock:
    """A time-skipping clock: time stands still while work runs and jumps to the next timer
    as soon as every run is waiting.

    Args:
        start: the initial time (seconds since the epoch); default: the real time now.
        skip: jump to the next timer when every run waits (False: time moves only by
            `advance()`, e.g. to look at a parked run in a test).
    """

    __test__ = False  # not a pytest test class
    skips = True

    def __init__(self, *, start: float | None = None, skip: bool = True) -> None:
        self._now = time.time() if start is None else start
        self.skips = skip

    def now(self) -> float:
        return self._now

    async def sleep_until(self, when: float) -> None:
        self.advance_to(when)
        await asyncio.sleep(0)

    def advance_to(self, when: float) -> None:
        if when > self._now:
            self._now = when

    def advance(self, seconds: float) -> None:
        """Move time forward by `seconds`."""
        self._now += seconds
