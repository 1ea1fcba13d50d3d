"""Wait steps: timers, signals and child runs.

A wait is recorded `waiting` (or `started`, for a child) when the workflow asks for it and
completed when it resolves. Between the two the run holds nothing: when the workflow is blocked on
waits alone, the driver parks the run in the store. A wait due within `App.inline_wait` is slept
inline instead, which is cheaper than parking and claiming the run again.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from agentflow.engine._defs import Workflow
from agentflow.engine._executor_base import _ANY, ExecutorBase, _settle, _Wait
from agentflow.errors import ChildWorkflowError, WaitTimeout
from agentflow.store import RunRecord, digest, encode


class WaitSteps(ExecutorBase):
    """The timer, signal and child steps of `RunExecutor`."""

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
            self._start_child(seq, workflow, dig, child_id, input_json)
        self.waits[seq] = _Wait(
            seq, "child", fut, name=child_id, step_name=workflow.name, digest=dig, adapter=workflow.result_adapter
        )
        return fut

    def _start_child(self, seq: int, workflow: Workflow[Any, Any], dig: str, child_id: str, input_json: str) -> None:
        """Record the child step and create the child run, in one commit."""
        now = self.clock.now()
        step = self._new_step(seq, "child", workflow.name, dig, "started", args=json.dumps(child_id))
        run = self.run
        self._write(
            [
                self._step_op(step),
                self.store.create_run_op(
                    child_id, workflow.name, run.tenant, input_json, now, self.run_id, seq, run.root_id, run.meta
                ),
            ]
        )

    def _child_error(self, child_id: str, seq: int, err: dict[str, Any]) -> ChildWorkflowError:
        return ChildWorkflowError(
            f"child run {child_id} (step {seq}) ended {err.get('status', 'failed')}: {err.get('type')}: {err.get('message')}",
            child_run_id=child_id, error=err, run_id=self.run_id, seq=seq, tenant=self.run.tenant,
        )  # fmt: skip

    # -- resolving waits ---------------------------------------------------------------------
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
        if w.kind == "timer":
            self._complete_timer(w)
        elif w.kind == "signal":
            self._time_out_signal(w)
        elif w.kind == "retry" and w.resume is not None:
            w.resume()

    def _complete_timer(self, w: _Wait) -> None:
        step = self._new_step(
            w.seq, "sleep", "sleep", "", "completed", wake_at=w.wake_at, finished_at=self.clock.now(),
            started_at=self._started(w.seq), delivery=self._take_delivery(),
        )  # fmt: skip
        self._write([self._step_op(step)], then=lambda: self._deliver(lambda: _settle(w.fut, None)))

    def _time_out_signal(self, w: _Wait) -> None:
        step = self._new_step(
            w.seq, "signal", w.name, "", "failed", wake_at=w.wake_at, finished_at=self.clock.now(),
            error=json.dumps({"type": "WaitTimeout", "message": "timed out"}),
            started_at=self._started(w.seq), delivery=self._take_delivery(),
        )  # fmt: skip
        error = self._timeout_error(w.name, w.seq)
        self._write([self._step_op(step)], then=lambda: self._deliver(lambda: _settle(w.fut, exc=error)))

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
        self._write(
            [self._step_op(step), self.store.consume_signal_op(signal_id, w.seq)],
            then=lambda: self._deliver(lambda: _settle(w.fut, self._decode(step, _ANY))),
        )

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
        if err is not None:
            error = self._child_error(child.id, w.seq, err)
            self._write([self._step_op(step)], then=lambda: self._deliver(lambda: _settle(w.fut, exc=error)))
        else:
            self._write(
                [self._step_op(step)], then=lambda: self._deliver(lambda: _settle(w.fut, self._decode(step, w.adapter)))
            )
