"""agentflow: durable workflows for LLM agents that act on real systems."""

from typing import TYPE_CHECKING, Any

from agentflow.engine import (
    Activity,
    ActivityInfo,
    App,
    Client,
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

if TYPE_CHECKING:
    from agentflow.agent import Agent, Budget, Outcome
    from agentflow.llm import tool

__version__ = "0.2.0"

# The agent layer and the tool decorator pull in langchain-core: loaded on first use, so
# `import agentflow` (and every `agentflow` command that needs no agent) stays fast.
_LAZY = {"Agent": "agentflow.agent", "Budget": "agentflow.agent", "Outcome": "agentflow.agent", "tool": "agentflow.llm"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'agentflow' has no attribute {name!r}")


__all__ = [
    "Activity",
    "ActivityError",
    "ActivityInfo",
    "Agent",
    "AgentflowError",
    "App",
    "Budget",
    "ChildWorkflowError",
    "Client",
    "CorruptRecordError",
    "NonDeterminismError",
    "Outcome",
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
    "tool",
]
