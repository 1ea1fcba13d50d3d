"""The store's row types (plain dataclasses) and the statements that write runs and steps."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from agentflow.errors import CorruptRecordError
from agentflow.store._backend import Op
from agentflow.store._constants import TERMINAL_STATUSES
from agentflow.store._tenants import local_id


@dataclass(slots=True)
class RunRecord:
    """A row of `af_runs`."""

    id: str
    workflow: str
    tenant: str
    status: str
    input: str
    output: str | None
    error: str | None
    owner: str | None
    epoch: int
    wake_at: float | None
    waiting_on: str | None
    parent_id: str | None
    parent_seq: int | None
    root_id: str
    cancel_requested: int
    meta: str | None
    created_at: float
    updated_at: float
    completed_at: float | None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def local_id(self) -> str:
        """The run id its tenant's operators know it by (the key without the tenant)."""
        return local_id(self.id, self.tenant)

    def error_dict(self) -> dict[str, Any]:
        return _json_field(self.error, self.id, "error") or {}

    def meta_dict(self) -> dict[str, Any]:
        return _json_field(self.meta, self.id, "meta") or {}

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}


@dataclass(slots=True)
class StepRecord:
    """A row of `af_steps`."""

    seq: int
    kind: str
    name: str
    digest: str
    status: str
    attempt: int
    args: str | None
    result: str | None
    error: str | None
    started_at: float
    finished_at: float | None
    wake_at: float | None
    epoch: int
    delivery: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}


def _json_field(text: str | None, run_id: str, what: str) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        raise CorruptRecordError(f"the {what} of run {run_id} is not valid JSON", run_id=run_id) from None


def step_params(run_id: str, epoch: int, s: StepRecord) -> tuple[Any, ...]:
    return (
        run_id, s.seq, s.kind, s.name, s.digest, s.status, s.attempt, s.args, s.result,
        s.error, s.started_at, s.finished_at, s.wake_at, epoch, s.delivery, run_id, epoch,
    )  # fmt: skip


def create_run_op(
    run_id: str, workflow: str, tenant: str, input: str, now: float,
    parent_id: str | None, parent_seq: int | None, root_id: str | None, meta: str | None,
) -> Op:  # fmt: skip
    return (
        "INSERT INTO af_runs (id, workflow, tenant, status, input, epoch, parent_id, "
        "parent_seq, root_id, cancel_requested, meta, created_at, updated_at) "
        "VALUES (?, ?, ?, 'pending', ?, 0, ?, ?, ?, 0, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
        (run_id, workflow, tenant, input, parent_id, parent_seq, root_id or run_id, meta, now, now),
        False,
    )
