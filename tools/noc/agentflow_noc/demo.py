"""`agentflow demo`: the NOC copilot on an incident, end to end, crash-safe.

An agent (offline runbook model by default, or a real model with `--model openai:<name>`)
investigates a cell site with a mis-set handover threshold, diagnoses it, stages the fix, waits
for an operator's approval (durably: the run is parked), applies it, monitors the KPIs and opens
a ticket. `--crash-at N` kills the process with SIGKILL after the N-th recorded step; `--resume`
finishes the run, and the summary shows that no model call was repeated and the config was
pushed once (from the network's own audit ledger).

The demo can run again on the same database: each new run re-injects the incident (undoing the
fix of the run before) and runs on a day of its own on the time-skipping clock (the day after
the store's latest demo run, kept in the run's meta), since the policy pack's hourly limits
count across all runs of the store. `--resume` keeps the resumed run's day and network state.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from langchain_core.messages import BaseMessage
from rich.console import Console

from agentflow import App, WorkflowContext
from agentflow.agent import Agent, usage
from agentflow.approvals import ApprovalRequest, Approvals, Principal
from agentflow.llm import ChatModel, LangChainChat, ModelResponse, PriceTable
from agentflow.policy import load_pack
from agentflow.store import local_id, redact_url, run_key
from agentflow.testing import RunbookChatModel, TestClock, configure_crash_point
from agentflow_noc import NOC_TOOLS, configure, policy_path, runbook
from agentflow_noc.env import beside
from agentflow_noc.phases import NOC_PHASES, sites_in
from agentflow_noc.verdict import copilot_result, register_verify

SITE = "CS-101"
TENANT = "noc-east"
OPERATOR = "oncall-engineer"
TASK = f"{SITE} drop rate is high since this morning, investigate and fix it."
WORKFLOW = "noc.copilot"
START = 1_767_225_600.0  # 2026-01-01T00:00Z: the first demo run's clock (later runs: a day later each)
DAY = 86_400.0
#: The offline runbook model is priced like a small hosted model (USD per million input, output
#: tokens), so the demo's runs show what such a run would cost: a trace's cost plot, the console's
#: cost per call and `agentflow runs usage` have figures to show. Other models keep their prices.
RUNBOOK_PRICE = (0.15, 0.60)
console = Console(stderr=True)


class CountingModel:
    """Counts every request that reaches the model (in the network's database, so the count
    survives a crash): the proof that a resumed run re-calls no model."""

    def __init__(self, inner: ChatModel, ledger: str, run_id: str) -> None:
        self.inner, self.ledger, self.run_id = inner, ledger, run_id
        self.name, self.context_window = inner.name, inner.context_window

    async def agenerate(
        self, messages: Sequence[BaseMessage], tools: Sequence[dict[str, Any]] = (), *, max_tokens: int | None = None
    ) -> ModelResponse:
        conn = sqlite3.connect(self.ledger, timeout=30, isolation_level=None)
        conn.execute("CREATE TABLE IF NOT EXISTS model_calls (id INTEGER PRIMARY KEY, run_id TEXT, messages INTEGER)")
        conn.execute("INSERT INTO model_calls (run_id, messages) VALUES (?, ?)", (self.run_id, len(messages)))
        conn.close()
        return await self.inner.agenerate(messages, tools, max_tokens=max_tokens)


def make_model(spec: str) -> ChatModel:
    if spec == "runbook":
        return LangChainChat(RunbookChatModel(runbook=runbook()), name="runbook")
    if spec.startswith("openai:"):
        # Imported here: the openai SDK costs ~0.8 s CPU to import, and the offline runbook
        # (the default) never needs it.
        from agentflow.llm import OpenAIChat

        return OpenAIChat(model=spec.split(":", 1)[1], timeout=180)
    raise SystemExit(f"--model must be 'runbook' or 'openai:<model name>', not {spec!r}")


def copilot(model: ChatModel, mode: str = "react", *, tools: Sequence[Any] = NOC_TOOLS, note: str = "") -> Agent:
    """The NOC copilot agent under the NOC policy pack (the demo's, and the served app's).
    `mode`: react (one tool loop), plan (plan-and-execute) or guided (the runbook's phases);
    `tools` (default the simulated pack's) and `note`, a line added to the instructions."""
    return Agent(
        name="noc-copilot",
        model=model,
        tools=list(tools),
        instructions=(
            "You are a NOC copilot for a 5G network. Investigate with the read tools, find the root "
            "cause, propose and stage one change, apply it (it needs an operator's approval), "
            "monitor the KPIs, then open a ticket and notify the on-call channel. Be brief." + note
        ),
        policies=load_pack(policy_path()),
        max_turns={"react": 16, "guided": 30}.get(mode, 32),
        mode="plan" if mode == "plan" else "react",
        # guided: the runbook's phases, each with its tools and a required call, answers'
        # numbers checked, fenced calls amid prose read as calls (for small local models)
        phases=NOC_PHASES if mode == "guided" else (),
        phase_targets=sites_in if mode == "guided" else None,
        check_numbers=mode == "guided",
        recover="lenient" if mode == "guided" else "strict",
        prices=PriceTable({"runbook": RUNBOOK_PRICE}),
    )


def build(app: App, model: ChatModel, mode: str = "react") -> Any:
    agent = copilot(model, mode)
    verify = register_verify(app)

    @app.workflow(name=WORKFLOW)
    async def copilot_run(ctx: WorkflowContext, task: str) -> dict[str, Any]:
        # The agent's outcome, then the incident verified from the network (verdict.py).
        return await copilot_result(ctx, agent, verify, task)

    return copilot_run


def main(
    *, db: str, crash_at: int | None, resume: bool, approve: str, model: str, quiet: bool, mode: str = "react",
    network: str = "simulated",
) -> dict[str, Any]:  # fmt: skip
    if network == "netconf":  # the closed loop on a NETCONF device's confirmed commit (demo_netconf)
        from agentflow_noc.demo_netconf import main as on_netconf

        return on_netconf(db=db, approve=approve, quiet=quiet, crash_at=crash_at, resume=resume)
    if network != "simulated":
        raise SystemExit(f"--network must be simulated or netconf, not {network!r}")
    chat_model = make_model(model)  # first: a model that cannot work (no API key) starts nothing
    clock = TestClock(start=START)
    app = App(db, clock=clock, inline_wait=0.0)
    try:
        net = configure(beside(app.store.backend.path))
        started = time.perf_counter()
        if resume:
            unfinished = [r for r in app.store.list_runs(limit=50) if r.workflow == WORKFLOW and not r.terminal]
            if not unfinished:
                raise SystemExit(f"no unfinished copilot run to resume in {redact_url(db)}")
            run_id = unfinished[0].id  # the store's key: `noc-east:copilot-...` (run ids are per tenant)
            day = int(unfinished[0].meta_dict().get("demo_day", 0))  # the resumed run keeps its day
        else:
            run_id = run_key(TENANT, f"copilot-{os.getpid()}-{int(time.time() * 1000) % 10_000_000}")
            day = _next_day(app)
            # A new run gets a fresh incident: the previous run's fix is undone (hoA3Offset back to 8).
            net.inject(SITE, "mis_set_handover")
        # Each run lives on a day of its own: the policy pack's hourly rate limits (messages,
        # pushes) count across runs of the store, so runs sharing one day would soon be refused.
        clock.advance_to(START + DAY * day)
        counting = CountingModel(chat_model, net.path, run_id)
        workflow = build(app, counting, mode)

        def say(text: str) -> None:
            if not quiet:
                console.print(text, no_wrap=True, overflow="ellipsis", highlight=False)

        say(
            f"[bold]agentflow demo[/]: NOC copilot, run [cyan]{run_id}[/] on {redact_url(db)}"
            + (" (resuming)" if resume else "")
        )
        if crash_at is not None:
            configure_crash_point(f"after_result:{crash_at}")
        meta = {"requested_by": "demo", "demo_day": day}
        app.start(workflow, TASK, run_id=local_id(run_id, TENANT), tenant=TENANT, meta=meta)
        asyncio.run(_drive(app, run_id, approve, say))
        return _summary(app, net, run_id, counting.ledger, time.perf_counter() - started)
    finally:
        app.close()  # a PostgreSQL store holds connections


def _next_day(app: App) -> int:
    """The day a new demo run starts on: the day after the store's latest demo run (0 at first)."""
    latest = app.store.list_runs(workflow=WORKFLOW, limit=1)
    return int(latest[0].meta_dict().get("demo_day", 0)) + 1 if latest else 0


async def _drive(app: App, run_id: str, approve: str, say: Any) -> None:
    shown: set[int] = set()
    printer = asyncio.create_task(_print_steps(app, run_id, shown, say))
    try:
        while True:
            await app.worker(root_id=run_id).run_until_blocked(run_id, until_signal_wait=True)
            if app.store.get_run(run_id).terminal:
                break
            for request in Approvals.of(app).list(run_id=run_id):
                _decide(app, request, approve, say, shown)
    finally:
        await asyncio.sleep(0.06)
        printer.cancel()
        _show_new(app, run_id, shown, say)


def _brief(text: str | None) -> str:
    """A tool result (recorded as a JSON string of the tool's JSON output) on one short line."""
    value: Any = text
    for _ in range(2):
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                break
    if isinstance(value, dict):
        keep = [
            k
            for k in ("summary", "top_cause", "count", "param", "from", "to", "applied", "ticket_id", "healthy")
            if k in value
        ]
        if keep:
            return ", ".join(f"{k}={value[k]}" for k in keep)
    return json.dumps(value)[:100] if not isinstance(value, str) else value[:100]


def _operator(app: App) -> Principal:
    """The demo's on-call engineer (an operator of the run's tenant, created once per store)."""
    found = [p for p in Approvals.of(app).operators(tenant=TENANT) if p.name == OPERATOR]
    return found[0] if found else Approvals.of(app).add_operator(OPERATOR, tenant=TENANT, roles=["noc-engineer"])[0]


def _decide(app: App, request: ApprovalRequest, approve: str, say: Any, shown: set[int]) -> None:
    _show_new(app, request.run_id, shown, say)
    diff = f" diff {json.dumps(request.diff)}" if request.diff else ""
    say(f"  [yellow]approval needed[/] ({request.rule}) for {request.tool}({json.dumps(request.args)}){diff}")
    engineer = _operator(app)
    if approve == "prompt":
        import typer

        if typer.confirm(f"  approve this change as {engineer.name}?", default=False):
            Approvals.of(app).approve(request.id, by=engineer, comment="approved in the terminal")
        else:
            Approvals.of(app).reject(request.id, by=engineer, comment=typer.prompt("  reason", default="rejected"))
        return
    Approvals.of(app).approve(request.id, by=engineer, comment="demo --approve auto", seen_hash=request.args_hash)
    say(f"  [green]approved[/] by {engineer.name} (--approve auto)")


async def _print_steps(app: App, run_id: str, shown: set[int], say: Any) -> None:
    while True:
        _show_new(app, run_id, shown, say)
        await asyncio.sleep(0.05)


def _show_new(app: App, run_id: str, shown: set[int], say: Any) -> None:
    for step in app.store.load_steps(run_id):
        if step.seq in shown or step.status not in ("completed", "failed"):
            continue
        shown.add(step.seq)
        if step.kind == "llm":
            body = json.loads(step.result or "{}")
            say(
                f"  [dim]{step.seq:>3}[/] model    {step.name}: {body.get('usage', {}).get('input_tokens')} tokens in, finish {body.get('finish_reason')}"
            )
        elif step.kind == "tool":
            args = json.loads(step.args or "{}").get("args", {})
            say(
                f"  [dim]{step.seq:>3}[/] [cyan]tool[/]     {step.name}({', '.join(f'{k}={v}' for k, v in args.items())}) -> {_brief(step.result or step.error)}"
            )
        elif step.kind == "policy":
            decision = json.loads(step.result or "{}")
            say(
                f"  [dim]{step.seq:>3}[/] policy   {step.name}: {decision.get('effect')} ({decision.get('rule')})"
                + (f" until {_hhmm(decision['defer_until'])}" if decision.get("defer_until") else "")
            )
        elif step.kind == "plan":
            steps = json.loads(step.result or "{}").get("steps", [])
            say(
                f"  [dim]{step.seq:>3}[/] [magenta]plan[/]     {step.name}: "
                + " -> ".join(s.get("tool") or "?" for s in steps)
            )
        elif step.kind == "approval":
            body = json.loads(step.result or "{}")
            say(f"  [dim]{step.seq:>3}[/] approval {step.name}: {body.get('status')} {body.get('id')}")
        elif step.kind == "sleep":
            say(f"  [dim]{step.seq:>3}[/] [blue]wait[/]     maintenance window (durable sleep, clock skipped)")


def _hhmm(when: float) -> str:
    return datetime.fromtimestamp(when, UTC).strftime("%H:%M UTC")


def _healthy(outcome: dict[str, Any]) -> bool | None:
    """Whether the sites are healthy under their final config (None if the run never got there):
    the verified verdict, not what the last monitoring said before a later rollback."""
    return None if "incident_open" not in outcome else not outcome["incident_open"]


def _summary(app: App, net: Any, run_id: str, ledger: str, seconds: float) -> dict[str, Any]:
    record = app.store.get_run(run_id)
    steps = app.history(run_id)
    outcome = json.loads(record.output) if record.output else {}
    conn = sqlite3.connect(ledger, timeout=30)
    calls = conn.execute("SELECT count(*) FROM model_calls WHERE run_id = ?", (run_id,)).fetchone()[0]
    conn.close()
    recorded_llm = sum(1 for s in steps if s.kind == "llm" and s.status == "completed")
    # A request that failed (a dead endpoint, a 429) is recorded as a failed attempt and retried:
    # a call made, but no step re-called. Re-called means sent again for a recorded step.
    llm_seqs = {s.seq for s in steps if s.kind == "llm"}
    failed_llm = sum(1 for attempt in app.store.load_attempts(run_id) if attempt[0] in llm_seqs)
    effects = net.effects(run_prefix=f"{run_id}:")
    dup = [d for d in net.duplicate_keys() if str(d.get("key", "")).startswith(f"{run_id}:")]
    used = usage(app, run_id=run_id)
    return {
        "run_id": run_id,
        "status": record.status,
        "outcome": outcome.get("status"),
        "verdict": outcome.get("verdict"),
        "incident_open": outcome.get("incident_open"),
        "error": {k: v for k, v in record.error_dict().items() if k in ("type", "message")} or None,
        "answer": outcome.get("answer"),
        "model_calls": calls,
        "model_steps_recorded": recorded_llm,
        "failed_model_attempts": failed_llm,
        "recalled_model_steps": max(0, calls - recorded_llm - failed_llm),
        "tool_calls": sum(1 for s in steps if s.kind == "tool"),
        "effects_applied": len(effects),
        "config_pushes": sum(1 for e in effects if e["kind"] == "apply"),
        "duplicate_effects": len(dup),
        "kpis_healthy_after": _healthy(outcome),
        "plan_steps_done": sum(1 for p in outcome.get("plan", []) if p.get("status") == "done"),
        "replans": outcome.get("replans", 0),
        "tokens": used.total_tokens,
        "cost_usd": round(used.cost_usd, 6),
        "seconds": round(seconds, 3),
    }
