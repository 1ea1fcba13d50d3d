"""The event store's operations, over a backend that runs SQL (SQLite or PostgreSQL).

All writes of a run's history go through fenced statements: they apply only while the writer holds
the run's lease epoch, so a worker that lost its lease can never append to that run's history.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from agentflow.errors import ConfigurationError, RunStateError, UnknownRunError
from agentflow.store._backend import Backend, Op
from agentflow.store._constants import TERMINAL_SQL
from agentflow.store._events import run_finished_ops
from agentflow.store._group import GroupCommit
from agentflow.store._reads import ReadQueries
from agentflow.store._records import RunRecord, StepRecord, create_run_op, step_params
from agentflow.store._redact import Redaction
from agentflow.store._schema import check_revision, upgrade
from agentflow.store._seal import Sealer, Sealing
from agentflow.store._sealed import SealedRows
from agentflow.store._tenants import SEPARATOR, local_id, scoped_key
from agentflow.store._tx import Tx
from agentflow.store._urls import open_backend, redact_url

T = TypeVar("T")

RUN_COLUMNS = (
    "id, workflow, tenant, status, input, output, error, owner, epoch, wake_at, waiting_on, "
    "parent_id, parent_seq, root_id, cancel_requested, meta, created_at, updated_at, completed_at"
)
STEP_SELECT = (
    "SELECT seq, kind, name, digest, status, attempt, args, result, error, started_at, "
    "finished_at, wake_at, epoch, delivery FROM af_steps WHERE run_id = ? ORDER BY seq"
)


_OPEN_REQUESTS = "status IN ('pending', 'escalated')"
_NEVER_STARTED = json.dumps({"type": "Cancelled", "message": "cancelled before it started"})


def withdraw_ops(run_id: str, now: float, why: str) -> list[Op]:
    """An approval request outlives no run: the open requests of an ended run are withdrawn
    (audited), so nothing shows them as waiting and nobody can approve them any more."""
    return [
        (
            "INSERT INTO af_audit (at, tenant, actor, action, approval_id, run_id, outcome, reason) "
            f"SELECT ?, tenant, 'agentflow', 'withdrawn', id, run_id, 'done', ? FROM af_approvals "
            f"WHERE run_id = ? AND {_OPEN_REQUESTS}",
            (now, why, run_id),
            False,
        ),
        (
            f"UPDATE af_approvals SET status = 'withdrawn', decided_at = ? WHERE run_id = ? AND {_OPEN_REQUESTS}",
            (now, run_id),
            False,
        ),
    ]


def process_start_time(pid: int) -> str:
    """The start time of a process (field 22 of /proc/PID/stat); '' when unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode(errors="replace")
        return data.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def pid_alive(pid: int, start: str) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A recycled pid belongs to another process: compare the start times when we have them.
    return not start or process_start_time(pid) in ("", start)


class EventStore(SealedRows, ReadQueries):
    """Runs, steps, signals and workers, governance records and the read side's queries, in one
    database: every SQL statement of agentflow is a method of this class or of the records it
    hands out in `transaction` / `read`."""

    def __init__(
        self, url: str, *, synchronous: str = "FULL", busy_timeout: float | None = None, migrate: bool = True,
        redaction: Redaction | None = None, sealing: Sealing | None = None, group_commit: bool = True,
        create: bool = True,
    ) -> None:  # fmt: skip
        #: Encryption at rest (`agentflow.store.Sealing`; default `Sealing.from_env()`, None: clear).
        self.sealing = sealing if sealing is not None else Sealing.from_env()
        self.seals = Sealer(self.sealing)
        self._tenants: dict[str, str] = {}
        self.backend: Backend = open_backend(url, synchronous=synchronous, busy_timeout=busy_timeout)
        self.url = url
        #: What is masked before anything is written (see `agentflow.store.Redaction`).
        self.redaction = redaction if redaction is not None else Redaction.current()
        #: Where executors send their writes (`GroupCommit`), or None (`group_commit=False`):
        #: they write inline, on the event loop.
        self.group: GroupCommit | None = GroupCommit(self.backend) if group_commit else None
        #: Whether the only run under way in the process writes inline while the group commit
        #: is idle (SQLite: a hand-off to the writer thread and back costs more than the commit
        #: at NORMAL, and doubles it at FULL: bench/engine.py; with one run there is nothing to
        #: share a flush with, and nobody else on the loop to wait). Many runs at once share
        #: transactions. Not on PostgreSQL, where a commit can wait on other hosts' locks.
        self.inline_when_idle = self.backend.dialect == "sqlite"
        #: Whether opening may create the database (a SQLite file) or its schema; False for a
        #: look (`agentflow runs list`): a typo'd URL is an error, not a new empty store.
        self.create = create
        if not create:
            self.require_existing()
        if migrate:
            try:
                self.ensure_schema()
            except BaseException:
                self.backend.close()  # refused or failed: leave no connection open
                raise

    # -- schema ----------------------------------------------------------------------------
    def ensure_schema(self) -> None:
        found = self.backend.schema_revision()
        if found is None and not self.create:
            raise ConfigurationError(
                f"the database {redact_url(self.url)} has no agentflow schema (nothing was ever recorded in it): "
                f"check --db and $AGENTFLOW_DB; to create the schema, run `agentflow db upgrade --db "
                f"{redact_url(self.url)}` (or start a worker on it)"
            )
        if not check_revision(self.url, found):
            upgrade(self.url)

    def require_existing(self) -> None:
        """Raise ConfigurationError, saying how to create it, when the database is a SQLite file
        that does not exist (connecting would create it)."""
        path = self.backend.path
        if path and not os.path.exists(path):
            self.backend.close()
            raise ConfigurationError(
                f"the database {redact_url(self.url)} does not exist (no file {os.path.abspath(path)}): check --db "
                f"and $AGENTFLOW_DB; to create it, run `agentflow db upgrade --db {redact_url(self.url)}` (or start "
                "a worker, `agentflow run` or `agentflow demo` on it)"
            )

    def close(self) -> None:
        if self.group is not None:
            self.group.close()  # commits what is queued; its thread is joined before connections close
        self.backend.close()

    # -- settings shared by every process on the store ------------------------------------------
    def setting(self, key: str) -> str | None:
        """A setting of the application on this store (None when it was never set)."""
        rows = self.backend.query("SELECT value FROM af_settings WHERE key = ?", (key,))
        return str(rows[0][0]) if rows else None

    def set_setting(self, key: str, value: str, now: float) -> None:
        self.backend.write(
            [
                (
                    "INSERT INTO af_settings (key, value, updated_at) VALUES (?, ?, ?) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                    (key, value, now),
                    False,
                )
            ]
        )

    # -- governance records (approvals, principals, audit, sessions, policy usage) ------------
    def transaction(self, body: Callable[[Tx], T], *, what: str = "writing the store", locks: Sequence[str] = ()) -> T:
        """Run `body(tx)` in one transaction, serialized with every other `transaction` of the
        database that names one of the same `locks` (none: the whole database), so a
        read-check-write in `body` is atomic (approval quorums, policy limits). Name every key
        the body's checks read across runs (e.g. `tenant:<t>`), or none."""
        return self.backend.transact(
            lambda conn: body(Tx(conn, self.signal_ops, clean=self.redaction.text, seals=self.seals)),
            what=what, locks=locks,
        )  # fmt: skip

    def read(self, body: Callable[[Tx], T], *, what: str = "reading the store") -> T:
        """Run `body(tx)` on this thread's connection, outside a transaction: reads only (a write
        through `tx` raises StoreError)."""
        return self.backend.read(
            lambda conn: body(Tx(conn, self.signal_ops, writable=False, seals=self.seals)), what=what
        )

    # -- runs ------------------------------------------------------------------------------
    def create_run(
        self,
        *,
        run_id: str,
        workflow: str,
        tenant: str,
        input: str,
        now: float,
        parent_id: str | None = None,
        parent_seq: int | None = None,
        root_id: str | None = None,
        meta: str | None = None,
    ) -> tuple[RunRecord, bool]:
        """Insert a pending run unless one with this id exists; return (run, created)."""
        (n,) = self.backend.write(
            [self.create_run_op(run_id, workflow, tenant, input, now, parent_id, parent_seq, root_id, meta)]
        )
        run = self.get_run(run_id)
        return run, n == 1

    def create_run_op(
        self, run_id: str, workflow: str, tenant: str, input: str, now: float,
        parent_id: str | None, parent_seq: int | None, root_id: str | None, meta: str | None,
    ) -> Op:  # fmt: skip
        """Insert a pending run unless one with this id exists (input and meta redacted, then
        sealed when its tenant is)."""
        r, seal = self.redaction.json, self.seals.seal
        self.remember_tenant(run_id, tenant)
        input = seal(r(input) or input, tenant, "af_runs.input", run_id) or input
        meta = seal(r(meta), tenant, "af_runs.meta", run_id)
        return create_run_op(run_id, workflow, tenant, input, now, parent_id, parent_seq, root_id, meta)

    def find_run(self, run_id: str, *, tenant: str | None = None) -> RunRecord | None:
        """The run keyed `run_id` (with `tenant`: a run id or key as that tenant's caller gave
        it, read with the tenant in the query: another tenant's run is None, like no run)."""
        if tenant is None:
            rows = self.backend.query(f"SELECT {RUN_COLUMNS} FROM af_runs WHERE id = ?", (run_id,))
        else:
            key = scoped_key(tenant, run_id)
            if key is None:
                return None
            # A run started before run ids were per tenant (0.1) is keyed by its bare id.
            sql = f"SELECT {RUN_COLUMNS} FROM af_runs WHERE tenant = ? AND id IN (?, ?) ORDER BY length(id) DESC"
            rows = self.backend.query(sql, (tenant, key, local_id(key, tenant)))
        return self._opened(rows[0]) if rows else None

    def _opened(self, row: Sequence[Any]) -> RunRecord:
        """A run as read, its payloads opened (and its tenant remembered for its step writes)."""
        run = RunRecord(*row)
        self.remember_tenant(run.id, run.tenant)
        return self.open_run(run)

    def get_run(self, run_id: str) -> RunRecord:
        run = self.find_run(run_id)
        if run is None:
            # Run ids are per tenant: a tenant's run "r1" is keyed "<tenant>:r1" in the store.
            pattern = "%" + SEPARATOR + run_id.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            rows = self.backend.query(
                "SELECT id FROM af_runs WHERE id LIKE ? ESCAPE '\\' ORDER BY id LIMIT 3", (pattern,)
            )
            hint = (
                f" (did you mean {', '.join(repr(r[0]) for r in rows)}? runs of a tenant are keyed <tenant>:<run id>)"
            )
            raise UnknownRunError(
                f"no run with id {run_id!r} in {redact_url(self.url)}{hint if rows else ''}; "
                "list runs with `agentflow runs list`",
                run_id=run_id,
            )
        return run

    def list_runs(
        self, *, tenant: str | None = None, status: str | None = None, workflow: str | None = None, limit: int = 100
    ) -> list[RunRecord]:
        where, params = [], []
        for col, val in (("tenant", tenant), ("status", status), ("workflow", workflow)):
            if val is not None:
                where.append(f"{col} = ?")
                params.append(val)
        sql = f"SELECT {RUN_COLUMNS} FROM af_runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, id LIMIT ?"
        return [self._opened(r) for r in self.backend.query(sql, (*params, limit))]

    def runs_status(self, ids: Sequence[str]) -> dict[str, RunRecord]:
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        rows = self.backend.query(f"SELECT {RUN_COLUMNS} FROM af_runs WHERE id IN ({marks})", tuple(ids))
        return {r[0]: self._opened(r) for r in rows}

    # -- history ---------------------------------------------------------------------------
    def load_steps(self, run_id: str, *, after: int = 0) -> list[StepRecord]:
        """The history of a run (the steps after seq `after`), in one query, payloads opened."""
        if after <= 0:
            rows = self.backend.query(STEP_SELECT, (run_id,))
        else:
            sql = STEP_SELECT.replace("WHERE run_id = ?", "WHERE run_id = ? AND seq > ?")
            rows = self.backend.query(sql, (run_id, after))
        steps = [StepRecord(*r) for r in rows]
        tenant = self.tenant_of(run_id) if steps else None
        return [self.open_step(run_id, tenant or "", s) for s in steps]

    def load_attempts(self, run_id: str) -> list[tuple[Any, ...]]:
        rows = self.backend.query(
            "SELECT seq, attempt, error, started_at, finished_at, retry_at FROM af_step_attempts "
            "WHERE run_id = ? ORDER BY seq, attempt",
            (run_id,),
        )
        tenant = self.tenant_of(run_id) if rows else None
        opened = self.seals.open
        return [(r[0], r[1], opened(r[2], tenant, "af_step_attempts.error", run_id, r[0], r[1]), *r[3:]) for r in rows]

    def attempt_op(
        self, run_id: str, seq: int, attempt: int, error: str, started: float, finished: float, retry_at: float | None
    ) -> Op:
        where = ("af_step_attempts.error", run_id, seq, attempt)
        sealed = self.seals.seal(self.redaction.json(error), self.tenant_of(run_id), *where)
        return (
            "INSERT INTO af_step_attempts (run_id, seq, attempt, error, started_at, finished_at, "
            "retry_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (run_id, seq, attempt, sealed, started, finished, retry_at),
            False,
        )

    def upsert_step_op(self, run_id: str, epoch: int, s: StepRecord) -> Op:
        """Record a step (fenced: only while `epoch` is the run's lease epoch). The executor masks
        a step's secrets when it makes the record (it hands the workflow what is recorded)."""
        if self.sealing is None:
            return (self.backend.upsert_step_sql, step_params(run_id, epoch, s), True)
        params = self.sealed_step_params(run_id, epoch, self.tenant_of(run_id) or "", s)
        return (self.backend.upsert_step_sql, params, True)

    # -- run transitions (all fenced on the epoch) ------------------------------------------
    @staticmethod
    def park_op(run_id: str, epoch: int, wake_at: float | None, waiting_on: str, now: float) -> Op:
        return (
            "UPDATE af_runs SET status = 'waiting', owner = NULL, wake_at = ?, waiting_on = ?, "
            "updated_at = ? WHERE id = ? AND epoch = ?",
            (wake_at, waiting_on, now, run_id, epoch),
            True,
        )

    def finish_ops(
        self, run_id: str, epoch: int, status: str, output: str | None, error: str | None, now: float,
        *, workflow: str = "",
    ) -> list[Op]:  # fmt: skip
        """End a run (fenced; its output and error redacted), and withdraw what waited on it and
        record its `run.finished` event (when a webhook of its tenant takes one) in the same commit."""
        r, seal, tenant = self.redaction.json, self.seals.seal, self.tenant_of(run_id)
        finished = self.finished_ops(run_id, tenant, workflow, status, error, now)
        output = seal(r(output), tenant, "af_runs.output", run_id)
        error = seal(r(error), tenant, "af_runs.error", run_id)
        finish = (
            "UPDATE af_runs SET status = ?, output = ?, error = ?, owner = NULL, wake_at = NULL, "
            "waiting_on = NULL, completed_at = ?, updated_at = ? WHERE id = ? AND epoch = ?",
            (status, output, error, now, now, run_id, epoch),
            True,
        )
        return [finish, *withdraw_ops(run_id, now, f"the run ended {status} before a decision"), *finished]

    def finished_ops(
        self, run_id: str, tenant: str | None, workflow: str, status: str, error: str | None, now: float
    ) -> list[Op]:
        """The `run.finished` event of a run (see `agentflow.store._events`)."""
        return run_finished_ops(self.seals, run_id=run_id, tenant=tenant or "", workflow=workflow, status=status,
                                error=error, now=now)  # fmt: skip

    @staticmethod
    def wake_op(run_id: str) -> Op:
        """Make a waiting run runnable now (a signal arrived, a child finished, cancel).

        The statement matches the run's row whatever its status, so it always takes the row's
        lock: on PostgreSQL, a wake-up that raced a park then waits for the park to commit and
        sees the run waiting (`WHERE status = 'waiting'` would skip the row, as it was running
        when the statement began, and the wake-up would be lost)."""
        return (
            "UPDATE af_runs SET wake_at = CASE WHEN status = 'waiting' THEN 0 ELSE wake_at END WHERE id = ?",
            (run_id,),
            False,
        )

    def park_blockers_sql(
        self, run_id: str, signal_names: Sequence[str], child_ids: Sequence[str], *, check_cancel: bool = True
    ) -> tuple[str, tuple[Any, ...]]:
        """A query returning a row when the run must not park: an event it waits for is in."""
        # A cancel request blocks parking only until it has been delivered to the workflow.
        parts = ["SELECT 1 FROM af_runs WHERE id = ? AND cancel_requested = 1"]
        params: list[Any] = [run_id]
        if not check_cancel:
            parts, params = ["SELECT 1 FROM af_runs WHERE 1 = 0"], []
        if signal_names:
            marks = ",".join("?" * len(signal_names))
            parts.append(f"SELECT 1 FROM af_signals WHERE run_id = ? AND consumed_seq IS NULL AND name IN ({marks})")
            params += [run_id, *signal_names]
        if child_ids:
            marks = ",".join("?" * len(child_ids))
            parts.append(f"SELECT 1 FROM af_runs WHERE id IN ({marks}) AND status IN {TERMINAL_SQL}")
            params += list(child_ids)
        return " UNION ALL ".join(parts), tuple(params)

    # -- signals ---------------------------------------------------------------------------
    def send_signal(self, run_id: str, name: str, payload: str, now: float) -> None:
        run = self.get_run(run_id)
        if run.terminal:
            raise RunStateError(
                f"run {run_id} is {run.status}; signal {name!r} cannot be delivered to a finished run",
                run_id=run_id,
                tenant=run.tenant,
            )
        self.backend.write(self.signal_ops(run_id, name, payload, now), run_id=run_id)

    def signal_ops(self, run_id: str, name: str, payload: str, now: float) -> list[Op]:
        """The writes that deliver a signal (to add to another transaction, e.g. an approval's)."""
        insert = "INSERT INTO af_signals (run_id, name, payload, created_at) VALUES (?, ?, ?, ?)"
        clean = self.redaction.json(payload) or payload
        clean = self.seals.seal(clean, self.tenant_of(run_id), "af_signals.payload", run_id, name) or clean
        return [(insert, (run_id, name, clean, now), False), self.wake_op(run_id)]

    def next_signal(self, run_id: str, name: str) -> tuple[int, str] | None:
        rows = self.backend.query(
            "SELECT id, payload FROM af_signals WHERE run_id = ? AND name = ? AND consumed_seq IS NULL "
            "ORDER BY id LIMIT 1",
            (run_id, name),
        )
        if not rows:
            return None
        return rows[0][0], self.seals.open(rows[0][1], self.tenant_of(run_id), "af_signals.payload", run_id, name) or ""

    @staticmethod
    def consume_signal_op(signal_id: int, seq: int) -> Op:
        return (
            "UPDATE af_signals SET consumed_seq = ? WHERE id = ? AND consumed_seq IS NULL",
            (seq, signal_id),
            True,
        )

    # -- cancellation ----------------------------------------------------------------------
    def request_cancel(self, run_id: str, now: float) -> RunRecord:
        run = self.get_run(run_id)
        if run.terminal:
            return run
        if run.status == "pending" and not self.load_steps(run_id):
            # Never started: nothing to compensate, cancel it outright (unless a worker just
            # claimed it, which the status condition catches).
            cancel: Op = (
                "UPDATE af_runs SET status = 'cancelled', cancel_requested = 1, completed_at = ?, "
                "updated_at = ?, error = ? WHERE id = ? AND status = 'pending'",
                (now, now, self.seals.seal(_NEVER_STARTED, run.tenant, "af_runs.error", run_id), run_id),
                False,
            )
            # A parent waiting for this child must learn it ended (no lost wake-up).
            wake = [self.wake_op(run.parent_id)] if run.parent_id else []
            self._end(run, cancel, wake, "cancelled", _NEVER_STARTED, now)
        self.backend.write(
            [
                ("UPDATE af_runs SET cancel_requested = 1 WHERE id = ?", (run_id,), False),
                self.wake_op(run_id),
            ],
            run_id=run_id,
        )
        return self.get_run(run_id)

    # -- workers and claims ----------------------------------------------------------------
    def register_worker(
        self, worker_id: str, *, workflows: Mapping[str, str] | None = None, lease_ttl: float | None = None
    ) -> None:
        """Record a starting worker, the workflows it serves (name -> code fingerprint) and its
        lease TTL: what `agentflow doctor` judges its runs and its heartbeat by."""
        now = self.backend.db_time()
        pid = os.getpid()
        served = json.dumps(dict(workflows), sort_keys=True) if workflows is not None else None
        self.backend.write(
            [
                (
                    "INSERT INTO af_workers (id, host, pid, pid_start, started_at, heartbeat_at, dead, workflows, "
                    "lease_ttl) VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?)",
                    (worker_id, socket.gethostname(), pid, process_start_time(pid), now, now, served, lease_ttl),
                    False,
                )
            ]
        )

    def heartbeat(self, worker_id: str) -> list[str]:
        """Renew this worker's lease; return the ids of its runs that have a cancel request."""
        # The time is taken when the write commits, not before waiting for the lock: a heartbeat
        # that queued behind a long transaction must not land already stale.
        now = self.backend.now_sql
        self.backend.write([(f"UPDATE af_workers SET heartbeat_at = {now} WHERE id = ?", (worker_id,), False)])
        rows = self.backend.query(
            "SELECT id FROM af_runs WHERE owner = ? AND status = 'running' AND cancel_requested = 1",
            (worker_id,),
        )
        return [r[0] for r in rows]

    def stop_worker(self, worker_id: str) -> None:
        self.backend.write([("UPDATE af_workers SET dead = 1 WHERE id = ?", (worker_id,), False)])
        # Runs it still owned become claimable at once (they are `running` with a dead owner).

    def reap_dead_workers(self, worker_id: str) -> int:
        """Mark as dead the workers of this host whose process is gone: detected at once."""
        rows = self.backend.query(
            "SELECT id, pid, pid_start FROM af_workers WHERE host = ? AND dead = 0 AND id != ?",
            (socket.gethostname(), worker_id),
        )
        dead = [r[0] for r in rows if not pid_alive(r[1], r[2])]
        if dead:
            marks = ",".join("?" * len(dead))
            self.backend.write([(f"UPDATE af_workers SET dead = 1 WHERE id IN ({marks})", tuple(dead), False)])
        return len(dead)

    def claim(
        self, worker_id: str, *, now: float, lease_ttl: float, limit: int,
        root_id: str | None = None, workflows: Sequence[str] = (),
    ) -> list[tuple[str, int, bool]]:  # fmt: skip
        """Claim up to `limit` runnable runs; return (run_id, new epoch, was_running).

        `was_running` marks a takeover from a dead owner (recovery). A run is runnable when it is
        pending, waiting with a due wake-up (`now`, the workflow clock), or running under an owner
        that is dead or whose heartbeat is older than `lease_ttl` (the database's real time)."""
        return self.backend.claim(
            worker_id, now=now, lease_ttl=lease_ttl, limit=limit, root_id=root_id, workflows=workflows
        )

    def fail_run(self, run_id: str, epoch: int, message: str, now: float) -> None:
        """End a run as failed from outside its workflow (an engine bug), if still ours."""
        plain = json.dumps({"type": "InternalError", "message": self.redaction.text(message)})
        error = self.seals.seal(plain, self.tenant_of(run_id), "af_runs.error", run_id) or plain
        fail: Op = (
            "UPDATE af_runs SET status = 'failed', error = ?, owner = NULL, completed_at = ?, "
            "updated_at = ? WHERE id = ? AND epoch = ? AND status = 'running'",
            (error, now, now, run_id, epoch),
            False,
        )
        withdraw = withdraw_ops(run_id, now, "the run failed (internal error) before a decision")
        self._end(self.get_run(run_id), fail, withdraw, "failed", plain, now)

    def _end(self, run: RunRecord, end: Op, then: list[Op], status: str, error: str, now: float) -> None:
        """`end` (a conditional update that ends `run`), then `then`, in one transaction; the run's
        `run.finished` event only when `end` ended it."""

        def body(conn: Any) -> None:
            ended = conn.execute(end[0], end[1]).rowcount
            finished = self.finished_ops(run.id, run.tenant, run.workflow, status, error, now) if ended else []
            for sql, params, _ in [*then, *finished]:
                conn.execute(sql, params)

        self.backend.transact(body, what=f"writing run {run.id}", locks=(f"run:{run.id}",))

    def release(self, run_id: str, epoch: int) -> None:
        """Give a run back (worker shutting down, store busy): it becomes pending again."""
        self.backend.write(
            [
                (
                    "UPDATE af_runs SET status = 'pending', owner = NULL WHERE id = ? AND epoch = ? "
                    "AND status = 'running'",
                    (run_id, epoch),
                    False,
                )
            ],
            run_id=run_id,
        )

    @staticmethod
    def _scope(root_id: str | None, workflows: Sequence[str]) -> tuple[str, tuple[Any, ...]]:
        sql, params = "", []
        if root_id is not None:
            sql += " AND root_id = ?"
            params.append(root_id)
        if workflows:
            sql += f" AND workflow IN ({','.join('?' * len(workflows))})"
            params.extend(workflows)
        return sql, tuple(params)

    def next_wake_at(self, root_id: str | None = None, workflows: Sequence[str] = ()) -> float | None:
        """The earliest timer of waiting runs (of this tree, of these workflows)."""
        scope, params = self._scope(root_id, workflows)
        rows = self.backend.query(
            f"SELECT min(wake_at) FROM af_runs WHERE status = 'waiting' AND wake_at IS NOT NULL{scope}", params
        )
        return rows[0][0] if rows else None

    def any_active(self, root_id: str | None = None, workflows: Sequence[str] = ()) -> bool:
        """Whether any run (of this tree, of these workflows) is pending or running.

        Scoped to the workflows a worker serves: a pending run nobody here can drive must not
        keep a time-skipping clock from moving."""
        scope, params = self._scope(root_id, workflows)
        return bool(
            self.backend.query(f"SELECT 1 FROM af_runs WHERE status IN ('pending', 'running'){scope} LIMIT 1", params)
        )
