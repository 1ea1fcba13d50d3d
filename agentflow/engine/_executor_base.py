"""The state one run execution shares between its parts, and the primitives they all use.

`RunExecutor` (`_executor.py`) is assembled from `ExecutorBase` and two mixins: `ActivitySteps`
(`_activities.py`) and `WaitSteps` (`_waits.py`). This module holds what they share: taking the
next seq, matching a call against the `History`, recording steps (one fenced commit per write),
handing outcomes to the workflow in a recorded order, delivering a cancel at a step boundary, and
stopping the execution.

How the parts meet: every wait the workflow is blocked on is a `_Wait` in `self.waits`, keyed by
seq. `WaitSteps` resolves them (a timer due, a signal in, a child ended) and parks the run when
none can be; `ActivitySteps` adds one `_Wait(kind="retry")` per activity whose next attempt is
too far off to hold the run, with a `resume` callback that `WaitSteps._fire` calls when it is due.
"""

from __future__ import annotations

import asyncio
import collections
import traceback
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from agentflow.engine._history import History
from agentflow.engine._host import Host
from agentflow.engine._loop import WorkflowEventLoop
from agentflow.engine._observe import Observer, observers
from agentflow.errors import AgentflowError, CorruptRecordError, StoreError
from agentflow.store import Chain, GroupCommit, Op, RunRecord, StepRecord, adapter_for

_ANY = adapter_for(Any)


class _Stop(BaseException):
    """Unwinds workflow code when the executor must stop it (fatal record error, shutdown).

    A BaseException, so `except Exception` in workflow code cannot swallow it."""


@dataclass(slots=True)
class _Wait:
    seq: int
    kind: str  # timer | signal | child | retry
    fut: asyncio.Future[Any]
    wake_at: float | None = None
    name: str = ""  # signal name, or child run id
    step_name: str = ""
    digest: str = ""
    adapter: Any = None
    resume: Callable[[], None] | None = None


@dataclass(frozen=True, slots=True)
class RefusedStep:
    """A step a replay-only worker would have had to execute (the history did not answer it)."""

    run_id: str
    seq: int
    kind: str
    name: str


def error_dict(exc: BaseException, *, retryable: bool | None = None) -> dict[str, Any]:
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__, limit=8))
    out: dict[str, Any] = {
        "type": type(exc).__name__,
        "module": type(exc).__module__,
        "message": str(exc)[:4000],
        "traceback": tb[-4000:],
    }
    if isinstance(exc, AgentflowError):
        out.update({k: v for k, v in exc.to_dict().items() if k not in ("type", "message") and v is not None})
    if retryable is not None:  # the engine's decision (policy, attempts left), not the type's default
        out["retryable"] = retryable
    return out


def _settle(fut: asyncio.Future[Any], value: Any = None, *, exc: BaseException | None = None) -> None:
    """Resolve a workflow future unless the workflow cancelled it meanwhile."""
    if fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(value)


class ExecutorBase:
    """One run under one lease epoch: the shared state and primitives of `RunExecutor`."""

    #: Executions under way in this process (see `_commit`).
    active = 0

    def __init__(
        self, app: Host, run: RunRecord, epoch: int, *, recovering: bool = False,
        refuse: list[RefusedStep] | None = None,
    ) -> None:  # fmt: skip
        self.app = app
        self.refuse = refuse
        self.store = app.store
        self.clock = app.clock
        self.run = run
        self.run_id = run.id
        self.epoch = epoch
        self.recovering = recovering
        self.history = History(run, [])  # loaded by execute()
        # Who hears of this execution's steps (metrics, live spans): read once per claim, so a
        # step with nobody listening (the default) costs one test of an empty tuple.
        self.observers: tuple[Observer, ...] = observers()
        self.next_seq = 1
        self.local_ops: list[Op] = []
        # This execution's writes in the group commit: queued in order, and once one fails the
        # later ones fail too (see `agentflow.store.GroupCommit`); how many are queued now.
        self.chain = Chain()
        self._queued = 0
        self.inflight: set[asyncio.Task[Any]] = set()
        # Step coroutines not started yet; the driver awaits a lone one inline (no Task, no
        # extra loop turns: ~15 µs per step) and wraps several (a gather) in Tasks.
        self.queued: list[Coroutine[Any, Any, None]] = []
        # Outcomes reach the workflow one at a time, in an order recorded with each step
        # (`delivery`); a replay delivers recorded outcomes in that same order (the history
        # keeps them until their turn), so concurrent branches interleave exactly as they did
        # (results are never handed over at scheduling).
        self.deliveries: collections.deque[Callable[[], None]] = collections.deque()
        self.next_delivery = 1
        self.waits: dict[int, _Wait] = {}
        self.fatal: AgentflowError | None = None
        self.cancel_requested = bool(run.cancel_requested)
        self.cancel_delivered = False
        self.closing = False  # set while an abandoned workflow coroutine is unwound
        # I/O methods of AbstractEventLoop stay abstract on purpose: workflow code has no I/O.
        self.loop = WorkflowEventLoop()  # type: ignore[abstract]
        self.main: asyncio.Task[Any] | None = None
        self._progress: asyncio.Event | None = None
        self._real_loop: asyncio.AbstractEventLoop | None = None

    @property
    def max_recorded(self) -> int:
        """The highest seq the history records (0 before `execute()` loads it)."""
        return self.history.max_recorded

    # -- seqs and stopping -----------------------------------------------------------------
    def _take_seq(self) -> int:
        if self.closing:
            raise _Stop()
        seq = self.next_seq
        self.next_seq += 1
        return seq

    def _stop(self, err: AgentflowError) -> _Stop:
        if self.fatal is None:
            self.fatal = err
        return _Stop()

    # -- the replay check --------------------------------------------------------------------
    def _recorded(self, seq: int, kind: str, name: str, dig: str) -> StepRecord | None:
        """The step recorded at `seq` if any; stops the run when it is not this call."""
        mismatch = self.history.mismatch(seq, kind, name, dig)
        if mismatch is not None:
            raise self._stop(mismatch)
        return self.history.get(seq)

    def _decode(self, rec: StepRecord, adapter: Any, what: str = "result") -> Any:
        try:
            return self.history.decode(rec, adapter, what)
        except CorruptRecordError as exc:
            raise self._stop(exc) from None

    def _recorded_error(self, rec: StepRecord) -> dict[str, Any]:
        err = self.history.error_of(rec)
        if isinstance(err, CorruptRecordError):
            raise self._stop(err) from None
        return err

    def _started(self, seq: int) -> float:
        rec = self.history.get(seq)
        return rec.started_at if rec is not None else self.clock.now()

    # -- writes ------------------------------------------------------------------------------
    def _group(self) -> GroupCommit | None:
        """Where this execution's next write goes: the store's group commit, or None (inline).
        Inline only with no write of this execution queued: its writes become durable in order."""
        group = self.store.group
        if group is None:
            return None
        if self.store.inline_when_idle and not self._queued and ExecutorBase.active <= 1 and group.idle:
            return None  # a lone run (app.run on SQLite): inline is cheaper than a hand-off
        return group

    def _take_local(self, ops: list[Op]) -> tuple[list[Op], list[Op]]:
        """Buffered local records go first; taken now, as workflow code may buffer more while
        this write is queued."""
        taken, self.local_ops = self.local_ops, []
        return taken, (taken + ops if taken else ops)

    def _write(self, ops: list[Op], *, then: Callable[[], None] | None = None) -> None:
        """One durable commit, handed over now (its place in this run's order is taken here):
        buffered local records first, then `ops`, fenced on the epoch. `then` (an outcome handed
        to the workflow) runs once the write is durable; with the group commit, a step waits for
        it, so the driver does not park or end the run before."""
        _, ops = self._take_local(ops)
        group = self._group()
        if group is None:
            self._write_inline(ops)
            if then is not None:
                then()
            return
        self._queued += 1
        # On the worker's loop: this may be called from workflow code (starting a child), which
        # runs on the run's own loop.
        fut = group.submit(ops, run_id=self.run_id, chain=self.chain, loop=self._real_loop)
        self._spawn(self._settled(fut, then))

    def _write_inline(self, ops: list[Op], unless: tuple[str, Any] | None = None) -> bool:
        """One commit on this thread (see `_group`); False when `unless` found a row."""
        try:
            if unless is not None:
                return self.store.backend.write_unless(unless, ops, run_id=self.run_id)
            self.store.backend.write(ops, run_id=self.run_id)
            return True
        except StoreError as exc:
            # Lost lease or store busy: stop this execution; user code must not catch it.
            raise self._stop(exc) from None

    async def _settled(self, fut: asyncio.Future[Any], then: Callable[[], None] | None) -> None:
        try:
            outcome = await fut
        finally:
            self._queued -= 1
        if isinstance(outcome, StoreError):
            raise self._stop(outcome)
        if then is not None:
            then()

    async def _commit(self, ops: list[Op], *, unless: tuple[str, Any] | None = None) -> bool:
        """`_write`, awaited: the write goes to the store's group commit (`GroupCommit`), which
        makes it durable together with other runs' writes, and this returns once it is; the event
        loop does not wait for the disk. With `unless`: nothing is written, and False is
        returned, when that query finds a row (see `Backend.write_unless`)."""
        taken, ops = self._take_local(ops)
        group = self._group()
        if group is None:
            written = self._write_inline(ops, unless)
        else:
            self._queued += 1
            try:
                written = await group.write(ops, run_id=self.run_id, unless=unless, chain=self.chain) is not None
            except StoreError as exc:
                raise self._stop(exc) from None
            finally:
                self._queued -= 1
        if not written:
            self.local_ops = taken + self.local_ops  # not written: they go with the next commit
        return written

    def _step_op(self, step: StepRecord) -> Op:
        return self.store.upsert_step_op(self.run_id, self.epoch, step)

    def _new_step(self, seq: int, kind: str, name: str, dig: str, status: str, **kw: Any) -> StepRecord:
        """A step record, its secrets masked (`agentflow.store.Redaction`). Outcomes reach the
        workflow decoded from this record, live as on replay: a secret never travels through a
        run, and a resumed run sees what the live one saw."""
        clean = self.store.redaction.json
        return StepRecord(
            seq=seq, kind=kind, name=name, digest=dig, status=status, attempt=kw.get("attempt", 1),
            args=clean(kw.get("args")), result=clean(kw.get("result")), error=clean(kw.get("error")),
            started_at=kw.get("started_at", self.clock.now()), finished_at=kw.get("finished_at"),
            wake_at=kw.get("wake_at"), epoch=self.epoch, delivery=kw.get("delivery"),
        )  # fmt: skip

    # -- handing outcomes over ---------------------------------------------------------------
    def _take_delivery(self) -> int:
        number = self.next_delivery
        self.next_delivery += 1
        return number

    def _deliver(self, action: Callable[[], None]) -> None:
        """Queue an outcome that was just recorded (with its delivery number)."""
        self.deliveries.append(action)
        if self._progress is not None:
            self._progress.set()

    def _resolve_recorded(self, rec: StepRecord, action: Callable[[], None]) -> None:
        """Hand a recorded outcome over at its recorded turn (at once for legacy rows)."""
        if rec.delivery is None:
            action()
        else:
            self.history.hold(rec.delivery, action)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        self.queued.append(coro)
        if self._progress is not None:
            self._progress.set()  # the driver may be waiting on in-flight steps

    # -- cancellation ------------------------------------------------------------------------
    def _cancel_at(self, seq: int, fut: asyncio.Future[Any]) -> bool:
        """Deliver a cancel request at the step boundary `seq` the workflow just reached.

        Recorded as a `cancel` marker at `seq`, so a replay delivers it at the same step; this is
        how a workflow that goes from activity to activity (never blocked on a wait) is cancelled.
        """
        if self.cancel_delivered:
            return False
        rec = self.history.get(seq)
        if rec is None:
            # Only with nothing in flight: a result landing after the marker would let a replay
            # run further before reaching it.
            if not self.cancel_requested or self.inflight or self.queued:
                return False
            self.local_ops.append(self._cancel_marker(seq))
        elif rec.kind != "cancel" or rec.delivery is not None:
            return False
        # Workflow code is running: cancel this step (its await raises CancelledError) and the
        # waits, not the main task, which would also cancel the compensation that follows.
        self._cancel_workflow(cancel_main=False)
        fut.cancel()
        return True

    def _cancel_marker(self, seq: int, *, delivery: int | None = None) -> Op:
        return self._step_op(
            self._new_step(seq, "cancel", "cancel", "", "completed", finished_at=self.clock.now(), delivery=delivery)
        )

    def _cancel_workflow(self, *, cancel_main: bool = True) -> None:
        self.cancel_delivered = True
        for w in list(self.waits.values()):
            w.fut.cancel()
            if w.kind == "child":
                # A cancelled parent cancels the child runs it was waiting for.
                self.store.request_cancel(w.name, self.clock.now())
        self.waits.clear()
        if cancel_main:
            assert self.main is not None
            self.main.cancel()


def _environmental(exc: BaseException) -> bool:
    """A store failure that says nothing about the run (lease lost, busy, disk full, I/O error):
    the run is not failed for it; a record that does not decode is the run's own problem."""
    return isinstance(exc, StoreError) and not isinstance(exc, CorruptRecordError)
