"""What an agent run produces and carries: tool call records, plans, the typed outcome, and the
state one run builds up (rebuilt identically on replay)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, Field

from agentflow.approvals import approval_signal_name
from agentflow.llm import Usage
from agentflow.policy import PolicyDecision

#: A policy decision, as recorded before a tool call runs.
Decision = PolicyDecision


class ToolCallRecord(BaseModel):
    """What happened to one tool call the model asked for."""

    id: str
    name: str
    args: dict[str, Any]
    decision: Decision | None = None
    approved_by: str | None = None
    status: Literal["ok", "error", "denied", "rejected", "invalid"]
    result: str = ""


class PlanStep(BaseModel):
    """One step of a plan, as the planning model wrote it."""

    goal: str = Field(min_length=1, description="What this step achieves, e.g. 'read the KPIs of CS-101'.")
    tool: str | None = Field(default=None, description="The main tool the step uses, if any.")


class Plan(BaseModel):
    """A plan: the steps to carry out the task, in order."""

    steps: list[PlanStep] = Field(min_length=1, max_length=30, description="The steps, in order.")
    rationale: str = Field(default="", description="Why this plan, in one or two sentences.")


class PlanStepRecord(BaseModel):
    """What became of one plan step (plan-and-execute mode)."""

    index: int
    goal: str
    plan_version: int
    status: Literal["done", "failed"]
    result: str = ""


class Outcome(BaseModel):
    """How an agent run ended: a typed outcome, returned (and recorded as the run's result).

    `failed` is a plan-and-execute run that could not make a valid plan, or whose steps kept
    failing after `max_replans` re-plans; cancellation and errors end the run itself."""

    status: Literal["answered", "max_turns", "budget_exceeded", "failed"]
    answer: str | None = None
    turns: int = 0
    tool_calls: list[ToolCallRecord] = Field(default_factory=list)
    usage: Usage = Field(default_factory=Usage)
    detail: str = ""
    plan: list[PlanStepRecord] = Field(default_factory=list)
    replans: int = 0


#: The signal that wakes a run when an approval request is decided.
approval_signal = approval_signal_name


@dataclass
class RunState:
    """What one agent run has done so far (rebuilt identically when the run is replayed)."""

    turns: int = 0  # model calls made
    records: list[ToolCallRecord] = field(default_factory=list)  # every tool call, in order
    ran: list[ToolCallRecord] = field(default_factory=list)  # calls that ran, in finishing order


@dataclass(frozen=True)
class Ended:
    """How one stretch of the ReAct loop ended."""

    status: Literal["answered", "max_turns", "budget_exceeded"]
    answer: str | None = None
    detail: str = ""
