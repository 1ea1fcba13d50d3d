"""Workflow and activity definitions, and the retry policy."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import hashlib
import inspect
import types
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, ParamSpec, TypeVar

from pydantic import TypeAdapter

from agentflow.engine._threads import run_blocking
from agentflow.errors import AgentflowError, NotInActivityError
from agentflow.store import param_adapters, return_adapter

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a failed activity is retried. Each failed attempt is recorded with its error.

    Args:
        max_attempts: attempts in all, the first included (1 = no retry).
        initial_interval: seconds before the second attempt.
        backoff: multiplier of the interval after each failed attempt.
        max_interval: the interval never exceeds this many seconds.
        non_retryable: exception types (or their names) that fail the step at once.
    """

    max_attempts: int = 3
    initial_interval: float = 1.0
    backoff: float = 2.0
    max_interval: float = 60.0
    non_retryable: tuple[type[BaseException] | str, ...] = ()

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("RetryPolicy.max_attempts must be >= 1 (1 means no retry)")
        if self.initial_interval < 0 or self.max_interval < 0 or self.backoff < 1:
            raise ValueError("RetryPolicy intervals must be >= 0 and backoff >= 1")

    def delay_after(self, attempt: int, exc: BaseException | None = None) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based).

        An error that carries `retry_after` (seconds, e.g. from an HTTP `Retry-After` header) is
        honoured: the wait is at least that long, even past `max_interval`."""
        delay = min(self.initial_interval * self.backoff ** (attempt - 1), self.max_interval)
        hint = getattr(exc, "retry_after", None)
        if isinstance(hint, (int, float)) and hint > delay:
            delay = float(hint)
        return delay

    def is_retryable(self, exc: BaseException) -> bool:
        if isinstance(exc, AgentflowError) and not exc.retryable:
            return False
        for item in self.non_retryable:
            if isinstance(item, str):
                if item in (type(exc).__name__, f"{type(exc).__module__}.{type(exc).__qualname__}"):
                    return False
            elif isinstance(exc, item):
                return False
        return True


NO_RETRY = RetryPolicy(max_attempts=1)


class Activity(Generic[P, R]):
    """A registered activity: a function whose every call from a workflow is a recorded step.

    Calling the object directly calls the function (outside any workflow, unrecorded).
    """

    def __init__(
        self,
        fn: Callable[P, R] | Callable[P, Awaitable[R]],
        *,
        name: str,
        retry: RetryPolicy,
        timeout: float | None,
        side_effect: bool,
        reconcile: Callable[[str], Any] | None,
        kind: str = "activity",
        encode_result: Callable[[Any], tuple[str, dict[str, str]]] | None = None,
        decode_result: Callable[[str], Any] | None = None,
    ) -> None:
        self.fn = fn
        self.name = name
        # A step that is not a registered activity (e.g. a model call) has its own kind and may
        # record its result as references to content-addressed blobs.
        self.kind = kind
        self.encode_result = encode_result
        self.decode_result = decode_result
        self.retry = retry
        self.timeout = timeout
        self.side_effect = side_effect
        self.reconcile = reconcile
        self.is_async = inspect.iscoroutinefunction(fn)
        self.result_adapter: TypeAdapter[Any] = return_adapter(fn)
        functools.update_wrapper(self, fn)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Any:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<Activity {self.name} side_effect={self.side_effect}>"


class Workflow(Generic[P, R]):
    """A registered workflow: an `async def wf(ctx, ...)` whose I/O goes through `ctx`."""

    def __init__(self, fn: Callable[..., Awaitable[R]], *, name: str) -> None:
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"workflow {name} must be an `async def` taking ctx first")
        self.fn = fn
        self.name = name
        self.result_adapter: TypeAdapter[Any] = return_adapter(fn)
        self.param_adapters = param_adapters(fn, skip_first=True)
        self.signature = inspect.signature(fn)
        functools.update_wrapper(self, fn)

    async def __call__(self, ctx: Any, *args: P.args, **kwargs: P.kwargs) -> R:
        # `ctx` is the run's WorkflowContext (typed Any here: the context module imports this one).
        return await self.fn(ctx, *args, **kwargs)

    @functools.cached_property
    def fingerprint(self) -> str:
        """A digest of the workflow function's compiled code (comments, formatting and line
        numbers aside): workers whose fingerprints of one workflow differ run different code, and
        a run moving between them may replay against code that did not record it."""
        fn = inspect.unwrap(self.fn)
        code = getattr(getattr(fn, "__func__", fn), "__code__", None)
        digest = hashlib.sha256(getattr(fn, "__qualname__", repr(fn)).encode())
        if isinstance(code, types.CodeType):
            _digest_code(code, digest)
        return digest.hexdigest()[:16]

    def __repr__(self) -> str:
        return f"<Workflow {self.name}>"


def _digest_code(code: types.CodeType, digest: Any) -> None:
    digest.update(code.co_code)
    digest.update(repr(code.co_names).encode())
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            _digest_code(const, digest)  # nested functions, lambdas, comprehensions
        else:
            digest.update(_stable_repr(const).encode())


def _stable_repr(value: Any) -> str:
    """A constant's repr that does not depend on the process (a frozenset's order does)."""
    if isinstance(value, frozenset):
        return "frozenset(" + repr(sorted(_stable_repr(v) for v in value)) + ")"
    if isinstance(value, tuple):
        return "(" + ", ".join(_stable_repr(v) for v in value) + ")"
    return repr(value)


@dataclass(frozen=True, slots=True)
class ActivityInfo:
    """What a running activity knows about itself; `current_activity()` returns it.

    `idempotency_key` is derived from the run id and seq: the same for every attempt of this step,
    across retries, crashes and resumes. Hand it to external systems to dedupe side effects.
    """

    run_id: str
    seq: int
    attempt: int
    name: str
    workflow: str
    tenant: str
    idempotency_key: str
    extra: dict[str, Any] = field(default_factory=dict)
    #: The `App` running the activity: activities may do I/O, e.g. read the store's policy counters.
    app: Any = None


_current: contextvars.ContextVar[ActivityInfo | None] = contextvars.ContextVar(
    "agentflow_current_activity", default=None
)


def current_activity() -> ActivityInfo:
    """The running activity's info (run id, seq, attempt, idempotency key).

    Raises:
        NotInActivityError: when called outside an activity.
    """
    info = _current.get()
    if info is None:
        raise NotInActivityError(
            "current_activity() was called outside an activity: call it from a function run "
            "with `ctx.run(...)`, not from workflow code or a plain call"
        )
    return info


def idempotency_key(run_id: str, seq: int) -> str:
    """The idempotency key of step `seq` of `run_id`: readable in an audit ledger."""
    return f"{run_id}:{seq}"


async def call_activity(
    activity: Activity[Any, Any], info: ActivityInfo, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """Run the activity's function once, with its info set and its timeout applied."""
    token = _current.set(info)
    try:
        if activity.is_async:
            coro = activity.fn(*args, **kwargs)
        else:  # on the elastic pool: a call that never returns holds one thread, nobody's turn
            coro = run_blocking(activity.fn, *args, **kwargs)
        if activity.timeout is not None:
            return await asyncio.wait_for(coro, activity.timeout)
        return await coro
    finally:
        _current.reset(token)
