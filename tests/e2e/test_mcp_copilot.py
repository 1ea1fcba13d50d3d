"""The NOC copilot resolves the demo incident with its read tools taken from the NOC pack's MCP
server (`python -m agentflow_noc.mcp_server`, a stdio subprocess over the same simulated
network), its effect tools from the pack, under the pack's policies, with the demo's offline
runbook model: the fix is staged, approved by an operator, applied once, and verified."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from agentflow import App, WorkflowContext
from agentflow.agent import Agent
from agentflow.approvals import Approvals
from agentflow.llm import LangChainChat, tool_facts
from agentflow.mcp import server
from agentflow.policy import load_pack
from agentflow.store import local_id, run_key
from agentflow.testing import RunbookChatModel, TestClock
from agentflow_noc import NOC_TOOLS, configure, policy_path, runbook
from agentflow_noc.demo import SITE, START, TASK, TENANT
from agentflow_noc.env import beside
from agentflow_noc.verdict import copilot_result, register_verify

pytestmark = pytest.mark.slow


def test_the_copilot_resolves_the_incident_with_read_tools_from_mcp(tmp_path: Path) -> None:
    """Every read of the run is a call of the MCP server's tool (pinned once, recorded); the
    change goes through the pack's approval and is pushed once; the incident is verified closed."""
    app = App(f"sqlite:///{tmp_path / 'noc.db'}", clock=TestClock(start=START), inline_wait=0.0)
    net = configure(beside(app.store.backend.path))
    net.inject(SITE, "mis_set_handover")
    reads = [t for t in NOC_TOOLS if tool_facts(t).read_only]
    # The configuration (trusted) keeps the pack's target facts for the reads it takes over MCP.
    facts = {t.name: {"target": tool_facts(t).target, "canonical": tool_facts(t).canonical} for t in reads}
    noc_mcp = server([sys.executable, "-m", "agentflow_noc.mcp_server", "--network-db", net.path],
                     name="noc", trusted=True, overrides=facts)  # fmt: skip
    try:
        agent = Agent(
            name="noc-copilot-mcp",
            model=LangChainChat(RunbookChatModel(runbook=runbook()), name="runbook"),
            tools=[noc_mcp, *(t for t in NOC_TOOLS if not tool_facts(t).read_only)],
            policies=load_pack(policy_path()),
            max_turns=16,
        )
        assert {t.name for t in agent.tools} == {t.name for t in NOC_TOOLS}
        verify = register_verify(app)

        @app.workflow(name="noc.copilot-mcp")
        async def copilot(ctx: WorkflowContext, task: str) -> dict[str, Any]:
            return await copilot_result(ctx, agent, verify, task)

        run_id = run_key(TENANT, "mcp-copilot")
        app.start(copilot, TASK, run_id=local_id(run_id, TENANT), tenant=TENANT, meta={"requested_by": "demo"})
        engineer = Approvals.of(app).add_operator("oncall", tenant=TENANT, roles=["noc-engineer"])[0]
        for _ in range(10):
            asyncio.run(app.worker(root_id=run_id).run_until_blocked(run_id, until_signal_wait=True))
            if app.store.get_run(run_id).terminal:
                break
            for request in Approvals.of(app).list(run_id=run_id):
                Approvals.of(app).approve(request.id, by=engineer, seen_hash=request.args_hash)
        record = app.store.get_run(run_id)
        assert record.status == "completed", record.error
        outcome = json.loads(record.output or "{}")
        assert outcome["incident_open"] is False, outcome.get("verified")
        history = app.history(run_id)
        assert [s.name for s in history if s.kind == "activity" and s.name.startswith("mcp.pin")] == ["mcp.pin:noc"]
        called = [c["name"] for c in outcome["tool_calls"] if c["status"] == "ok"]
        assert {"get_kpis", "rank_root_causes", "stage_change", "apply_change"} <= set(called), called
        assert all(c["decision"]["call"]["server"] == "noc" for c in outcome["tool_calls"] if c["name"] in facts)
        assert len(net.effects(kind="apply", run_prefix=f"{run_id}:")) == 1
    finally:
        noc_mcp.close()
        app.close()
