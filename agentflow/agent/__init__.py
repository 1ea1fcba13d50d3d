"""The agent layer: model calls as recorded, budgeted workflow steps."""

from agentflow.agent._agent import Agent, agent_policies, agent_workflow
from agentflow.agent._chat import MODEL_RETRY, Budget, chat, spent
from agentflow.agent._context import fit_messages
from agentflow.agent._gate import Gated, Policies, authorize, default_policy
from agentflow.agent._outcome import (
    Decision,
    Limits,
    Outcome,
    Plan,
    PlanStep,
    PlanStepRecord,
    ToolCallRecord,
    approval_signal,
)
from agentflow.agent._phases import Phase
from agentflow.agent._usage import UsageSummary, usage

__all__ = [
    "MODEL_RETRY",
    "Agent",
    "Budget",
    "Decision",
    "Gated",
    "Limits",
    "Outcome",
    "Phase",
    "Plan",
    "PlanStep",
    "PlanStepRecord",
    "Policies",
    "ToolCallRecord",
    "UsageSummary",
    "agent_policies",
    "agent_workflow",
    "approval_signal",
    "authorize",
    "chat",
    "default_policy",
    "fit_messages",
    "spent",
    "usage",
]
