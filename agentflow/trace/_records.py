"""What a trace is made of: the run's rows, read from the store once, then kept in memory."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from agentflow.approvals import ApprovalRequest, Approvals, AuditEntry
from agentflow.engine import App, Client
from agentflow.errors import ConfigurationError
from agentflow.store import EventStore, RunRecord, StepRecord

# SQLite's bound-parameter limit is 32766 in current builds but 999 in old ones: stay under it.
_CHUNK = 900


@dataclass(frozen=True, slots=True)
class Attempt:
    """A failed attempt of a step (the step's final outcome is in its `StepRecord`)."""

    seq: int
    attempt: int
    error: str
    started_at: float
    finished_at: float
    retry_at: float | None


@dataclass(slots=True)
class Recorded:
    """Everything recorded about one run, as plain records."""

    run: RunRecord
    steps: list[StepRecord]
    attempts: list[Attempt]
    approvals: list[ApprovalRequest]
    audit: list[AuditEntry]
    blobs: dict[str, str] = field(default_factory=dict)

    @property
    def run_id(self) -> str:
        return self.run.id

    def step(self, seq: int) -> StepRecord | None:
        return next((s for s in self.steps if s.seq == seq), None)


def open_client(source: App | Client | str) -> tuple[Client, bool]:
    """The Client to read with, and whether we opened it (and so may close it)."""
    if isinstance(source, App):
        return source.client, False
    if isinstance(source, Client):
        return source, False
    if not isinstance(source, str):
        raise ConfigurationError(f"expected an App, a Client or a database URL, not {type(source).__name__}")
    return Client(source), True


def load_recorded(client: Client, run_id: str) -> Recorded:
    """Read one run: its row, steps, failed attempts, approvals, audit and message blobs."""
    store = client.store
    run = store.get_run(run_id)
    steps = store.load_steps(run_id)
    attempts = [Attempt(*row) for row in store.load_attempts(run_id)]
    approvals = Approvals(store, client.clock)
    requests = approvals.list(tenant=run.tenant, run_id=run_id, status=None)
    requests.sort(key=lambda a: (a.created_at, a.id))
    audit = approvals.audit(run_id=run_id)
    recorded = Recorded(run=run, steps=steps, attempts=attempts, approvals=requests, audit=audit)
    recorded.blobs = load_blobs(store, blob_refs(steps))
    return recorded


def load_blobs(store: EventStore, refs: Iterable[str]) -> dict[str, str]:
    """The payloads of these content hashes, in chunks the driver accepts."""
    unique = list(dict.fromkeys(refs))
    found: dict[str, str] = {}
    for lo in range(0, len(unique), _CHUNK):
        found.update(store.get_blobs(unique[lo : lo + _CHUNK]))
    return found


def blob_refs(steps: Iterable[StepRecord]) -> list[str]:
    """The message hashes model-call steps refer to (requests and responses)."""
    refs: list[str] = []
    for step in steps:
        if step.kind != "llm":
            continue
        refs.extend(request_of(step).get("messages", []))
        digest = response_of(step).get("message")
        if isinstance(digest, str):
            refs.append(digest)
    return refs


def loads(text: str | None) -> Any:
    """Decode a recorded JSON column; text that is not JSON is returned as it is."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def request_of(step: StepRecord) -> dict[str, Any]:
    """A model-call step's recorded request: {model, messages, tools, after?, max_tokens?}."""
    value = loads(step.args)
    return value if isinstance(value, dict) else {}


def response_of(step: StepRecord) -> dict[str, Any]:
    """A completed model-call step's recorded response: usage, finish reason, message hash."""
    value = loads(step.result) if step.status == "completed" else None
    return value if isinstance(value, dict) else {}


def error_of(step: StepRecord | Attempt) -> str | None:
    """`Type: message` of a recorded error, or None."""
    if not step.error:
        return None
    value = loads(step.error)
    return describe_error(value) if isinstance(value, dict) else str(value)


def describe_error(error: dict[str, Any]) -> str:
    """`Type: message` of a recorded error's dict (a step's, a run's)."""
    return f"{error.get('type')}: {error.get('message')}"
