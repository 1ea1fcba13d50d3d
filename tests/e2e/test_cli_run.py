"""Starting an agent as a run of its own: `agent.start(app | client, ...)` and `agentflow run ...`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import agentflow.llm as llm
import agentflow_noc as noc
from agentflow import Agent, App, Client
from agentflow.errors import ConfigurationError

APP_MODULE = textwrap.dedent(
    """
    from agentflow import Agent, App
    from agentflow.llm import LangChainChat, RunbookChatModel
    import agentflow_noc as noc

    app = App()  # the store: AGENTFLOW_DB, set by --db
    copilot = Agent(
        name="noc-copilot",
        model=LangChainChat(RunbookChatModel(runbook=noc.runbook()), name="runbook"),
        tools=noc.NOC_TOOLS,
    )
    copilot.register(app)
    """
)


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTFLOW_")}
    env.update({"COLUMNS": "200", "PYTHONPATH": str(cwd), noc.ENV: str(cwd / "net.db")})
    return subprocess.run(
        [sys.executable, "-m", "agentflow.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_agentflow_run_drives_an_agent_through_its_approvals(tmp_path: Path) -> None:
    """`agentflow run` starts the app's agent with tenant and requester recorded, drives it
    until it waits for an approval and says how to give it; an operator approves with their
    token (the requester cannot: four-eyes), and running the same command again (same
    --run-id) attaches to the run and drives it on, until it is resolved with the config pushed
    exactly once."""
    (tmp_path / "copilot_app.py").write_text(APP_MODULE)
    net = noc.configure(tmp_path / "net.db")
    net.inject("CS-101", "mis_set_handover")
    db = f"sqlite:///{tmp_path / 'wf.db'}"
    start = ["run", "CS-101 drop rate is high, investigate", "--app", "copilot_app:app", "--db", db,
             "--tenant", "noc-east", "--requested-by", "alice", "--run-id", "inc-1"]  # fmt: skip
    shown = cli(*start, cwd=tmp_path)
    assert shown.returncode == 5, shown.stderr  # waiting for people (cli/_exit.py)
    assert "waiting for approval apr_" in shown.stdout and "agentflow approvals approve apr_" in shown.stdout
    tokens = {
        name: cli("operators", "add", name, "--tenant", "noc-east", "--role", "noc-engineer", "--db", db,
                  cwd=tmp_path).stdout.strip()
        for name in ("alice", "bob")
    }  # fmt: skip
    for _ in range(5):
        info = json.loads(cli(*start, "--json", cwd=tmp_path).stdout)
        if info["status"] != "waiting":
            break
        listed = json.loads(
            cli("approvals", "list", "--token", tokens["bob"], "--db", db, "--json", cwd=tmp_path).stdout
        )
        assert listed, "the run waits but bob sees nothing to approve"
        for request in listed:
            own = cli(
                "approvals", "approve", request["approval_id"], "--token", tokens["alice"], "--db", db, cwd=tmp_path
            )
            assert own.returncode == 2 and "self_approval" in own.stderr  # alice asked for the run: four-eyes
            sent = cli("approvals", "approve", request["approval_id"], "--token", tokens["bob"], "--seen-hash",
                       request["args_hash"], "--db", db, cwd=tmp_path)  # fmt: skip
            assert sent.returncode == 0 and "approved" in sent.stdout, sent.stderr
    assert info["status"] == "completed", info
    assert info["workflow"] == "agent:noc-copilot" and info["tenant"] == "noc-east"
    assert info["meta"] == {"agent": "noc-copilot", "requested_by": "alice"}
    assert info["output"]["status"] == "answered"  # decoded, not JSON in a string
    assert sum(1 for e in net.effects() if e["kind"] == "apply") == 1
    assert net.duplicate_keys() == []


def test_agentflow_run_names_the_agents_it_knows(tmp_path: Path) -> None:
    """An unknown --agent is refused with the list of agents the app has (exit 2, no run)."""
    (tmp_path / "copilot_app.py").write_text(APP_MODULE)
    out = cli("run", "hi", "--app", "copilot_app:app", "--agent", "nope", "--db", f"sqlite:///{tmp_path / 'wf.db'}",
              cwd=tmp_path)  # fmt: skip
    assert out.returncode == 2
    assert "'nope' is unknown" in out.stderr and "noc-copilot" in out.stderr


@llm.tool(side_effect="none", target="site")
def get_kpis(site: str) -> dict[str, float]:
    """Read the KPIs of a cell site."""
    return {"drop_rate_pct": 2.9}


def scripted_agent(name: str = "kpi-reader") -> Agent:
    model = llm.LangChainChat(
        llm.ScriptedChatModel(responses=[{"tool_calls": [{"name": "get_kpis", "args": {"site": "CS-101"}}]}, "2.9%"])
    )
    return Agent(name=name, model=model, tools=[get_kpis])


def test_agent_start_records_tenant_and_requester(app: App) -> None:
    """`agent.start(app, ...)` registers the agent as `agent:<name>`, records tenant and requester,
    and (like `start`) returns the existing run for an existing run id."""
    agent = scripted_agent()
    handle = agent.start(app, "CS-101 KPIs?", tenant="noc-east", requested_by="alice", run_id="a1")
    info = handle.info()
    assert info.workflow == "agent:kpi-reader" and info.tenant == "noc-east"
    assert info.meta == {"agent": "kpi-reader", "requested_by": "alice"}
    again = agent.start(app, "CS-101 KPIs?", run_id="a1", tenant="noc-east")
    assert not again.created and again.run_id == handle.run_id == "noc-east:a1"
    other = agent.start(app, "CS-101 KPIs?", run_id="a1")  # the same id in another tenant: another run
    assert other.created and other.run_id == "a1"
    out = app.run(app.workflow_named("agent:kpi-reader"), "CS-101 KPIs?", run_id="a1", tenant="noc-east")
    assert out.status == "answered" and out.answer == "2.9%"


def test_agent_start_through_a_client_reaches_the_workers_app(app: App) -> None:
    """`agent.start(client, ...)` records a run of `agent:<name>` without registering anything
    where it is called (a server or a script with no workers); the App whose workers have the
    agent registered drives it to its outcome."""
    agent = scripted_agent()
    agent.register(app)
    client = Client(app.db, clock=app.clock)
    try:
        handle = agent.start(client, "CS-101 KPIs?", tenant="noc-east", requested_by="bob", run_id="c1")
        assert handle.created and client.get(handle.run_id).meta == {"agent": "kpi-reader", "requested_by": "bob"}
    finally:
        client.close()
    out = app.run(app.workflow_named("agent:kpi-reader"), "CS-101 KPIs?", run_id="c1", tenant="noc-east")
    assert out.status == "answered" and out.answer == "2.9%"
    assert app.get_run("noc-east:c1").tenant == "noc-east"


def test_two_agents_cannot_share_a_name_on_one_app(app: App) -> None:
    """Registering a second, different agent under a name already taken is a configuration
    error (its runs would be driven by the other agent's code); the same agent is idempotent."""
    first = scripted_agent()
    assert first.register(app) is first.register(app)
    with pytest.raises(ConfigurationError, match="another agent named 'kpi-reader'"):
        scripted_agent().register(app)
