"""What metrics and live traces hear of a worker: its runs' lifecycle events and finished steps.

An `Observer` is added for the whole process (`add_observer`): metrics are the process's, like
the Prometheus registry they fill, and a live-trace exporter serves every App of the process.
With none added (the default) a finished step costs one test of an empty tuple. Observers run on
the worker's event loop, after the step's record is durable, so they must be quick (a counter, a
span handed to a batching processor); one that raises is logged and does not disturb the run.

A step is reported once, when the worker that executed it has recorded its outcome: a step that
a replay answers from the history is not reported again (so a resumed run does not count or
export its earlier steps twice).
"""

from __future__ import annotations

import logging
from typing import Any

from agentflow.store import RunRecord, StepRecord

log = logging.getLogger("agentflow.worker")


class Observer:
    """Receives a worker's events; every method does nothing unless overridden."""

    def run_claimed(self, run: RunRecord, epoch: int, *, recovering: bool) -> None:
        """A worker of this process claimed `run` (`recovering`: taken over from a dead owner)."""

    def step_finished(self, run: RunRecord, step: StepRecord) -> None:
        """An activity step (activity, llm, tool, policy, approval) of `run` was recorded as
        completed or failed for good, by this process."""

    def run_parked(self, run: RunRecord) -> None:
        """`run` waits (a timer, signal or child) and was parked in the store."""

    def run_finished(self, run: RunRecord, status: str, at: float, *, error: dict[str, Any] | None = None) -> None:
        """`run` ended with `status` at `at` (the app's clock); `run` is the record as claimed
        (no output, no error): a failed run's `error` is the one recorded (its secrets masked:
        `type`, `message`, ...)."""

    def lease_lost(self, run_id: str) -> None:
        """Another worker took `run_id` over: this process stopped working on it."""

    def store_error(self, exc: BaseException) -> None:
        """The store did not answer or refused a write (busy, unreachable, disk full...)."""


_observers: tuple[Observer, ...] = ()


def add_observer(observer: Observer) -> None:
    """Report this process's worker events to `observer` from now on (runs claimed before see it
    from their next claim)."""
    global _observers
    if observer not in _observers:
        _observers = (*_observers, observer)


def remove_observer(observer: Observer) -> None:
    """Stop reporting to `observer` (no error if it was not added)."""
    global _observers
    _observers = tuple(o for o in _observers if o is not observer)


def observers() -> tuple[Observer, ...]:
    """The observers added, in order."""
    return _observers


def notify(to: tuple[Observer, ...], event: str, *args: Any, **kwargs: Any) -> None:
    """Call `event` on each observer; one that raises is logged and the others still hear it."""
    for observer in to:
        try:
            getattr(observer, event)(*args, **kwargs)
        except Exception:
            log.exception("observer %s failed on %s", type(observer).__name__, event)
