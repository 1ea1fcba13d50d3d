"""`agentflow mcp serve`: another agent (the `mcp` SDK's client) starts a NOC copilot run through
it and cannot approve what the run stages; a person can. Real processes: the MCP server (stdio,
and streamable HTTP on 127.0.0.1), an `agentflow worker` driving the run, `agentflow approvals
approve` deciding it.

The MCP server runs no worker: runs are driven by the app's workers (here `agentflow worker`), so
a run started over MCP lives on when the calling agent goes away.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from support.http_process import http_process
from support.served import CLI, NOC_APP, ROOT, Served, free_port, terminate
from support.served import env as cli_env

from agentflow import Client as RunsClient
from agentflow.approvals import ApprovalRequest, Approvals
from agentflow.server._mcp import TOOLS

TENANT = "noc-east"
TASK = "CS-101 drop rate is high"
#: Tools an agent might try to decide with; none exists.
INVENTED = ["approve", "decide", "reject", "approve_run", "approvals_approve", "signal", "vote"]


@pytest.fixture
def served(tmp_path: Path) -> Served:
    """A store and a network (CS-101 in trouble, the clock in the maintenance window) with two
    operators of noc-east: `bob` (noc-engineer) decides; `ops-agent` is the token an agent uses."""
    setup = Served(tmp_path)
    setup.add_operators({"bob": "noc-engineer", "ops-agent": "noc-engineer"}, tenant=TENANT)
    return setup


def server_env(s: Served) -> dict[str, str]:
    return cli_env(NOC_DB=str(s.net_path), NOC_INCIDENTS=s.incidents, NOC_CLOCK_START=s.clock_start)


def mcp_serve(s: Served, *extra: str) -> list[str]:
    return [*CLI, "mcp", "serve", "--app", NOC_APP, "--db", s.db, "--tenant", TENANT, *extra]


@pytest.fixture
def worker(served: Served) -> Iterator[Callable[[], subprocess.Popen[bytes]]]:
    """Start `agentflow worker` on the store (stopped at the end of the test)."""
    procs: list[subprocess.Popen[bytes]] = []

    def start() -> subprocess.Popen[bytes]:
        with (served.tmp / "worker.log").open("ab") as log:
            proc = subprocess.Popen([*CLI, "worker", "--app", NOC_APP, "--db", served.db], cwd=ROOT,
                                    env=server_env(served), stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
        procs.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in procs:
            terminate(proc)


async def call(client: Client, tool: str, **args: Any) -> dict[str, Any]:
    answer = await client.call_tool(tool, args)
    assert not answer.is_error, answer.content
    assert answer.structured_content is not None
    return answer.structured_content


async def until_status(client: Client, run_id: str, want: str, log: Path, timeout: float = 45) -> dict[str, Any]:
    """Poll run_status over MCP until the run is `want` (a worker drives it meanwhile)."""
    deadline = time.monotonic() + timeout
    while True:
        status = await call(client, "run_status", run_id=run_id)
        if status["status"] == want:
            return status
        assert status["status"] not in ("failed", "cancelled"), status
        if time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            raise AssertionError(f"run {run_id} still {status['status']} after {timeout}s; worker log:\n{tail}")
        await _sleep(0.1)


async def _sleep(seconds: float) -> None:
    import anyio

    await anyio.sleep(seconds)


def pending(s: Served) -> list[ApprovalRequest]:
    with RunsClient(s.db) as runs:
        return Approvals(runs.store, runs.clock).list(tenant=TENANT, status="pending")


@asynccontextmanager
async def over_stdio(s: Served) -> AsyncIterator[Client]:
    cmd = mcp_serve(s, "--requested-by", "ops-bot")
    params = StdioServerParameters(command=cmd[0], args=cmd[1:], env=server_env(s), cwd=str(ROOT))
    async with Client(params, read_timeout_seconds=60) as client:
        yield client


@pytest.mark.slow
async def test_an_agent_starts_a_run_over_mcp_and_cannot_approve_it(
    served: Served, worker: Callable[[], subprocess.Popen[bytes]]
) -> None:
    """Over stdio: the tool list has no decision tool; start_run with a run id is idempotent; a
    worker drives the copilot to its staged apply_change; list_pending_approvals shows it; no
    invented decision tool exists, and after every offered tool was called the run still waits
    and the request has no vote; `agentflow approvals approve` by a person lets it finish, and
    run_status reports it completed with the change applied once."""
    async with over_stdio(served) as client:
        assert client.instructions is not None and "Approvals stay with people" in client.instructions
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert sorted(tools) == sorted(TOOLS)
        verbs = ("approv", "reject", "decid", "vote", "signal", "edit", "expire")
        assert not [n for n in tools if n.startswith(verbs)]
        # Every tool but start_run only reads; start_run with a run id is idempotent.
        hints = {n: t.annotations for n, t in tools.items()}
        assert [n for n, h in hints.items() if h is None or not h.read_only_hint] == ["start_run"]
        assert hints["start_run"] is not None and hints["start_run"].idempotent_hint

        started = await call(client, "start_run", task=TASK, run_id="mcp-1")
        assert (started["created"], started["id"], started["requested_by"]) == (True, "mcp-1", "ops-bot")
        again = await call(client, "start_run", task=TASK, run_id="mcp-1")
        assert (again["created"], again["id"]) == (False, "mcp-1")

        worker()
        waiting = await until_status(client, "mcp-1", "waiting", served.tmp / "worker.log")
        assert waiting["open_approvals"] == 1 and "approval" in (waiting["waiting_on"] or "")
        (request,) = (await call(client, "list_pending_approvals"))["approvals"]
        assert (request["run_id"], request["tool"], request["status"]) == ("mcp-1", "apply_change", "pending")
        assert request["deciding_roles"] == ["noc-engineer"] and "not through MCP" in request["decided_by"]

        # Try to decide anyway: invented tools fail; every offered tool leaves the request alone.
        for name in INVENTED:
            tried = await client.call_tool(name, {"approval_id": request["approval_id"], "run_id": "mcp-1"})
            assert tried.is_error, name
        await call(client, "start_run", task=f"approve {request['approval_id']}", run_id="mcp-1")
        await call(client, "run_summary", run_id="mcp-1")
        await call(client, "list_pending_approvals")
        assert (await call(client, "run_status", run_id="mcp-1"))["status"] == "waiting"
        (still,) = pending(served)
        assert (still.id, still.status, still.votes) == (request["approval_id"], "pending", [])

        # A person decides, with their own token.
        cmd = [*CLI, "approvals", "approve", request["approval_id"], "--token", served.tokens["bob"], "--db", served.db]
        done = subprocess.run(cmd, cwd=ROOT, env=server_env(served), capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        finished = await until_status(client, "mcp-1", "completed", served.tmp / "worker.log")
        assert finished["open_approvals"] == 0 and finished["answer"]

        summary = await call(client, "run_summary", run_id="mcp-1")
        calls = [(c["tool"], c["status"]) for c in summary["tool_calls"]]
        assert ("apply_change", "completed") in calls and calls[0] == ("get_kpis", "completed")
        assert all(e["untrusted"] for e in summary["events"] if e["kind"] in ("model", "tool"))
        assert "answer" in summary["untrusted"]
    served.assert_one_apply()


@pytest.fixture
def http_server(served: Served) -> Iterator[str]:
    """`agentflow mcp serve --transport http` on a free port of 127.0.0.1; its MCP endpoint."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    cmd = mcp_serve(served, "--transport", "http", "--port", str(port))
    with http_process(cmd, env=server_env(served), log=served.tmp / "mcp.log", url=url,
                      ready=lambda: httpx.post(url, json={}, timeout=2)):  # fmt: skip
        yield url


@asynccontextmanager
async def over_http(url: str, token: str) -> AsyncIterator[Client]:
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=60) as http:
        async with Client(streamable_http_client(url, http_client=http), read_timeout_seconds=60) as client:
            yield client


@pytest.mark.slow
async def test_http_needs_an_operator_token_of_the_tenant(served: Served, http_server: str) -> None:
    """Over streamable HTTP: a request without a token, with a forged one or with a token of
    another tenant is refused (401) before any tool runs, each token refusal audited; with an
    operator token of the tenant,
    the run started is requested by that operator, and still no tool decides."""
    initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
                  "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                             "clientInfo": {"name": "t", "version": "0"}}}  # fmt: skip
    headers = {"Accept": "application/json, text/event-stream"}
    assert httpx.post(http_server, json=initialize, headers=headers, timeout=10).status_code == 401
    forged = {**headers, "Authorization": "Bearer aft_forged"}
    assert httpx.post(http_server, json=initialize, headers=forged, timeout=10).status_code == 401
    with RunsClient(served.db) as runs:
        _, elsewhere = Approvals(runs.store, runs.clock).add_operator("eve", tenant="noc-west", roles=["noc-engineer"])
    other = {**headers, "Authorization": f"Bearer {elsewhere}"}
    assert httpx.post(http_server, json=initialize, headers=other, timeout=10).status_code == 401

    with RunsClient(served.db) as runs:
        refused = [e.reason for e in Approvals(runs.store, runs.clock).audit() if e.action == "authenticate"]
    assert len([r for r in refused if r.endswith("(MCP)")]) == 2, refused  # the forged token, eve's

    async with over_http(http_server, served.tokens["ops-agent"]) as client:
        assert sorted(t.name for t in (await client.list_tools()).tools) == sorted(TOOLS)
        started = await call(client, "start_run", task=TASK, run_id="http-1")
        assert (started["created"], started["requested_by"], started["tenant"]) == (True, "ops-agent", TENANT)
        assert (await client.call_tool("approve", {"approval_id": "x"})).is_error
        missing = await client.call_tool("run_status", {"run_id": "no-such-run"})
        assert missing.is_error and "no run 'no-such-run' in tenant 'noc-east'" in str(missing.content)


def test_the_mcp_server_needs_no_fastapi() -> None:
    """`agentflow.server.mcp_server` imports with the `mcp` extra alone: FastAPI (the `server`
    extra of `agentflow serve`) is not loaded by it, nor by the `agentflow` command."""
    code = (
        "import sys; import agentflow.cli; from agentflow.server import mcp_server; "
        "assert 'fastapi' not in sys.modules, 'fastapi loaded'"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=cli_env(), capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr


async def test_start_run_is_bounded_and_tenants_see_their_own_runs(make_app: Callable[..., Any]) -> None:
    """In-process (the SDK's in-memory client): start_run takes the JSON API's limits (a task of
    1-4,000 characters, a run id of letters, digits, '.', '_', '-'), refused before a run exists;
    two tenants may each have a run `same`, and neither's server reads or lists the other's."""
    from agentflow.agent import Agent
    from agentflow.llm import LangChainChat, ScriptedChatModel
    from agentflow.server import mcp_server

    app = make_app()
    Agent(name="noc", model=LangChainChat(ScriptedChatModel(responses=["ok"])), tools=[]).register(app)
    async with Client(mcp_server(app, tenant="east")) as east, Client(mcp_server(app, tenant="west")) as west:
        for args in [
            {"task": "x" * 4001},
            {"task": ""},
            {"task": "t", "run_id": "west:same"},
            {"task": "t", "run_id": "a/b"},
        ]:
            refused = await east.call_tool("start_run", args)
            assert refused.is_error, args
        assert app.store.list_runs() == [], "a refused start made a run"
        assert (await call(east, "start_run", task="east's task", run_id="same"))["created"]
        assert (await call(west, "start_run", task="west's task", run_id="same"))["created"]
        assert (await call(east, "run_status", run_id="same"))["task"] == "east's task"
        assert (await call(west, "run_summary", run_id="same"))["task"] == "west's task"
        only_east = (await call(east, "start_run", task="east only"))["id"]
        missing = await west.call_tool("run_status", {"run_id": only_east})
        assert missing.is_error and "no run" in str(missing.content)
        assert (await call(west, "list_pending_approvals"))["approvals"] == []


async def test_run_summary_comes_in_pages(make_app: Callable[..., Any]) -> None:
    """A long run's summary is paged (100 steps at a time, `next_after` to go on), so a run of
    thousands of steps cannot flood the calling agent's context; the pages hold every step once."""
    from agentflow import WorkflowContext
    from agentflow.server import mcp_server

    app = make_app()

    @app.activity(name="tick")
    def tick(i: int) -> int:
        return i

    @app.workflow(name="long")
    async def long(ctx: WorkflowContext) -> str:
        for i in range(150):
            await ctx.run(tick, i)
        return "done"

    await app.run_async(long, run_id="long")
    async with Client(mcp_server(app)) as client:
        first = await call(client, "run_summary", run_id="long")
        assert len(first["events"]) == 100 and first["more"] and first["next_after"] == first["events"][-1]["seq"]
        rest = await call(client, "run_summary", run_id="long", after=first["next_after"])
        assert not rest["more"] and rest["next_after"] is None
        seen = [e["seq"] for e in first["events"] + rest["events"]]
        assert len(seen) == len(set(seen)) == len([s for s in app.history("long") if s.kind == "activity"])


async def test_pending_approvals_are_the_tenants_own(
    make_app: Callable[..., Any], worker_thread: Callable[..., Any]
) -> None:
    """A run of tenant east stages a change: east's server lists its approval, west's lists
    nothing and cannot read the run, though both name the same run id."""
    import anyio

    from agentflow.agent import Agent
    from agentflow.llm import LangChainChat, ScriptedChatModel, tool
    from agentflow.server import mcp_server
    from agentflow.testing import TestClock

    @tool(side_effect="non_idempotent")
    def push(site: str) -> str:
        """Push a change to a site."""
        return site

    app = make_app(clock=TestClock(start=1_700_000_000, skip=False))
    staged = {"tool_calls": [{"name": "push", "args": {"site": "CS-101"}}]}
    Agent(name="noc", model=LangChainChat(ScriptedChatModel(responses=[staged, "ok"])), tools=[push]).register(app)
    worker_thread(app)
    async with Client(mcp_server(app, tenant="east")) as east, Client(mcp_server(app, tenant="west")) as west:
        await call(east, "start_run", task="push CS-101", run_id="r1")
        for _ in range(300):
            listed = (await call(east, "list_pending_approvals"))["approvals"]
            if listed:
                break
            await anyio.sleep(0.1)
        assert [(a["run_id"], a["tool"]) for a in listed] == [("r1", "push")]
        assert (await call(west, "list_pending_approvals"))["approvals"] == []
        assert (await west.call_tool("run_summary", {"run_id": "r1"})).is_error
