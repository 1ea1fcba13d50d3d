"""`App`: the registry of workflows and activities, and the client API over one store."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Concatenate, Literal, ParamSpec, Protocol, TypeVar, overload

from agentflow.engine._clock import Clock, SystemClock
from agentflow.engine._defs import Activity, RetryPolicy, Workflow
from agentflow.errors import (
    ConfigurationError,
    NotRegisteredError,
    RunFailedError,
    RunStateError,
    UnknownRunError,
)
from agentflow.store import EventStore, RunRecord, StepRecord, decode, encode, parse_url, resolve_url

if TYPE_CHECKING:
    from agentflow.approvals import Approvals

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class RunInfo:
    """A run as the API reports it."""

    run_id: str
    workflow: str
    tenant: str
    status: str
    parent_id: str | None
    root_id: str
    created_at: float
    updated_at: float
    completed_at: float | None
    wake_at: float | None
    waiting_on: dict[str, Any] | None
    error: dict[str, Any] | None
    output_json: str | None
    cancel_requested: bool
    meta: dict[str, Any]

    @classmethod
    def from_record(cls, r: RunRecord) -> RunInfo:
        return cls(
            run_id=r.id, workflow=r.workflow, tenant=r.tenant, status=r.status,
            parent_id=r.parent_id, root_id=r.root_id, created_at=r.created_at,
            updated_at=r.updated_at, completed_at=r.completed_at, wake_at=r.wake_at,
            waiting_on=json.loads(r.waiting_on) if r.waiting_on else None,
            error=r.error_dict() or None, output_json=r.output,
            cancel_requested=bool(r.cancel_requested), meta=r.meta_dict(),
        )  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}


class RunHandle:
    """A started run. `result()` waits for it (driven by a worker elsewhere)."""

    def __init__(self, app: App, run_id: str, *, created: bool) -> None:
        self.app = app
        self.run_id = run_id
        self.created = created

    def info(self) -> RunInfo:
        return self.app.get_run(self.run_id)

    @property
    def status(self) -> str:
        return self.info().status

    def result(self, *, timeout: float | None = None, poll: float = 0.05) -> Any:
        """Block until the run ends; return its result or raise `RunFailedError`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            record = self.app.store.get_run(self.run_id)
            if record.terminal:
                return self.app.result_of(record)
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"run {self.run_id} is still {record.status} after {timeout}s")
            time.sleep(poll)

    def __repr__(self) -> str:
        return f"<RunHandle {self.run_id}>"


class _ActivityDecorator(Protocol):
    """What `@app.activity(...)` returns: async functions type as their awaited result."""

    @overload
    def __call__(self, fn: Callable[P, Coroutine[Any, Any, R]], /) -> Activity[P, R]: ...
    @overload
    def __call__(self, fn: Callable[P, R], /) -> Activity[P, R]: ...


class _WorkflowDecorator(Protocol):
    """What `@app.workflow(name=...)` returns; the workflow's type omits its `ctx` parameter."""

    def __call__(self, fn: Callable[Concatenate[Any, P], Awaitable[R]], /) -> Workflow[P, R]: ...


class _Startable(Protocol):
    """What `App.start_agent` needs of an agent (the engine knows nothing more about agents)."""

    def start_on(
        self, app: App, task: str, *, tenant: str = ..., requested_by: str | None = ..., run_id: str | None = ...
    ) -> RunHandle: ...


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
    ) -> None:
        #: Whether the URL was given (not taken from `AGENTFLOW_DB` or the default): the CLI's
        #: `--db` refuses to silently replace a database the code names.
        self.db_given = db is not None
        self.db = resolve_url(db)
        parse_url(self.db)  # an unsupported URL, or PostgreSQL without its driver, fails here
        self.clock: Clock = clock or SystemClock()
        self.synchronous = synchronous
        self.busy_timeout = busy_timeout
        self.lease_ttl = lease_ttl
        self.inline_wait = inline_wait
        self._workflows: dict[str, Workflow[Any, Any]] = {}
        self._activities: dict[str, Activity[Any, Any]] = {}
        self._store: EventStore | None = None
        self._approvals: Approvals | None = None

    # -- the store, opened on first use (so `module:app` imports cheaply) --------------------
    @property
    def store(self) -> EventStore:
        if self._store is None:
            self._store = EventStore(self.db, synchronous=self.synchronous, busy_timeout=self.busy_timeout)
        return self._store

    @property
    def approvals(self) -> Approvals:
        """Operators and approval requests in this app's store (`agentflow.approvals`).

        The one place the engine reaches up a layer, lazily: approvals live in the run store."""
        if self._approvals is None:
            from agentflow.approvals import Approvals

            self._approvals = Approvals(self)
        return self._approvals

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

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
        of the history); `options` are App's keyword arguments."""
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
    @staticmethod
    def encode_input(wf: Workflow[Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        try:
            wf.signature.bind(None, *args, **kwargs)
        except TypeError as exc:
            raise ConfigurationError(f"bad arguments for workflow {wf.name}: {exc}") from None
        return encode([list(args), kwargs], what=f"the arguments of workflow {wf.name}")

    def decode_input(self, wf: Workflow[Any, Any], run: RunRecord) -> tuple[list[Any], dict[str, Any]]:
        raw = decode(run.input, run_id=run.id, what="input")
        if not (isinstance(raw, list) and len(raw) == 2 and isinstance(raw[0], list) and isinstance(raw[1], dict)):
            from agentflow.errors import CorruptRecordError

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
            from agentflow.errors import CorruptRecordError

            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise CorruptRecordError(
                f"the input of run {run.id} does not fit workflow {wf.name}'s parameters: {first}",
                run_id=run.id,
            ) from None
        return args, kwargs

    def result_of(self, record: RunRecord) -> Any:
        if record.status == "completed":
            wf = self._workflows.get(record.workflow)
            adapter = wf.result_adapter if wf else None
            return (
                decode(record.output, adapter, run_id=record.id, what="output")
                if adapter
                else decode(record.output, run_id=record.id, what="output")
            )
        err = record.error_dict()
        raise RunFailedError(
            f"run {record.id} ended {record.status}: {err.get('type')}: {err.get('message')}",
            error=err, run_id=record.id, tenant=record.tenant,
        )  # fmt: skip

    # -- client API ------------------------------------------------------------------------
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
        run_id = run_id or uuid.uuid4().hex
        if "/" in run_id:
            raise ConfigurationError(f"run id {run_id!r} must not contain '/' (reserved for child runs)")
        input_json = self.encode_input(wf, args, kwargs)
        record, created = self.store.create_run(
            run_id=run_id, workflow=wf.name, tenant=tenant, input=input_json, now=self.clock.now(),
            meta=json.dumps(meta) if meta else None,
        )  # fmt: skip
        if record.workflow != wf.name:
            raise ConfigurationError(
                f"run id {run_id!r} already exists for workflow {record.workflow!r}, not {wf.name!r}; "
                "choose another run id"
            )
        return RunHandle(self, run_id, created=created)

    def start_agent(
        self,
        agent: _Startable,
        task: str,
        *,
        tenant: str = "default",
        requested_by: str | None = None,
        run_id: str | None = None,
    ) -> RunHandle:
        """Start an `agentflow.Agent` on `task` as a run of its own (workflow `agent:<name>`,
        registered on this app if it is not yet). `requested_by` is recorded in the run's meta.
        Like `start`, an existing `run_id` returns that run."""
        return agent.start_on(self, task, tenant=tenant, requested_by=requested_by, run_id=run_id)

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
        self.store.send_signal(run_id, name, encode(payload, what=f"the payload of signal {name!r}"), self.clock.now())

    def get_run(self, run_id: str) -> RunInfo:
        return RunInfo.from_record(self.store.get_run(run_id))

    def list_runs(self, *, tenant: str | None = None, status: str | None = None, limit: int = 100) -> list[RunInfo]:
        return [RunInfo.from_record(r) for r in self.store.list_runs(tenant=tenant, status=status, limit=limit)]

    def cancel(self, run_id: str) -> RunInfo:
        """Request cancellation: the workflow gets `asyncio.CancelledError` at its current await
        (recorded, so compensation code in `except`/`finally` runs durably)."""
        return RunInfo.from_record(self.store.request_cancel(run_id, self.clock.now()))

    def history(self, run_id: str) -> list[StepRecord]:
        """The recorded steps of a run, in seq order."""
        self.store.get_run(run_id)
        return self.store.load_steps(run_id)

    def resume(self, run_id: str) -> RunInfo:
        """Make a run that stopped on a non-determinism or corrupt-record error runnable again
        (after deploying fixed code). Its history is kept; replay starts from the top."""
        record = self.store.get_run(run_id)
        err = record.error_dict()
        if record.status != "failed" or err.get("type") not in (
            "NonDeterminismError",
            "CorruptRecordError",
            "NotRegisteredError",
        ):
            raise RunStateError(
                f"run {run_id} is {record.status}; only runs stopped by a code/record mismatch can be resumed",
                run_id=run_id,
            )
        self.store.backend.write(
            [
                (
                    "UPDATE af_runs SET status = 'pending', error = NULL, completed_at = NULL WHERE id = ? AND status = 'failed'",
                    (run_id,),
                    False,
                )
            ],
            run_id=run_id,
        )
        return self.get_run(run_id)

    def worker(self, **kwargs: Any) -> Any:
        """A `Worker` for this app (see `agentflow.engine.Worker`)."""
        from agentflow.engine._worker import Worker

        return Worker(self, **kwargs)


def _default_name(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__qualname__", getattr(fn, "__name__", repr(fn)))


__all__ = ["App", "RunHandle", "RunInfo", "UnknownRunError"]
