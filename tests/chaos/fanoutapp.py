"""The App the fan-out tests run in (`--app fanoutapp:app` for worker subprocesses).

A parent workflow sweeps cell sites: it fans out one child run of the `site-check` agent per
site (offline runbook model: read the KPIs, detect anomalies, open a sweep ticket) and joins the
outcomes. The tools act on the NOC network named by `NOC_DB`, whose audit ledger shows every
ticket with the idempotency key that opened it.
"""

from __future__ import annotations

from typing import Any

from langchain_core.tools import BaseTool

from agentflow import Agent, App, WorkflowContext
from agentflow.agent import Decision, default_policy
from agentflow.llm import LangChainChat, RunbookChatModel, ToolFacts
from agentflow_noc import create_ticket, detect_anomalies, get_kpis

SITES = [f"CS-{101 + i}" for i in range(20)]
RUNBOOK = [
    {"tool": "get_kpis", "args": {"site": "{site}", "window_minutes": 60}},
    {"tool": "detect_anomalies", "args": {"site": "{site}"}},
    {"tool": "create_ticket",
     "args": {"site": "{site}", "summary": "KPI sweep", "severity": "{result.detect_anomalies.severity}",
              "ticket_type": "sweep"}},
]  # fmt: skip


def sweep_policy(ctx: WorkflowContext, tool: BaseTool, facts: ToolFacts, args: dict[str, Any]) -> Decision:
    """Sweep tickets are pre-approved; everything else follows the default."""
    if tool.name == "create_ticket":
        return Decision(effect="allow", rule="sweep:tickets")
    return default_policy(ctx, tool, facts, args)


site_check = Agent(
    name="site-check",
    model=LangChainChat(RunbookChatModel(runbook=RUNBOOK), name="runbook"),
    tools=[get_kpis, detect_anomalies, create_ticket],
    policies=sweep_policy,
    max_turns=6,
)


def make_app(db: str | None = None) -> App:
    """An App with the sweep registered (db None: `AGENTFLOW_DB`)."""
    app = App(db, inline_wait=0.0, lease_ttl=10.0)
    site_check.register(app)

    @app.workflow(name="noc.sweep")
    async def sweep(ctx: WorkflowContext, sites: list[str], max_concurrency: int = 5) -> dict[str, str]:
        tasks = {site: f"Sweep {site}: check its KPIs and open a sweep ticket." for site in sites}
        joined = await site_check.fan_out(ctx, tasks, max_concurrency=max_concurrency)
        return {site: outcome.status for site, outcome in joined.items()}

    return app


app = make_app()
