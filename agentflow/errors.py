"""Errors raised by agentflow.

Every error derives from one root and carries structured fields (run id, seq, tenant where they
apply) and ``retryable``: whether trying the same thing again later can help.

    AgentflowError
    ├── ConfigurationError          bad arguments to the API (unknown workflow, bad URL, ...)
    │   ├── NotRegisteredError      a workflow or activity name this App does not know
    │   └── NotInActivityError      current_activity() called outside an activity
    ├── PayloadError                a value that does not serialize to JSON (or not back)
    ├── RunError                    about one run
    │   ├── UnknownRunError         no run with that id
    │   ├── RunStateError           the run is not in a state that allows the operation
    │   └── RunFailedError          the run ended failed or cancelled (raised by handle.result())
    ├── WorkflowError               raised inside workflow code
    │   ├── NonDeterminismError     the code no longer matches the recorded history
    │   ├── ActivityError           an activity failed after its retries (cause recorded)
    │   ├── ChildWorkflowError      a child run failed or was cancelled
    │   └── WaitTimeout             ctx.wait_signal(..., timeout=) expired
    ├── StoreError                  the event store
    │   ├── StoreBusyError          database locked past the busy timeout (retryable)
    │   ├── LeaseLostError          this worker no longer owns the run (fenced write refused)
    │   ├── CorruptRecordError      a stored row does not decode
    │   └── SchemaVersionError      the database schema is newer than this agentflow
    └── (control flow, not an error) SuspendRun derives from BaseException

Control flow that user code must not swallow derives from ``BaseException`` (see
``agentflow.engine._executor``), like DBOS and Temporal do.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ActivityError",
    "AgentflowError",
    "ChildWorkflowError",
    "ConfigurationError",
    "CorruptRecordError",
    "LeaseLostError",
    "NonDeterminismError",
    "NotInActivityError",
    "NotRegisteredError",
    "PayloadError",
    "RunError",
    "RunFailedError",
    "RunStateError",
    "SchemaVersionError",
    "StoreBusyError",
    "StoreError",
    "UnknownRunError",
    "WaitTimeout",
    "WorkflowError",
]


class AgentflowError(Exception):
    """Root of every agentflow error.

    Attributes:
        run_id: the run concerned, when there is one.
        seq: the step concerned, when there is one.
        tenant: the tenant concerned, when known.
        retryable: whether retrying the same operation later can succeed.
    """

    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        run_id: str | None = None,
        seq: int | None = None,
        tenant: str | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.run_id = run_id
        self.seq = seq
        self.tenant = tenant
        if retryable is not None:
            self.retryable = retryable

    def to_dict(self) -> dict[str, Any]:
        """The structured fields, as recorded in the history and printed by `--json`."""
        return {
            "type": type(self).__name__,
            "message": self.message,
            "run_id": self.run_id,
            "seq": self.seq,
            "tenant": self.tenant,
            "retryable": self.retryable,
        }


class ConfigurationError(AgentflowError):
    """The API was called with arguments that cannot work; the message says which and why."""


class NotRegisteredError(ConfigurationError):
    """A workflow or activity name that is not registered on this App."""


class NotInActivityError(ConfigurationError):
    """`current_activity()` was called outside a running activity."""


class PayloadError(AgentflowError):
    """A value could not be encoded to JSON (or decoded back into its declared type)."""


class RunError(AgentflowError):
    """An error about one run."""


class UnknownRunError(RunError):
    """No run with this id exists in the store."""


class RunStateError(RunError):
    """The run's status does not allow the operation (e.g. a signal to a completed run)."""


class RunFailedError(RunError):
    """The run ended `failed` or `cancelled`; `error` holds the recorded error."""

    def __init__(self, message: str, *, error: dict[str, Any] | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.error = error or {}


class WorkflowError(AgentflowError):
    """Raised inside workflow code by the context."""


class NonDeterminismError(WorkflowError):
    """The workflow code asked for a step that differs from what the history recorded."""

    def __init__(
        self,
        message: str,
        *,
        recorded: dict[str, Any] | None = None,
        requested: dict[str, Any] | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(message, **kw)
        self.recorded = recorded
        self.requested = requested


class ActivityError(WorkflowError):
    """An activity failed for good (retries exhausted or a non-retryable error).

    Attributes:
        activity: the activity's registered name.
        cause_type: the type name of the exception the activity raised.
        cause_message: its message.
        attempts: how many attempts were made.
    """

    def __init__(
        self,
        message: str,
        *,
        activity: str,
        cause_type: str,
        cause_message: str,
        attempts: int,
        **kw: Any,
    ) -> None:
        super().__init__(message, **kw)
        self.activity = activity
        self.cause_type = cause_type
        self.cause_message = cause_message
        self.attempts = attempts


class ChildWorkflowError(WorkflowError):
    """A child run ended failed or cancelled; `child_run_id` and `error` say which and why."""

    def __init__(self, message: str, *, child_run_id: str, error: dict[str, Any], **kw: Any) -> None:
        super().__init__(message, **kw)
        self.child_run_id = child_run_id
        self.error = error


class WaitTimeout(WorkflowError):
    """`ctx.wait_signal(name, timeout=...)` expired before the signal arrived."""


class StoreError(AgentflowError):
    """The event store failed."""


class StoreBusyError(StoreError):
    """The database stayed locked past the busy timeout. Retry later; nothing was lost."""

    retryable = True


class LeaseLostError(StoreError):
    """This worker's lease on the run was taken over; its write was refused (fencing)."""

    retryable = True


class CorruptRecordError(StoreError):
    """A stored row does not decode into its declared type. Nothing is executed from it."""


class SchemaVersionError(StoreError):
    """The database was written by a newer agentflow schema than this version knows."""
