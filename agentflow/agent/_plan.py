"""Plan-and-execute mode: a recorded structured plan, each step carried out and recorded, a
recorded re-plan when a step fails.

    planning call (the model submits a `Plan` through the `submit_plan` tool; recorded)
      -> the plan itself, a `plan` step of the history (what the trace shows)
      -> for each plan step: a short ReAct stretch on that step (at most `step_turns` model
         calls), in the run's one conversation, recorded like any model/tool call
      -> a step that fails (a tool error, a denial or rejection, no result within `step_turns`)
         -> a recorded re-plan from what is done so far, at most `max_replans` times
      -> a final answer call over the step results

Every decision above is derived from recorded steps, so a resumed run replays the plan and the
finished steps without calling anything and continues at the first unfinished plan step.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Protocol

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import BaseTool, StructuredTool
from pydantic import ValidationError

from agentflow.agent._outcome import Ended, Outcome, Plan, PlanStep, PlanStepRecord, RunState, ToolCallRecord
from agentflow.engine import Activity, RetryPolicy, WorkflowContext
from agentflow.errors import BudgetExceeded
from agentflow.llm import canonical_json


class PlanningAgent(Protocol):
    """What plan mode needs of the agent (`agentflow.agent.Agent`)."""

    instructions: str
    _tools: list[BaseTool]  # its tools, providers expanded
    max_turns: int
    max_replans: int
    step_turns: int

    def outcome(self, ctx: WorkflowContext, state: RunState, status: Any, **fields: Any) -> Outcome: ...

    def version(self, ctx: WorkflowContext, state: RunState) -> int: ...

    async def ask(
        self, ctx: WorkflowContext, messages: list[BaseMessage], tools: Sequence[BaseTool], state: RunState
    ) -> AIMessage: ...

    async def react(
        self, ctx: WorkflowContext, messages: list[BaseMessage], state: RunState, limit: int | None = None
    ) -> Ended: ...


SUBMIT_PLAN = "submit_plan"
PLAN_ATTEMPTS = 2  # a planning call that yields no valid plan gets one corrective retry
_FAILED = ("error", "denied", "rejected")

# The requests the loop adds to the conversation. Offline models (the runbook model) key on
# these prefixes, so they are part of the contract, not just wording.
PLANNER_PROMPT = (
    "Before acting, make a plan: call submit_plan once with the ordered steps that carry out the "
    "task, each with its goal and the main tool it will use. Do not call any other tool now: the "
    "steps are carried out one at a time afterwards."
)
STEP_PREFIX = "Plan step"
REPLAN_PREFIX = "A plan step"
FINAL_REQUEST = "Every step of the plan is done. Give the final answer to the task."


def _not_run(**_: Any) -> str:  # the plan is read from the call's arguments; nothing runs
    return "plan received"


def plan_tool() -> BaseTool:
    """The `submit_plan` tool the planning call answers with (schema: `Plan`)."""
    return StructuredTool.from_function(
        func=_not_run,
        name=SUBMIT_PLAN,
        description="Submit the plan: the ordered steps that carry out the task.",
        args_schema=Plan,
    )


async def run_plan(agent: PlanningAgent, ctx: WorkflowContext, task: str, state: RunState) -> Outcome:
    """Plan, execute step by step, re-plan on failure; return the run's typed outcome.

    One conversation carries the whole run (task, plan, each step's calls and results), so every
    step sees what the steps before it found; its messages are stored once each (content
    addressed), so a long plan does not grow the store quadratically."""
    messages: list[BaseMessage] = [SystemMessage(agent.instructions), HumanMessage(task)]
    done: list[PlanStepRecord] = []
    replans = 0

    def end(status: str, **fields: Any) -> Outcome:
        return agent.outcome(ctx, state, status, plan=done, replans=replans, **fields)

    try:
        plan = await _make_plan(agent, ctx, messages, state, PLANNER_PROMPT, version=1)
        while plan is not None:
            failure = await _execute(agent, ctx, messages, state, plan, done, version=replans + 1)
            if isinstance(failure, Ended):  # out of turns or budget inside a step
                return end(failure.status, detail=failure.detail)
            if failure is None:
                if state.turns >= agent.max_turns:
                    return end("max_turns", detail="every plan step is done but no model call is left to answer")
                return end("answered", answer=await _final_answer(agent, ctx, messages, state))
            if replans >= agent.max_replans:
                return end(
                    "failed",
                    detail=f"step {failure.index} ({failure.goal}) failed after {replans} re-plans: {failure.result}",
                )
            replans += 1
            plan = await _make_plan(agent, ctx, messages, state, _replan_request(failure), version=replans + 1)
    except BudgetExceeded as exc:
        return end("budget_exceeded", detail=exc.message)
    if state.turns >= agent.max_turns:
        return end("max_turns", detail="no valid plan within max_turns")
    return end("failed", detail="the model gave no valid plan")


async def _make_plan(
    agent: PlanningAgent,
    ctx: WorkflowContext,
    messages: list[BaseMessage],
    state: RunState,
    request: str,
    *,
    version: int,
) -> Plan | None:
    """One planning (or re-planning) call, retried once with the reason when it gives no valid
    plan; the plan is then recorded as a `plan` step. None when no valid plan came."""
    # (Runs recorded before the menu existed (agent version 1) replay without it.)
    listed = agent.version(ctx, state) >= 2
    messages.append(HumanMessage(f"{request}\n\n{tool_menu(agent._tools)}" if listed else request))
    for _ in range(PLAN_ATTEMPTS):
        if state.turns >= agent.max_turns:
            return None
        message = await agent.ask(ctx, messages, [plan_tool()], state)
        messages.append(message)
        plan, problem = _parse_plan(message, agent._tools)
        # Every tool call gets its answer: providers reject a conversation with an unanswered one.
        for call in message.tool_calls:
            reply = f"plan v{version} accepted" if plan is not None else f"not accepted: {problem}"
            messages.append(ToolMessage(reply, tool_call_id=call["id"] or "", name=call["name"]))
        if plan is not None:
            return await _record_plan(ctx, plan, version)
        messages.append(HumanMessage(f"[agentflow] no plan was received: {problem}. Call submit_plan once."))
    return None


def tool_menu(tools: Sequence[BaseTool]) -> str:
    """The tools a plan's steps can use, one line each: the planning call offers only
    `submit_plan`, and a model that never saw the others invents tools of its own."""
    lines = [f"- {t.name}: {_first_line(t.description)}" for t in tools]
    return "The tools the steps can use:\n" + ("\n".join(lines) if lines else "(none: the steps answer from the task)")


def _first_line(text: str, limit: int = 160) -> str:
    line = (text or "").strip().splitlines()[0] if (text or "").strip() else "(no description)"
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _parse_plan(message: AIMessage, tools: Sequence[BaseTool]) -> tuple[Plan | None, str]:
    wanted = [c for c in message.tool_calls if c["name"] == SUBMIT_PLAN]
    if not wanted:
        bad = [c.get("error") or "invalid arguments" for c in message.invalid_tool_calls]
        return None, f"the submit_plan call was invalid: {bad[0]}" if bad else "the reply did not call submit_plan"
    try:
        plan = Plan.model_validate(wanted[0]["args"])
    except ValidationError as exc:
        return None, f"the plan is invalid: {exc.errors(include_url=False)[0]['msg']}"
    known = {t.name for t in tools}
    unknown = sorted({s.tool for s in plan.steps if s.tool and s.tool not in known})
    if unknown:
        return None, f"the plan names unknown tools {unknown}; the tools are {sorted(known)}"
    return plan, ""


async def _record_plan(ctx: WorkflowContext, plan: Plan, version: int) -> Plan:
    """Record the plan as its own step, so a history (and a trace) shows every plan version."""

    async def keep() -> Plan:
        return plan

    step: Activity[[], Plan] = Activity(
        keep, name=f"plan-v{version}", retry=RetryPolicy(max_attempts=1), timeout=None, side_effect=False,
        reconcile=None, kind="plan",
    )  # fmt: skip
    return await ctx.run_step(step, request=canonical_json(plan.model_dump(mode="json")))


async def _execute(
    agent: PlanningAgent,
    ctx: WorkflowContext,
    messages: list[BaseMessage],
    state: RunState,
    plan: Plan,
    done: list[PlanStepRecord],
    *,
    version: int,
) -> PlanStepRecord | Ended | None:
    """Carry out the plan's steps in order. None when all are done; the failed step's record, or
    how the run ran out (turns, budget) otherwise."""
    for number, step in enumerate(plan.steps, 1):
        first = len(state.records)
        messages.append(HumanMessage(_step_request(number, version, step)))
        ended = await agent.react(ctx, messages, state, limit=agent.step_turns)
        if ended.status in ("budget_exceeded", "time_limit") or (
            ended.status == "max_turns" and state.turns >= agent.max_turns
        ):
            return ended
        problem = _step_problem(ended, state.records[first:])
        record = PlanStepRecord(
            index=len(done) + 1, goal=step.goal, plan_version=version,
            status="failed" if problem else "done", result=problem or (ended.answer or ""),
        )  # fmt: skip
        done.append(record)
        if problem:
            return record
    return None


def _step_problem(ended: Ended, calls: list[ToolCallRecord]) -> str:
    """Why a plan step failed ('' when it did not): no result, or a tool call that failed and
    was not later made good by a successful call of the same tool within the step."""
    if ended.status != "answered":
        return ended.detail or "no result"
    for i, call in enumerate(calls):
        if call.status in _FAILED and not any(c.name == call.name and c.status == "ok" for c in calls[i + 1 :]):
            return f"{call.name}: {call.result}"
    return ""


def _step_request(number: int, version: int, step: PlanStep) -> str:
    return (
        f"{STEP_PREFIX} {number} of plan v{version}: {step.goal}. Call the tools this step needs, then "
        "reply with its result in one or two sentences."
    )


def _replan_request(failure: PlanStepRecord) -> str:
    return (
        f"{REPLAN_PREFIX} {failure.index} ({failure.goal}) failed: {failure.result}. Call submit_plan with a new plan for what "
        "remains of the task; steps that are done are not repeated."
    )


async def _final_answer(
    agent: PlanningAgent, ctx: WorkflowContext, messages: list[BaseMessage], state: RunState
) -> str:
    messages.append(HumanMessage(FINAL_REQUEST))
    message = await agent.ask(ctx, messages, [], state)
    content = message.content
    return content if isinstance(content, str) else json.dumps(content)
