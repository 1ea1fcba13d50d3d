"""agentflow: durable workflows for LLM agents that act on real systems."""

from agentflow.engine import (
    Activity,
    ActivityInfo,
    App,
    RetryPolicy,
    RunHandle,
    RunInfo,
    Worker,
    Workflow,
    WorkflowContext,
    current_activity,
)
from agentflow.errors import (
    ActivityError,
    AgentflowError,
    ChildWorkflowError,
    CorruptRecordError,
    NonDeterminismError,
    RunFailedError,
    StoreBusyError,
    WaitTimeout,
)

__version__ = "0.1.0"

__all__ = [
    "Activity",
    "ActivityError",
    "ActivityInfo",
    "AgentflowError",
    "App",
    "ChildWorkflowError",
    "CorruptRecordError",
    "NonDeterminismError",
    "RetryPolicy",
    "RunFailedError",
    "RunHandle",
    "RunInfo",
    "StoreBusyError",
    "WaitTimeout",
    "Worker",
    "Workflow",
    "WorkflowContext",
    "__version__",
    "current_activity",
]
