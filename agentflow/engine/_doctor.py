"""`diagnose(store)`: what `agentflow doctor` and `GET /api/doctor` report about a store.

Each problem is a `Finding` with a severity, what is wrong in words, the run or approval it is
about (its full id), and the command that fixes it:

    kind                   severity        what
    schema_missing         error           no agentflow schema in the database
    schema_newer           error           a schema this agentflow does not know (a newer one wrote it)
    schema_behind          warning         a schema older than this agentflow's head
    lease_expired          error           a run `running` under a worker that is dead or silent past
                                           its lease, and no live worker serves its workflow
    no_worker              error           a run pending, or waiting with its wake-up due, and no live
                                           worker serves its workflow
    unregistered_workflow  error/warning   an unfinished run of a workflow no worker seen lately has
                                           registered (warning while it waits for something not due)
    approval_expired       error/warning   an approval request still open past its expiry (error while
                                           its run still waits on it: nothing has woken the run)
    code_mismatch          warning         live workers run different code of one workflow that has
                                           unfinished runs

Run times are the app's clock: the offset its workers declared in the store (what the CLI and
the server use), so "past expiry" here is what the served app decides. Worker liveness is the
store's real time, as claims judge it. Nothing is written and nothing is migrated.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from agentflow.engine._client import declared_offset
from agentflow.engine._clock import Clock, SystemClock
from agentflow.store import Checkup, EventStore, ExpiredApprovalRow, OpenRunRow, SchemaState, WorkerRow

#: Workers seen this recently (seconds) tell which workflows the deployment serves.
RECENT = 24 * 3600.0
#: At most this many runs (or requests) per check.
LIMIT = 200
WORKER_FIX = "agentflow worker --app MODULE:APP"
UPGRADE_FIX = "agentflow db upgrade"

Severity = Literal["error", "warning"]


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem: what is wrong, what it is about, and the command that fixes it."""

    kind: str
    severity: Severity
    message: str
    fix: str
    run_id: str | None = None
    approval_id: str | None = None
    tenant: str | None = None
    workflow: str | None = None
    #: When the problem began (the app's clock): the last sign of progress, or the expiry.
    since: float | None = None
    #: The runs a finding about a workflow concerns (code_mismatch).
    run_ids: tuple[str, ...] = ()

    def to_dict(self, now: float) -> dict[str, Any]:
        """JSON-ready: times in ISO-8601 (UTC), `for_s` the seconds since `since`."""
        return {
            "kind": self.kind, "severity": self.severity, "run_id": self.run_id, "approval_id": self.approval_id,
            "tenant": self.tenant, "workflow": self.workflow, "since": iso(self.since),
            "for_s": None if self.since is None else round(max(now - self.since, 0.0), 1),
            "run_ids": list(self.run_ids), "message": self.message, "fix": self.fix,
        }  # fmt: skip


@dataclass(frozen=True, slots=True)
class Diagnosis:
    """The findings about one store (one tenant's runs and approvals, or all of them)."""

    now: float
    tenant: str | None
    schema: SchemaState
    findings: tuple[Finding, ...]
    workers_live: int = 0
    workers_seen: int = 0
    recent: float = RECENT
    #: False when a check was skipped (the schema) or cut at its limit.
    complete: bool = True

    @property
    def healthy(self) -> bool:
        return not self.findings

    def count(self, severity: Severity) -> int:
        return sum(f.severity == severity for f in self.findings)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, times in ISO-8601 (UTC)."""
        return {
            "healthy": self.healthy, "now": iso(self.now), "tenant": self.tenant, "complete": self.complete,
            "schema": {"revision": self.schema.found, "head": self.schema.head, "status": self.schema.status},
            "workers": {"live": self.workers_live, "seen": self.workers_seen, "seen_within_s": self.recent},
            "errors": self.count("error"), "warnings": self.count("warning"),
            "findings": [f.to_dict(self.now) for f in self.findings],
        }  # fmt: skip


def diagnose(
    store: EventStore, *, tenant: str | None = None, clock: Clock | None = None, recent: float = RECENT,
    limit: int = LIMIT,
) -> Diagnosis:  # fmt: skip
    """Look for runs stuck without a live worker, approval requests past their expiry, runs of a
    workflow no worker registered, workers on different code, and a schema that is not current.

    Args:
        store: the store; open it with `migrate=False`, so a schema that is behind is reported
            rather than upgraded by the look.
        tenant: only this tenant's runs and approvals (schema and workers are the store's).
        clock: the app's clock (default: the system clock with the offset the store's workers
            declared).
        recent: workers seen within this many seconds say which workflows are served.
        limit: at most this many runs (or requests) per check.

    Raises:
        ConfigurationError: the SQLite file does not exist (looking does not create it).
        StoreError: the database cannot be read (unreachable, locked).
    """
    check = Checkup(store)
    schema = check.schema()
    found = _schema_findings(schema)
    if clock is None:
        clock = SystemClock(offset=declared_offset(store) if schema.has_settings else 0.0)
    now = clock.now()
    if not schema.readable:
        return Diagnosis(now, tenant, schema, tuple(found), complete=False)
    workers = check.workers(within=recent)
    look = _Look(check, now, tenant, limit, recent, workers)
    found += look.runs()
    found += look.approvals()
    found += look.mixed_code()
    found.sort(key=lambda f: (f.severity != "error", f.since or 0.0))
    live = sum(w.live for w in workers)
    return Diagnosis(now, tenant, schema, tuple(found), live, len(workers), recent, look.complete)


def _schema_findings(schema: SchemaState) -> list[Finding]:
    found, head = schema.found, schema.head
    if schema.status == "missing":
        return [Finding("schema_missing", "error", f"the database has no agentflow schema (this agentflow's is "
                        f"revision {head}): nothing was checked", UPGRADE_FIX)]  # fmt: skip
    if schema.status == "newer":
        return [Finding("schema_newer", "error", f"the schema is at revision {found}, which this agentflow does not "
                        f"know (it knows up to {head}): a newer agentflow wrote it; nothing else was checked",
                        "pip install -U agentflow")]  # fmt: skip
    if schema.status == "behind":
        return [Finding("schema_behind", "warning", f"the schema is at revision {found}, behind this agentflow's "
                        f"{head}: upgrade it once every worker runs this version (an older one refuses a newer "
                        "schema); checks that need the newer tables were skipped", UPGRADE_FIX)]  # fmt: skip
    return []


@dataclass
class _Look:
    """The checks of one diagnosis, on one store, at one `now`."""

    check: Checkup
    now: float
    tenant: str | None
    limit: int
    recent: float
    workers: list[WorkerRow]
    complete: bool = True
    by_id: dict[str, WorkerRow] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.by_id = {w.id: w for w in self.workers}
        self.complete = self.check.schema().status == "current"

    def _cut(self, rows: Sequence[Any]) -> None:
        if len(rows) >= self.limit:
            self.complete = False

    # -- runs nobody drives ------------------------------------------------------------------
    def runs(self) -> list[Finding]:
        live = [w for w in self.workers if w.live]
        served, known = _served(live), _served(self.workers)
        unknown: list[OpenRunRow] = []
        if self.workers and known is not None:
            unknown = self.check.open_runs(tenant=self.tenant, limit=self.limit, exclude=sorted(known))
        stuck: list[OpenRunRow] = []
        if served is not None:
            stuck = self.check.runs_without_driver(
                now=self.now, live=[w.id for w in live], served=sorted(served), tenant=self.tenant, limit=self.limit
            )
        self._cut(unknown)
        self._cut(stuck)
        told = {r.id for r in unknown}
        found = [self._unregistered(r, sorted(known or ())) for r in unknown]
        return found + [self._stuck(r, bool(live)) for r in stuck if r.id not in told]

    def _unregistered(self, run: OpenRunRow, known: list[str]) -> Finding:
        runnable = run.status != "waiting" or (run.wake_at is not None and run.wake_at <= self.now)
        message = (
            f"{run.status} for {age(self.now - run.updated_at)}, and no worker seen in the last {age(self.recent)} "
            f"registered its workflow {run.workflow!r} (they serve: {', '.join(known) or 'nothing'}): nothing can "
            f"drive or replay it; start a worker whose App registers {run.workflow!r}"
        )
        return Finding("unregistered_workflow", "error" if runnable else "warning", message, WORKER_FIX, run_id=run.id,
                       tenant=run.tenant, workflow=run.workflow, since=run.updated_at)  # fmt: skip

    def _stuck(self, run: OpenRunRow, any_live: bool) -> Finding:
        nobody = f"no live worker serves {run.workflow!r}" if any_live else "no worker is live"
        if run.status == "running":
            since = self.now - run.owner_silent_for if run.owner_silent_for is not None else run.updated_at
            message = f"running, but its worker {self._owner(run)}, and {nobody} to take it over"
            kind = "lease_expired"
        elif run.status == "pending":
            since, message, kind = run.updated_at, f"pending, and {nobody}", "no_worker"
        else:
            since = max(run.wake_at or 0.0, run.updated_at)
            message, kind = f"waiting, its wake-up is due, and {nobody}", "no_worker"
        message += f": stuck for {age(self.now - since)}"
        return Finding(kind, "error", message, WORKER_FIX, run_id=run.id, tenant=run.tenant, workflow=run.workflow,
                       since=since)  # fmt: skip

    def _owner(self, run: OpenRunRow) -> str:
        owner = self.by_id.get(run.owner or "")
        if owner is None:
            return f"{run.owner} is gone" if run.owner else "is unknown"
        if owner.dead:
            return f"{owner.id} stopped"
        if owner.gone:
            return f"{owner.id} is dead (its process on {owner.host} is gone)"
        return f"{owner.id} has been silent for {age(owner.silent_for)} (its lease is {age(owner.lease_ttl)})"

    # -- approvals past their expiry ----------------------------------------------------------
    def approvals(self) -> list[Finding]:
        rows = self.check.expired_approvals(now=self.now, tenant=self.tenant, limit=self.limit)
        self._cut(rows)
        return [self._expired(a) for a in rows]

    def _expired(self, a: ExpiredApprovalRow) -> Finding:
        what = f"{a.status} request for {a.tool} expired {age(self.now - a.expires_at)} ago"
        if a.run_status == "waiting" and _waits_for(a.run_waiting_on, a.id):
            message = f"{what}, and its run still waits on it: no worker has woken the run to expire (or escalate) it"
            severity: Severity = "error"
            fix = WORKER_FIX
        else:
            message = (
                f"{what}, but nothing waits for it (its run is {a.run_status or 'gone'}): it can no longer be decided"
            )
            severity, fix = "warning", f"agentflow approvals show {a.id}"
        return Finding("approval_expired", severity, message, fix, run_id=a.run_id, approval_id=a.id,
                       tenant=a.tenant, since=a.expires_at)  # fmt: skip

    # -- one workflow, several versions ------------------------------------------------------
    def mixed_code(self) -> list[Finding]:
        versions: dict[str, dict[str, list[str]]] = {}
        for w in (w for w in self.workers if w.live):
            for name, fingerprint in (w.workflows or {}).items():
                versions.setdefault(name, {}).setdefault(fingerprint, []).append(w.id)
        found = []
        for name, by_code in sorted(versions.items()):
            if len(by_code) < 2:
                continue
            runs = self.check.open_runs(tenant=self.tenant, limit=self.limit, workflows=[name])
            self._cut(runs)
            if runs:
                found.append(self._mixed(name, by_code, runs))
        return found

    def _mixed(self, name: str, by_code: dict[str, list[str]], runs: list[OpenRunRow]) -> Finding:
        where = "; ".join(f"{code} on {', '.join(ids)}" for code, ids in sorted(by_code.items()))
        message = (
            f"live workers run {len(by_code)} versions of workflow {name!r} ({where}): its {len(runs)} unfinished "
            "run(s) may be replayed by code that did not record them; restart its workers on one version"
        )
        return Finding("code_mismatch", "warning", message, WORKER_FIX, workflow=name, since=min(r.updated_at for r in runs),
                       run_ids=tuple(r.id for r in runs))  # fmt: skip


def _served(workers: Iterable[WorkerRow]) -> set[str] | None:
    """The workflows these workers registered; None when one of them did not say (it may serve any)."""
    names: set[str] = set()
    for w in workers:
        if w.workflows is None:
            return None
        names |= set(w.workflows)
    return names


def _waits_for(waiting_on: str | None, approval_id: str) -> bool:
    """Whether a parked run waits for this request's decision: the signal the approvals service
    sends (`agentflow.approvals.approval_signal_name`, which the engine cannot import)."""
    try:
        parked = json.loads(waiting_on or "{}")
    except ValueError:
        return False
    return isinstance(parked, dict) and f"approval:{approval_id}" in (parked.get("signals") or [])


def iso(when: float | None) -> str | None:
    """A time (seconds since the epoch) in ISO-8601, UTC."""
    return None if when is None else datetime.fromtimestamp(when, tz=UTC).isoformat(timespec="seconds")


def age(seconds: float) -> str:
    """A duration in words: `42 s`, `5 min`, `3 h 20 min`, `4 d`."""
    s = max(int(seconds), 0)
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    if s < 2 * 86400:
        minutes = s % 3600 // 60
        return f"{s // 3600} h" + (f" {minutes} min" if minutes else "")
    return f"{s // 86400} d"
