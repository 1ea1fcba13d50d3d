"""`WorkflowContext`: the only door from workflow code to the outside world.

Every method takes the next `seq` synchronously, at call time, in program order. `ctx.run(...)`
returns an awaitable that is already scheduled, so `asyncio.gather(ctx.run(a), ctx.run(b))`
numbers `a` before `b` however the activities finish (DBOS issue 688 is the bug this avoids).
"""

from __future__ import annotations

import asyncio
import uuid as uuid_mod
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, ParamSpec, Protocol, TypeVar

from agentflow.engine._clock import Clock
from agentflow.engine._defs import Activity, Workflow
from agentflow.engine._history import History
from agentflow.engine._host import Host
from agentflow.errors import AgentflowError, StoreError
from agentflow.store import EventStore, Redaction, RunRecord, StepRecord

P = ParamSpec("P")
R = TypeVar("R")


class Steps(Protocol):
    """What the context asks of the run executor driving it."""

    app: Host
    store: EventStore
    clock: Clock
    run: RunRecord
    run_id: str
    next_seq: int
    history: History

    @property
    def max_recorded(self) -> int: ...

    def schedule_activity(
        self, act: Activity[Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any], *,
        request: tuple[str, dict[str, str]] | None = None,
    ) -> asyncio.Future[Any]: ...  # fmt: skip

    def schedule_timer(self, wake_at: float, label: str) -> asyncio.Future[None]: ...

    def schedule_signal(self, name: str, timeout: float | None) -> asyncio.Future[Any]: ...

    def schedule_child(
        self, workflow: Workflow[Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> asyncio.Future[Any]: ...

    def record_local(self, kind: str, make: Callable[[], Any]) -> Any: ...

    def patched(self, change_id: str) -> bool: ...

    def _stop(self, err: AgentflowError) -> BaseException: ...


class WorkflowContext:
    """Handed to every workflow function as its first argument."""

    def __init__(self, executor: Steps) -> None:
        self._ex = executor
        #: In-memory state of this execution, rebuilt by replay (e.g. the run's token usage so
        #: far, for budgets). Never persisted: derive it from recorded step results only.
        self.locals: dict[str, Any] = {}

    @property
    def run_id(self) -> str:
        return self._ex.run_id

    @property
    def tenant(self) -> str:
        return self._ex.run.tenant

    @property
    def workflow(self) -> str:
        return self._ex.run.workflow

    def registered_workflow(self, name: str) -> Workflow[Any, Any]:
        """The workflow registered under `name` on the app driving this run (for `child`).

        Raises:
            NotRegisteredError: when the app has no workflow of that name.
        """
        return self._ex.app.workflow_named(name)

    @property
    def meta(self) -> dict[str, Any]:
        """The run's metadata given at start (e.g. `requested_by`)."""
        return self._ex.run.meta_dict()

    @property
    def is_replaying(self) -> bool:
        """True while the code is re-running steps that are already recorded."""
        return self._ex.next_seq <= self._ex.max_recorded

    # -- the runtime interface of step helpers (e.g. `agentflow.agent.chat`) -------------------
    @property
    def next_seq(self) -> int:
        """The seq the next step will take (steps are numbered at call time, in program order)."""
        return self._ex.next_seq

    def recorded(self, seq: int) -> StepRecord | None:
        """The step recorded at `seq` in this run's history, if any: what a replay of that step
        will return (a helper may skip checks that only apply before a call is sent)."""
        return self._ex.history.get(seq)

    @property
    def redaction(self) -> Redaction:
        """What the store masks before recording (a step helper binding people to what they are
        shown, like an approval, compares the masked form)."""
        return self._ex.store.redaction

    def blobs(self, digests: Sequence[str]) -> dict[str, str]:
        """Content-addressed payloads recorded by steps (`run_step(blobs=...)`), by hash; missing
        ones are absent. For step helpers decoding their own recorded results (what `chat()`
        does); workflow code reads step results through the steps themselves."""
        try:
            return self._ex.store.get_blobs(digests)
        except StoreError as exc:
            # A key that is missing (encryption at rest) or a store that fails: not the run's
            # fault. The run stops and is given back untouched, never failed for it.
            raise self._ex._stop(exc) from None

    def run(self, activity: Activity[P, R], *args: P.args, **kwargs: P.kwargs) -> asyncio.Future[R]:
        """Run an activity as a recorded step; await the result.

        A step already in the history returns its recorded result (or raises its recorded
        error as `ActivityError`) without executing.
        """
        return self._ex.schedule_activity(activity, args, kwargs)

    def run_step(
        self, step: Activity[Any, R], *, request: str, blobs: dict[str, str] | None = None
    ) -> asyncio.Future[R]:
        """Low level: record a call of an unregistered step (a model call, say) like an activity.

        `request` is the JSON recorded as the step's arguments (its digest is the replay check)
        and `blobs` the content-addressed payloads it refers to, each stored once per database.
        `step.fn` is called with no arguments.
        """
        return self._ex.schedule_activity(step, (), {}, request=(request, dict(blobs or {})))

    def sleep(self, seconds: float) -> asyncio.Future[None]:
        """A durable timer: the run is parked in the store (no thread) until it is due."""
        return self._ex.schedule_timer(self._ex.clock.now() + max(0.0, float(seconds)), f"{seconds}s")

    def sleep_until(self, when: datetime) -> asyncio.Future[None]:
        """A durable timer until an aware datetime."""
        if when.tzinfo is None:
            raise ValueError("sleep_until needs an aware datetime (e.g. datetime.now(timezone.utc))")
        return self._ex.schedule_timer(when.timestamp(), when.isoformat())

    def wait_signal(self, name: str, *, timeout: float | None = None) -> asyncio.Future[Any]:
        """Wait (durably, holding no thread) for the next signal `name`; return its payload.

        Raises:
            WaitTimeout: when `timeout` seconds pass first.
        """
        return self._ex.schedule_signal(name, timeout)

    def child(self, workflow: Workflow[P, R], *args: P.args, **kwargs: P.kwargs) -> asyncio.Future[R]:
        """Start a child run (id `<run_id>/<seq>`) and await its result."""
        return self._ex.schedule_child(workflow, args, kwargs)

    def now(self) -> datetime:
        """The engine clock's time, recorded: a replay sees the same value."""
        value = self._ex.record_local("now", lambda: self._ex.clock.now())
        return datetime.fromtimestamp(float(value), tz=UTC)

    def uuid(self) -> uuid_mod.UUID:
        """A random UUID, recorded."""
        return uuid_mod.UUID(str(self._ex.record_local("uuid", lambda: uuid_mod.uuid4().hex)))

    def random(self) -> float:
        """A random float in [0, 1), recorded."""
        import random

        return float(self._ex.record_local("random", random.random))

    def patched(self, change_id: str) -> bool:
        """Whether this run takes the new code path of `change_id`.

        New runs (and runs that reach this point after the change was deployed) record a marker
        and get True; runs whose history was recorded by the old code get False, so they replay
        the old path.
        """
        return self._ex.patched(change_id)
