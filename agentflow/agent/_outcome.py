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
    #: skipped: not run, because a side-effecting call before it in the same reply did not succeed.
    status: Literal["ok", "error", "denied", "rejected", "invalid", "skipped"]
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
    status: Literal["done", "failed", "skipped"]
    result: str = ""


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on what one agent run may produce, so a runaway or hostile model cannot fill the
    store or hold a worker. Hitting one is recorded and told to the model, or ends the run with
    its own outcome; None lifts a limit.

    Args:
        max_response_chars: characters of one model answer kept (the rest cut, said so).
        max_tool_calls_per_turn: tool calls run from one answer (the rest refused as invalid).
        max_tool_output_chars: characters of one tool output recorded and shown to the model.
        max_run_seconds: engine-clock seconds the run may take, checked before each model call
            (the outcome is `time_limit`); off by default: a run that waits hours for a
            maintenance window or an approval is not a runaway.
    """

    max_response_chars: int | None = 100_000
    max_tool_calls_per_turn: int | None = 20
    max_tool_output_chars: int | None = 50_000
    max_run_seconds: float | None = None


class Outcome(BaseModel):
    """How an agent run ended: a typed outcome, returned (and recorded as the run's result).

    `failed` is a plan-and-execute run that could not make a valid plan, or whose steps kept
    failing after `max_replans` re-plans; cancellation and errors end the run itself."""

    status: Literal["answered", "max_turns", "budget_exceeded", "time_limit", "failed"]
    answer: str | None = None
    turns: int = 0
    tool_calls: list[ToolCallRecord] = Field(default_factory=list)
    usage: Usage = Field(default_factory=Usage)
    detail: str = ""
    plan: list[PlanStepRecord] = Field(default_factory=list)
    replans: int = 0
    #: Numbers of the answer found in no tool result (`Agent(check_numbers=True)`).
    unverified_numbers: list[str] = Field(default_factory=list)


#: The signal that wakes a run when an approval request is decided.
approval_signal = approval_signal_name


@dataclass
class RunState:
    """What one agent run has done so far (rebuilt identically when the run is replayed)."""

    turns: int = 0  # model calls made
    records: list[ToolCallRecord] = field(default_factory=list)  # every tool call, in order
    ran: list[ToolCallRecord] = field(default_factory=list)  # calls that ran, in finishing order
    started: float | None = None  # the run's start on the engine clock (recorded), when timed
    #: The agent loop's behaviour version the run was recorded with (`Agent.version`): a run
    #: recorded by older code replays the way that code ran it.
    version: int | None = None


@dataclass(frozen=True)
class Ended:
    """How one stretch of the ReAct loop ended."""

    status: Literal["answered", "max_turns", "budget_exceeded", "time_limit", "failed"]
    answer: str | None = None
    detail: str = ""
    unverified: tuple[str, ...] = ()
