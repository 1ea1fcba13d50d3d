"""Budgets stop a run before the call that would exceed them; usage is rolled up per run and
per tenant from the recorded steps and never counted twice; a long conversation stores each
message once and its requests in linear space."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

import pytest
from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage

from agentflow import App, RunFailedError, WorkflowContext
from agentflow.agent import Budget, chat, spent, usage
from agentflow.llm import LangChainChat, PriceTable, ScriptedChatModel, tool
from agentflow.llm._messages import message_blob

SYSTEM = "You are a NOC copilot for a 5G network. Answer briefly."
TASK = "Why is cell site CS-1042 dropping calls since 09:00?"
PRICES = PriceTable()


def counting_model(calls: list[int], *, name: str | None = None, context_window: int | None = None) -> LangChainChat:
    """A scripted model whose every request is counted (its answer depends on the conversation
    length, so each reply is a distinct message)."""

    def respond(messages: list[BaseMessage]) -> str:
        calls.append(len(messages))
        return f"Turn {len(messages)}: the RRC drop rate on CS-1042 is 2.7%; cell 3 is the outlier."

    return LangChainChat(ScriptedChatModel(respond=respond), name=name, context_window=context_window)


def register(app: App, model: LangChainChat) -> Any:
    @app.workflow(name="converse")
    async def converse(
        ctx: WorkflowContext,
        turns: int,
        max_tokens: int | None = None,
        max_usd: float | None = None,
        max_output_tokens: int | None = None,
        park: bool = False,
        wait: bool = False,
    ) -> dict[str, Any]:
        budget = Budget(max_tokens=max_tokens, max_usd=max_usd, max_output_tokens=max_output_tokens)
        messages: list[BaseMessage] = [SystemMessage(SYSTEM), HumanMessage(TASK)]
        for i in range(turns):
            reply = await chat(ctx, model, messages, budget=budget, prices=PRICES)
            messages = [*messages, reply.message, HumanMessage(f"And after step {i}?")]
        if park:
            await ctx.sleep(3600)  # the rest runs in a new executor: spent() is rebuilt by replay
        if wait:
            await ctx.wait_signal("go")  # parked until signalled (resumed by another App)
        used = spent(ctx)
        return {"input": used.input_tokens, "output": used.output_tokens, "usd": used.cost_usd}

    return converse


def llm_steps(app: App, run_id: str) -> list[dict[str, Any]]:
    """The recorded results of the run's completed model calls."""
    return [json.loads(s.result or "{}") for s in app.history(run_id) if s.kind == "llm" and s.status == "completed"]


def reference(app: App, wf: Any, calls: list[int], turns: int = 4) -> list[dict[str, Any]]:
    """An unbudgeted run's recorded calls: what each call counted and used."""
    app.run(wf, turns, run_id="reference")
    steps = llm_steps(app, "reference")
    assert len(steps) == len(calls) == turns
    calls.clear()
    return steps


# ------------------------------------------------------------------------------------------
# budgets
# ------------------------------------------------------------------------------------------
def test_token_budget_stops_the_run_before_the_third_call(app: App) -> None:
    calls: list[int] = []
    wf = register(app, counting_model(calls))
    ref = reference(app, wf, calls)
    used_two = sum(s["usage"]["input_tokens"] + s["usage"]["output_tokens"] for s in ref[:2])
    third = ref[2]["counted_prompt_tokens"]
    limit = used_two + third - 1  # the third call's prompt alone takes the run one token over

    with pytest.raises(RunFailedError, match="BudgetExceeded"):
        app.run(wf, 4, max_tokens=limit, run_id="capped")
    assert len(calls) == 2, "the model was called although the budget forbade it"
    run = app.get_run("capped")
    assert run.status == "failed"
    assert run.error is not None and run.error["type"] == "BudgetExceeded"
    assert "not sent" in run.error["message"] and str(limit) in run.error["message"]
    assert [s.kind for s in app.history("capped")] == ["llm", "llm"]
    assert usage(app, run_id="capped").total_tokens == used_two <= limit

    # One token more and the third call fits exactly (the limit is inclusive); its output then
    # leaves no room for the fourth.
    calls.clear()
    with pytest.raises(RunFailedError, match="BudgetExceeded"):
        app.run(wf, 4, max_tokens=limit + 1, run_id="exact")
    assert len(calls) == 3
    assert len(llm_steps(app, "exact")) == 3


def test_output_reservation_counts_against_the_budget(app: App) -> None:
    """`max_output_tokens` is reserved in the pre-flight check (and sent as the output limit)."""
    calls: list[int] = []
    wf = register(app, counting_model(calls))
    ref = reference(app, wf, calls, turns=1)
    first = ref[0]["counted_prompt_tokens"]
    with pytest.raises(RunFailedError, match="BudgetExceeded"):
        app.run(wf, 1, max_tokens=first + 49, max_output_tokens=50, run_id="reserved")
    assert calls == []
    assert app.history("reserved") == []
    app.run(wf, 1, max_tokens=first + 50, max_output_tokens=50, run_id="fits")
    assert len(calls) == 1
    [step] = [s for s in app.history("fits") if s.kind == "llm"]
    assert json.loads(step.args or "{}")["max_tokens"] == 50


def test_usd_budget_stops_the_run_before_the_third_call(app: App) -> None:
    calls: list[int] = []
    wf = register(app, counting_model(calls, name="gpt-4o"))
    ref = reference(app, wf, calls)
    assert all(s["model"] == "gpt-4o" and s["usage"]["cost_usd"] > 0 for s in ref)
    for s in ref:  # priced at the table's gpt-4o rates
        u = s["usage"]
        assert u["cost_usd"] == PRICES.cost("gpt-4o", u["input_tokens"], u["output_tokens"])
    spent_two = round(ref[0]["usage"]["cost_usd"] + ref[1]["usage"]["cost_usd"], 8)
    third = PRICES.cost("gpt-4o", ref[2]["counted_prompt_tokens"], 0)
    limit = spent_two + third / 2

    with pytest.raises(RunFailedError, match="BudgetExceeded"):
        app.run(wf, 4, max_usd=limit, run_id="capped")
    assert len(calls) == 2
    run = app.get_run("capped")
    assert run.error is not None and run.error["type"] == "BudgetExceeded"
    assert "$" in run.error["message"]
    assert len(llm_steps(app, "capped")) == 2
    assert usage(app, run_id="capped").cost_usd == pytest.approx(spent_two)


def test_context_window_is_checked_before_sending(make_app: Any) -> None:
    calls: list[int] = []
    app = make_app()
    ref = reference(app, register(app, counting_model(calls)), calls)
    window = ref[2]["counted_prompt_tokens"] - 1  # calls 1 and 2 fit, the third does not
    small = make_app()
    wf = register(small, counting_model(calls, context_window=window))
    with pytest.raises(RunFailedError, match="ContextWindowExceeded"):
        small.run(wf, 4, run_id="window")
    assert len(calls) == 2
    run = small.get_run("window")
    assert run.error is not None and run.error["type"] == "ContextWindowExceeded"
    assert str(window) in run.error["message"]
    assert len(llm_steps(small, "window")) == 2
    # The output reservation counts too: the first call no longer fits.
    calls.clear()
    with pytest.raises(RunFailedError, match="ContextWindowExceeded"):
        small.run(wf, 1, max_output_tokens=window, run_id="reserved")
    assert calls == []


# ------------------------------------------------------------------------------------------
# usage roll-up
# ------------------------------------------------------------------------------------------
def summed(steps: Sequence[dict[str, Any]]) -> tuple[int, int, int, float]:
    return (
        len(steps),
        sum(s["usage"]["input_tokens"] for s in steps),
        sum(s["usage"]["output_tokens"] for s in steps),
        round(sum(s["usage"]["cost_usd"] for s in steps), 8),
    )


def rolled(summary: Any) -> tuple[int, int, int, float]:
    return (summary.calls, summary.input_tokens, summary.output_tokens, round(summary.cost_usd, 8))


def test_usage_roll_up_per_run_and_tenant_never_double_counts(app: App) -> None:
    calls: list[int] = []
    A, B = "acme:a", "globex:b"  # the store's keys of run "a" of acme and "b" of globex
    wf = register(app, counting_model(calls, name="gpt-4o-mini"))
    out_a = app.run(wf, 3, park=True, run_id="a", tenant="acme")
    out_b = app.run(wf, 5, park=True, run_id="b", tenant="globex")
    assert len(calls) == 8, "the parked runs replayed their model calls without sending them"

    steps_a, steps_b = llm_steps(app, A), llm_steps(app, B)
    assert summed(steps_a)[0] == 3 and summed(steps_b)[0] == 5
    assert rolled(usage(app, run_id=A)) == summed(steps_a)
    assert rolled(usage(app, run_id=B)) == summed(steps_b)
    assert rolled(usage(app, tenant="acme")) == summed(steps_a)
    assert rolled(usage(app, tenant="globex")) == summed(steps_b)
    assert rolled(usage(app, tenant="nobody")) == (0, 0, 0, 0.0)
    everything = usage(app)
    assert rolled(everything) == summed([*steps_a, *steps_b])
    assert everything.by_model["gpt-4o-mini"]["calls"] == 8
    assert usage(app.store, tenant="acme").total_tokens == usage(app, run_id=A).total_tokens
    assert usage(app, run_id=A).to_dict()["total_tokens"] == summed(steps_a)[1] + summed(steps_a)[2]

    # What the workflow saw (spent(), rebuilt by the replay after the park) is the same sum.
    assert (out_a["input"], out_a["output"]) == summed(steps_a)[1:3]
    assert out_a["usd"] == pytest.approx(summed(steps_a)[3])
    assert (out_b["input"], out_b["output"]) == summed(steps_b)[1:3]

    # Running the finished runs again (same run ids) changes nothing and sends nothing.
    before = [rolled(usage(app, run_id=A)), rolled(usage(app, tenant="globex")), rolled(usage(app))]
    assert app.run(wf, 3, park=True, run_id="a", tenant="acme") == out_a
    assert app.run(wf, 5, park=True, run_id="b", tenant="globex") == out_b
    assert [rolled(usage(app, run_id=A)), rolled(usage(app, tenant="globex")), rolled(usage(app))] == before
    assert len(calls) == 8


def test_usage_of_a_resumed_run_in_a_new_app(make_app: Any) -> None:
    """A redeployed process resumes the parked run: the replayed calls are not counted again."""
    calls: list[int] = []
    first = make_app()
    wf = register(first, counting_model(calls))
    first.start(wf, 3, wait=True, run_id="r")

    async def until_parked() -> None:
        worker = first.worker(root_id="r")
        task = asyncio.create_task(worker.run_until_done("r"))
        while first.get_run("r").status != "waiting":
            assert not task.done(), first.get_run("r")
            await asyncio.sleep(0.01)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(until_parked())
    assert len(calls) == 3
    parked = rolled(usage(first, run_id="r"))

    second = make_app()
    wf2 = register(second, counting_model(calls))
    second.signal("r", "go")
    out = second.run(wf2, 3, wait=True, run_id="r")
    assert len(calls) == 3
    assert rolled(usage(second, run_id="r")) == parked
    assert (out["input"], out["output"]) == parked[1:3]


# ------------------------------------------------------------------------------------------
# storage of a long conversation
# ------------------------------------------------------------------------------------------
def test_a_100_turn_conversation_stores_each_message_once(app: App) -> None:
    turns = 100
    calls: list[int] = []
    model = counting_model(calls)
    seen: list[BaseMessage] = []

    @app.workflow(name="long")
    async def long(ctx: WorkflowContext, n: int) -> int:
        messages: list[BaseMessage] = [SystemMessage(SYSTEM), HumanMessage(TASK)]
        for i in range(n):
            reply = await chat(ctx, model, messages)
            messages = [*messages, reply.message, HumanMessage(f"And after step {i}?")]
        seen[:] = messages
        return len(messages)

    assert app.run(long, turns, run_id="long") == 2 + 2 * turns
    assert len(calls) == turns

    # Every message that was sent or received; the last question was never sent.
    stored = seen[:-1]
    unique = {digest: data for digest, data in map(message_blob, stored)}
    assert len(unique) == len(stored), "the messages of the conversation are all distinct"
    unique_bytes = sum(len(data.encode()) for data in unique.values())

    q = app.store.backend.query
    blob_rows, blob_bytes = q("SELECT count(*), coalesce(sum(size), 0) FROM af_blobs", ())[0]
    [(args_bytes,)] = q(
        "SELECT coalesce(sum(length(args)), 0) FROM af_steps WHERE run_id = ? AND kind = 'llm'", ("long",)
    )
    hashes = {h for (h,) in q("SELECT hash FROM af_blobs", ())}
    assert hashes == set(unique), "af_blobs holds exactly the conversation's messages (no tools here)"
    assert blob_rows == len(unique)
    assert blob_bytes == unique_bytes
    total = blob_bytes + args_bytes
    assert total < 2 * unique_bytes, (
        f"{turns} turns stored {total} bytes (blobs {blob_bytes} + requests {args_bytes}) for "
        f"{unique_bytes} bytes of distinct messages"
    )

    # The recorded requests still say exactly which messages each call sent.
    steps = {s.seq: s for s in app.history("long")}
    for seq in (1, 2, 50, 100):
        assert request_refs(steps, seq) == [message_blob(m)[0] for m in stored[: 2 * seq]]


def request_refs(steps: dict[int, Any], seq: int) -> list[str]:
    """The full message references of a recorded request, following `after` links."""
    body = json.loads(steps[seq].args)
    prefix = request_refs(steps, body["after"]) if "after" in body else []
    return [*prefix, *body["messages"]]


def test_tool_schemas_are_one_blob_per_distinct_tool_set(app: App) -> None:
    """Tool schemas are stored once however many calls offer them."""

    @tool(side_effect="none")
    def get_kpis(site: str) -> dict[str, float]:
        """Read the KPIs of a cell site."""
        return {}

    calls: list[int] = []
    model = counting_model(calls)

    @app.workflow(name="tools")
    async def with_tools(ctx: WorkflowContext, n: int) -> int:
        messages: list[BaseMessage] = [HumanMessage(TASK)]
        for i in range(n):
            reply = await chat(ctx, model, messages, [get_kpis])
            messages = [*messages, reply.message, HumanMessage(f"step {i}")]
        return len(messages)

    app.run(with_tools, 10, run_id="t")
    [(rows,)] = app.store.backend.query("SELECT count(*) FROM af_blobs", ())
    assert rows == 20 + 1, "the task, 10 answers, 9 follow-ups (the 10th was never sent) and one tool-set blob"
    refs = {json.loads(s.args)["tools"] for s in app.history("t")}
    assert len(refs) == 1 and None not in refs
