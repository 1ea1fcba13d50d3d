"""The run executor: replays a run's history and drives its workflow to the next park or the end.

One executor handles one run for one claim (lease epoch). It loads the whole history in one query,
re-runs the workflow function from the top on a `WorkflowEventLoop`, answers recorded steps from
the history, executes new ones, and writes one durable commit per recorded step (plus the intent
of a side-effecting one). When the workflow is blocked on nothing but timers, signals or children,
the run is parked in the store and the executor returns: a waiting run holds no thread.
"""

from __future__ import annotations

import asyncio
import collections
import json
import traceback
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from agentflow._crash import crash_point
from agentflow.engine._context import WorkflowContext
from agentflow.engine._defs import Activity, ActivityInfo, Workflow, call_activity, idempotency_key
from agentflow.engine._loop import WorkflowEventLoop
from agentflow.errors import (
    ActivityError,
    AgentflowError,
    ChildWorkflowError,
    CorruptRecordError,
    LeaseLostError,
    NonDeterminismError,
    PayloadError,
    ReplayRefused,
    StoreBusyError,
    StoreError,
    WaitTimeout,
    WorkflowError,
)
from agentflow.store import Op, RunRecord, StepRecord, adapter_for, decode, digest, encode

if TYPE_CHECKING:
    from agentflow.engine._app import App


class _Stop(BaseException):
    """Unwinds workflow code when the executor must stop it (fatal record error, shutdown).

    A BaseException, so `except Exception` in workflow code cannot swallow it."""


@dataclass(slots=True)
class _Call:
    """One activity step being scheduled or executed."""

    act: Activity[Any, Any]
    seq: int
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    args_json: str
    digest: str
    fut: asyncio.Future[Any]
    blobs: dict[str, str]  # request blobs not yet written


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


@dataclass(frozen=True, slots=True)
class RefusedStep:
    """A step a replay-only worker would have had to execute (the history did not answer it)."""

    run_id: str
    seq: int
    kind: str
    name: str


class RunExecutor:
    """Drives one run under one lease epoch."""

    def __init__(
        self, app: App, run: RunRecord, epoch: int, *, recovering: bool = False,
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
        self.history: dict[int, StepRecord] = {}
        self.max_recorded = 0
        self.next_seq = 1
        self.local_ops: list[Op] = []
        self.inflight: set[asyncio.Task[Any]] = set()
        # Step coroutines not started yet; the driver awaits a lone one inline (no Task, no
        # extra loop turns: ~15 µs per step) and wraps several (a gather) in Tasks.
        self.queued: list[Coroutine[Any, Any, None]] = []
        # Outcomes reach the workflow one at a time, in an order recorded with each step
        # (`delivery`); a replay delivers recorded outcomes in that same order, so concurrent
        # branches interleave exactly as they did (results are never handed over at scheduling).
        self.deliveries: collections.deque[Callable[[], None]] = collections.deque()
        self.replay_pending: dict[int, Callable[[], None]] = {}
        self.next_replay = 1
        self.max_delivery = 0
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

    # ======================================================================================
    # driving
    # ======================================================================================
    async def execute(self) -> str:
        """Run until the workflow ends or parks; return the run's resulting status."""
        self._real_loop = asyncio.get_running_loop()
        self._progress = asyncio.Event()
        steps = self.store.load_steps(self.run_id)
        self.history = {s.seq: s for s in steps}
        self.max_recorded = steps[-1].seq if steps else 0
        self.max_delivery = max((s.delivery or 0 for s in steps), default=0)
        self.next_delivery = self.max_delivery + 1
        for rec in steps:
            if rec.kind == "cancel" and rec.delivery is not None:
                self.replay_pending[rec.delivery] = self._replay_cancel(rec)
        if self.recovering:
            crash_point("during_recovery")
        workflow = self.app.workflow_named(self.run.workflow)
        ctx = WorkflowContext(self)
        try:
            args, kwargs = self.app.decode_input(workflow, self.run)
        except AgentflowError as exc:
            return self._finish_failed(exc)
        main = self.loop.create_task(workflow.fn(ctx, *args, **kwargs))
        self.main = main
        try:
            return await self._drive(main)
        except _Stop:
            # A write made by the driver itself (cancel, timer, signal, finish) failed: report the
            # store error, so the worker handles it (a bare _Stop would kill the worker's task).
            if self.fatal is None:
                raise
            raise self.fatal from None
        finally:
            for coro in self.queued:
                coro.close()
            self.queued.clear()
            for task in list(self.inflight):
                task.cancel()
            self._close(main)

    async def _drive(self, main: asyncio.Task[Any]) -> str:
        assert self._progress is not None
        while True:
            self.loop.drain()
            if self.fatal is not None:
                if isinstance(self.fatal, (LeaseLostError, StoreBusyError)):
                    raise self.fatal
                return self._finish_failed(self.fatal)
            if main.done():
                return self._finish(main)
            if self.next_replay in self.replay_pending:
                self.next_replay += 1
                self._run_delivery(self.replay_pending.pop(self.next_replay - 1))
                continue
            if self.next_replay <= self.max_delivery:
                self.fatal = self._replay_stuck()
                continue
            if self.deliveries:
                self._run_delivery(self.deliveries.popleft())
                continue
            if self.queued:
                await self._start_queued()
                continue
            if self.inflight:
                self._progress.clear()
                await self._progress.wait()
                continue
            if self._deliver_cancel(main):
                continue
            if self._resolve_waits():
                continue
            if self._park():
                crash_point("while_waiting")
                return "waiting"

    def _close(self, main: asyncio.Task[Any]) -> None:
        self.closing = True
        if not main.done():
            # Unwind the abandoned workflow coroutine (its `finally` blocks run). Its waits fail
            # with _Stop, which `except asyncio.CancelledError` does not catch, and any ctx call
            # made while unwinding raises _Stop: otherwise compensation code would run its
            # activities for real and record them under the epoch a parked run still has.
            for w in self.waits.values():
                if not w.fut.done():
                    w.fut.set_exception(_Stop())
            try:
                self.loop.drain()
                if not main.done():
                    main.cancel()
                    self.loop.drain()
            except BaseException:  # noqa: BLE001
                pass
        self.loop.close()

    # -- deliveries ------------------------------------------------------------------------
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
            self.replay_pending[rec.delivery] = action

    def _run_delivery(self, action: Callable[[], None]) -> None:
        try:
            action()
        except _Stop:
            pass  # self.fatal says why; the driver finishes the run

    def _replay_stuck(self) -> AgentflowError:
        rec = next((r for r in self.history.values() if r.delivery == self.next_replay), None)
        what = f"step {rec.seq} ({rec.kind} `{rec.name}`)" if rec else f"outcome #{self.next_replay}"
        return NonDeterminismError(
            f"replay of run {self.run_id} is stuck: {what} was the next outcome the recorded run handed to "
            "the workflow, but the code now waits for something else and never asks for it: the workflow "
            "changed under an in-flight run. Guard the change with `ctx.patched('<change-id>')`.",
            run_id=self.run_id, seq=rec.seq if rec else None, tenant=self.run.tenant,
        )  # fmt: skip

    def _replay_cancel(self, rec: StepRecord) -> Callable[[], None]:
        def action() -> None:
            if self.next_seq != rec.seq:
                raise self._stop(
                    NonDeterminismError(
                        f"run {self.run_id} was cancelled at step {rec.seq}, but on replay the code is at step "
                        f"{self.next_seq} when the cancel comes: the workflow changed under an in-flight run.",
                        run_id=self.run_id,
                        seq=rec.seq,
                        tenant=self.run.tenant,
                    )
                )
            self.next_seq += 1
            self._cancel_workflow()

        return action

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self.inflight.discard(task)
        if not task.cancelled() and task.exception() is not None and self.fatal is None:
            exc = task.exception()
            self.fatal = exc if isinstance(exc, AgentflowError) else AgentflowError(f"internal error: {exc!r}")
        assert self._progress is not None
        self._progress.set()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        self.queued.append(coro)
        if self._progress is not None:
            self._progress.set()  # the driver may be waiting on in-flight steps

    async def _start_queued(self) -> None:
        queued, self.queued = self.queued, []
        if len(queued) == 1 and not self.inflight:
            try:
                await queued[0]
            except _Stop:
                pass  # self.fatal says why
            except Exception as exc:  # noqa: BLE001 - same handling as a task's exception
                if self.fatal is None:
                    self.fatal = exc if isinstance(exc, AgentflowError) else AgentflowError(f"internal error: {exc!r}")
            # One loop turn per step, so other runs of this worker are not starved by a
            # workflow whose activities never block.
            await asyncio.sleep(0)
            return
        assert self._real_loop is not None
        for coro in queued:
            task = self._real_loop.create_task(coro)
            self.inflight.add(task)
            task.add_done_callback(self._task_done)

    # ======================================================================================
    # writes
    # ======================================================================================
    def _write(self, ops: list[Op]) -> None:
        """One durable commit: buffered local records first, then `ops`, fenced on the epoch."""
        if self.local_ops:
            ops = self.local_ops + ops
        try:
            self.store.backend.write(ops, run_id=self.run_id)
        except StoreError as exc:
            # Lost lease or store busy: stop this execution; user code must not catch it.
            raise self._stop(exc) from None
        self.local_ops = []

    def _step_op(self, step: StepRecord) -> Op:
        return self.store.upsert_step_op(self.run_id, self.epoch, step)

    def _new_step(self, seq: int, kind: str, name: str, dig: str, status: str, **kw: Any) -> StepRecord:
        return StepRecord(
            seq=seq, kind=kind, name=name, digest=dig, status=status, attempt=kw.get("attempt", 1),
            args=kw.get("args"), result=kw.get("result"), error=kw.get("error"),
            started_at=kw.get("started_at", self.clock.now()), finished_at=kw.get("finished_at"),
            wake_at=kw.get("wake_at"), epoch=self.epoch, delivery=kw.get("delivery"),
        )  # fmt: skip

    # ======================================================================================
    # the replay check
    # ======================================================================================
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

    def _recorded(self, seq: int, kind: str, name: str, dig: str) -> StepRecord | None:
        rec = self.history.get(seq)
        if rec is None:
            return None
        if rec.kind != kind or rec.name != name:
            raise self._stop(
                NonDeterminismError(
                    f"step {seq} of run {self.run_id} was recorded as {rec.kind} `{rec.name}` but the "
                    f"code now calls {kind} `{name}`: the workflow changed under an in-flight run. "
                    f"Guard the change with `if ctx.patched('<change-id>'): <new code> else: <old code>` "
                    "so runs recorded by the old code replay the old path.",
                    run_id=self.run_id,
                    seq=seq,
                    tenant=self.run.tenant,
                    recorded={"kind": rec.kind, "name": rec.name, "digest": rec.digest},
                    requested={"kind": kind, "name": name, "digest": dig},
                )
            )
        if rec.digest != dig:
            raise self._stop(
                NonDeterminismError(
                    f"step {seq} of run {self.run_id} was recorded as {kind} `{name}` with arguments "
                    f"digest {rec.digest} (args {_short(rec.args)}), but the code now calls it with "
                    f"digest {dig}: the arguments changed under an in-flight run. Guard the change "
                    "with `ctx.patched('<change-id>')`.",
                    run_id=self.run_id,
                    seq=seq,
                    tenant=self.run.tenant,
                    recorded={"kind": rec.kind, "name": rec.name, "digest": rec.digest},
                    requested={"kind": kind, "name": name, "digest": dig},
                )
            )
        return rec

    def _decode(self, rec: StepRecord, adapter: Any, what: str = "result") -> Any:
        try:
            return decode(rec.result, adapter, run_id=self.run_id, seq=rec.seq, what=what)
        except CorruptRecordError as exc:
            raise self._stop(exc) from None

    def _recorded_error(self, rec: StepRecord) -> dict[str, Any]:
        try:
            value = json.loads(rec.error or "{}")
            if not isinstance(value, dict):
                raise ValueError
            return value
        except ValueError:
            raise self._stop(
                CorruptRecordError(
                    f"the error of step {rec.seq} of run {self.run_id} does not decode", run_id=self.run_id, seq=rec.seq
                )
            ) from None

    # ======================================================================================
    # activities
    # ======================================================================================
    def schedule_activity(
        self,
        act: Activity[Any, Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        request: tuple[str, dict[str, str]] | None = None,
    ) -> asyncio.Future[Any]:
        """Schedule an activity step. `request` (for unregistered steps such as model calls)
        replaces the recorded arguments with a compact JSON plus the blobs it refers to."""
        if not isinstance(act, Activity):
            raise TypeError(
                f"ctx.run() takes an activity registered with @app.activity, not {act!r}; "
                "decorate the function with @app.activity(...)"
            )
        if request is None:
            self.app.check_registered_activity(act)
            args_json = encode([list(args), kwargs], what=f"the arguments of activity {act.name}")
            blobs: dict[str, str] = {}
        else:
            args_json, blobs = request
        seq = self._take_seq()
        call = _Call(act, seq, args, kwargs, args_json, digest(args_json), self.loop.create_future(), blobs)
        if self._cancel_at(seq, call.fut):
            return call.fut
        rec = self._recorded(seq, act.kind, act.name, call.digest)
        if rec is not None and rec.status == "completed":
            done = rec
            self._resolve_recorded(rec, lambda: _settle(call.fut, self._decode_result(act, done.result, seq)))
        elif rec is not None and rec.status == "failed":
            failed = rec
            self._resolve_recorded(rec, lambda: _settle(call.fut, exc=self._activity_error(act.name, seq, failed)))
        elif rec is not None and rec.status == "retrying" and rec.wake_at is not None:
            self._wait_retry(call, rec.attempt + 1, rec.wake_at)
        else:
            # New, or intent recorded without a result (outcome unknown): run (again), same key.
            attempt = rec.attempt + 1 if rec is not None else 1
            unknown = rec is not None and rec.status == "started"
            self._spawn(self._execute(call, attempt, unknown=unknown))
        return call.fut

    def _decode_result(self, act: Activity[Any, Any], result_json: str | None, seq: int) -> Any:
        try:
            if act.decode_result is not None:
                return act.decode_result(result_json or "null")
            return decode(result_json, act.result_adapter, run_id=self.run_id, seq=seq)
        except CorruptRecordError as exc:
            raise self._stop(exc) from None

    def _wait_retry(self, call: _Call, attempt: int, retry_at: float, *, unknown: bool = False) -> None:
        w = _Wait(call.seq, "retry", call.fut, wake_at=retry_at, name=call.act.name)
        w.resume = lambda: self._spawn(self._execute(call, attempt, unknown=unknown))
        self.waits[call.seq] = w

    def _activity_error(self, name: str, seq: int, rec: StepRecord) -> ActivityError:
        err = self._recorded_error(rec)
        return ActivityError(
            f"{rec.kind} {name} (step {seq}) failed after {rec.attempt} attempt(s): "
            f"{err.get('type')}: {err.get('message')}",
            activity=name, cause_type=str(err.get("type")), cause_message=str(err.get("message")),
            attempts=rec.attempt, run_id=self.run_id, seq=seq, tenant=self.run.tenant,
        )  # fmt: skip

    def _call_step(self, call: _Call, status: str, **kw: Any) -> StepRecord:
        return self._new_step(call.seq, call.act.kind, call.act.name, call.digest, status, args=call.args_json, **kw)

    def _call_ops(self, call: _Call, step: StepRecord, blobs: dict[str, str] | None = None) -> list[Op]:
        """The step's row, plus the blobs it refers to (the request's, once, and the result's)."""
        ops = [self._step_op(step)]
        now = step.started_at
        for pending in (call.blobs, blobs or {}):
            ops.extend(self.store.blob_op(h, data, now) for h, data in pending.items())
        call.blobs = {}
        return ops

    async def _execute(self, call: _Call, attempt: int, *, unknown: bool = False) -> None:
        act, seq = call.act, call.seq
        key = idempotency_key(self.run_id, seq)
        first = self._started(seq)
        while unknown and act.reconcile is not None:
            # The effect may have happened: ask the external system before doing it again. A
            # failing reconcile is a failed attempt under the step's retry policy.
            started = self.clock.now()
            try:
                found = act.reconcile(key)
                if asyncio.iscoroutine(found):
                    found = await found
                if found is not None:
                    found = _reconciled(act, found)
            except Exception as exc:  # noqa: BLE001 - recorded like an activity failure
                retry_at = self._record_failure(call, attempt, first, started, exc)
                if retry_at is None:
                    return
                if retry_at - self.clock.now() > self.app.inline_wait:
                    self._wait_retry(call, attempt + 1, retry_at, unknown=True)
                    return
                await self.clock.sleep_until(retry_at)
                attempt += 1
                continue
            if found is not None:
                self._record_result(call, attempt - 1, first, found)
                return
            break
        while True:
            if act.side_effect:
                self._write(self._call_ops(call, self._call_step(call, "started", attempt=attempt, started_at=first)))
                crash_point("after_intent")
            info = ActivityInfo(
                run_id=self.run_id, seq=seq, attempt=attempt, name=act.name,
                workflow=self.run.workflow, tenant=self.run.tenant, idempotency_key=key, app=self.app,
            )  # fmt: skip
            started = self.clock.now()
            try:
                if self.refuse is not None:
                    self.refuse.append(RefusedStep(self.run_id, seq, act.kind, act.name))
                    raise ReplayRefused(f"replay-only worker: {act.kind} {act.name} (step {seq}) would execute",
                                        run_id=self.run_id, seq=seq)  # fmt: skip
                value = await call_activity(act, info, call.args, call.kwargs)
                encoded = self._encode_result(act, value)
            except (Exception, asyncio.CancelledError) as exc:
                task = asyncio.current_task()
                if isinstance(exc, asyncio.CancelledError) and (task is None or task.cancelling()):
                    raise  # the executor itself is cancelling this step
                if isinstance(exc, asyncio.CancelledError):
                    # Raised by the activity's own code (a library cancelling its task): a
                    # failure like any other, not a reason to hang the run.
                    exc = RuntimeError(f"{act.kind} {act.name} raised CancelledError")
                if isinstance(exc, asyncio.TimeoutError):
                    exc = TimeoutError(f"{act.kind} {act.name} timed out after {act.timeout}s")
                retry_at = self._record_failure(call, attempt, first, started, exc)
                if retry_at is None:
                    return
                if retry_at - self.clock.now() > self.app.inline_wait:
                    self._wait_retry(call, attempt + 1, retry_at)
                    return
                await self.clock.sleep_until(retry_at)
                attempt += 1
                continue
            crash_point("after_effect")
            self._record_encoded(call, attempt, first, encoded)
            return

    @staticmethod
    def _encode_result(act: Activity[Any, Any], value: Any) -> tuple[str, dict[str, str]]:
        if act.encode_result is not None:
            return act.encode_result(value)
        try:
            return act.result_adapter.dump_json(value).decode(), {}
        except Exception as exc:  # noqa: BLE001 - pydantic raises several types here
            raise PayloadError(f"activity {act.name} returned a value that cannot be encoded as JSON: {exc}") from None

    def _record_result(self, call: _Call, attempt: int, started: float, value: Any) -> None:
        self._record_encoded(call, attempt, started, self._encode_result(call.act, value))

    def _record_encoded(self, call: _Call, attempt: int, started: float, encoded: tuple[str, dict[str, str]]) -> None:
        result_json, blobs = encoded
        step = self._call_step(
            call, "completed", attempt=max(attempt, 1), result=result_json, started_at=started,
            finished_at=self.clock.now(), delivery=self._take_delivery(),
        )  # fmt: skip
        self._write(self._call_ops(call, step, blobs))
        crash_point("after_result")
        # Live and replayed runs see the same value: both are decoded from the recorded JSON.
        self._deliver(lambda: _settle(call.fut, self._decode_result(call.act, result_json, call.seq)))

    def _record_failure(
        self, call: _Call, attempt: int, first: float, started: float, exc: BaseException
    ) -> float | None:
        """Record a failed attempt; return when to retry, or None when the step failed for good."""
        policy = call.act.retry
        retry = policy.is_retryable(exc) and attempt < policy.max_attempts
        now = self.clock.now()
        err_json = json.dumps(error_dict(exc, retryable=retry))
        retry_at = now + policy.delay_after(attempt, exc) if retry else None
        status = "retrying" if retry else "failed"
        step = self._call_step(
            call, status, attempt=attempt, error=err_json, started_at=first,
            finished_at=None if retry else now, wake_at=retry_at,
            delivery=None if retry else self._take_delivery(),
        )  # fmt: skip
        ops = self._call_ops(call, step)
        ops.append(self.store.attempt_op(self.run_id, call.seq, attempt, err_json, started, now, retry_at))
        self._write(ops)
        if not retry:
            error = self._activity_error(call.act.name, call.seq, step)
            self._deliver(lambda: _settle(call.fut, exc=error))
        return retry_at

    # ======================================================================================
    # timers, signals, children
    # ======================================================================================
    def schedule_timer(self, wake_at: float, label: str) -> asyncio.Future[None]:
        seq = self._take_seq()
        fut: asyncio.Future[None] = self.loop.create_future()
        if self._cancel_at(seq, fut):
            return fut
        rec = self._recorded(seq, "sleep", "sleep", "")
        if rec is not None and rec.status == "completed":
            self._resolve_recorded(rec, lambda: _settle(fut, None))
            return fut
        if rec is None:
            self.local_ops.append(
                self._step_op(
                    self._new_step(seq, "sleep", "sleep", "", "waiting", args=json.dumps(label), wake_at=wake_at)
                )
            )
        else:
            wake_at = rec.wake_at if rec.wake_at is not None else wake_at
        self.waits[seq] = _Wait(seq, "timer", fut, wake_at=wake_at)
        return fut

    def schedule_signal(self, name: str, timeout: float | None) -> asyncio.Future[Any]:
        seq = self._take_seq()
        fut: asyncio.Future[Any] = self.loop.create_future()
        if self._cancel_at(seq, fut):
            return fut
        rec = self._recorded(seq, "signal", name, "")
        if rec is not None and rec.status == "completed":
            got = rec
            self._resolve_recorded(rec, lambda: _settle(fut, self._decode(got, _ANY)))
            return fut
        if rec is not None and rec.status == "failed":
            self._resolve_recorded(rec, lambda: _settle(fut, exc=self._timeout_error(name, seq)))
            return fut
        deadline = None
        if rec is None:
            deadline = None if timeout is None else self.clock.now() + timeout
            self.local_ops.append(self._step_op(self._new_step(seq, "signal", name, "", "waiting", wake_at=deadline)))
        else:
            deadline = rec.wake_at
        self.waits[seq] = _Wait(seq, "signal", fut, wake_at=deadline, name=name)
        return fut

    def _timeout_error(self, name: str, seq: int) -> WaitTimeout:
        return WaitTimeout(
            f"signal {name!r} did not arrive before the timeout (step {seq})",
            run_id=self.run_id,
            seq=seq,
            tenant=self.run.tenant,
        )

    def schedule_child(
        self, workflow: Workflow[Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> asyncio.Future[Any]:
        self.app.check_registered_workflow(workflow)
        seq = self._take_seq()
        input_json = encode([list(args), kwargs], what=f"the arguments of child workflow {workflow.name}")
        dig = digest(input_json)
        fut: asyncio.Future[Any] = self.loop.create_future()
        child_id = f"{self.run_id}/{seq}"
        if self._cancel_at(seq, fut):
            return fut
        rec = self._recorded(seq, "child", workflow.name, dig)
        if rec is not None and rec.status == "completed":
            ended = rec
            self._resolve_recorded(rec, lambda: _settle(fut, self._decode(ended, workflow.result_adapter)))
            return fut
        if rec is not None and rec.status == "failed":
            broke = rec
            self._resolve_recorded(
                rec, lambda: _settle(fut, exc=self._child_error(child_id, seq, self._recorded_error(broke)))
            )
            return fut
        if rec is None:
            now = self.clock.now()
            self._write(
                [
                    self._step_op(
                        self._new_step(seq, "child", workflow.name, dig, "started", args=json.dumps(child_id))
                    ),
                    self.store.create_run_op(
                        child_id,
                        workflow.name,
                        self.run.tenant,
                        input_json,
                        now,
                        self.run_id,
                        seq,
                        self.run.root_id,
                        self.run.meta,
                    ),
                ]
            )
        self.waits[seq] = _Wait(
            seq, "child", fut, name=child_id, step_name=workflow.name, digest=dig, adapter=workflow.result_adapter
        )
        return fut

    def _child_error(self, child_id: str, seq: int, err: dict[str, Any]) -> ChildWorkflowError:
        return ChildWorkflowError(
            f"child run {child_id} (step {seq}) ended {err.get('status', 'failed')}: {err.get('type')}: {err.get('message')}",
            child_run_id=child_id, error=err, run_id=self.run_id, seq=seq, tenant=self.run.tenant,
        )  # fmt: skip

    def _resolve_waits(self) -> bool:
        """Resolve what can be resolved now; start short waits inline. True when progress."""
        if not self.waits:
            return False
        progress = False
        now = self.clock.now()
        children = [w for w in self.waits.values() if w.kind == "child"]
        child_runs = self.store.runs_status([w.name for w in children]) if children else {}
        for seq in sorted(self.waits):
            w = self.waits[seq]
            if w.fut.done():  # cancelled by the workflow
                del self.waits[seq]
                continue
            if w.kind == "signal":
                found = self.store.next_signal(self.run_id, w.name)
                if found is not None:
                    self._complete_signal(w, found)
                    progress = True
                    continue
            if w.kind == "child":
                child = child_runs.get(w.name)
                if child is not None and child.terminal:
                    self._complete_child(w, child)
                    progress = True
                continue
            if w.wake_at is None:
                continue
            if w.wake_at <= now:
                self._fire(w)
                progress = True
            elif w.wake_at - now <= self.app.inline_wait:
                del self.waits[seq]
                self._spawn(self._inline_wait(w))
                progress = True
        return progress

    async def _inline_wait(self, w: _Wait) -> None:
        assert w.wake_at is not None
        await self.clock.sleep_until(w.wake_at)
        if w.fut.done():
            return
        if w.kind == "signal":
            # The signal may have come in meanwhile: put the wait back to be re-checked.
            self.waits[w.seq] = w
            found = self.store.next_signal(self.run_id, w.name)
            if found is not None:
                self._complete_signal(w, found)
                return
        self._fire(w)

    def _fire(self, w: _Wait) -> None:
        """A wait's time has come: timer done, signal timed out, retry due."""
        self.waits.pop(w.seq, None)
        now = self.clock.now()
        if w.kind == "timer":
            self._write(
                [
                    self._step_op(
                        self._new_step(
                            w.seq,
                            "sleep",
                            "sleep",
                            "",
                            "completed",
                            wake_at=w.wake_at,
                            finished_at=now,
                            started_at=self._started(w.seq),
                            delivery=self._take_delivery(),
                        )
                    )
                ]
            )
            self._deliver(lambda: _settle(w.fut, None))
        elif w.kind == "signal":
            self._write(
                [
                    self._step_op(
                        self._new_step(
                            w.seq,
                            "signal",
                            w.name,
                            "",
                            "failed",
                            wake_at=w.wake_at,
                            finished_at=now,
                            error=json.dumps({"type": "WaitTimeout", "message": "timed out"}),
                            started_at=self._started(w.seq),
                            delivery=self._take_delivery(),
                        )
                    )
                ]
            )
            error = self._timeout_error(w.name, w.seq)
            self._deliver(lambda: _settle(w.fut, exc=error))
        elif w.kind == "retry" and w.resume is not None:
            w.resume()

    def _started(self, seq: int) -> float:
        rec = self.history.get(seq)
        return rec.started_at if rec is not None else self.clock.now()

    def _complete_signal(self, w: _Wait, found: tuple[int, str]) -> None:
        self.waits.pop(w.seq, None)
        signal_id, payload = found
        step = self._new_step(
            w.seq,
            "signal",
            w.name,
            "",
            "completed",
            result=payload,
            wake_at=w.wake_at,
            finished_at=self.clock.now(),
            started_at=self._started(w.seq),
            delivery=self._take_delivery(),
        )
        self._write([self._step_op(step), self.store.consume_signal_op(signal_id, w.seq)])
        self._deliver(lambda: _settle(w.fut, self._decode(step, _ANY)))

    def _complete_child(self, w: _Wait, child: RunRecord) -> None:
        self.waits.pop(w.seq, None)
        ok = child.status == "completed"
        err = None if ok else {**child.error_dict(), "status": child.status}
        step = self._new_step(
            w.seq, "child", w.step_name, w.digest, "completed" if ok else "failed",
            args=json.dumps(child.id), result=child.output if ok else None,
            error=None if err is None else json.dumps(err), finished_at=self.clock.now(),
            started_at=self._started(w.seq), delivery=self._take_delivery(),
        )  # fmt: skip
        self._write([self._step_op(step)])
        if err is not None:
            error = self._child_error(child.id, w.seq, err)
            self._deliver(lambda: _settle(w.fut, exc=error))
        else:
            self._deliver(lambda: _settle(w.fut, self._decode(step, w.adapter)))

    # ======================================================================================
    # local records: now, uuid, random, patched (flushed with the next commit)
    # ======================================================================================
    def record_local(self, kind: str, make: Callable[[], Any]) -> Any:
        seq = self._take_seq()
        rec = self._recorded(seq, kind, kind, "")
        if rec is not None:
            return self._decode(rec, _ANY)
        value = make()
        self.local_ops.append(
            self._step_op(
                self._new_step(seq, kind, kind, "", "completed", result=json.dumps(value), finished_at=self.clock.now())
            )
        )
        return value

    def patched(self, change_id: str) -> bool:
        if self.closing:
            raise _Stop()
        seq = self.next_seq
        rec = self.history.get(seq)
        if rec is not None and not (rec.kind == "patch" and rec.name == change_id):
            return False  # recorded by code that predates the change: keep the old path
        self.next_seq += 1
        if rec is None:
            self.local_ops.append(
                self._step_op(self._new_step(seq, "patch", change_id, "", "completed", finished_at=self.clock.now()))
            )
        return True

    # ======================================================================================
    # cancellation, parking, the end
    # ======================================================================================
    def _deliver_cancel(self, main: asyncio.Task[Any]) -> bool:
        """Deliver a cancel request while the workflow is blocked (on waits) at `next_seq`."""
        if self.cancel_delivered:
            return False
        rec = self.history.get(self.next_seq)
        if rec is not None and rec.kind == "cancel" and rec.delivery is None:
            self.next_seq += 1  # replay of a marker recorded before delivery numbers
        elif self.cancel_requested:
            seq = self._take_seq()
            self._write([self._cancel_marker(seq, delivery=self._take_delivery())])
        else:
            return False
        self._cancel_workflow()
        return True

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

    def _park(self) -> bool:
        """Park the run in the store unless an event it waits for is already in."""
        if not self.waits:
            # Blocked, yet on nothing the engine can ever resolve (an asyncio.Event no step
            # sets, a future of another loop): parking would wait forever.
            self.fatal = WorkflowError(
                f"run {self.run_id} is blocked on something that is not a step (no activity in flight, "
                "no timer, signal or child to wait for): workflow code may only await ctx operations "
                "and asyncio primitives that other branches of the workflow resolve.",
                run_id=self.run_id, tenant=self.run.tenant,
            )  # fmt: skip
            return False
        wakes = [w.wake_at for w in self.waits.values() if w.wake_at is not None]
        wake_at = min(wakes) if wakes else None
        signals = sorted({w.name for w in self.waits.values() if w.kind == "signal"})
        children = sorted({w.name for w in self.waits.values() if w.kind == "child"})
        waiting_on = json.dumps({"timers": sorted(wakes), "signals": signals, "children": children})
        check_sql, check_params = self.store.park_blockers_sql(
            self.run_id, signals, children, check_cancel=not self.cancel_delivered
        )
        ops = [*self.local_ops, self.store.park_op(self.run_id, self.epoch, wake_at, waiting_on, self.clock.now())]
        if self.store.backend.write_unless((check_sql, check_params), ops, run_id=self.run_id):
            self.local_ops = []
            return True
        # Something arrived: a signal, a child's end, or a cancel request.
        run = self.store.get_run(self.run_id)
        self.cancel_requested = bool(run.cancel_requested)
        return False

    def _finish(self, main: asyncio.Task[Any]) -> str:
        workflow = self.app.workflow_named(self.run.workflow)
        if main.cancelled():
            err = {"type": "Cancelled", "message": "the run was cancelled"}
            return self._finish_status("cancelled", None, err)
        exc = main.exception()
        if exc is not None:
            if isinstance(exc, _Stop) and self.fatal is not None:
                return self._finish_failed(self.fatal)
            return self._finish_status("failed", None, error_dict(exc))
        if self.max_recorded >= self.next_seq and any(
            s >= self.next_seq and self.history[s].kind not in ("now", "uuid", "random") for s in self.history
        ):
            extra = min(s for s in self.history if s >= self.next_seq)
            rec = self.history[extra]
            return self._finish_failed(
                NonDeterminismError(
                    f"the workflow returned after step {self.next_seq - 1}, but the history records "
                    f"step {extra} ({rec.kind} `{rec.name}`) after it: the code no longer makes that "
                    "call. Guard the removal with `ctx.patched('<change-id>')`.",
                    run_id=self.run_id,
                    seq=extra,
                    tenant=self.run.tenant,
                )
            )
        try:
            output = workflow.result_adapter.dump_json(main.result()).decode()
        except Exception as e:  # noqa: BLE001
            return self._finish_failed(
                PayloadError(
                    f"workflow {workflow.name} returned a value that cannot be encoded: {e}", run_id=self.run_id
                )
            )
        return self._finish_status("completed", output, None)

    def _finish_failed(self, exc: AgentflowError) -> str:
        return self._finish_status("failed", None, error_dict(exc))

    def _finish_status(self, status: str, output: str | None, err: dict[str, Any] | None) -> str:
        ops = [
            self.store.finish_op(
                self.run_id, self.epoch, status, output, json.dumps(err) if err else None, self.clock.now()
            )
        ]
        if self.run.parent_id:
            ops.append(self.store.wake_op(self.run.parent_id))
        self._write(ops)
        return status


def _settle(fut: asyncio.Future[Any], value: Any = None, *, exc: BaseException | None = None) -> None:
    """Resolve a workflow future unless the workflow cancelled it meanwhile."""
    if fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(value)


def _short(text: str | None, limit: int = 120) -> str:
    if text is None:
        return "-"
    return text if len(text) <= limit else text[:limit] + "…"


_ANY = adapter_for(Any)


def _reconciled(act: Activity[Any, Any], found: Any) -> Any:
    """A reconciled outcome, checked against the activity's result type before it is recorded
    (a row that does not decode would fail every later replay of the run)."""
    try:
        return act.result_adapter.validate_python(found)
    except ValidationError as exc:
        raise TypeError(
            f"reconcile() of activity {act.name!r} returned {type(found).__name__}, which is not its "
            f"declared result type: {exc.errors(include_url=False)[0]['msg']}; return the activity's "
            "result as the activity itself would"
        ) from None
