"""`Agent`: a ReAct loop whose every model call, policy decision, approval and tool call is a
recorded step of the workflow it runs in.

    model call (recorded) -> each tool call screened against its schema (invalid: the error goes
    back to the model) -> policy decision (recorded) -> approval wait when required (a durable
    signal wait: no thread held) -> tool step with its idempotency key -> result -> next call

A resumed run replays the recorded steps and continues at the first unfinished one: no model is
re-called for a finished step and no side-effecting tool runs twice.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import BaseTool
from pydantic import BaseModel, Field

from agentflow.agent._chat import Budget, chat, spent
from agentflow.engine import Activity, RetryPolicy, WorkflowContext
from agentflow.errors import ActivityError, BudgetExceeded, ConfigurationError, WaitTimeout
from agentflow.llm._messages import canonical_json
from agentflow.llm._pricing import PriceTable
from agentflow.llm._tools import ToolFacts, tool_facts, validate_tool_args
from agentflow.llm._types import ChatModel, Usage

Effect = Literal["allow", "deny", "require_approval"]
TOOL_RETRY = RetryPolicy(max_attempts=3, initial_interval=1.0, backoff=2.0, max_interval=30.0)


class Decision(BaseModel):
    """A policy decision about one tool call, recorded before the call runs."""

    effect: Effect
    rule: str
    reason: str = ""


class ToolCallRecord(BaseModel):
    """What happened to one tool call the model asked for."""

    id: str
    name: str
    args: dict[str, Any]
    decision: Decision | None = None
    approved_by: str | None = None
    status: Literal["ok", "error", "denied", "rejected", "invalid"]
    result: str = ""


class Outcome(BaseModel):
    """How an agent run ended: a typed outcome, returned (and recorded as the run's result)."""

    status: Literal["answered", "max_turns", "budget_exceeded"]
    answer: str | None = None
    turns: int = 0
    tool_calls: list[ToolCallRecord] = Field(default_factory=list)
    usage: Usage = Field(default_factory=Usage)
    detail: str = ""


Policy = Callable[[WorkflowContext, BaseTool, ToolFacts, dict[str, Any]], Decision]


def default_policy(ctx: WorkflowContext, tool: BaseTool, facts: ToolFacts, args: dict[str, Any]) -> Decision:
    """Read-only tools run; side-effecting ones (and undeclared ones) need an approval."""
    if facts.read_only:
        return Decision(effect="allow", rule="default:read-only")
    return Decision(effect="require_approval", rule="default:side-effect", reason=f"{tool.name} changes the network")


def approval_signal(call_id: str) -> str:
    """The signal that approves or rejects a staged tool call: payload {"approved": bool, "by": ..., "comment": ...}."""
    return f"approval:{call_id}"


@dataclass
class Agent:
    """An LLM agent whose loop runs durably inside a workflow.

    Args:
        name: the agent's name (recorded).
        model: the chat model.
        tools: langchain-core tools (declare their facts with `agentflow.llm.tool`).
        instructions: the system prompt.
        max_turns: model calls at most.
        budget: token / USD limits of the run, enforced before each model call.
        policy: decides allow / deny / require_approval per tool call (default: read-only tools
            run, side-effecting ones need approval).
        approval_timeout: seconds to wait for an approval before the call is treated as rejected.
    """

    name: str
    model: ChatModel
    tools: Sequence[BaseTool]
    instructions: str = "You are a careful NOC copilot. Use the tools; never guess values."
    max_turns: int = 12
    budget: Budget | None = None
    policy: Policy = default_policy
    approval_timeout: float | None = None
    prices: PriceTable | None = None

    def __post_init__(self) -> None:
        names = [t.name for t in self.tools]
        if len(set(names)) != len(names):
            raise ConfigurationError(f"agent {self.name}: tool names must be unique, got {names}")
        self._by_name = {t.name: t for t in self.tools}

    async def run(self, ctx: WorkflowContext, task: str) -> Outcome:
        """Run the loop in the workflow `ctx` belongs to; return its typed outcome.

        If the run is cancelled or fails after tools that declare a compensating tool ran
        (`agentflow.llm.tool(..., compensate="rollback_change")`), the compensations run in
        reverse order, each a recorded tool step, before the cancellation or error goes on."""
        ran: list[ToolCallRecord] = []  # calls that ran, in the order they finished
        try:
            return await self._loop(ctx, task, ran)
        except (asyncio.CancelledError, Exception):
            await self._compensate(ctx, ran)
            raise

    async def _compensate(self, ctx: WorkflowContext, records: list[ToolCallRecord]) -> None:
        """Undo the compensable calls that ran, newest first. The compensating tool's arguments
        are taken by name from the original call's arguments and result."""
        for record in reversed(records):
            facts = tool_facts(self._by_name[record.name]) if record.name in self._by_name else None
            if record.status != "ok" or facts is None or not facts.compensate:
                continue
            undo = self._by_name.get(facts.compensate)
            if undo is None:
                continue
            try:
                result = json.loads(record.result)
            except ValueError:
                result = {}
            known = {**record.args, **(result if isinstance(result, dict) else {})}
            wanted = (
                set(undo.tool_call_schema.model_fields) if hasattr(undo.tool_call_schema, "model_fields") else set()
            )
            args = {k: v for k, v in known.items() if k in wanted}
            if validate_tool_args(undo, args) is not None:
                continue  # cannot be derived: nothing is run with arguments that fail the schema
            try:
                await self._execute(ctx, undo, tool_facts(undo), f"compensate:{record.id}", args)
            except ActivityError:
                continue  # recorded as failed; the other compensations still run

    async def _loop(self, ctx: WorkflowContext, task: str, ran: list[ToolCallRecord]) -> Outcome:
        messages: list[BaseMessage] = [SystemMessage(self.instructions), HumanMessage(task)]
        records: list[ToolCallRecord] = []
        for turn in range(1, self.max_turns + 1):
            try:
                response = await chat(
                    ctx, self.model, messages, list(self.tools), budget=self.budget, prices=self.prices
                )
            except BudgetExceeded as exc:
                return Outcome(
                    status="budget_exceeded", turns=turn - 1, tool_calls=records, usage=spent(ctx), detail=exc.message
                )
            message = response.message
            messages.append(message)
            feedback = [self._invalid(call) for call in message.invalid_tool_calls]
            records.extend(r for r, _ in feedback)
            if not message.tool_calls and not feedback:
                return Outcome(
                    status="answered", answer=_text(message), turns=turn, tool_calls=records, usage=spent(ctx)
                )
            # Parallel tool calls: each takes its step numbers in call order (deterministic).
            done = await asyncio.gather(
                *(self._call(ctx, c["id"] or "", c["name"], c["args"], ran) for c in message.tool_calls)
            )
            records.extend(r for r, _ in done)
            messages.extend(m for _, m in [*done, *feedback])
        return Outcome(
            status="max_turns",
            turns=self.max_turns,
            tool_calls=records,
            usage=spent(ctx),
            detail=f"no answer after {self.max_turns} model calls",
        )

    # -- one tool call ---------------------------------------------------------------------
    def _invalid(self, call: Any) -> tuple[ToolCallRecord, BaseMessage]:
        # Providers drop invalid calls from the assistant message, so a ToolMessage answering
        # one would be orphaned (OpenAI rejects that): the error goes back as a user turn.
        text = (
            f"[agentflow] your call of tool {call.get('name')!r} was not run: "
            f"{call.get('error') or 'invalid tool call'}. Fix the call and try again."
        )
        record = ToolCallRecord(
            id=call.get("id") or "", name=call.get("name") or "", args={}, status="invalid", result=text
        )
        return record, HumanMessage(text)

    async def _call(
        self, ctx: WorkflowContext, call_id: str, name: str, args: dict[str, Any], ran: list[ToolCallRecord]
    ) -> tuple[ToolCallRecord, ToolMessage]:
        tool = self._by_name[name]  # screened by chat(): known tool, valid arguments
        facts = tool_facts(tool)
        decision = await self._decide(ctx, tool, facts, call_id, args)
        record = ToolCallRecord(id=call_id, name=name, args=args, decision=decision, status="ok")
        if decision.effect == "deny":
            record.status, record.result = "denied", f"denied by policy ({decision.rule}): {decision.reason}"
            return record, ToolMessage(content=record.result, tool_call_id=call_id, name=name, status="error")
        if decision.effect == "require_approval":
            verdict = await self._approval(ctx, call_id)
            record.approved_by = verdict.get("by")
            if not verdict.get("approved"):
                record.status = "rejected"
                record.result = (
                    f"rejected by {verdict.get('by') or 'nobody'}: {verdict.get('comment') or 'no reason given'}"
                )
                return record, ToolMessage(content=record.result, tool_call_id=call_id, name=name, status="error")
        try:
            record.result = await self._execute(ctx, tool, facts, call_id, args)
        except ActivityError as exc:
            record.status, record.result = "error", f"error: {exc.cause_type}: {exc.cause_message}"
            return record, ToolMessage(content=record.result, tool_call_id=call_id, name=name, status="error")
        ran.append(record)
        return record, ToolMessage(content=record.result, tool_call_id=call_id, name=name)

    async def _decide(
        self, ctx: WorkflowContext, tool: BaseTool, facts: ToolFacts, call_id: str, args: dict[str, Any]
    ) -> Decision:
        policy = self.policy

        async def decide() -> Decision:
            return policy(ctx, tool, facts, args)

        step: Activity[[], Decision] = Activity(
            decide, name=tool.name, retry=RetryPolicy(max_attempts=1), timeout=None, side_effect=False,
            reconcile=None, kind="policy",
        )  # fmt: skip
        return await ctx.run_step(step, request=canonical_json({"tool": tool.name, "call": call_id, "args": args}))

    async def _approval(self, ctx: WorkflowContext, call_id: str) -> dict[str, Any]:
        try:
            verdict = await ctx.wait_signal(approval_signal(call_id), timeout=self.approval_timeout)
        except WaitTimeout:
            return {"approved": False, "by": None, "comment": "the approval expired"}
        return verdict if isinstance(verdict, dict) else {"approved": bool(verdict)}

    async def _execute(
        self, ctx: WorkflowContext, tool: BaseTool, facts: ToolFacts, call_id: str, args: dict[str, Any]
    ) -> str:
        async def invoke() -> str:
            out = await tool.ainvoke(args)
            return out if isinstance(out, str) else json.dumps(out, default=str)

        step: Activity[[], str] = Activity(
            invoke, name=tool.name, retry=TOOL_RETRY, timeout=facts.timeout,
            side_effect=not facts.read_only, reconcile=facts.reconcile, kind="tool",
        )  # fmt: skip
        return await ctx.run_step(step, request=canonical_json({"tool": tool.name, "call": call_id, "args": args}))


def _text(message: AIMessage) -> str:
    return message.content if isinstance(message.content, str) else json.dumps(message.content)
