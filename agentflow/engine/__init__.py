"""Durable execution: workflows, activities, the run executor and workers, and the client that
starts and reads runs. Imports nothing above the store."""

from typing import TYPE_CHECKING, Any

from agentflow.engine._app import App
from agentflow.engine._client import Client, RunHandle, RunInfo
from agentflow.engine._clock import Clock, SystemClock, TestClock
from agentflow.engine._context import WorkflowContext
from agentflow.engine._crash import configure as configure_crash_point
from agentflow.engine._crash import crash_point
from agentflow.engine._defs import Activity, ActivityInfo, RetryPolicy, Workflow, current_activity
from agentflow.engine._observe import Observer, add_observer, remove_observer
from agentflow.engine._threads import ToolThreads, run_blocking, tool_threads
from agentflow.engine._worker import Worker

if TYPE_CHECKING:
    from agentflow.engine._doctor import Diagnosis, Finding, diagnose
    from agentflow.engine._metrics import Metrics, readiness

# `agentflow doctor`'s judgement (and the store's health reads under it) is loaded on first use:
# an app that only runs workflows never needs it, and every process start pays for what it imports.
_DOCTOR = ("Diagnosis", "Finding", "diagnose")
# Metrics and probes likewise: loaded by a process that serves them.
_METRICS = ("Metrics", "readiness")

__all__ = [
    "Activity",
    "ActivityInfo",
    "App",
    "Client",
    "Clock",
    "Diagnosis",
    "Finding",
    "Metrics",
    "Observer",
    "RetryPolicy",
    "RunHandle",
    "RunInfo",
    "SystemClock",
    "TestClock",
    "ToolThreads",
    "Worker",
    "Workflow",
    "WorkflowContext",
    "add_observer",
    "configure_crash_point",
    "crash_point",
    "current_activity",
    "diagnose",
    "readiness",
    "remove_observer",
    "run_blocking",
    "tool_threads",
]


def __getattr__(name: str) -> Any:
    if name in _DOCTOR:
        from agentflow.engine import _doctor

        return getattr(_doctor, name)
    if name in _METRICS:
        from agentflow.engine import _metrics

        return getattr(_metrics, name)
    raise AttributeError(f"module 'agentflow.engine' has no attribute {name!r}")
