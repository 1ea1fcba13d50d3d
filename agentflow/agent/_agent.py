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
import inspect
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import BaseTool, StructuredTool
from langchain_core.utils.function_calling import convert_to_openai_tool

from agentflow.agent._chat import Budget, chat, recorded_facts, spent
from agentflow.agent._context import fit_messages
from agentflow.agent._gate import Policies, default_policy, gate, resolve_policies
from agentflow.agent._numbers import unverified_numbers
from agentflow.agent._outcome import Ended, Limits, Outcome, RunState, ToolCallRecord
from agentflow.agent._phases import Phase, check_phases, run_phases
from agentflow.agent._plan import SUBMIT_PLAN, plan_tool, run_plan
from agentflow.engine import Activity, App, Client, RetryPolicy, RunHandle, Workflow, WorkflowContext, run_blocking
from agentflow.errors import (
    ActivityError,
    BudgetExceeded,
    ConfigurationError,
    NotRegisteredError,
)
from agentflow.llm import (
    ChatModel,
    PriceTable,
    ToolFacts,
    ToolProvider,
    as_chat_model,
    canonical_json,
    expand_tools,
    malformed_tool_call,
    tool_facts,
    validate_tool_args,
)
from agentflow.policy import PolicyPack

#: The agent loop's behaviour, recorded with each model request (`Agent.version`). 2: one
#: reply's side effects run in order; malformed call text is sent back; the planning request
#: lists the tools; the invalid-call note's wording; requests carry the context window.
AGENT_VERSION = 2

TOOL_RETRY = RetryPolicy(max_attempts=3, initial_interval=1.0, backoff=2.0, max_interval=30.0)


@dataclass
class Agent:
    """An LLM agent whose loop runs durably inside a workflow.

    Args:
        name: the agent's name (recorded; `agent:<name>` is its workflow when started on its own).
        model: the chat model: an agentflow `ChatModel` (`OpenAIChat`, ...) or any langchain-core
            `BaseChatModel`, wrapped automatically (`agentflow.llm.as_chat_model`). A model
            without tool calling (no `bind_tools`) is refused here, unless the agent has no tools
            (react mode, `tools=[]`): plan mode always offers the model its plan tool.
        tools: langchain-core tools (declare their facts with `agentflow.llm.tool`), and tool
            providers, each standing for the tools it offers (`agentflow.mcp.server(...)`).
        instructions: the system prompt.
        max_turns: model calls at most, over the whole run (plans and re-plans included).
        budget: token / USD limits of the run, enforced before each model call.
        policies: a policy pack (a `PolicyPack` or the path of its YAML file) or a policy
            function deciding each tool call (default: read-only tools run, side-effecting ones
            need an approval by any operator of the run's tenant).
        prices: the price table used for the cost of each call.
        mode: "react" (one loop of model call -> tools) or "plan" (plan-and-execute: a recorded
            structured plan, each step carried out and recorded, a recorded re-plan on failure).
        max_replans: plan mode: re-plans allowed before the run ends `failed`.
        step_turns: plan mode: model calls allowed for one plan step.
        limits: bounds on answer size, tool calls per answer, tool output size and run time.
        context_tokens: the context window the conversation is kept inside (default: the
            model's `context_window`; a local OpenAI-compatible server's is read from it). Older
            tool outputs are elided, then the longest message is cut in its middle
            (`agentflow.agent.fit_messages`); unknown: the conversation is sent whole.
        recover: when tool calls a model wrote as fenced JSON in its text become calls:
            "strict" (only a reply that is nothing but such blocks), "lenient" (any block
            naming an offered tool: for small models that explain and call in one reply), "off".
        check_numbers: check the measured numbers of an answer (decimals, %, dB, ...) against
            the run's tool results, call arguments and task; a number found nowhere is sent
            back once, then listed in the outcome's `unverified_numbers` (small models misquote
            what they read).
        phases: runbook phases (`agentflow.agent.Phase`) the run follows in order, each with
            its tools and a required tool call, then a final answer: structure for small models
            (react mode only).
        phase_targets: with phases: the targets a task names (e.g. the cell sites in it); the
            phases run once per target, in order (default: once).
    """

    name: str
    model: ChatModel | BaseChatModel
    tools: Sequence[BaseTool | ToolProvider]
    instructions: str = "You are a careful NOC copilot. Use the tools; never guess values."
    max_turns: int = 12
    budget: Budget | None = None
    policies: Policies = default_policy
    prices: PriceTable | None = None
    mode: Literal["react", "plan"] = "react"
    max_replans: int = 2
    step_turns: int = 4
    limits: Limits = field(default_factory=Limits)
    context_tokens: int | None = None
    recover: Literal["strict", "lenient", "off"] = "strict"
    check_numbers: bool = False
    phases: Sequence[Phase] = ()
    phase_targets: Callable[[str], Sequence[str]] | None = None

    def __post_init__(self) -> None:
        self.tools = self._tools = expand_tools(self.tools)  # providers (MCP servers) listed here, once
        names = [t.name for t in self._tools] + ([SUBMIT_PLAN] if self.mode == "plan" else [])  # plan mode's own
        if len(set(names)) != len(names):
            twice = sorted({n for n in names if names.count(n) > 1})
            raise ConfigurationError(f"agent {self.name}: tool names must be unique, got {twice} more than once (an "
                                     "MCP server offering another tool's name: give it a prefix=)")  # fmt: skip
        if self.mode not in ("react", "plan"):
            raise ConfigurationError(f"agent {self.name}: mode must be 'react' or 'plan', not {self.mode!r}")
        if "/" in self.name or not self.name:
            raise ConfigurationError(f"agent name {self.name!r} must be non-empty and contain no '/'")
        offered = [*self._tools, plan_tool()] if self.mode == "plan" else list(self._tools)
        try:
            self.model = self._model = as_chat_model(self.model, tools=offered)
        except ConfigurationError as exc:
            raise ConfigurationError(f"agent {self.name}: {exc.message}") from None
        self._by_name = {t.name: t for t in self._tools}
        if self.phases:
            if self.mode != "react":
                raise ConfigurationError(f"agent {self.name}: phases are a react-mode structure, not {self.mode!r}")
            try:
                check_phases(self.phases, self._tools)
            except ConfigurationError as exc:
                raise ConfigurationError(f"agent {self.name}: {exc.message}") from None
        self._policies = resolve_policies(self.policies)
        agent = self

        async def run_agent(ctx: WorkflowContext, task: str) -> Outcome:
            return await agent.run(ctx, task)

        run_agent.__qualname__ = run_agent.__name__ = self.workflow_name
        run_agent.agent = self  # type: ignore[attr-defined]  # agent_policies finds the agent of a workflow
        self._entry = run_agent

    async def run(self, ctx: WorkflowContext, task: str) -> Outcome:
        """Run the agent in the workflow `ctx` belongs to; return its typed outcome.

        If the run is cancelled or fails after tools that declare a compensating tool ran
        (`agentflow.llm.tool(..., compensate="rollback_change")`), the compensations run in
        reverse order, each a recorded tool step, before the cancellation or error goes on."""
        state = RunState()
        if self.limits.max_run_seconds is not None:
            state.started = ctx.now().timestamp()
        try:
            if self.mode == "plan":
                return await run_plan(self, ctx, task, state)
            if self.phases:
                return await run_phases(self, ctx, task, self.phases, state)
            ended = await self.react(ctx, [SystemMessage(self.instructions), HumanMessage(task)], state)
            return self.outcome(ctx, state, ended.status, answer=ended.answer, detail=ended.detail,
                                unverified_numbers=list(ended.unverified))  # fmt: skip
        except (asyncio.CancelledError, Exception):
            await self._compensate(ctx, state.ran)
            raise

    def outcome(self, ctx: WorkflowContext, state: RunState, status: Any, **fields: Any) -> Outcome:
        """The typed outcome of the run so far."""
        return Outcome(status=status, turns=state.turns, tool_calls=state.records, usage=spent(ctx), **fields)

    def version(self, ctx: WorkflowContext, state: RunState) -> int:
        """The loop's behaviour version for this run (`AGENT_VERSION`), fixed at its first
        model call: a run recorded by older code (no version in its first request) keeps
        behaving as that code did, so its replay matches."""
        if state.version is None:
            found = recorded_facts(ctx)
            state.version = AGENT_VERSION if found is None else int(found.get("v", 1))
        return state.version

    async def ask(
        self,
        ctx: WorkflowContext,
        messages: list[BaseMessage],
        tools: Sequence[BaseTool],
        state: RunState,
        tool_choice: Literal["required"] | None = None,
    ) -> AIMessage:
        """One recorded, budgeted model call (raises `BudgetExceeded` before spending), on a
        view of the conversation that fits the context window (`fit_messages`).

        The window is recorded with the request: a replay fits the conversation to the window
        the call was made with, whatever the server (or the configuration) says today."""
        version = self.version(ctx, state)
        facts = recorded_facts(ctx)
        if facts is None and version >= 2:  # a new call: decided now, recorded with it
            facts = {"v": version, "window": self.context_tokens or await _context_window(self._model)}
        window = (facts or {}).get("window")
        view: Sequence[BaseMessage] = messages
        if isinstance(window, int) and window > 0:
            reserve = (self.budget.max_output_tokens or 0) if self.budget else 0
            schemas = [convert_to_openai_tool(t) for t in tools]
            view, _ = fit_messages(messages, self._model.name, window, reserve=reserve, tools=schemas)
        response = await chat(ctx, self._model, view, list(tools), budget=self.budget, prices=self.prices,
                              max_response_chars=self.limits.max_response_chars, recover=self.recover,
                              max_tool_calls=self.limits.max_tool_calls_per_turn, tool_choice=tool_choice,
                              facts=facts or None)  # fmt: skip
        state.turns += 1
        return response.message

    async def run_calls(
        self, ctx: WorkflowContext, message: AIMessage, state: RunState
    ) -> list[tuple[ToolCallRecord, BaseMessage]]:
        """Run a reply's tool calls (`_turn`'s rules) and answer its invalid ones; every
        outcome is added to the run's records, in the order the replies go back."""
        done = [*await self._turn(ctx, message.tool_calls, state),
                *(self._invalid(call, state.version) for call in message.invalid_tool_calls)]  # fmt: skip
        state.records.extend(r for r, _ in done)
        return done

    async def answer(self, ctx: WorkflowContext, messages: list[BaseMessage], state: RunState) -> Ended:
        """The final answer, asked without tools; with `check_numbers`, a misquoting answer is
        sent back once (`unverified_numbers`)."""
        checked = False
        while state.turns < self.max_turns:
            message = await self.ask(ctx, messages, [], state)
            messages.append(message)
            answer = _text(message)
            wrong = self._doubted(messages[:-1], answer)
            if not wrong or checked:
                return Ended("answered", answer=answer, unverified=tuple(wrong))
            checked = True
            messages.append(_doubt(wrong))
        return Ended("max_turns", detail=f"no answer after {state.turns} model calls")

    def _doubted(self, before: Sequence[BaseMessage], answer: str) -> list[str]:
        return unverified_numbers(answer, _evidence(before)) if self.check_numbers else []

    async def react(
        self, ctx: WorkflowContext, messages: list[BaseMessage], state: RunState, limit: int | None = None
    ) -> Ended:
        """Model call -> tool calls -> results, until an answer, `limit` calls here, or the run's
        `max_turns` / budget is used up. `messages` grows with the conversation.

        A reply that looks like a tool call but is none (a tag, broken JSON, prose around a
        fenced call) is never taken as the answer: it goes back to the model as an invalid
        call, once; a second such reply in a row ends the stretch `failed`."""
        malformed = numbers_checked = False
        for _ in range(limit or self.max_turns):
            if state.turns >= self.max_turns:
                break
            late = self._out_of_time(ctx, state)
            if late:
                return Ended("time_limit", detail=late)
            try:
                message = await self.ask(ctx, messages, self._tools, state)
            except BudgetExceeded as exc:
                return Ended("budget_exceeded", detail=exc.message)
            messages.append(message)
            feedback = [self._invalid(call, state.version) for call in message.invalid_tool_calls]
            garbled = malformed_tool_call(message, self._tools) if self.version(ctx, state) >= 2 else None
            if garbled is not None:  # never the answer: sent back once, then the run gives up
                if malformed:
                    return Ended("failed", detail=f"the model wrote malformed tool calls twice in a row: {garbled}")
                feedback.append(
                    self._invalid({"id": f"malformed-{state.turns}", "name": "", "error": garbled}, state.version)
                )
            malformed = garbled is not None
            state.records.extend(r for r, _ in feedback)
            if not message.tool_calls and not feedback:
                answer = _text(message)
                wrong = self._doubted(messages[:-1], answer)
                if wrong and not numbers_checked:  # sent back once; a second answer is taken as it is
                    numbers_checked = True
                    messages.append(_doubt(wrong))
                    continue
                return Ended("answered", answer=answer, unverified=tuple(wrong))
            done = await self._turn(ctx, message.tool_calls, state)
            state.records.extend(r for r, _ in done)
            messages.extend(m for _, m in [*done, *feedback])
        return Ended("max_turns", detail=f"no answer after {min(state.turns, limit or self.max_turns)} model calls")

    def _out_of_time(self, ctx: WorkflowContext, state: RunState) -> str:
        """Why the run may not make another model call ('' when it may): its time is up."""
        if state.started is None or self.limits.max_run_seconds is None:
            return ""
        spent_s = ctx.now().timestamp() - state.started
        if spent_s <= self.limits.max_run_seconds:
            return ""
        return f"the run took {spent_s:.0f} s, over its limit of {self.limits.max_run_seconds:g} s"

    # -- runs of their own -----------------------------------------------------------------
    @property
    def workflow_name(self) -> str:
        """The name of the workflow that runs this agent on its own: `agent:<name>`."""
        return f"agent:{self.name}"

    def register(self, app: App) -> Workflow[[str], Outcome]:
        """Register the agent with `app` as the workflow `agent:<name>` (idempotent), so workers
        serving `app` can drive its runs, `agent.start` can start them and a parent can
        `fan_out` to it. Call it where the app is built (the module `agentflow worker --app` loads)."""
        if self.workflow_name not in app.workflow_names:
            return app.workflow(name=self.workflow_name)(self._entry)
        found: Workflow[[str], Outcome] = app.workflow_named(self.workflow_name)
        if found.fn is not self._entry:
            raise ConfigurationError(
                f"another agent named {self.name!r} is already registered on this app; give each agent its own name"
            )
        return found

    def start(
        self, where: App | Client, task: str, *, tenant: str = "default", requested_by: str | None = None,
        run_id: str | None = None,
    ) -> RunHandle:  # fmt: skip
        """Start a run of this agent on `task`, as a run of its own (workflow `agent:<name>`).

        Args:
            where: an App (the agent is registered on it if it is not yet) or a Client (the
                workers serving the run must have the agent registered).
            task: what the agent should do.
            tenant: the tenant the run belongs to.
            requested_by: who asks (recorded in the run's meta; four-eyes rules compare it).
            run_id: a run id; an existing one returns that run (idempotent start).
        """
        meta = {"agent": self.name, "requested_by": requested_by} if requested_by else {"agent": self.name}
        if isinstance(where, App):
            return where.start(self.register(where), task, run_id=run_id, tenant=tenant, meta=meta)
        return where.start(self.workflow_name, task, run_id=run_id, tenant=tenant, meta=meta)

    #: The 0.1 name of `start`.
    start_on = start

    async def fan_out(
        self, ctx: WorkflowContext, tasks: Mapping[str, str], *, max_concurrency: int | None = None
    ) -> dict[str, Outcome]:
        """From a parent workflow, run this agent as one child run per key (e.g. per cell site) and
        join the outcomes by key. Children start in key order, `max_concurrency` at a time, and
        get deterministic run ids (`<parent>/<seq>`): a resumed parent re-attaches to the same
        children, so each runs exactly once. A child that fails or is cancelled gives a `failed`
        outcome for its key; the others are unaffected."""
        try:
            wf = ctx.registered_workflow(self.workflow_name)
        except NotRegisteredError:
            raise ConfigurationError(
                f"agent {self.name} is not registered on this app: call agent.register(app) where the app is built"
            ) from None
        keys = list(tasks)
        size = max_concurrency or len(keys) or 1
        joined: dict[str, Outcome] = {}
        for lo in range(0, len(keys), size):
            batch = keys[lo : lo + size]
            results = await asyncio.gather(*(ctx.child(wf, tasks[k]) for k in batch), return_exceptions=True)
            for key, result in zip(batch, results, strict=True):
                joined[key] = _joined(result)
        return joined

    async def _compensate(self, ctx: WorkflowContext, records: list[ToolCallRecord]) -> None:
        """Undo the compensable calls that ran, newest first. The compensating tool's arguments
        are taken by name from the original call's arguments and result. A compensation is a
        side-effecting call like any other: it passes the gate (policy decision, approval when
        the pack says so, maintenance window), and a denied or rejected one does not run."""
        undos = [found for record in reversed(records) if (found := self._undo_of(record)) is not None]
        if not undos:
            return
        # Runs recorded before compensations were gated replay their ungated path.
        gated = ctx.patched("agentflow.gated-compensation")
        for record, undo, args in undos:
            call_id = f"compensate:{record.id}"
            if gated:
                verdict = await gate(ctx, self._policies, undo, tool_facts(undo), call_id, args)
                if verdict.status != "ok":
                    continue  # denied or rejected: recorded in the history, not run
                args = verdict.args  # an approver may have edited them
            try:
                await self._execute(ctx, undo, tool_facts(undo), call_id, args)
            except ActivityError:
                continue  # recorded as failed; the other compensations still run

    def _undo_of(self, record: ToolCallRecord) -> tuple[ToolCallRecord, BaseTool, dict[str, Any]] | None:
        """The compensating tool of a call that ran, with its arguments; None when there is none
        or its arguments cannot be derived (nothing runs with arguments failing its schema)."""
        facts = tool_facts(self._by_name[record.name]) if record.name in self._by_name else None
        if record.status != "ok" or facts is None or not facts.compensate:
            return None
        undo = self._by_name.get(facts.compensate)
        if undo is None:
            return None
        try:
            result = json.loads(record.result)
        except ValueError:
            result = {}
        known = {**record.args, **(result if isinstance(result, dict) else {})}
        wanted = set(undo.tool_call_schema.model_fields) if hasattr(undo.tool_call_schema, "model_fields") else set()
        args = {k: v for k, v in known.items() if k in wanted}
        return None if validate_tool_args(undo, args) is not None else (record, undo, args)

    # -- the tool calls of one model turn ------------------------------------------------
    async def _turn(
        self, ctx: WorkflowContext, calls: Sequence[Mapping[str, Any]], state: RunState
    ) -> list[tuple[ToolCallRecord, BaseMessage]]:
        """Run one reply's tool calls in the order the model gave them, safely.

        Reads run together. A side-effecting call waits until every earlier call of the turn
        has finished (its gate, approval, maintenance window and execution), and every later
        call waits for it: a `notify("change applied")` after an `apply_change` is sent only
        once the change is applied, and a `monitor_kpis` after it reads the changed network.
        Once a side-effecting call does not succeed (denied, rejected, failed), the calls after
        it are not run: the model hears why and decides again. Results come back in call order;
        each call takes its step numbers in that order too (deterministic on replay)."""

        async def together(batch: Sequence[Mapping[str, Any]]) -> list[tuple[ToolCallRecord, BaseMessage]]:
            return list(await asyncio.gather(*(self._call(ctx, c["id"] or "", c["name"], c["args"], state.ran)
                                               for c in batch)))  # fmt: skip

        if (state.version or AGENT_VERSION) < 2:  # recorded by code that ran every call at once
            return await together(calls)
        done: list[tuple[ToolCallRecord, BaseMessage]] = []
        reads: list[Mapping[str, Any]] = []
        stopped_by: ToolCallRecord | None = None

        async def run_reads() -> None:
            done.extend(await together(reads))
            reads.clear()

        for call in calls:
            if stopped_by is not None:
                done.append(self._skipped(call, stopped_by))
            elif tool_facts(self._by_name[call["name"]]).read_only:
                reads.append(call)
            else:
                await run_reads()
                record, reply = await self._call(ctx, call["id"] or "", call["name"], call["args"], state.ran)
                done.append((record, reply))
                stopped_by = None if record.status == "ok" else record
        await run_reads()
        return done

    def _skipped(self, call: Mapping[str, Any], cause: ToolCallRecord) -> tuple[ToolCallRecord, BaseMessage]:
        text = (
            f"[agentflow] not run: it came after your call of {cause.name!r} in the same reply, and that "
            f"call was {cause.status}, so what followed it may no longer hold. Call it again if it is still needed."
        )
        record = ToolCallRecord(id=call["id"] or "", name=call["name"], args=dict(call["args"]), status="skipped",
                                result=text)  # fmt: skip
        return record, ToolMessage(content=text, tool_call_id=record.id, name=record.name, status="error")

    # -- one tool call ---------------------------------------------------------------------
    def _invalid(self, call: Any, version: int | None) -> tuple[ToolCallRecord, BaseMessage]:
        # Providers drop invalid calls from the assistant message, so a ToolMessage answering
        # one would be orphaned (OpenAI rejects that): the error goes back as a user turn.
        what = f"your call of tool {call.get('name')!r}" if call.get("name") else "your reply"
        text = (
            f"[agentflow] {what} was not run: {call.get('error') or 'invalid tool call'}. Fix the call and try "
            "again (a tool call, not text that looks like one), or answer in plain text."
            if (version or AGENT_VERSION) >= 2
            else f"[agentflow] your call of tool {call.get('name')!r} was not run: "
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
        gated = await gate(ctx, self._policies, tool, facts, call_id, args)
        record = ToolCallRecord(id=call_id, name=name, args=gated.args, decision=gated.decision, status="ok",
                                approved_by=gated.approvers)  # fmt: skip
        if gated.status != "ok":
            record.status, record.result = "denied" if gated.status == "denied" else "rejected", gated.refusal
            return record, ToolMessage(content=record.result, tool_call_id=call_id, name=name, status="error")
        try:
            record.result = await self._execute(ctx, tool, facts, call_id, gated.args)
        except ActivityError as exc:
            record.status, record.result = "error", f"error: {exc.cause_type}: {exc.cause_message}"
            return record, ToolMessage(content=record.result, tool_call_id=call_id, name=name, status="error")
        ran.append(record)
        return record, ToolMessage(content=record.result, tool_call_id=call_id, name=name)

    async def _execute(
        self, ctx: WorkflowContext, tool: BaseTool, facts: ToolFacts, call_id: str, args: dict[str, Any]
    ) -> str:
        limit = self.limits.max_tool_output_chars
        if facts.prepare is not None:  # e.g. an MCP server's tool definitions pinned for the run
            await facts.prepare(ctx)

        async def invoke() -> str:
            # A blocking tool runs on the engine's elastic pool (langchain's ainvoke would use the
            # loop's small default pool, where a tool that never returns starves the others).
            out = await run_blocking(tool.invoke, args) if _blocking(tool) else await tool.ainvoke(args)
            return _cut(_as_text(out), limit)

        async def reconcile(key: str) -> str | None:
            # The tool's reconcile answers with the tool's output: recorded as text, like invoke's.
            found = facts.reconcile(key) if facts.reconcile is not None else None
            if inspect.isawaitable(found):
                found = await found
            return None if found is None else _as_text(found)

        step: Activity[[], str] = Activity(
            invoke, name=tool.name, retry=TOOL_RETRY, timeout=facts.timeout, side_effect=not facts.read_only,
            reconcile=reconcile if facts.reconcile is not None else None, kind="tool",
        )  # fmt: skip
        return await ctx.run_step(step, request=canonical_json({"tool": tool.name, "call": call_id, "args": args}))


def _blocking(tool: BaseTool) -> bool:
    """Whether the tool has no coroutine of its own (langchain would run it in a thread)."""
    if getattr(tool, "coroutine", None) is not None:
        return False
    return type(tool)._arun in (BaseTool._arun, StructuredTool._arun)


def _cut(text: str, limit: int | None) -> str:
    """A tool output cut at `limit` characters before it is recorded (said in the text)."""
    if limit is None or len(text) <= limit:
        return text
    return f"{text[:limit]}\n[agentflow: the output was cut at {limit} of {len(text)} characters]"


def _as_text(out: Any) -> str:
    return out if isinstance(out, str) else json.dumps(out, default=str)


def _joined(result: Any) -> Outcome:
    """A child's outcome, or a `failed` outcome saying why the child ended without one."""
    if isinstance(result, Outcome):
        return result
    if isinstance(result, BaseException):
        return Outcome(status="failed", detail=f"{type(result).__name__}: {result}")
    return Outcome.model_validate(result)


async def _context_window(model: ChatModel) -> int | None:
    resolve = getattr(model, "aresolve_context_window", None)
    if resolve is not None:
        found: int | None = await resolve()
        return found
    return model.context_window


def _doubt(wrong: list[str]) -> HumanMessage:
    return HumanMessage(
        f"[agentflow] check your answer: {', '.join(wrong)} appear in no tool result of this run. "
        "Quote the numbers the tools returned (or call a tool to read them), then answer again."
    )


def _evidence(messages: Sequence[BaseMessage]) -> list[str]:
    """What an answer's numbers may come from: the task, the tools' results and the arguments
    of the calls (not the model's own prose)."""
    out: list[str] = []
    for m in messages:
        if isinstance(m, HumanMessage | ToolMessage) and isinstance(m.content, str):
            if not m.content.startswith("[agentflow]"):  # the loop's own notes quote the numbers they doubt
                out.append(m.content)
        elif isinstance(m, AIMessage):
            out.extend(canonical_json(c["args"]) for c in m.tool_calls)
    return out


def _text(message: AIMessage) -> str:
    return message.content if isinstance(message.content, str) else json.dumps(message.content)


def agent_workflow(app: App, name: str | None = None) -> Workflow[Any, Any]:
    """The workflow of the agent `name` registered on `app` (default: its only agent).

    Raises:
        ConfigurationError: no such agent, or several and no name; the message lists them.
    """
    agents = [n.split(":", 1)[1] for n in app.workflow_names if n.startswith("agent:")]
    if name is None and len(agents) == 1:
        name = agents[0]
    if name is None or name not in agents:
        known = ", ".join(agents) or "none (call agent.register(app) where the app is built)"
        what = "pick an agent" if name is None else f"agent {name!r} is unknown"
        raise ConfigurationError(f"{what}; agents: {known}")
    return app.workflow_named(f"agent:{name}")


def agent_policies(workflow: Workflow[Any, Any]) -> PolicyPack | None:
    """The policy pack of the agent an agent workflow runs (what an approval card's limits are
    read from); None for another workflow, or an agent deciding with a policy function."""
    found = getattr(workflow.fn, "agent", None)
    policies = found._policies if isinstance(found, Agent) else None
    return policies if isinstance(policies, PolicyPack) else None
