"""Errors raised by agentflow.

Every error derives from one root and carries structured fields (run id, seq, tenant where they
apply) and ``retryable``: whether trying the same thing again later can help.

    AgentflowError
    ├── ConfigurationError          bad arguments to the API (unknown workflow, bad URL, ...)
    │   ├── NotRegisteredError      a workflow or activity name this App does not know
    │   ├── NotInActivityError      current_activity() called outside an activity
    │   └── PolicyError             an invalid policy pack (names the file, line and reason)
    ├── PayloadError                a value that does not serialize to JSON (or not back)
    ├── RunError                    about one run
    │   ├── UnknownRunError         no run with that id
    │   ├── RunStateError           the run is not in a state that allows the operation
    │   └── RunFailedError          the run ended failed or cancelled (raised by handle.result())
    ├── WorkflowError               raised inside workflow code
    │   ├── NonDeterminismError     the code no longer matches the recorded history
    │   ├── ActivityError           an activity failed after its retries (cause recorded)
    │   ├── ChildWorkflowError      a child run failed or was cancelled
    │   ├── WaitTimeout             ctx.wait_signal(..., timeout=) expired
    │   ├── BudgetExceeded          a model call would exceed the run's token/USD budget (not sent)
    │   ├── ContextWindowExceeded   the request does not fit the model's context window (not sent)
    │   └── ReplayRefused           a replay-only worker refused to execute a step the history
    │                               does not answer (recorded as the step's outcome)
    ├── ModelError                  a model provider call failed (recorded; retried when retryable)
    │   ├── ModelRateLimited        HTTP 429 (retryable, honours Retry-After)
    │   ├── ModelServerError        HTTP 5xx (retryable)
    │   ├── ModelTimeout            no answer in time (retryable)
    │   ├── ModelConnectionError    could not reach the endpoint (retryable)
    │   ├── ModelBadResponse        a body that is not a chat completion (retryable)
    │   ├── ModelBadRequest         HTTP 400/404/422 (not retryable: fix the request)
    │   ├── ModelAuthError          HTTP 401/403 (not retryable: fix the key)
    │   └── ModelRequestsForbidden  a real model was called where requests are disabled (tests)
    ├── StoreError                  the event store
    │   ├── StoreBusyError          database locked past the busy timeout (retryable)
    │   ├── LeaseLostError          this worker no longer owns the run (fenced write refused)
    │   ├── CorruptRecordError      a stored row does not decode
    │   ├── SchemaVersionError      the database schema is newer than this agentflow
    │   └── StoreKeyError           a sealed payload whose key is missing or wrong (encryption
    │                               at rest); names the key id, never the key
    ├── ApprovalError               an approval decision that was not taken (audited)
    │   ├── AuthenticationError     a missing, unknown, revoked or expired token, or a disabled
    │   │                           operator; `code` says which (bad_token, token_revoked, ...)
    │   └── ApprovalRefused         the operator may not decide this (role, tenant, four-eyes,
    │                               expired, already decided, run ended, edited since); `code` says which
    ├── SignatureError              a signed message (a webhook delivery) that does not verify: a
    │                               missing header, a bad signature, a timestamp outside the window;
    │                               `code` says which
    └── ToolError                   a tool's target system (a network device, a metrics server)
                                    refused the call or could not be reached; `retryable` per
                                    instance (a refused value: no; a server down: yes)
        └── ToolDefinitionChanged   an MCP tool's definition differs from the one pinned for the
                                    run (or by the configuration): the call is refused, not sent

Control flow is not in this tree. A run that parks to wait raises nothing: the executor records
the park and returns. To unwind workflow code it must stop (a fatal record error, a lost lease, a
parked run's abandoned coroutine), the executor raises a private ``BaseException`` subclass,
``_Stop`` (``agentflow.engine._executor_base``), which ``except Exception`` in workflow code cannot
swallow, like DBOS and Temporal do.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ActivityError",
    "AgentflowError",
    "ApprovalError",
    "ApprovalRefused",
    "AuthenticationError",
    "BudgetExceeded",
    "ChildWorkflowError",
    "ConfigurationError",
    "ContextWindowExceeded",
    "CorruptRecordError",
    "LeaseLostError",
    "ModelAuthError",
    "ModelBadRequest",
    "ModelBadResponse",
    "ModelConnectionError",
    "ModelError",
    "ModelRateLimited",
    "ModelRequestsForbidden",
    "ModelServerError",
    "ModelTimeout",
    "NonDeterminismError",
    "NotInActivityError",
    "NotRegisteredError",
    "PayloadError",
    "PolicyError",
    "ReplayRefused",
    "RunError",
    "RunFailedError",
    "RunStateError",
    "SchemaVersionError",
    "SignatureError",
    "StoreBusyError",
    "StoreError",
    "StoreKeyError",
    "ToolDefinitionChanged",
    "ToolError",
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


class ReplayRefused(WorkflowError):
    """A replay-only worker (`Worker(replay_only=True)`, used by `agentflow.trace` replays) reached
    a step the history does not answer and refused to execute it; recorded as the step's outcome."""

    retryable = False


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


class StoreKeyError(StoreError):
    """A sealed payload (encryption at rest, `agentflow.store.Sealing`) cannot be opened: the key
    it names is not configured, or the configured key under that id is not the one it was sealed
    with (or the value was moved from another row). Nothing is changed; a worker gives the run
    back untouched. The message names the key id and how to configure it, never a key.

    Attributes:
        key_id: the id of the key the payload was sealed under ("" when not known).
    """

    def __init__(self, message: str, *, key_id: str = "", **kw: Any) -> None:
        super().__init__(message, **kw)
        self.key_id = key_id


class BudgetExceeded(WorkflowError):
    """A model call would take the run past its budget; it was not sent.

    Attributes:
        limit: which limit ("tokens" or "usd").
        spent: what the run had used before this call.
        needed: what this call would add at least (prompt tokens counted before sending).
        budget: the limit's value.
    """

    def __init__(self, message: str, *, limit: str, spent: float, needed: float, budget: float, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.limit = limit
        self.spent = spent
        self.needed = needed
        self.budget = budget


class ContextWindowExceeded(WorkflowError):
    """The request's counted tokens exceed the model's context window; it was not sent."""


class ModelError(AgentflowError):
    """A call to a model provider failed.

    Attributes:
        status: the HTTP status, when there was one.
        retry_after: seconds the provider asked to wait (from `Retry-After`), if any.
    """

    retryable = True

    def __init__(self, message: str, *, status: int | None = None, retry_after: float | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.status = status
        self.retry_after = retry_after

    def to_dict(self) -> dict[str, Any]:
        # Recorded with each failed attempt: what the provider answered (429, 503...) and how long
        # it asked to wait.
        return {**super().to_dict(), "status": self.status, "retry_after": self.retry_after}


class ModelRateLimited(ModelError):
    """HTTP 429: the provider throttled the call. Retried after `retry_after` seconds."""


class ModelServerError(ModelError):
    """HTTP 5xx from the provider. Retried with backoff."""


class ModelTimeout(ModelError):
    """The provider did not answer in time. Retried with backoff."""


class ModelConnectionError(ModelError):
    """The endpoint could not be reached. Retried with backoff."""


class ModelBadResponse(ModelError):
    """The provider answered with a body that is not a chat completion (e.g. not JSON)."""


class ModelBadRequest(ModelError):
    """The provider refused the request (400/404/422): retrying the same request cannot help."""

    retryable = False


class ModelAuthError(ModelError):
    """The provider refused the credentials (401/403): set a valid API key."""

    retryable = False


class ModelRequestsForbidden(ModelError):
    """A request to a non-local model endpoint while model requests are disabled (tests)."""

    retryable = False


class PolicyError(ConfigurationError):
    """An invalid policy pack: `file` and `line` say where, the message says why."""

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None) -> None:
        super().__init__(message)
        self.file = file
        self.line = line


class ApprovalError(AgentflowError):
    """An approval decision that was not taken; nothing changed but the audit trail."""

    def __init__(self, message: str, *, code: str, approval_id: str | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.code = code
        self.approval_id = approval_id


class AuthenticationError(ApprovalError):
    """A token that signs no one in; `code` is bad_token (missing or unknown), token_revoked,
    token_expired or operator_disabled (or session_expired: a web session that does not say which
    token it signed in with; unlinked: a chat account linked to no operator of the tenant), and
    the message names the command that fixes it."""


class ApprovalRefused(ApprovalError):
    """An authenticated operator may not take this decision; `code` is one of wrong_tenant,
    missing_role, self_approval, expired, already_decided, run_ended, stale_args, not_editable,
    unknown."""


class SignatureError(AgentflowError):
    """A signed message that does not verify (`agentflow.webhooks.verify`): nothing in it may be
    trusted. `code` is missing_header, bad_header, bad_signature, stale_timestamp,
    future_timestamp or bad_body (signed, but not a JSON event); the message says what to check
    (the secret, the raw body, the receiver's clock)."""

    def __init__(self, message: str, *, code: str, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.code = code


class ToolError(AgentflowError):
    """A tool's target system refused the call or could not be reached: a NETCONF device that
    refuses a value outside its YANG range (not retryable: change the value), a metrics server
    that does not answer (retryable: the run retries the step, then resumes). The message is
    what the model reads, so it names the system and what it said.

    Attributes:
        system: what refused or failed, e.g. "netconf 127.0.0.1:830" or "prometheus".
        detail: the system's own words (an RPC error's tag and path, an HTTP status), if any.
    """

    def __init__(self, message: str, *, system: str, detail: str = "", **kw: Any) -> None:
        super().__init__(message, **kw)
        self.system = system
        self.detail = detail


class ToolDefinitionChanged(ToolError):
    """An MCP server's definition of a tool (name, description, input schema, annotations) is
    not the one pinned when the run first used the server, or the server's tool list does not
    hash to the pin its configuration gives (`agentflow.mcp.server(..., pin=)`). The call is
    not sent: a definition changed under a run could turn an approved read into a write. Not
    retryable; the run's later calls of the tool are refused the same way.

    Attributes:
        server: the server's name.
        tool: the tool concerned ("" when the whole list differs from a configured pin).
        pinned: the hash the run (or the configuration) holds.
        current: the hash of what the server lists now ("" when it no longer lists the tool).
    """

    retryable = False

    def __init__(self, message: str, *, server: str, tool: str = "", pinned: str = "", current: str = "",
                 **kw: Any) -> None:  # fmt: skip
        super().__init__(message, system=f"mcp {server}", **kw)
        self.server = server
        self.tool = tool
        self.pinned = pinned
        self.current = current
