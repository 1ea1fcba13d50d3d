"""`App`: the registry of workflows and activities, the workers that execute them, and the store
they record into. Acting on runs from elsewhere (start, signal, cancel, read) is the `Client`'s
job; `App` offers the same calls, through `app.client`, for code that has an App at hand."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, Concatenate, Literal, ParamSpec, Protocol, TypeVar, overload

from agentflow.engine._client import Client, RunHandle, RunInfo
from agentflow.engine._clock import Clock, SystemClock
from agentflow.engine._defs import Activity, RetryPolicy, Workflow
from agentflow.errors import ConfigurationError, CorruptRecordError, NotRegisteredError
from agentflow.store import EventStore, Redaction, RunRecord, Sealing, StepRecord, decode

if TYPE_CHECKING:
    from agentflow.engine._worker import Worker

P = ParamSpec("P")
R = TypeVar("R")


class _ActivityDecorator(Protocol):
    """What `@app.activity(...)` returns: async functions type as their awaited result."""

    @overload
    def __call__(self, fn: Callable[P, Coroutine[Any, Any, R]], /) -> Activity[P, R]: ...
    @overload
    def __call__(self, fn: Callable[P, R], /) -> Activity[P, R]: ...


class _WorkflowDecorator(Protocol):
    """What `@app.workflow(name=...)` returns; the workflow's type omits its `ctx` parameter."""

    def __call__(self, fn: Callable[Concatenate[Any, P], Awaitable[R]], /) -> Workflow[P, R]: ...


class App:
    """An agentflow application: workflows, activities, and the store they record into.

    Args:
        db: the store: `sqlite:///path/to/file.db` or `postgresql://user:pw@host:5432/dbname`
            (needs `pip install 'agentflow[postgres]'`); default `AGENTFLOW_DB`, else
            `sqlite:///agentflow.db` in the current directory.
        clock: where workflow time comes from (default: the system clock; tests and demos use
            `agentflow.testing.TestClock`).
        synchronous: durability, "FULL" (a step survives power loss; default) or "NORMAL"
            (SQLite: survives process crashes, much cheaper per step; PostgreSQL:
            `synchronous_commit=off`).
        busy_timeout: seconds a writer waits for a lock before `StoreBusyError` (PostgreSQL:
            `lock_timeout`).
        lease_ttl: seconds after which a silent worker's runs are taken over (a dead worker on
            the same host is detected at once).
        inline_wait: timers and retry backoffs shorter than this many seconds are waited in the
            worker; longer ones park the run in the store.
        redaction: what is masked before anything is recorded (default: standard secret fields
            and shapes, and this process's configuration secrets; `agentflow.store.Redaction`).
        sealing: encryption at rest of the recorded payloads (`agentflow.store.Sealing`; default
            `Sealing.from_env()`: keys from `AGENTFLOW_ENCRYPTION_KEYS`, else stored in clear).
    """

    def __init__(
        self,
        db: str | None = None,
        *,
        clock: Clock | None = None,
        synchronous: Literal["FULL", "NORMAL"] = "FULL",
        busy_timeout: float | None = None,
        lease_ttl: float = 10.0,
        inline_wait: float = 1.0,
        redaction: Redaction | None = None,
        sealing: Sealing | None = None,
    ) -> None:
        self.clock: Clock = clock or SystemClock()
        self.synchronous = synchronous
        self.busy_timeout = busy_timeout
        self.lease_ttl = lease_ttl
        self.inline_wait = inline_wait
        self._sealing = sealing
        self._workflows: dict[str, Workflow[Any, Any]] = {}
        self._activities: dict[str, Activity[Any, Any]] = {}
        # The app acts on runs through its own Client: one place opens the store (on first use,
        # so `module:app` imports cheaply), and a closed app reconnects where it is used again.
        self._client = Client(db, clock=self.clock, synchronous=synchronous, busy_timeout=busy_timeout,
                              workflows=self._workflows, redaction=redaction, sealing=sealing)  # fmt: skip
        self.db = self._client.db

    @property
    def store(self) -> EventStore:
        """The store, opened (and migrated) on first use."""
        return self._client.store

    @property
    def client(self) -> Client:
        """The `Client` on this app's store and clock; it knows the app's workflows (results
        decode into their declared types)."""
        return self._client

    def close(self) -> None:
        """Close the store's connections. Objects holding the store (handles, approvals, chat
        views) stay valid: used again, the store reconnects, and `close()` closes it again."""
        self._client.close()

    # -- registration ----------------------------------------------------------------------
    @overload
    def workflow(self, fn: Callable[Concatenate[Any, P], Awaitable[R]], /) -> Workflow[P, R]: ...
    @overload
    def workflow(self, *, name: str | None = None) -> _WorkflowDecorator: ...

    def workflow(self, fn: Any = None, /, *, name: str | None = None) -> Any:  # type: ignore[misc]
        """Register an `async def wf(ctx, ...)` as a workflow (name: its qualified name)."""

        def register(f: Callable[..., Awaitable[Any]]) -> Workflow[Any, Any]:
            wf: Workflow[Any, Any] = Workflow(f, name=name or _default_name(f))
            if wf.name in self._workflows and self._workflows[wf.name].fn is not f:
                raise ConfigurationError(f"a workflow named {wf.name!r} is already registered; pass name=...")
            self._workflows[wf.name] = wf
            return wf

        return register(fn) if fn is not None else register

    @overload
    def activity(self, fn: Callable[P, Coroutine[Any, Any, R]], /) -> Activity[P, R]: ...
    @overload
    def activity(self, fn: Callable[P, R], /) -> Activity[P, R]: ...
    @overload
    def activity(
        self,
        *,
        name: str | None = None,
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
        side_effect: bool = True,
        reconcile: Callable[[str], Any] | None = None,
    ) -> _ActivityDecorator: ...

    def activity(  # type: ignore[misc]
        self,
        fn: Any = None,
        /,
        *,
        name: str | None = None,
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
        side_effect: bool = True,
        reconcile: Callable[[str], Any] | None = None,
    ) -> Any:
        """Register a function (sync or async) as an activity.

        Args:
            name: the recorded name (default: the function's qualified name).
            retry: the retry policy (default: 3 attempts, 1 s initial backoff doubling to 60 s).
            timeout: seconds per attempt; a timed-out attempt counts as a retryable failure.
            side_effect: True (the default, the safe choice) records an intent before executing,
                so an attempt whose outcome a crash made unknown is re-run with the same
                idempotency key (or reconciled). False for reads: one commit per step.
            reconcile: `reconcile(idempotency_key)` returns the result of an effect that already
                happened, or None; asked before re-running an attempt whose outcome is unknown.
        """

        def register(f: Callable[..., Any]) -> Activity[Any, Any]:
            act: Activity[Any, Any] = Activity(
                f, name=name or _default_name(f), retry=retry or RetryPolicy(), timeout=timeout,
                side_effect=side_effect, reconcile=reconcile,
            )  # fmt: skip
            if act.name in self._activities and self._activities[act.name].fn is not f:
                raise ConfigurationError(f"an activity named {act.name!r} is already registered; pass name=...")
            self._activities[act.name] = act
            return act

        return register(fn) if fn is not None else register

    def include(self, *definitions: Workflow[Any, Any] | Activity[Any, Any]) -> None:
        """Register workflows and activities defined elsewhere (on another App) as the very same
        objects: workflow code refers to its Activity objects, which the engine checks by identity.

        Raises:
            ConfigurationError: another definition is already registered under the same name.
        """
        for d in definitions:
            if not isinstance(d, Workflow | Activity):
                raise ConfigurationError(f"include() takes workflows and activities, not {type(d).__name__}")
            table: dict[str, Any] = self._workflows if isinstance(d, Workflow) else self._activities
            if table.get(d.name, d) is not d:
                raise ConfigurationError(f"{d.name!r} is already registered here as another definition")
            table[d.name] = d

    def with_store(self, db: str, **options: Any) -> App:
        """A new App on another store with this App's registrations (e.g. a replay on a copy
        of the history); `options` are App's keyword arguments. The copy seals what this App
        seals (a replay's temporary store holds no payload in clear that the original sealed)."""
        options.setdefault("sealing", self._sealing)
        other = App(db, **options)
        other.include(*self._workflows.values(), *self._activities.values())
        return other

    def workflow_named(self, name: str) -> Workflow[Any, Any]:
        wf = self._workflows.get(name)
        if wf is None:
            known = ", ".join(sorted(self._workflows)) or "none"
            raise NotRegisteredError(f"no workflow named {name!r} is registered on this App (registered: {known})")
        return wf

    @property
    def workflow_names(self) -> list[str]:
        return sorted(self._workflows)

    def check_registered_workflow(self, wf: Workflow[Any, Any]) -> None:
        if not isinstance(wf, Workflow) or self._workflows.get(wf.name) is not wf:
            raise NotRegisteredError(f"{wf!r} is not a workflow registered on this App; decorate it with @app.workflow")

    def check_registered_activity(self, act: Activity[Any, Any]) -> None:
        if self._activities.get(act.name) is not act:
            raise NotRegisteredError(
                f"activity {act.name!r} is not registered on this App (was it registered on another App?)"
            )

    # -- inputs and results ----------------------------------------------------------------
    def decode_input(self, wf: Workflow[Any, Any], run: RunRecord) -> tuple[list[Any], dict[str, Any]]:
        raw = decode(run.input, run_id=run.id, what="input")
        if not (isinstance(raw, list) and len(raw) == 2 and isinstance(raw[0], list) and isinstance(raw[1], dict)):
            raise CorruptRecordError(f"the input of run {run.id} is not [args, kwargs]", run_id=run.id)
        args, kwargs = [], {}
        names = list(wf.param_adapters)
        try:
            wf.signature.bind(None, *raw[0], **raw[1])
            for i, value in enumerate(raw[0]):
                adapter = wf.param_adapters[names[i]] if i < len(names) else None
                args.append(adapter.validate_python(value) if adapter else value)
            for key, value in raw[1].items():
                adapter = wf.param_adapters.get(key)
                kwargs[key] = adapter.validate_python(value) if adapter else value
        except (TypeError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise CorruptRecordError(
                f"the input of run {run.id} does not fit workflow {wf.name}'s parameters: {first}",
                run_id=run.id,
            ) from None
        return args, kwargs

    def result_of(self, record: RunRecord) -> Any:
        """The result of an ended run (see `Client.result_of`)."""
        return self.client.result_of(record)

    # -- acting on runs (the client's calls, on this app's store and clock) ------------------
    def start(
        self,
        wf: Workflow[P, R],
        *args: Any,
        run_id: str | None = None,
        tenant: str = "default",
        meta: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> RunHandle:
        """Start a run (pending until a worker claims it). An existing `run_id` returns that run."""
        self.check_registered_workflow(wf)
        handle = self.client.start(wf, *args, run_id=run_id, tenant=tenant, meta=meta, **kwargs)
        handle.app = self
        return handle

    async def run_async(
        self, wf: Workflow[P, R], *args: Any, run_id: str | None = None, tenant: str = "default", **kwargs: Any
    ) -> R:
        """Start (or attach to) a run and drive it to its end in this process; return the result."""
        from agentflow.engine._worker import Worker

        handle = self.start(wf, *args, run_id=run_id, tenant=tenant, **kwargs)
        await Worker(self, root_id=handle.run_id).run_until_done(handle.run_id)
        result: R = self.result_of(self.store.get_run(handle.run_id))
        return result

    def run(
        self, wf: Workflow[P, R], *args: Any, run_id: str | None = None, tenant: str = "default", **kwargs: Any
    ) -> R:
        """Like `run_async`, from synchronous code. Running the same script again after a
        crash, with the same `run_id`, resumes the run where it stopped."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.run_async(wf, *args, run_id=run_id, tenant=tenant, **kwargs))
        raise ConfigurationError(
            "app.run() was called inside a running event loop (e.g. Jupyter); use `await app.run_async(...)` there"
        )

    def signal(self, run_id: str, name: str, payload: Any = None) -> None:
        """Send a signal; a run waiting for it is woken."""
        self.client.signal(run_id, name, payload)

    def get_run(self, run_id: str) -> RunInfo:
        return self.client.get(run_id)

    def list_runs(self, *, tenant: str | None = None, status: str | None = None, limit: int = 100) -> list[RunInfo]:
        return self.client.list(tenant=tenant, status=status, limit=limit)

    def cancel(self, run_id: str) -> RunInfo:
        """Request cancellation (see `Client.cancel`)."""
        return self.client.cancel(run_id)

    def history(self, run_id: str) -> list[StepRecord]:
        """The recorded steps of a run, in seq order."""
        return self.client.history(run_id)

    def resume(self, run_id: str) -> RunInfo:
        """Make a run stopped by a code/record mismatch runnable again (see `Client.resume`)."""
        return self.client.resume(run_id)

    def worker(self, **kwargs: Any) -> Worker:
        """A `Worker` for this app (see `agentflow.engine.Worker`)."""
        from agentflow.engine._worker import Worker

        return Worker(self, **kwargs)


def _default_name(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__qualname__", getattr(fn, "__name__", repr(fn)))


__all__ = ["App", "RunHandle", "RunInfo"]
