"""Runbook phases: structure that lets a small model finish a job it would otherwise wander off.

A small local model, given every tool and the task, tends to read one KPI series and answer in
prose, or to skip a step (stage, then monitor, never apply). With `Agent(phases=[...])` the run
follows the runbook's phases in order, in one conversation:

    for each phase (investigate -> diagnose -> propose -> stage -> apply -> verify -> report):
        the model is told the phase's goal and offered only the phase's tools, with
        tool_choice="required" (where the model takes it): it must call one of them;
        a phase the runbook allows to be skipped (`required=False`, e.g. "apply" on a false
        alarm) also offers `skip_phase(reason)`;
        the phase ends once one of its tools has a final outcome (it ran, or policy or a
        person refused it), or it was skipped; `turns` model calls at most, else the run
        ends `failed` naming the phase
    then one last model call without tools: the final answer (numbers checked when the agent
    has `check_numbers`).

With `Agent(phase_targets=f)`, the phases run once per target `f(task)` names (each site of
"CS-103 and CS-104 drop calls"), in one conversation, each phase request naming its target.

Every call still goes through the agent's gate (policy, approval, window) and the turn rules
(side effects in order). Each phase's fate is in the outcome's `plan` (status done, skipped
or failed), and everything is recorded, so a resumed run replays the finished phases.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import BaseTool, StructuredTool
from pydantic import BaseModel, Field

from agentflow.agent._outcome import Ended, Outcome, PlanStepRecord, RunState, ToolCallRecord
from agentflow.engine import WorkflowContext
from agentflow.errors import BudgetExceeded, ConfigurationError
from agentflow.llm import canonical_json

__all__ = ["SKIP_PHASE", "Phase", "run_phases"]

SKIP_PHASE = "skip_phase"
FINAL_PHASE_REQUEST = (
    "[agentflow] Every phase is done. Give the final answer in plain text: what you found, what you "
    "changed (or why nothing), and the KPIs after, quoting the numbers the tools returned."
)
#: A call with one of these outcomes ends its phase: it ran, or policy or a person decided.
_FINAL = ("ok", "denied", "rejected")


@dataclass(frozen=True)
class Phase:
    """One phase of a runbook.

    Args:
        name: short name, e.g. "investigate" (recorded in the outcome's `plan`).
        goal: what the model must do in it, in a sentence.
        tools: the names of the agent's tools offered in this phase.
        required: False: the model may skip the phase with `skip_phase(reason)` (a change
            phase when the diagnosis found nothing to change). A function of the run's tool
            calls so far decides when the phase starts (required once a diagnosis found a
            fault: a small model may not skip the fix it was sent for).
        turns: model calls allowed in the phase.
        when: a function of the run's tool calls so far: the phase runs only when it is true
            (a rollback phase only when the checks after a change failed), else it is recorded
            `skipped` without a model call.
        output: a pydantic model the phase's result must fit (e.g. a diagnosis: site, cause,
            evidence): once a tool of the phase has run, the model records it by calling
            `record_<name>` (schema-checked, sent back once); its JSON is the phase's result in
            the outcome's `plan`, and a phase without a valid one fails.
    """

    name: str
    goal: str
    tools: tuple[str, ...]
    required: bool | Callable[[Sequence[ToolCallRecord]], bool] = True
    turns: int = 3
    when: Callable[[Sequence[ToolCallRecord]], bool] | None = None
    output: type[BaseModel] | None = None


class _Skip(BaseModel):
    reason: str = Field(min_length=1, description="Why this phase is not needed, in one sentence.")


def _not_run(**_: Any) -> str:  # read from the call's arguments; nothing runs
    return "phase skipped"


def skip_tool() -> BaseTool:
    return StructuredTool.from_function(
        func=_not_run, name=SKIP_PHASE, args_schema=_Skip,
        description="Skip the current phase because it is not needed (say why).",
    )  # fmt: skip


class PhasedAgent(Protocol):
    """What phases need of the agent (`agentflow.agent.Agent`)."""

    instructions: str
    _tools: list[BaseTool]  # its tools, providers expanded
    max_turns: int
    phase_targets: Callable[[str], Sequence[str]] | None

    def outcome(self, ctx: WorkflowContext, state: RunState, status: Any, **fields: Any) -> Outcome: ...

    async def ask(
        self,
        ctx: WorkflowContext,
        messages: list[BaseMessage],
        tools: Sequence[BaseTool],
        state: RunState,
        tool_choice: Literal["required"] | None = None,
    ) -> AIMessage: ...

    async def run_calls(
        self, ctx: WorkflowContext, message: AIMessage, state: RunState
    ) -> list[tuple[ToolCallRecord, BaseMessage]]: ...

    async def answer(self, ctx: WorkflowContext, messages: list[BaseMessage], state: RunState) -> Ended: ...


def check_phases(phases: Sequence[Phase], tools: Sequence[BaseTool]) -> None:
    """Refuse, when the Agent is built, phases that name tools the agent does not have."""
    known = {t.name for t in tools}
    for phase in phases:
        unknown = sorted(set(phase.tools) - known)
        if unknown or not phase.tools:
            raise ConfigurationError(
                f"phase {phase.name!r} names tools {unknown or '(none)'} the agent does not have; "
                f"its tools are {sorted(known)}"
            )
        if phase.turns < 1:
            raise ConfigurationError(f"phase {phase.name!r}: turns must be at least 1")


async def run_phases(agent: PhasedAgent, ctx: WorkflowContext, task: str, phases: Sequence[Phase],
                     state: RunState) -> Outcome:  # fmt: skip
    """Carry out `phases` in order (once per target the task names, when the agent has
    `phase_targets`), then ask for the final answer; the run's typed outcome."""
    messages: list[BaseMessage] = [SystemMessage(agent.instructions), HumanMessage(task)]
    by_name = {t.name: t for t in agent._tools}
    done: list[PlanStepRecord] = []
    found = list(dict.fromkeys(agent.phase_targets(task))) if agent.phase_targets is not None else []
    targets: list[str | None] = [*found] or [None]

    def end(status: str, **fields: Any) -> Outcome:
        return agent.outcome(ctx, state, status, plan=done, **fields)

    try:
        for number, target in enumerate(targets, 1):
            where = f"Target {target} ({number} of {len(targets)}): " if target is not None else ""
            for index, phase in enumerate(phases, 1):
                if phase.when is not None and not phase.when(state.records):
                    done.append(PlanStepRecord(index=len(done) + 1, goal=f"{phase.name} {target}" if target else phase.name,
                                               plan_version=0, status="skipped", result="not needed (its condition)"))  # fmt: skip
                    continue
                needed = phase.required(state.records) if callable(phase.required) else phase.required
                offered = [by_name[n] for n in phase.tools] + ([] if needed else [skip_tool()])
                record = await _phase(agent, ctx, messages, state, phase, (index, len(phases), where), offered)
                if target is not None:
                    record.goal = f"{phase.name} {target}"
                record.index = len(done) + 1
                done.append(record)
                if record.status == "failed":
                    return end("failed", detail=f"phase {record.goal}: {record.result}")
        ended = await agent.answer(ctx, [*messages, HumanMessage(FINAL_PHASE_REQUEST)], state)
    except BudgetExceeded as exc:
        return end("budget_exceeded", detail=exc.message)
    if ended.status == "max_turns" and state.turns >= agent.max_turns:
        return end("max_turns", detail="every phase is done but no model call is left to answer")
    return end(ended.status, answer=ended.answer, detail=ended.detail, unverified_numbers=list(ended.unverified))


async def _phase(
    agent: PhasedAgent,
    ctx: WorkflowContext,
    messages: list[BaseMessage],
    state: RunState,
    phase: Phase,
    place: tuple[int, int, str],
    offered: list[BaseTool],
) -> PlanStepRecord:
    index, count, where = place
    names = ", ".join(phase.tools)
    skippable = any(t.name == SKIP_PHASE for t in offered)
    how = f"If this phase is not needed, call {SKIP_PHASE} with why." if skippable else "Call one of them now."
    messages.append(
        HumanMessage(f"[agentflow] {where}Phase {index} of {count}: {phase.name}. {phase.goal} Tools: {names}. {how}")
    )

    def record(status: Literal["done", "failed", "skipped"], result: str) -> PlanStepRecord:
        return PlanStepRecord(index=index, goal=phase.name, plan_version=0, status=status, result=result)

    for _ in range(phase.turns):
        if state.turns >= agent.max_turns:
            return record("failed", f"max_turns reached before the phase ended ({agent.max_turns} model calls)")
        message = await agent.ask(ctx, messages, offered, state, tool_choice="required")
        messages.append(message)
        skips = [c for c in message.tool_calls if c["name"] == SKIP_PHASE]
        calls = message.model_copy(update={"tool_calls": [c for c in message.tool_calls if c["name"] != SKIP_PHASE]})
        results = await agent.run_calls(ctx, calls, state)
        for call in skips:  # every call gets its answer: providers reject an unanswered one
            messages.append(ToolMessage("phase skipped", tool_call_id=call["id"] or "", name=SKIP_PHASE))
        messages.extend(m for _, m in results)
        final = [r for r, _ in results if r.name in phase.tools and r.status in _FINAL]
        if final:
            summary = "; ".join(f"{r.name}: {r.status}" for r in final)
            if phase.output is None:
                return record("done", summary)
            found = await _output(agent, ctx, messages, state, phase)
            return (
                record("done", found)
                if found is not None
                else record(
                    "failed",
                    f"{summary}; no valid {phase.output.__name__} was recorded in {OUTPUT_ATTEMPTS} model calls",
                )
            )
        if skips:
            return record("skipped", str(skips[0]["args"].get("reason", "")))
        if not message.tool_calls and not message.invalid_tool_calls:
            messages.append(HumanMessage(f"[agentflow] This phase needs a tool call ({names}), not text. {how}"))
    return record("failed", f"no call of {names} succeeded in {phase.turns} model calls")


OUTPUT_ATTEMPTS = 2


async def _output(
    agent: PhasedAgent, ctx: WorkflowContext, messages: list[BaseMessage], state: RunState, phase: Phase
) -> str | None:
    """The phase's structured result: the model must call `record_<phase>` (the output's schema
    as the tool's arguments: a server that constrains tool calls to their schema decodes it
    constrained; fenced JSON is read with the agent's recovery), validated by the schema; the
    call is sent back once with the reason when it does not fit. Its JSON, or None."""
    if phase.output is None:
        return None
    tool = StructuredTool.from_function(
        func=_not_run, name=f"record_{phase.name}", args_schema=phase.output,
        description=f"Record the result of the {phase.name} phase.",
    )  # fmt: skip
    messages.append(HumanMessage(f"[agentflow] Record the result of the {phase.name} phase: call {tool.name}."))
    for _ in range(OUTPUT_ATTEMPTS):
        if state.turns >= agent.max_turns:
            return None
        message = await agent.ask(ctx, messages, [tool], state, tool_choice="required")
        messages.append(message)
        for call in message.tool_calls:  # screened by chat(): the schema accepted these arguments
            messages.append(ToolMessage("recorded", tool_call_id=call["id"] or "", name=tool.name))
        if message.tool_calls:
            return canonical_json(phase.output.model_validate(message.tool_calls[0]["args"]).model_dump(mode="json"))
        problem = "; ".join(c.get("error") or "invalid" for c in message.invalid_tool_calls) or "no call was made"
        messages.append(HumanMessage(f"[agentflow] {tool.name} was not recorded: {problem}. Call {tool.name}."))
    return None
