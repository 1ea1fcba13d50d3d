"""`agentflow.trace`: the tables match the raw history, replay checks determinism without any
I/O, what-if finds exactly the decisions a changed rule affects, fork continues live."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agentflow import App, NonDeterminismError, WorkflowContext
from agentflow.agent import usage
from agentflow.errors import ConfigurationError
from agentflow.trace import Trace, load, runs
from agentflow_noc import NOC_TOOLS, Network

ROOT = Path(__file__).resolve().parents[2]
NOC_PACK = ROOT / "policies" / "noc.yaml"
APPLY_DECISIONS = [17, 22, 24]  # the demo's three decisions on its one apply_change call


# -- a small workflow of activities -------------------------------------------------------------
def register_flow(app: App, calls: list[int], *, variant: str = "same") -> Any:
    """`flow(n)`: n activity calls, a durable sleep, their sum. Variants change the code."""

    @app.activity(name="double")
    def double(x: int) -> int:
        calls.append(x)
        return 2 * x

    @app.activity(name="echo")
    def echo(text: str) -> str:
        return text

    @app.workflow(name="flow")
    async def flow(ctx: WorkflowContext, n: int) -> int:
        total = 0
        for i in range(n):
            total += await ctx.run(double, i + 1 if variant == "args" and i == 1 else i)
        await ctx.sleep(60)
        if variant == "extra":
            total += await ctx.run(double, 100)
        return total

    @app.workflow(name="shout")
    async def shout(ctx: WorkflowContext, text: str) -> str:
        return await ctx.run(echo, text)

    return flow


@pytest.fixture
def flow_run(make_app: Callable[..., App]) -> tuple[App, str, list[int]]:
    app = make_app()
    calls: list[int] = []
    flow = register_flow(app, calls)
    assert app.run(flow, 4, run_id="flow-1") == 12
    return app, "flow-1", calls


def test_steps_table_matches_the_raw_history(flow_run: tuple[App, str, list[int]]) -> None:
    """One row per recorded step, with the recorded kind, name, status, attempt and times."""
    app, run_id, _ = flow_run
    trace = load(app, run_id)
    raw = app.history(run_id)
    steps = trace.steps
    assert list(steps["seq"]) == [s.seq for s in raw]
    assert list(steps["kind"]) == [s.kind for s in raw] == ["activity"] * 4 + ["sleep"]
    assert list(steps["name"]) == [s.name for s in raw]
    assert list(steps["status"]) == [s.status for s in raw]
    assert [t.timestamp() for t in steps["started_at"]] == [s.started_at for s in raw]
    assert steps["duration_s"].iloc[-1] == pytest.approx(60.0)  # the sleep, on the test clock
    assert trace.tool_calls.empty and trace.decisions.empty and trace.usage.empty and trace.messages.empty


def test_html_timeline_escapes_recorded_text(make_app: Callable[..., App]) -> None:
    """Recorded text is shown escaped: no markup from a tool or model reaches the page."""
    app = make_app()
    register_flow(app, [])
    evil = '<script>alert(1)</script><img src=x onerror=alert(2)><a href="javascript:x">y</a>'
    app.run(app.workflow_named("shout"), evil, run_id="evil")
    page = load(app, "evil")._repr_html_()
    assert "<script" not in page and "<img" not in page and "<a " not in page
    assert "&lt;script&gt;" in page


# -- replay ------------------------------------------------------------------------------------
def test_replay_of_unchanged_code_passes_without_executing(flow_run: tuple[App, str, list[int]]) -> None:
    """A finished run replays to the same result from its history alone: no activity runs, and
    the original store is not written to."""
    app, run_id, calls = flow_run
    before = [s.to_dict() for s in app.history(run_id)]
    calls.clear()
    result = load(app, run_id).replay(app)
    assert (result.status, result.steps, result.output) == ("completed", 5, 12)
    assert calls == []
    assert [s.to_dict() for s in app.history(run_id)] == before
    assert app.get_run(run_id).status == "completed"


@pytest.mark.parametrize("variant", ["args", "extra"])
def test_replay_of_changed_code_raises_nondeterminism(
    flow_run: tuple[App, str, list[int]], make_app: Callable[..., App], variant: str
) -> None:
    """Changed arguments, or a call the recorded run never made, is a NonDeterminismError naming
    the step; the new call is never executed."""
    _, run_id, _ = flow_run
    changed = make_app()
    calls: list[int] = []
    register_flow(changed, calls, variant=variant)
    with pytest.raises(NonDeterminismError) as info:
        load(changed, run_id).replay(changed)
    assert info.value.seq == (2 if variant == "args" else 6)
    assert "ctx.patched" in str(info.value)
    assert calls == []


def test_replay_needs_the_workflow_registered(
    flow_run: tuple[App, str, list[int]], make_app: Callable[..., App]
) -> None:
    """Replaying with an App that lacks the run's workflow says so (no silent pass)."""
    from agentflow.errors import NotRegisteredError

    _, run_id, _ = flow_run
    with pytest.raises(NotRegisteredError):
        load(make_app(), run_id).replay(make_app())


def test_replay_of_an_unfinished_run_stops_at_its_frontier(make_app: Callable[..., App]) -> None:
    """A run parked on a signal replays its recorded steps and stops where it waits: not an error."""
    app = make_app()
    calls: list[int] = []

    @app.activity(name="count", side_effect=False)
    def count(x: int) -> int:
        calls.append(x)
        return x

    @app.workflow(name="waits")
    async def waits(ctx: WorkflowContext) -> int:
        first = await ctx.run(count, 1) + await ctx.run(count, 2)
        return first + int(await ctx.wait_signal("go"))

    handle = app.start(waits, run_id="waits-1")
    asyncio.run(app.worker(root_id=handle.run_id).run_until_blocked(handle.run_id))
    assert app.get_run("waits-1").status == "waiting"
    calls.clear()
    result = load(app, "waits-1").replay(app)
    assert (result.status, result.steps, result.frontier) == ("frontier", 2, None)
    assert calls == [] and app.get_run("waits-1").status == "waiting"


# -- fork --------------------------------------------------------------------------------------
def test_fork_reuses_the_prefix_and_continues_live(flow_run: tuple[App, str, list[int]]) -> None:
    """A fork at step 2 replays steps 1-2 from the copied history and executes 3 onwards."""
    app, run_id, calls = flow_run
    calls.clear()
    handle = load(app, run_id).fork(at_seq=2, run_id="flow-1-fork")
    info = app.get_run("flow-1-fork")
    assert info.status == "pending" and info.meta == {"forked_from": run_id, "at_seq": 2}
    assert [s.seq for s in app.history("flow-1-fork")] == [1, 2]
    asyncio.run(app.worker(root_id=handle.run_id).run_until_done(handle.run_id))
    assert handle.result() == 12
    assert calls == [2, 3]  # steps 1 and 2 (x=0, 1) were not executed again
    assert runs(app, status="completed")["forked_from"].dropna().tolist() == [run_id]
    with pytest.raises(ConfigurationError, match="already exists"):
        load(app, run_id).fork(at_seq=1, run_id="flow-1-fork")


def test_fork_refuses_a_cut_through_concurrent_steps(make_app: Callable[..., App]) -> None:
    """Steps that ran concurrently finished out of seq order: a cut between them is refused."""
    app = make_app()
    gate = asyncio.Event()

    @app.activity(name="slow", side_effect=False)
    async def slow() -> str:
        await gate.wait()
        return "slow"

    @app.activity(name="fast", side_effect=False)
    async def fast() -> str:
        gate.set()
        return "fast"

    @app.workflow(name="pair")
    async def pair(ctx: WorkflowContext) -> list[str]:
        return list(await asyncio.gather(ctx.run(slow), ctx.run(fast)))

    app.run(pair, run_id="pair-1")
    trace = load(app, "pair-1")
    assert [s.delivery for s in trace.history] == [2, 1]
    with pytest.raises(ConfigurationError, match="fork at step 0"):
        trace.fork(at_seq=1)


# -- the NOC demo: tables, what-if, replay ----------------------------------------------------
@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """The NOC copilot demo run once (runbook model, auto-approved), as (db url, run id)."""
    from agentflow_noc import ENV
    from agentflow_noc.demo import main

    db = f"sqlite:///{tmp_path_factory.mktemp('demo') / 'demo.db'}"
    before = os.environ.get(ENV)
    try:
        summary = main(db=db, crash_at=None, resume=False, approve="auto", model="runbook", quiet=True)
    finally:  # the demo points this process's NOC tools at its network: not other tests'
        if before is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = before
    assert summary["status"] == "completed"
    return db, summary["run_id"]


@pytest.fixture
def demo_trace(demo: tuple[str, str]) -> Iterator[Trace]:
    trace = load(*demo)
    yield trace
    trace.close()


def test_agent_tables_match_the_raw_history(demo_trace: Trace) -> None:
    """Tool calls, decisions, usage and the conversation are the recorded steps, decoded."""
    raw = demo_trace.history
    tools = [s for s in raw if s.kind == "tool"]
    assert list(demo_trace.tool_calls["seq"]) == [s.seq for s in tools]
    assert list(demo_trace.tool_calls["args"]) == [json.loads(s.args or "")["args"] for s in tools]
    assert list(demo_trace.tool_calls["result"]) == [json.loads(s.result or "") for s in tools]
    assert set(demo_trace.tool_calls["status"]) == {"ok"}
    policy = [s for s in raw if s.kind == "policy"]
    assert list(demo_trace.decisions["effect"]) == [json.loads(s.result or "")["effect"] for s in policy]
    assert list(demo_trace.decisions.loc[demo_trace.decisions.tool == "apply_change", "seq"]) == APPLY_DECISIONS
    assert demo_trace.decisions["pack"].unique().tolist() == ["noc"]
    llm = [s for s in raw if s.kind == "llm"]
    assert list(demo_trace.usage["seq"]) == [s.seq for s in llm]
    spent = usage(demo_trace.app, run_id=demo_trace.run_id)
    assert demo_trace.total_usage["total_tokens"] == spent.total_tokens == demo_trace.usage["total_tokens"].sum()
    messages = demo_trace.messages
    assert list(messages["role"][:2]) == ["system", "human"]
    assert messages["content"].iloc[-1] == json.loads(demo_trace.run.output or "")["answer"]
    assert messages["tool_call_id"].dropna().tolist() == demo_trace.tool_calls["call_id"].tolist()


def test_approvals_and_effects(demo_trace: Trace, demo: tuple[str, str]) -> None:
    """The approval shows who approved; the ledger's effects sit beside the steps that caused them."""
    (approval,) = demo_trace.approvals.to_dict("records")
    assert approval["tool"] == "apply_change" and approval["status"] == "approved"
    assert approval["approved_by"] == "oncall-engineer"
    assert [v["who"] for v in approval["votes"]] == ["oncall-engineer"]
    network = Network(demo[0].removeprefix("sqlite:///") + ".noc.db")
    effects = demo_trace.effects(network)
    assert sorted(effects["kind"]) == ["apply", "notify", "ticket_create"]
    apply = effects[effects.kind == "apply"].iloc[0]
    assert apply["tool"] == "apply_change" and apply["step_status"] == "completed"
    assert apply["seq"] == demo_trace.tool_calls.loc[demo_trace.tool_calls.tool == "apply_change", "seq"].item()
    assert effects.groupby("idempotency_key").size().max() == 1


def test_exports_are_stable(demo_trace: Trace, demo: tuple[str, str], tmp_path: Path) -> None:
    """JSON lines hold every step; span ids derive from (run, seq), the same on every load."""
    lines = (tmp_path / "t.jsonl").read_text() if demo_trace.to_jsonl(tmp_path / "t.jsonl") else ""
    records = [json.loads(line) for line in lines.splitlines()]
    assert [r["seq"] for r in records if r["type"] == "step"] == [s.seq for s in demo_trace.history]
    spans = demo_trace.to_otel_spans()
    assert spans == load(*demo).to_otel_spans()
    chats = [s for s in spans if s["name"] == "chat runbook"]
    assert len(chats) == len(demo_trace.usage)
    assert chats[0]["attributes"]["gen_ai.usage.input_tokens"] == demo_trace.usage["input_tokens"].iloc[0]
    tools = [s for s in spans if s["name"].startswith("execute_tool ")]
    assert [s["attributes"]["gen_ai.tool.call.id"] for s in tools] == demo_trace.tool_calls["call_id"].tolist()
    assert len({s["span_id"] for s in spans}) == len(spans)


def test_spans_go_through_the_opentelemetry_sdk_with_stable_ids(demo_trace: Trace) -> None:
    """`export_otel` hands real SDK spans to an exporter: one per step plus the run's, each
    step span a child of the run span, GenAI attributes kept, the same ids on a second export."""
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import SpanKind

    first, second = InMemorySpanExporter(), InMemorySpanExporter()
    assert demo_trace.export_otel(first) == len(demo_trace.history) + 1
    demo_trace.export_otel(second, service_name="noc-copilot")
    spans = first.get_finished_spans()
    ids = [(s.context.trace_id, s.context.span_id) for s in spans]
    assert ids == [(s.context.trace_id, s.context.span_id) for s in second.get_finished_spans()]
    run_span = spans[0]
    assert run_span.name.startswith("invoke_agent ") and run_span.parent is None
    assert all(s.parent is not None and s.parent.span_id == run_span.context.span_id for s in spans[1:])
    chats = [s for s in spans if s.name == "chat runbook"]
    assert len(chats) == len(demo_trace.usage) and all(s.kind == SpanKind.CLIENT for s in chats)
    assert chats[0].attributes["gen_ai.usage.input_tokens"] == demo_trace.usage["input_tokens"].iloc[0]
    assert second.get_finished_spans()[0].resource.attributes["service.name"] == "noc-copilot"
    dicts = demo_trace.to_otel_spans()
    assert [f"{s.context.span_id:016x}" for s in spans] == [d["span_id"] for d in dicts]


def test_plot_returns_a_figure(demo_trace: Trace) -> None:
    """`plot()` builds a Figure, shown nowhere: a bar per step on the timeline's axis (and a band
    per shortened wait), and a bar per model call whose height is its recorded cost."""
    from matplotlib.figure import Figure

    fig = demo_trace.plot()
    assert isinstance(fig, Figure) and len(fig.axes) == 3
    steps, costs, _tokens = fig.axes
    assert len(steps.patches) == len(demo_trace.history) + len(demo_trace.timeline["axis"]["breaks"])
    heights = [p.get_height() for p in costs.patches]
    assert heights == pytest.approx(list(demo_trace.usage["cost_usd"])) and all(h > 0 for h in heights)


def _pack(tmp_path: Path, old: str, new: str) -> Path:
    text = NOC_PACK.read_text()
    assert old in text
    path = tmp_path / "pack.yaml"
    path.write_text(text.replace(old, new))
    return path


def test_what_if_under_the_same_pack_changes_nothing(demo_trace: Trace) -> None:
    """Re-deciding under the pack that recorded the run reproduces every decision."""
    assert demo_trace.what_if(NOC_PACK, tools=NOC_TOOLS).empty
    assert len(demo_trace.what_if(NOC_PACK, tools=NOC_TOOLS, changed_only=False)) == len(demo_trace.decisions)


def test_what_if_finds_exactly_the_decisions_a_changed_rule_affects(demo_trace: Trace, tmp_path: Path) -> None:
    """A deny for the site's region changes the three apply_change decisions and nothing else;
    notifications losing their allow rule changes exactly the notify decision."""
    stricter = _pack(tmp_path, "rules:\n", 'rules:\n  - id: freeze-north\n    match: {tools: [apply_change]}\n'
                     '    when: region == "north"\n    effect: deny\n    reason: change freeze in the north\n')  # fmt: skip
    diff = demo_trace.what_if(stricter, tools=NOC_TOOLS)
    assert diff["seq"].tolist() == APPLY_DECISIONS
    assert set(diff["would_effect"]) == {"deny"} and set(diff["would_rule"]) == {"freeze-north"}
    assert diff["was_effect"].tolist() == ["defer", "defer", "require_approval"]
    quiet = _pack(tmp_path, "match: {tags: [ticket, notify]}", "match: {tags: [ticket]}")
    (row,) = demo_trace.what_if(quiet, tools=NOC_TOOLS).to_dict("records")
    assert (row["tool"], row["was_effect"], row["would_effect"]) == ("notify", "allow", "require_approval")


def test_what_if_needs_no_tools_the_decisions_recorded_their_facts(demo_trace: Trace, tmp_path: Path) -> None:
    """Each decision records the call facts it was made on (tags, side effect, target, region,
    requester), so a what-if without `tools=` re-decides exactly as with the tools' declarations."""
    assert demo_trace.what_if(NOC_PACK).empty
    stricter = _pack(tmp_path, "rules:\n", 'rules:\n  - id: freeze-north\n    match: {tools: [apply_change]}\n'
                     '    when: region == "north"\n    effect: deny\n    reason: change freeze in the north\n')  # fmt: skip
    assert demo_trace.what_if(stricter)["seq"].tolist() == APPLY_DECISIONS


def test_replay_of_the_demo_run(demo_trace: Trace) -> None:
    """The copilot's recorded run replays against the current agent code with no model and no
    tool called."""
    from agentflow_noc.demo import build, make_model

    app = App(demo_trace.app.db)
    try:
        build(app, make_model("runbook"))
        result = demo_trace.replay(app)
    finally:
        app.close()
    assert result.status == "completed" and result.steps == len(demo_trace.history)


def test_runs_filters(demo: tuple[str, str]) -> None:
    """`runs()` filters by tenant, status, time, tool used and approver."""
    db, run_id = demo
    assert runs(db)["run_id"].tolist() == [run_id]
    assert runs(db, tool="apply_change", approved_by="oncall-engineer", tenant="noc-east")["run_id"].tolist() == [
        run_id
    ]
    assert runs(db, approved_by="somebody-else").empty and runs(db, tool="rollback_change").empty
    assert runs(db, status="failed").empty
    row = runs(db).iloc[0]
    assert row["model_calls"] == 10 and row["tool_calls"] == 9 and row["requested_by"] == "demo"
    assert runs(db, since=row["created_at"].timestamp() + 1).empty
    assert runs(db, until=row["created_at"].to_pydatetime())["run_id"].tolist() == []


@pytest.mark.slow
def test_trace_benchmark_runs_and_prints_json(tmp_path: Path) -> None:
    """bench/trace.py still runs and prints its figures (not asserted: they belong in bench/)."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "bench/trace.py", "--reps", "1", "--steps", "50", "--dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    figures = json.loads(out.stdout)
    assert figures["steps"] == 50 and figures["load_and_tables_s"] > 0
    assert set(figures["pass"]) == {"load_and_tables_s"}


RATE_PACK = """
schema_version: 1
name: rate
rules:
  - id: ping-rate
    match: {tools: [ping]}
    effect: limit
    rate: {max_calls: MAX, window: 1h}
  - id: ping-ok
    match: {tools: [ping]}
    effect: allow
"""


def test_what_if_counts_the_usage_other_runs_recorded_before_each_decision(tmp_path: Path) -> None:
    """A rate limit lowered in the what-if pack is judged against the calls the store recorded
    as let through, by every run, up to each decision: the second run's call would have been
    denied, the first run's would not (its own call and later calls do not count against it)."""
    from agentflow import Agent, App
    from agentflow.llm import LangChainChat, ScriptedChatModel, tool
    from agentflow.policy import parse_pack
    from agentflow.testing import TestClock

    @tool(side_effect="none")
    def ping(site: str) -> str:
        """Ping a site."""
        return f"{site} answers"

    clock = TestClock(start=1_767_225_600.0)
    app = App(f"sqlite:///{tmp_path / 'rate.db'}", clock=clock)
    for run_id, site in (("first", "CS-101"), ("second", "CS-102")):
        clock.advance(60)
        model = LangChainChat(
            ScriptedChatModel(responses=[{"tool_calls": [{"name": "ping", "args": {"site": site}}]}, "ok"])
        )
        agent = Agent(
            name=f"pinger-{run_id}", model=model, tools=[ping], policies=parse_pack(RATE_PACK.replace("MAX", "5"))
        )
        agent.start(app, f"ping {site}", run_id=run_id)
        asyncio.run(app.worker(root_id=run_id).run_until_done(run_id))
        assert app.get_run(run_id).status == "completed"
    strict = parse_pack(RATE_PACK.replace("MAX", "1"))
    first, second = load(app, "first"), load(app, "second")
    assert first.what_if(strict).empty
    (row,) = second.what_if(strict).to_dict("records")
    assert (row["tool"], row["was_effect"], row["would_effect"], row["would_rule"]) == (
        "ping",
        "allow",
        "deny",
        "ping-rate",
    )
    first.close(), second.close()
    app.close()
