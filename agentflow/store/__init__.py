"""The event store: SQLModel tables, the SQLite backend, the payload codec, migrations."""

from agentflow.store._models import SCHEMA_REVISION, Run, Signal, Step, StepAttempt, Worker
from agentflow.store._store import EventStore, RunRecord, StepRecord

__all__ = [
    "SCHEMA_REVISION",
    "EventStore",
    "Run",
    "RunRecord",
    "Signal",
    "Step",
    "StepAttempt",
    "StepRecord",
    "Worker",
]
