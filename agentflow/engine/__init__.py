"""Durable execution: workflows, activities, the run executor and workers."""

from agentflow.engine._app import App, RunHandle, RunInfo
from agentflow.engine._clock import Clock, SystemClock, TestClock
from agentflow.engine._context import WorkflowContext
from agentflow.engine._defs import Activity, ActivityInfo, RetryPolicy, Workflow, current_activity
from agentflow.engine._worker import Worker

__all__ = [
    "Activity",
    "ActivityInfo",
    "App",
    "Clock",
    "RetryPolicy",
    "RunHandle",
    "RunInfo",
    "SystemClock",
    "TestClock",
    "Worker",
    "Workflow",
    "WorkflowContext",
    "current_activity",
]
