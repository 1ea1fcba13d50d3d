"""`Client`: start, signal, cancel and read runs in a store, without registering anything.

What the server, the CLI, traces and approvals use to act on runs; workers (`App`) execute them.

    client = Client("sqlite:///agentflow.db")
    handle = client.start("agent:copilot", "CS-101 drop rate is high", tenant="noc-east")
    client.signal(handle.run_id, "go")
    client.get(handle.run_id).status
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from agentflow.engine._clock import Clock, SystemClock
from agentflow.engine._defs import Workflow
from agentflow.errors import ConfigurationError, RunFailedError, RunStateError
from agentflow.store import (
    DEFAULT_TENANT,
    EventStore,
    Redaction,
    RunRecord,
    Sealing,
    StepRecord,
    check_run_id,
    check_tenant,
    decode,
    encode,
    parse_url,
    resolve_url,
    run_key,
)

_List = list  # `Client.list` shadows the builtin inside the class
# Failures a deploy of fixed code can get past: the only ones `resume` accepts.
RESUMABLE = ("NonDeterminismError", "CorruptRecordError", "NotRegisteredError")


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

    def __init__(self, client: Client, run_id: str, *, created: bool, app: Any = None) -> None:
        self.client = client
        self.run_id = run_id
        self.created = created
        #: The App that started the run, when an App did (None from a bare Client).
        self.app = app

    def info(self) -> RunInfo:
        return self.client.get(self.run_id)

    @property
    def status(self) -> str:
        return self.info().status

    def result(self, *, timeout: float | None = None, poll: float = 0.05) -> Any:
        """Block until the run ends; return its result or raise `RunFailedError`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            record = self.client.store.get_run(self.run_id)
            if record.terminal:
                return self.client.result_of(record)
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"run {self.run_id} is still {record.status} after {timeout}s")
            time.sleep(poll)

    def __repr__(self) -> str:
        return f"<RunHandle {self.run_id}>"


class Client:
    """Runs in one store: start, signal, cancel, get, list, history, resume.

    Args:
        db: the store's URL (default `AGENTFLOW_DB`, else `sqlite:///agentflow.db`).
        store: an open store to use instead of `db` (not closed by `close()`).
        clock: the clock run times are taken from. Default: the clock the store's workers run
            on (a worker records its App's `SystemClock` offset in the store), else the system
            clock: every surface on a store agrees on what time it is.
        synchronous: durability of the store opened from `db` (see `App`).
        busy_timeout: seconds a writer waits for a lock (see `App`).
        workflows: registered workflows by name (an App's), so results decode into the
            workflow's declared type and arguments are checked; without them results are JSON.
        redaction: what is masked before anything is recorded (default: the standard secret
            fields and shapes, and this process's configuration secrets; see `Redaction`).
        sealing: encryption at rest (see `App`; default `Sealing.from_env()`).
    """

    def __init__(
        self,
        db: str | None = None,
        *,
        store: EventStore | None = None,
        clock: Clock | None = None,
        synchronous: Literal["FULL", "NORMAL"] = "FULL",
        busy_timeout: float | None = None,
        workflows: Mapping[str, Workflow[Any, Any]] | None = None,
        redaction: Redaction | None = None,
        sealing: Sealing | None = None,
    ) -> None:
        if store is not None and db is not None:
            raise ConfigurationError("pass the store's URL (db=...) or an open store (store=...), not both")
        self.db = store.url if store is not None else resolve_url(db)
        parse_url(self.db)  # an unsupported URL, or PostgreSQL without its driver, fails here
        self._clock = clock
        self._store = store
        self._owns_store = store is None
        self._options: dict[str, Any] = {"synchronous": synchronous, "busy_timeout": busy_timeout,
                                         "redaction": redaction, "sealing": sealing}  # fmt: skip
        self._workflows: Mapping[str, Workflow[Any, Any]] = workflows if workflows is not None else {}

    @property
    def store(self) -> EventStore:
        """The store, opened (and migrated) on first use."""
        if self._store is None:
            self._store = EventStore(self.db, **self._options)
        return self._store

    @property
    def clock(self) -> Clock:
        """The clock given, else the one the store's application declared (read on first use)."""
        if self._clock is None:
            self._clock = SystemClock(offset=declared_offset(self.store))
        return self._clock

    def close(self) -> None:
        """Close the connections of the store this client opened (a store passed in is left
        open). Used again, the store reconnects; `close()` closes it again."""
        if self._owns_store and self._store is not None:
            self._store.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- starting --------------------------------------------------------------------------
    def start(
        self,
        workflow: Workflow[Any, Any] | str,
        *args: Any,
        run_id: str | None = None,
        tenant: str = DEFAULT_TENANT,
        meta: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> RunHandle:
        """Start a run of `workflow` (a Workflow, or the name workers know it by); it is
        pending until a worker claims it. An existing `run_id` of the same tenant returns that
        run. Run ids are the tenant's own: the handle's `run_id` is the store's key of the run
        (`<tenant>:<run id>` outside the default tenant), what the other methods take.

        Raises:
            ConfigurationError: bad arguments, a bad run id or tenant name, or `run_id` taken
                by another workflow in this tenant.
        """
        name = workflow if isinstance(workflow, str) else workflow.name
        wf = workflow if isinstance(workflow, Workflow) else self._workflows.get(name)
        key = run_key(check_tenant(tenant), check_run_id(run_id) if run_id is not None else uuid.uuid4().hex)
        input_json = encode_input(wf, name, args, kwargs)
        # Outside the default tenant a run started before ids were per tenant (0.1) is keyed by
        # its bare id: look for it first (in the default tenant the key is the bare id anyway).
        existing = self.store.find_run(key, tenant=tenant) if run_id is not None and tenant != DEFAULT_TENANT else None
        if existing is not None:
            record, created = existing, False
        else:
            record, created = self.store.create_run(
                run_id=key, workflow=name, tenant=tenant, input=input_json, now=self.clock.now(),
                meta=json.dumps(meta) if meta else None,
            )  # fmt: skip
        if record.tenant != tenant:  # a 0.1 run of another tenant holds this bare id
            raise ConfigurationError(f"run id {run_id!r} is taken in this store; choose another run id")
        if record.workflow != name:
            raise ConfigurationError(
                f"run id {run_id!r} already exists for workflow {record.workflow!r}, not {name!r}; choose another run id"
            )
        return RunHandle(self, record.id, created=created)

    # -- steering --------------------------------------------------------------------------
    def signal(self, run_id: str, name: str, payload: Any = None) -> None:
        """Send a signal; a run waiting for it is woken."""
        self.store.send_signal(run_id, name, encode(payload, what=f"the payload of signal {name!r}"), self.clock.now())

    def cancel(self, run_id: str) -> RunInfo:
        """Request cancellation: the workflow gets `asyncio.CancelledError` at its current await
        (recorded, so compensation code in `except`/`finally` runs durably)."""
        return RunInfo.from_record(self.store.request_cancel(run_id, self.clock.now()))

    def resume(self, run_id: str) -> RunInfo:
        """Make a run that stopped on a non-determinism or corrupt-record error runnable again
        (after deploying fixed code). Its history is kept; replay starts from the top."""
        record = self.store.get_run(run_id)
        if record.status != "failed" or record.error_dict().get("type") not in RESUMABLE:
            raise RunStateError(
                f"run {run_id} is {record.status}; only runs stopped by a code/record mismatch can be resumed",
                run_id=run_id,
            )
        self.store.reset_failed(run_id)
        return self.get(run_id)

    # -- reading ---------------------------------------------------------------------------
    def get(self, run_id: str) -> RunInfo:
        """The run (raises `UnknownRunError` when there is none)."""
        return RunInfo.from_record(self.store.get_run(run_id))

    def list(
        self, *, tenant: str | None = None, status: str | None = None, workflow: str | None = None, limit: int = 100
    ) -> _List[RunInfo]:
        """Runs, newest first."""
        records = self.store.list_runs(tenant=tenant, status=status, workflow=workflow, limit=limit)
        return [RunInfo.from_record(r) for r in records]

    def history(self, run_id: str) -> _List[StepRecord]:
        """The recorded steps of a run, in seq order."""
        self.store.get_run(run_id)
        return self.store.load_steps(run_id)

    def result_of(self, record: RunRecord) -> Any:
        """The result of an ended run, decoded into its workflow's declared type when the
        workflow is known; `RunFailedError` for a failed or cancelled run."""
        if record.status == "completed":
            wf = self._workflows.get(record.workflow)
            if wf is not None:
                return decode(record.output, wf.result_adapter, run_id=record.id, what="output")
            return decode(record.output, run_id=record.id, what="output")
        err = record.error_dict()
        raise RunFailedError(
            f"run {record.id} ended {record.status}: {err.get('type')}: {err.get('message')}",
            error=err, run_id=record.id, tenant=record.tenant,
        )  # fmt: skip


#: The setting a worker records its App's `SystemClock` offset under (see `declare_clock`).
CLOCK_OFFSET = "clock_offset"


def declared_offset(store: EventStore) -> float:
    """The clock offset the store's workers declared (0 when none did, or it is unreadable)."""
    try:
        return float(store.setting(CLOCK_OFFSET) or 0.0)
    except ValueError:
        return 0.0


def declare_clock(store: EventStore, clock: Clock) -> None:
    """Record a worker's clock for the surfaces on its store (the CLI, a chat adapter, a server
    without workers): the workers drive the runs, so their time (approval expiries, maintenance
    windows) is the store's. A test clock is its process's own and is not recorded."""
    if isinstance(clock, SystemClock):
        offset = repr(float(clock.offset))
        if store.setting(CLOCK_OFFSET) != offset:
            store.set_setting(CLOCK_OFFSET, offset, clock.now())


def encode_input(wf: Workflow[Any, Any] | None, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """A run's recorded input, `[args, kwargs]`, checked against the workflow's signature when known."""
    if wf is not None:
        try:
            wf.signature.bind(None, *args, **kwargs)
        except TypeError as exc:
            raise ConfigurationError(f"bad arguments for workflow {name}: {exc}") from None
    return encode([list(args), kwargs], what=f"the arguments of workflow {name}")
