"""Activity steps: scheduling, execution with retries and reconcile, recording the outcome.

A recorded step is answered from the history. A new one (or one whose intent was recorded but not
its outcome) is executed under its idempotency key: a side-effecting activity records its intent
first, so a crash between intent and result is known to have left the outcome unknown, and the
next attempt asks `reconcile(key)` (when the activity has one) before doing the effect again.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from agentflow.engine._crash import crash_point
from agentflow.engine._defs import Activity, ActivityInfo, call_activity, idempotency_key
from agentflow.engine._executor_base import ExecutorBase, RefusedStep, _settle, _Wait, error_dict
from agentflow.engine._observe import notify
from agentflow.errors import (
    ActivityError,
    CorruptRecordError,
    LeaseLostError,
    PayloadError,
    ReplayRefused,
    StoreBusyError,
)
from agentflow.store import Op, StepRecord, decode, digest, encode

#: Kinds of the steps that run in the store itself (policy decisions, approval bookkeeping).
STORE_STEP_KINDS = ("policy", "approval")

log = logging.getLogger("agentflow.worker")


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


class ActivitySteps(ExecutorBase):
    """The activity steps of `RunExecutor`."""

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
            ops.extend(self.store.blob_op(h, data, now, tenant=self.run.tenant) for h, data in pending.items())
        call.blobs = {}
        return ops

    # -- execution ---------------------------------------------------------------------------
    async def _execute(self, call: _Call, attempt: int, *, unknown: bool = False) -> None:
        key = idempotency_key(self.run_id, call.seq)
        first = self._started(call.seq)
        if unknown and call.act.reconcile is not None:
            next_attempt = await self._reconcile(call, attempt, first, key)
            if next_attempt is None:
                return
            attempt = next_attempt
        await self._attempts(call, attempt, first, key)

    async def _reconcile(self, call: _Call, attempt: int, first: float, key: str) -> int | None:
        """Ask the external system whether the effect of an unknown outcome happened.

        A failing reconcile is a failed attempt under the step's retry policy. Returns the attempt
        to execute next (nothing was found), or None when the step is settled (a found result, or
        failed for good) or waits for a later retry.
        """
        act = call.act
        assert act.reconcile is not None
        while True:
            started = self.clock.now()
            try:
                found = act.reconcile(key)
                if asyncio.iscoroutine(found):
                    found = await found
                if found is not None:
                    found = _reconciled(act, found)
            except Exception as exc:  # noqa: BLE001 - recorded like an activity failure
                if not await self._retry_inline(call, attempt, first, started, exc, unknown=True):
                    return None
                attempt += 1
                continue
            if found is not None:
                await self._record_result(call, attempt - 1, first, found)
                return None
            return attempt

    async def _attempts(self, call: _Call, attempt: int, first: float, key: str) -> None:
        """Execute the activity until it succeeds, fails for good, or waits for a later retry."""
        act, seq = call.act, call.seq
        while True:
            if act.side_effect:
                await self._commit(
                    self._call_ops(call, self._call_step(call, "started", attempt=attempt, started_at=first))
                )
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
                if not await self._retry_inline(call, attempt, first, started, _as_failure(act, exc)):
                    return
                attempt += 1
                continue
            crash_point("after_effect")
            await self._record_encoded(call, attempt, first, encoded)
            return

    async def _retry_inline(
        self, call: _Call, attempt: int, first: float, started: float, exc: BaseException, *, unknown: bool = False
    ) -> bool:
        """Record a failed attempt. True: retry now (a short backoff was slept here); False: the
        step failed for good, or waits in the store for a retry too far off to hold the run.

        A busy or unreachable store, or a lost lease, met by a store-side step (a policy decision
        or approval bookkeeping, which run in the store under its locks) is not the step's
        failure: the execution stops and the run is handed back, to resume where it stopped, as
        the error says (it was recorded as a failed attempt, and failed the run for good). Other
        steps' code is the user's: what it raises is its failure, under its retry policy (a
        tool that keeps raising must not hand its run back forever)."""
        if call.act.kind in STORE_STEP_KINDS and isinstance(exc, (StoreBusyError, LeaseLostError)):
            raise self._stop(exc)
        retry_at = await self._record_failure(call, attempt, first, started, exc)
        if retry_at is None:
            return False
        if retry_at - self.clock.now() > self.app.inline_wait:
            self._wait_retry(call, attempt + 1, retry_at, unknown=unknown)
            return False
        await self.clock.sleep_until(retry_at)
        return True

    # -- recording the outcome ---------------------------------------------------------------
    @staticmethod
    def _encode_result(act: Activity[Any, Any], value: Any) -> tuple[str, dict[str, str]]:
        if act.encode_result is not None:
            return act.encode_result(value)
        try:
            return act.result_adapter.dump_json(value).decode(), {}
        except Exception as exc:  # noqa: BLE001 - pydantic raises several types here
            raise PayloadError(f"activity {act.name} returned a value that cannot be encoded as JSON: {exc}") from None

    async def _record_result(self, call: _Call, attempt: int, started: float, value: Any) -> None:
        await self._record_encoded(call, attempt, started, self._encode_result(call.act, value))

    async def _record_encoded(
        self, call: _Call, attempt: int, started: float, encoded: tuple[str, dict[str, str]]
    ) -> None:
        result_json, blobs = encoded
        step = self._call_step(
            call, "completed", attempt=max(attempt, 1), result=result_json, started_at=started,
            finished_at=self.clock.now(), delivery=self._take_delivery(),
        )  # fmt: skip
        await self._commit(self._call_ops(call, step, blobs))
        if self.observers:
            notify(self.observers, "step_finished", self.run, step)
        crash_point("after_result")
        # Live and replayed runs see the same value: both are decoded from the recorded JSON
        # (secrets masked by `_new_step`).
        recorded = step.result if step.result is not None else result_json
        self._deliver(lambda: _settle(call.fut, self._decode_result(call.act, recorded, call.seq)))

    async def _record_failure(
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
        await self._commit(ops)
        self._log_failure(step, type(exc).__name__, retry_at)
        if not retry:
            if self.observers:
                notify(self.observers, "step_finished", self.run, step)
            error = self._activity_error(call.act.name, call.seq, step)
            self._deliver(lambda: _settle(call.fut, exc=error))
        return retry_at

    def _log_failure(self, step: StepRecord, error_type: str, retry_at: float | None) -> None:
        level = logging.INFO if retry_at is not None else logging.WARNING
        if not log.isEnabledFor(level):
            return
        fields = {"run_id": self.run_id, "tenant": self.run.tenant, "seq": step.seq, "attempt": step.attempt,
                  "kind": step.kind, "step": step.name, "error_type": error_type}  # fmt: skip
        if retry_at is None:
            log.log(level, "step failed for good", extra=fields)
        else:
            retry_in = round(max(retry_at - self.clock.now(), 0.0), 3)
            log.log(level, "step failed, retrying", extra={**fields, "retry_in_s": retry_in})


def _as_failure(act: Activity[Any, Any], exc: BaseException) -> BaseException:
    """The exception to record for a failed attempt."""
    if isinstance(exc, asyncio.CancelledError):
        # Raised by the activity's own code (a library cancelling its task): a failure like
        # any other, not a reason to hang the run.
        return RuntimeError(f"{act.kind} {act.name} raised CancelledError")
    if isinstance(exc, asyncio.TimeoutError):
        return TimeoutError(f"{act.kind} {act.name} timed out after {act.timeout}s")
    return exc


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
