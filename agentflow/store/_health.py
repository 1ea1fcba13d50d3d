"""The store's side of `agentflow doctor`: read-only looks at the schema, the workers and what waits
on them. The judgement (what is a problem, how bad, what fixes it) is `agentflow.engine.diagnose`'s;
here are the facts, read the way the store itself reads them when it claims runs.

`Checkup` never writes and never migrates: it reads a store opened with `migrate=False`, and reads
only the tables and columns the database's schema revision has, so a database that is behind is
diagnosed as it is instead of being upgraded by the look.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from agentflow.errors import ConfigurationError
from agentflow.store._constants import SCHEMA_REVISION, TERMINAL_SQL
from agentflow.store._schema import KNOWN_REVISIONS
from agentflow.store._store import EventStore, pid_alive
from agentflow.store._urls import redact_url

#: `App(lease_ttl=...)`'s default: the lease of a worker that did not record its own (before 0007).
DEFAULT_LEASE_TTL = 10.0
# The revisions that added what the checks read: approval requests, the app's settings (its
# clock offset), and what each worker serves (`af_workers.workflows`, `lease_ttl`).
APPROVALS, SETTINGS, WORKER_WORKFLOWS = "0004", "0006", "0007"

SchemaStatus = Literal["current", "behind", "missing", "newer"]


@dataclass(frozen=True, slots=True)
class SchemaState:
    """The database's schema revision against this agentflow's head."""

    found: str | None
    head: str = SCHEMA_REVISION

    @property
    def status(self) -> SchemaStatus:
        if self.found is None:
            return "missing"
        if self.found == self.head:
            return "current"
        return "behind" if self.found in KNOWN_REVISIONS else "newer"

    @property
    def readable(self) -> bool:
        """Whether this agentflow can read the database's records (it knows the revision)."""
        return self.found in KNOWN_REVISIONS

    def has(self, revision: str) -> bool:
        """Whether the schema includes `revision`'s tables and columns."""
        if self.found not in KNOWN_REVISIONS:
            return False
        return KNOWN_REVISIONS.index(self.found) >= KNOWN_REVISIONS.index(revision)

    @property
    def has_approvals(self) -> bool:
        return self.has(APPROVALS)

    @property
    def has_settings(self) -> bool:
        return self.has(SETTINGS)


@dataclass(frozen=True, slots=True)
class WorkerRow:
    """A worker seen lately, and whether it is live: not stopped, its process not gone (checked
    by pid on this host), and its last heartbeat within its lease."""

    id: str
    host: str
    pid: int
    dead: bool
    live: bool
    #: Its process is gone (seen by pid on this host, where the check runs).
    gone: bool
    #: Seconds since its last heartbeat (the database's real time).
    silent_for: float
    lease_ttl: float
    #: The workflows it registered, by name, with a fingerprint of their code; None when the
    #: worker did not say (started by an agentflow older than schema 0007).
    workflows: dict[str, str] | None


@dataclass(frozen=True, slots=True)
class OpenRunRow:
    """A run that has not ended, with what tells how long it has been stuck."""

    id: str
    workflow: str
    tenant: str
    status: str
    owner: str | None
    updated_at: float
    wake_at: float | None
    waiting_on: str | None
    #: Seconds since its owner's last heartbeat (None: no owner, or the owner's row is gone).
    owner_silent_for: float | None


@dataclass(frozen=True, slots=True)
class ExpiredApprovalRow:
    """An approval request still open after its expiry, and the state of its run."""

    id: str
    run_id: str
    tenant: str
    tool: str
    status: str
    expires_at: float
    run_status: str | None  # None: the run is gone
    run_waiting_on: str | None


_OPEN_RUN = (
    "SELECT r.id, r.workflow, r.tenant, r.status, r.owner, r.updated_at, r.wake_at, r.waiting_on, "
    "{now} - w.heartbeat_at FROM af_runs r LEFT JOIN af_workers w ON w.id = r.owner "
    f"WHERE r.status NOT IN {TERMINAL_SQL}"
)


class Checkup:
    """Read-only looks at one store for `agentflow doctor` (see the module docstring).

    Args:
        store: the store, preferably opened with `migrate=False` (a check must not change what
            it checks).
    """

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self.backend = store.backend
        self._schema: SchemaState | None = None

    def schema(self) -> SchemaState:
        """The schema revision of the database (read once).

        Raises:
            ConfigurationError: the SQLite file does not exist (it is not created by looking).
        """
        if self._schema is None:
            self._schema = SchemaState(self._revision())
        return self._schema

    def _revision(self) -> str | None:
        path = self.backend.path
        if path and not os.path.exists(path):
            raise ConfigurationError(
                f"the database {redact_url(self.store.url)} does not exist (no file {os.path.abspath(path)}): "
                "check --db and $AGENTFLOW_DB; `agentflow db upgrade` creates a new one"
            )
        return self.backend.schema_revision()

    def workers(self, *, within: float) -> list[WorkerRow]:
        """The workers whose last heartbeat is at most `within` seconds old, newest first."""
        extra = ", workflows, lease_ttl" if self.schema().has(WORKER_WORKFLOWS) else ", NULL, NULL"
        rows = self.backend.query(
            f"SELECT id, host, pid, pid_start, dead, {self.backend.now_sql} - heartbeat_at{extra} FROM af_workers "
            f"WHERE heartbeat_at >= {self.backend.now_sql} - ? ORDER BY heartbeat_at DESC, id",
            (within,),
        )
        here = socket.gethostname()
        found = []
        for wid, host, pid, start, dead, silent, workflows, ttl in rows:
            lease = float(ttl) if ttl is not None else DEFAULT_LEASE_TTL
            # A process gone on this host is dead at once, as the workers' own reaping sees it.
            gone = not dead and host == here and not pid_alive(pid, start)
            live = not dead and not gone and silent <= lease
            names = json.loads(workflows) if workflows else None
            found.append(WorkerRow(wid, host, pid, bool(dead), live, gone, float(silent), lease, names))
        return found

    def runs_without_driver(
        self, *, now: float, live: Sequence[str], served: Sequence[str], tenant: str | None, limit: int
    ) -> list[OpenRunRow]:
        """Runs that a worker should be driving but no live one can: running under an owner that
        is not live, pending, or waiting with a wake-up due at `now` (the app's clock), whose
        workflow is not in `served` (what live workers registered), oldest first."""
        orphaned = f"(r.owner IS NULL OR r.owner NOT IN ({_marks(live)}))" if live else "1 = 1"
        sql = _OPEN_RUN.format(now=self.backend.now_sql) + (
            " AND (r.status = 'pending' OR (r.status = 'waiting' AND r.wake_at <= ?)"
            f" OR (r.status = 'running' AND {orphaned}))"
        )
        return self._open_runs(sql, [now, *live], exclude=served, tenant=tenant, limit=limit)

    def open_runs(
        self, *, tenant: str | None, limit: int, workflows: Sequence[str] | None = None, exclude: Sequence[str] = ()
    ) -> list[OpenRunRow]:
        """Runs that have not ended (of these workflows, or of any but `exclude`), oldest first."""
        sql, params = _OPEN_RUN.format(now=self.backend.now_sql), []
        if workflows is not None:
            sql += f" AND r.workflow IN ({_marks(workflows) or 'NULL'})"
            params += list(workflows)
        return self._open_runs(sql, params, exclude=exclude, tenant=tenant, limit=limit)

    def expired_approvals(self, *, now: float, tenant: str | None, limit: int) -> list[ExpiredApprovalRow]:
        """Approval requests still open (pending or escalated) whose expiry is at or before `now`
        (the app's clock), with their run's status and what it waits on; oldest expiry first
        (none before the schema has approvals)."""
        if not self.schema().has_approvals:
            return []
        sql = (
            "SELECT a.id, a.run_id, a.tenant, a.tool, a.status, a.expires_at, r.status, r.waiting_on "
            "FROM af_approvals a LEFT JOIN af_runs r ON r.id = a.run_id "
            "WHERE a.status IN ('pending', 'escalated') AND a.expires_at IS NOT NULL AND a.expires_at <= ?"
        )
        params: list[Any] = [now]
        if tenant is not None:
            sql += " AND a.tenant = ?"
            params.append(tenant)
        rows = self.backend.query(sql + " ORDER BY a.expires_at, a.id LIMIT ?", (*params, limit))
        return [ExpiredApprovalRow(*r) for r in rows]

    def _open_runs(
        self, sql: str, params: list[Any], *, exclude: Sequence[str], tenant: str | None, limit: int
    ) -> list[OpenRunRow]:
        if exclude:
            sql += f" AND r.workflow NOT IN ({_marks(exclude)})"
            params = [*params, *exclude]
        if tenant is not None:
            sql += " AND r.tenant = ?"
            params = [*params, tenant]
        rows = self.backend.query(sql + " ORDER BY r.updated_at, r.id LIMIT ?", (*params, limit))
        return [OpenRunRow(*r) for r in rows]


def _marks(values: Sequence[str]) -> str:
    return ", ".join("?" * len(values))
