"""`History`: a run's recorded steps as one execution replays them.

It answers the questions a replay asks of the record: was step `seq` recorded, does the call the
code makes now match it, what did it return or raise, and in which order did the recorded run
hand its outcomes to the workflow. Pure: no I/O, no clock, no event loop. The errors it finds are
returned, not raised: the executor decides how to stop the run, and an error that was never raised
is recorded without a traceback of engine internals.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from pydantic import TypeAdapter

from agentflow.errors import CorruptRecordError, NonDeterminismError
from agentflow.store import RunRecord, StepRecord, decode

# Local records (ctx.now(), ctx.uuid(), ctx.random()) recorded after the step where the workflow
# now returns do not fail the run: only a step with an effect the code no longer makes does.
_LOCAL_KINDS = ("now", "uuid", "random")


class History:
    """The recorded steps of one run, by seq, and the replay checks made against them.

    Besides the steps, it keeps the replay's delivery order: recorded outcomes are handed to the
    workflow in the order the recorded run saw them (`StepRecord.delivery`), whatever the order in
    which the code asks for them.
    """

    def __init__(self, run: RunRecord, steps: list[StepRecord]) -> None:
        self._run_id = run.id
        self._tenant = run.tenant
        self._steps = {s.seq: s for s in steps}
        #: The highest recorded seq (`steps` come ordered by seq).
        self.max_recorded = steps[-1].seq if steps else 0
        #: The highest delivery number recorded: the replay is behind until it has handed over
        #: every outcome up to this one.
        self.max_delivery = max((s.delivery or 0 for s in steps), default=0)
        #: The delivery number of the next recorded outcome to hand over.
        self.next_replay = 1
        self._pending: dict[int, Callable[[], None]] = {}

    def get(self, seq: int) -> StepRecord | None:
        """The step recorded at `seq`, or None (a new step)."""
        return self._steps.get(seq)

    # -- matching a call against the record ------------------------------------------------
    def mismatch(self, seq: int, kind: str, name: str, dig: str) -> NonDeterminismError | None:
        """Why the step recorded at `seq` is not this call, or None (also when none is recorded)."""
        rec = self._steps.get(seq)
        if rec is None:
            return None
        recorded = {"kind": rec.kind, "name": rec.name, "digest": rec.digest}
        requested = {"kind": kind, "name": name, "digest": dig}
        if rec.kind != kind or rec.name != name:
            return NonDeterminismError(
                f"step {seq} of run {self._run_id} was recorded as {rec.kind} `{rec.name}` but the "
                f"code now calls {kind} `{name}`: the workflow changed under an in-flight run. "
                f"Guard the change with `if ctx.patched('<change-id>'): <new code> else: <old code>` "
                "so runs recorded by the old code replay the old path.",
                run_id=self._run_id, seq=seq, tenant=self._tenant, recorded=recorded, requested=requested,
            )  # fmt: skip
        if rec.digest != dig:
            return NonDeterminismError(
                f"step {seq} of run {self._run_id} was recorded as {kind} `{name}` with arguments "
                f"digest {rec.digest} (args {_short(rec.args)}), but the code now calls it with "
                f"digest {dig}: the arguments changed under an in-flight run. Guard the change "
                "with `ctx.patched('<change-id>')`.",
                run_id=self._run_id, seq=seq, tenant=self._tenant, recorded=recorded, requested=requested,
            )  # fmt: skip
        return None

    def left_over(self, next_seq: int) -> NonDeterminismError | None:
        """The error when the workflow returned at `next_seq` with steps recorded after it that
        the code no longer makes (local records excepted), or None."""
        if self.max_recorded < next_seq or not any(
            s >= next_seq and rec.kind not in _LOCAL_KINDS for s, rec in self._steps.items()
        ):
            return None
        extra = min(s for s in self._steps if s >= next_seq)
        rec = self._steps[extra]
        return NonDeterminismError(
            f"the workflow returned after step {next_seq - 1}, but the history records "
            f"step {extra} ({rec.kind} `{rec.name}`) after it: the code no longer makes that "
            "call. Guard the removal with `ctx.patched('<change-id>')`.",
            run_id=self._run_id,
            seq=extra,
            tenant=self._tenant,
        )

    # -- what a step recorded ----------------------------------------------------------------
    def decode(self, rec: StepRecord, adapter: TypeAdapter[Any], what: str = "result") -> Any:
        """The step's recorded result as `adapter`'s type; raises `CorruptRecordError`."""
        return decode(rec.result, adapter, run_id=self._run_id, seq=rec.seq, what=what)

    def error_of(self, rec: StepRecord) -> dict[str, Any] | CorruptRecordError:
        """The step's recorded error, or the error to stop with when it does not decode."""
        try:
            value = json.loads(rec.error or "{}")
        except ValueError:
            value = None
        if isinstance(value, dict):
            return value
        return CorruptRecordError(
            f"the error of step {rec.seq} of run {self._run_id} does not decode", run_id=self._run_id, seq=rec.seq
        )

    # -- delivery order ----------------------------------------------------------------------
    def hold(self, delivery: int, action: Callable[[], None]) -> None:
        """Keep a recorded outcome (its hand-over, `action`) until its turn, `delivery`, comes."""
        self._pending[delivery] = action

    def take_due(self) -> Callable[[], None] | None:
        """The recorded outcome whose turn has come, once the code has asked for it."""
        action = self._pending.pop(self.next_replay, None)
        if action is not None:
            self.next_replay += 1
        return action

    def behind(self) -> bool:
        """True while recorded outcomes remain to be handed over (the replay is not live yet)."""
        return self.next_replay <= self.max_delivery

    def stuck(self) -> NonDeterminismError:
        """The error when the next recorded outcome is one the code never asks for."""
        rec = next((r for r in self._steps.values() if r.delivery == self.next_replay), None)
        what = f"step {rec.seq} ({rec.kind} `{rec.name}`)" if rec else f"outcome #{self.next_replay}"
        return NonDeterminismError(
            f"replay of run {self._run_id} is stuck: {what} was the next outcome the recorded run handed to "
            "the workflow, but the code now waits for something else and never asks for it: the workflow "
            "changed under an in-flight run. Guard the change with `ctx.patched('<change-id>')`.",
            run_id=self._run_id, seq=rec.seq if rec else None, tenant=self._tenant,
        )  # fmt: skip


def _short(text: str | None, limit: int = 120) -> str:
    if text is None:
        return "-"
    return text if len(text) <= limit else text[:limit] + "…"
