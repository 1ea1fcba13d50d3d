"""Durable execution: workflows, activities, the run executor and workers, and the client that
starts and reads runs. Imports nothing above the store."""

from agentflow.engine._app import App
from agentflow.engine._client import Client, RunHandle, RunInfo
from agentflow.engine._clock import Clock, SystemClock, TestClock
from agentflow.engine._context import WorkflowContext
from agentflow.engine._crash import configure as configure_crash_point
from agentflow.engine._crash import crash_point
from agentflow.engine._defs import Activity, ActivityInfo, RetryPolicy, Workflow, current_activity
from agentflow.engine._doctor import Diagnosis, Finding, diagnose
from agentflow.engine._threads import ToolThreads, run_blocking, tool_threads
from agentflow.engine._worker import Worker

__all__ = [
    "Activity",
    "ActivityInfo",
    "App",
    "Client",
    "Clock",
    "Diagnosis",
    "Finding",
    "RetryPolicy",
    "RunHandle",
    "RunInfo",
    "SystemClock",
    "TestClock",
    "ToolThreads",
    "Worker",
    "Workflow",
    "WorkflowContext",
    "configure_crash_point",
    "crash_point",
    "current_activity",
    "diagnose",
    "run_blocking",
    "tool_threads",
]
