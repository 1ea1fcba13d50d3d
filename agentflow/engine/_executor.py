"""The run executor: replays a run's history and drives its workflow to the next park or the end.

One executor handles one run for one claim (lease epoch). It loads the whole history in one query,
re-runs the workflow function from the top on a `WorkflowEventLoop`, answers recorded steps from
the history, executes new ones, and writes one durable commit per recorded step (plus the intent
of a side-effecting one). When the workflow is blocked on nothing but timers, signals or children,
the run is parked in the store and the executor returns: a waiting run holds no thread.

`RunExecutor` is this module's driver loop plus its parts: the shared state and primitives
(`_executor_base`), the recorded history and replay checks (`_history`), activity steps
(`_activities`) and wait steps (`_waits`).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

from agentflow.engine._activities import ActivitySteps
from agentflow.engine._context import WorkflowContext
from agentflow.engine._crash import crash_point
from agentflow.engine._executor_base import _ANY, ExecutorBase, RefusedStep, _environmental, _Stop, error_dict
from agentflow.engine._history import History
from agentflow.engine._observe import notify
from agentflow.engine._waits import WaitSteps
from agentflow.errors import (
    AgentflowError,
    NonDeterminismError,
    PayloadError,
    WorkflowError,
)
from agentflow.store import StepRecord

# RefusedStep is re-exported: the worker imports it from here.
__all__ = ["RefusedStep", "RunExecutor"]

log = logging.getLogger("agentflow.worker")


class RunExecutor(ActivitySteps, WaitSteps):
    """Drives one run under one lease epoch."""

    # ======================================================================================
    # driving
    # ======================================================================================
    async def execute(self) -> str:
        """Run until the workflow ends or parks; return the run's resulting status."""
        ExecutorBase.active += 1
        try:
            return await self._run()
        finally:
            ExecutorBase.active -= 1

    async def _run(self) -> str:
        self._real_loop = asyncio.get_running_loop()
        self._progress = asyncio.Event()
        steps = self.store.load_steps(self.run_id)
        self.history = History(self.run, steps)
        self.next_delivery = self.history.max_delivery + 1
        for rec in steps:
            if rec.kind == "cancel" and rec.delivery is not None:
                self.history.hold(rec.delivery, self._replay_cancel(rec))
        if steps and log.isEnabledFor(logging.INFO):
            self._log_resumed()
        if self.recovering:
            crash_point("during_recovery")
        workflow = self.app.workflow_named(self.run.workflow)
        ctx = WorkflowContext(self)
        try:
            args, kwargs = self.app.decode_input(workflow, self.run)
        except AgentflowError as exc:
            return await self._finish_failed(exc)
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
                if _environmental(self.fatal):
                    raise self.fatal  # the store, not the run: the worker stops and gives it back
                return await self._finish_failed(self.fatal)
            if main.done():
                return await self._finish(main)
            if self.history.behind():  # (every held outcome's turn is <= max_delivery)
                due = self.history.take_due()
                if due is None:
                    self.fatal = self.history.stuck()
                else:
                    self._run_delivery(due)
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
            if await self._deliver_cancel(main):
                continue
            if self._resolve_waits():
                continue
            if await self._park():
                crash_point("while_waiting")
                return "waiting"

    def _log_resumed(self) -> None:
        fields = {"run_id": self.run_id, "tenant": self.run.tenant, "workflow": self.run.workflow,
                  "seq": self.max_recorded + 1, "epoch": self.epoch}  # fmt: skip
        if self.run.waiting_on and not self.recovering:
            log.info("run woke", extra={**fields, "waiting_on": json.loads(self.run.waiting_on)})
        log.info("run resumed", extra={**fields, "takeover": self.recovering})

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

    # -- deliveries and in-flight steps ----------------------------------------------------
    def _run_delivery(self, action: Callable[[], None]) -> None:
        try:
            action()
        except _Stop:
            pass  # self.fatal says why; the driver finishes the run

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
    async def _deliver_cancel(self, main: asyncio.Task[Any]) -> bool:
        """Deliver a cancel request while the workflow is blocked (on waits) at `next_seq`."""
        if self.cancel_delivered:
            return False
        rec = self.history.get(self.next_seq)
        if rec is not None and rec.kind == "cancel" and rec.delivery is None:
            self.next_seq += 1  # replay of a marker recorded before delivery numbers
        elif self.cancel_requested:
            seq = self._take_seq()
            await self._commit([self._cancel_marker(seq, delivery=self._take_delivery())])
        else:
            return False
        self._cancel_workflow()
        return True

    async def _park(self) -> bool:
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
        park = self.store.park_op(self.run_id, self.epoch, wake_at, waiting_on, self.clock.now())
        if await self._commit([park], unless=(check_sql, check_params)):
            if log.isEnabledFor(logging.INFO):
                log.info("run parked", extra={"run_id": self.run_id, "tenant": self.run.tenant, "epoch": self.epoch,
                                              "seq": self.next_seq - 1, "waiting_on": json.loads(waiting_on)})  # fmt: skip
            if self.observers:
                notify(self.observers, "run_parked", self.run)
            return True
        # Something arrived: a signal, a child's end, or a cancel request.
        run = self.store.get_run(self.run_id)
        self.cancel_requested = bool(run.cancel_requested)
        return False

    async def _finish(self, main: asyncio.Task[Any]) -> str:
        workflow = self.app.workflow_named(self.run.workflow)
        if main.cancelled():
            err = {"type": "Cancelled", "message": "the run was cancelled"}
            return await self._finish_status("cancelled", None, err)
        exc = main.exception()
        if exc is not None:
            if isinstance(exc, _Stop) and self.fatal is not None:
                return await self._finish_failed(self.fatal)
            return await self._finish_status("failed", None, error_dict(exc))
        left_over = self.history.left_over(self.next_seq)
        if left_over is not None:
            return await self._finish_failed(left_over)
        try:
            output = workflow.result_adapter.dump_json(main.result()).decode()
        except Exception as e:  # noqa: BLE001
            return await self._finish_failed(
                PayloadError(
                    f"workflow {workflow.name} returned a value that cannot be encoded: {e}", run_id=self.run_id
                )
            )
        return await self._finish_status("completed", output, None)

    async def _finish_failed(self, exc: AgentflowError) -> str:
        return await self._finish_status("failed", None, error_dict(exc))

    async def _finish_status(self, status: str, output: str | None, err: dict[str, Any] | None) -> str:
        error, at = json.dumps(err) if err else None, self.clock.now()
        ops = self.store.finish_ops(self.run_id, self.epoch, status, output, error, at, workflow=self.run.workflow)
        if self.run.parent_id:
            ops.append(self.store.wake_op(self.run.parent_id))
        await self._commit(ops)
        now = self.clock.now()
        if log.isEnabledFor(logging.INFO):
            fields = {"run_id": self.run_id, "tenant": self.run.tenant, "workflow": self.run.workflow, "status": status,
                      "epoch": self.epoch, "seq": self.next_seq - 1, "duration_s": round(now - self.run.created_at, 3)}  # fmt: skip
            if err:
                fields["error_type"] = err.get("type")
            log.info("run finished", extra=fields)
        if self.observers:
            # The error as recorded (secrets masked): `self.run` is the record as claimed.
            notify(self.observers, "run_finished", self.run, status, now,
                   error=self.store.redaction.data(err) if err else None)  # fmt: skip
        return status
