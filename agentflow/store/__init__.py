"""The event store: SQLModel tables, the SQLite and PostgreSQL backends, the payload codec, migrations.

The SQLModel table classes are imported lazily: the engine's hot path never needs them, and
importing SQLModel costs ~0.4 s of start-up.
"""

from typing import Any

from agentflow.store._constants import SCHEMA_REVISION
from agentflow.store._store import EventStore, RunRecord, StepRecord

_MODELS = ("Blob", "Run", "Signal", "Step", "StepAttempt", "Worker")

__all__ = [
    "SCHEMA_REVISION",
    "Blob",
    "EventStore",
    "Run",
    "RunRecord",
    "Signal",
    "Step",
    "StepAttempt",
    "StepRecord",
    "Worker",
]


def __getattr__(name: str) -> Any:
    if name in _MODELS:
        from agentflow.store import _models

        return getattr(_models, name)
    raise AttributeError(f"module 'agentflow.store' has no attribute {name!r}")
