"""`Host`: what workers and run executors need of the application they run (an `App`).

Typed as a protocol so the worker and the executor do not import `App` (which creates workers):
the engine's modules import one way.
"""

from __future__ import annotations

from typing import Any, Protocol

from agentflow.engine._clock import Clock
from agentflow.engine._defs import Activity, Workflow
from agentflow.store import EventStore, RunRecord


class Host(Protocol):
    """The registry, store, clock and timing settings a worker drives runs with."""

    @property
    def store(self) -> EventStore: ...

    clock: Clock
    lease_ttl: float
    inline_wait: float

    @property
    def workflow_names(self) -> list[str]: ...

    def workflow_named(self, name: str) -> Workflow[Any, Any]: ...

    def check_registered_workflow(self, wf: Workflow[Any, Any]) -> None: ...

    def check_registered_activity(self, act: Activity[Any, Any]) -> None: ...

    def decode_input(self, wf: Workflow[Any, Any], run: RunRecord) -> tuple[list[Any], dict[str, Any]]: ...
