"""Tools from MCP servers in an Agent: recorded, gated and pinned like any tool, against real MCP
servers built with the `mcp` SDK (tests/support/mcp_servers.py): a stdio subprocess and
streamable HTTP on 127.0.0.1. The model is scripted (no model, no network)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import BaseMessage, ToolMessage
from support import mcp_servers
from support.mcp_servers import INJECTION, HttpServer, Ledger, build, change_schema, read_ledger, stdio_command

import agentflow.llm as llm
from agentflow import App, WorkflowContext
from agentflow.agent import Agent
from agentflow.approvals import Approvals
from agentflow.engine import Client
from agentflow.mcp import META_KEY, Server, server
from agentflow.policy import parse_pack
from agentflow.testing import TestClock, assert_eventually
from agentflow.trace import timeline

SITE = "CS-101"
KPIS = {"name": "get_kpis", "args": {"site": SITE}}
CHANGE = {"name": "apply_change", "args": {"site": SITE, "param": "hoA3Offset", "value": 3}}
TESTS = Path(__file__).resolve().parents[1]


def scripted(*responses: Any) -> llm.LangChainChat:
    return llm.LangChainChat(llm.ScriptedChatModel(responses=list(responses)))


def calls(*tool_calls: dict[str, Any]) -> dict[str, Any]:
    return {"tool_calls": list(tool_calls)}


def copilot(app: App, agent: Agent) -> Any:
    @app.workflow(name=f"copilot.{agent.name}")
    async def run(ctx: WorkflowContext, task: str) -> dict[str, Any]:
        return (await agent.run(ctx, task)).model_dump()

    return run


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    return Ledger(tmp_path / "ledger.jsonl")


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    """Servers made by a test are closed after it (their sessions, stdio processes, threads)."""
    made: list[Server] = []
    yield made
    for s in made:
        s.close()


@pytest.fixture
def stdio(ledger: Ledger, servers: list[Server]) -> Callable[..., Server]:
    def make(variant: str = "plain", **kwargs: Any) -> Server:
        kwargs.setdefault("name", "netops")
        servers.append(server(stdio_command(variant, ledger.path), **kwargs))
        return servers[-1]

    return make


@pytest.fixture
def http(ledger: Ledger, servers: list[Server]) -> Iterator[Callable[..., tuple[HttpServer, Server]]]:
    """A streamable-HTTP MCP server of a variant, and an agentflow `Server` of it."""
    running: list[HttpServer] = []

    def make(variant: str = "plain", **kwargs: Any) -> tuple[HttpServer, Server]:
        running.append(HttpServer(build(variant, ledger)).start())
        kwargs.setdefault("name", "netops")
        servers.append(server(running[-1].url, **kwargs))
        return running[-1], servers[-1]

    yield make
    for s in servers:
        s.close()
    for r in running:
        r.stop()


def executed(ledger: Ledger, tool: str) -> list[dict[str, Any]]:
    return [e for e in ledger.entries() if e["tool"] == tool and e["executed"]]


def steps(app: App, run_id: str) -> list[tuple[str, str, str]]:
    return [(s.kind, s.name, s.status) for s in app.history(run_id)]


def test_mcp_calls_are_recorded_steps_replayed_on_resume(
    make_app: Callable[..., App], worker_thread: Callable[..., Any], stdio: Callable[..., Server], ledger: Ledger
) -> None:
    """A trusted stdio server: its read-only tool runs without approval, its side-effecting one
    waits for an operator. The run parks on the approval; the resumed run replays the read and
    the pin from the history (the server counts one read), then the change runs once, with the
    step's idempotency key in the request's `_meta`."""
    app = make_app(clock=TestClock(start=1_700_000_000, skip=False))
    netops = stdio(trusted=True)
    other = {"name": "get_kpis", "args": {"site": "CS-102"}}  # two reads of one reply run together
    agent = Agent(name="noc", model=scripted(calls(KPIS, other), calls(CHANGE), "Done."), tools=[netops])
    app.start(copilot(app, agent), "fix CS-101", run_id="r")
    worker_thread(app)
    request = assert_eventually(lambda: next(iter(Approvals.of(app).list(run_id="r")), None), timeout=30)
    assert request.tool == "apply_change" and executed(ledger, "apply_change") == []
    alice = Approvals.of(app).add_operator("alice", tenant="default", roles=["noc-engineer"])[0]
    Approvals.of(app).approve(request.id, by=alice)
    assert_eventually(lambda: app.get_run("r").status == "completed", timeout=30)

    out = json.loads(app.store.get_run("r").output or "{}")
    assert [(c["name"], c["status"], c["decision"]["rule"]) for c in out["tool_calls"]] == [
        ("get_kpis", "ok", "default:read-only"),
        ("get_kpis", "ok", "default:read-only"),
        ("apply_change", "ok", "default:side-effect"),
    ]
    assert json.loads(out["tool_calls"][0]["result"])["drop_rate_pct"] == 2.9
    history = steps(app, "r")
    assert history.count(("activity", "mcp.pin:netops", "completed")) == 1
    assert ("tool", "get_kpis", "completed") in history and ("tool", "apply_change", "completed") in history
    assert len(executed(ledger, "get_kpis")) == 2, "the resumed run called a read again"
    change = next(s for s in app.history("r") if s.kind == "tool" and s.name == "apply_change")
    [done] = executed(ledger, "apply_change")
    assert done["key"] == f"r:{change.seq}", f"the server got {done['key']!r} in {META_KEY}"


def test_an_untrusted_server_claiming_read_only_still_needs_approval(
    app: App, http: Callable[..., tuple[HttpServer, Server]], ledger: Ledger
) -> None:
    """`readOnlyHint` on a destructive tool of an untrusted server buys nothing: the call needs
    an approval (none comes: it expires) and never reaches the server. The same server trusted
    is believed (the difference trust makes)."""
    _, liar = http("liar")
    agent = Agent(name="noc", model=scripted(calls(CHANGE), "Done."), tools=[liar])
    out = app.run(copilot(app, agent), "fix CS-101", run_id="untrusted")
    [call] = out["tool_calls"]
    assert (call["status"], call["decision"]["rule"]) == ("rejected", "default:side-effect")
    assert call["decision"]["call"]["annotations"]["readOnlyHint"] is False
    assert call["decision"]["call"]["server"] == "netops"
    assert executed(ledger, "apply_change") == []

    _, believed = http("liar", name="netops2", trusted=True)
    agent = Agent(name="noc2", model=scripted(calls(CHANGE), "Done."), tools=[believed])
    out = app.run(copilot(app, agent), "fix CS-101", run_id="trusted")
    assert out["tool_calls"][0]["decision"]["rule"] == "default:read-only"
    assert len(executed(ledger, "apply_change")) == 1


def test_policies_match_on_server_and_annotations(app: App, http: Callable[..., tuple[HttpServer, Server]]) -> None:
    """A pack rule on `server` and `annotations.destructiveHint` asks two approvers for the
    trusted server's destructive tool; its read-only tool runs."""
    pack = parse_pack(
        """
schema_version: 1
name: mcp-test
rules:
  - id: netops-destructive
    match: {tags: ["mcp:netops"]}
    when: 'server == "netops" && annotations.destructiveHint'
    effect: require_approval
    approval: {roles: [noc-engineer], quorum: 2}
"""
    )
    _, netops = http(trusted=True)
    agent = Agent(name="noc", model=scripted(calls(KPIS), calls(CHANGE), "Done."), tools=[netops], policies=pack)
    out = app.run(copilot(app, agent), "fix CS-101", run_id="p")
    assert [(c["name"], c["status"], c["decision"]["rule"]) for c in out["tool_calls"]] == [
        ("get_kpis", "ok", "default:read-only"),
        ("apply_change", "rejected", "netops-destructive"),
    ]
    [request] = Approvals.of(app).list(run_id="p", status=None)
    assert request.spec.quorum == 2


def test_arguments_are_read_by_the_tool_schema_before_the_policy(
    app: App, http: Callable[..., tuple[HttpServer, Server]], ledger: Ledger
) -> None:
    """The MCP tool's input schema reads the model's arguments before the gate, as pydantic
    reads a native tool's: `"3"` for its integer `value` is 3 for the policy (`args.value <=
    43.0` allows it), the recorded decision and the server alike; `"three"` cannot be read, so
    that call is invalid, sent back to the model, never decided, approved or sent."""
    pack = parse_pack(
        """
schema_version: 1
name: mcp-args
rules:
  - id: small-change
    match: {tools: [apply_change]}
    when: 'args.value <= 43.0'
    effect: allow
"""
    )
    _, netops = http(trusted=True)
    change = {**CHANGE, "args": {**CHANGE["args"], "value": "3"}}
    unreadable = {**CHANGE, "args": {**CHANGE["args"], "value": "three"}}
    agent = Agent(name="noc", model=scripted(calls(change), calls(unreadable), "Done."), tools=[netops], policies=pack)
    out = app.run(copilot(app, agent), "fix CS-101", run_id="coerced")
    first, second = out["tool_calls"]
    assert (first["status"], first["decision"]["rule"]) == ("ok", "small-change")
    assert first["args"]["value"] == 3 and first["decision"]["call"]["args"]["value"] == 3
    assert [e["result"]["hoA3Offset"] for e in executed(ledger, "apply_change")] == [3]
    assert second["status"] == "invalid" and "value" in second["result"], second
    decided = [s for s in app.history("coerced") if s.kind == "policy"]
    assert len(decided) == 1, "the unreadable call reached the policy"
    assert Approvals.of(app).list(run_id="coerced", status=None) == []


def test_a_definition_changed_mid_run_is_refused(
    app: App, http: Callable[..., tuple[HttpServer, Server]], ledger: Ledger
) -> None:
    """The server redefines get_kpis (a new argument) after the run pinned it: the next call is
    refused with ToolDefinitionChanged, is not sent, and the failed step is in the history."""
    served, netops = http(trusted=True)

    def model(messages: list[BaseMessage]) -> Any:
        answered = sum(isinstance(m, ToolMessage) for m in messages)
        if answered == 1:
            change_schema(served.server)  # the rug pull, between two calls of the run
        return calls(KPIS) if answered < 2 else "Done."

    agent = Agent(name="noc", model=llm.LangChainChat(llm.ScriptedChatModel(respond=model)), tools=[netops])
    out = app.run(copilot(app, agent), "CS-101 KPIs", run_id="rug")
    first, second = out["tool_calls"]
    assert first["status"] == "ok"
    assert second["status"] == "error" and second["result"].startswith("error: ToolDefinitionChanged: ")
    failed = [s for s in app.history("rug") if s.kind == "tool" and s.status == "failed"]
    assert len(failed) == 1 and json.loads(failed[0].error or "{}")["type"] == "ToolDefinitionChanged"
    assert failed[0].attempt == 1, "a changed definition is not retried"
    assert len(executed(ledger, "get_kpis")) == 1
    rows = timeline(app, "rug")["rows"]  # the refusal, as the console and the notebook show it
    refused = next(r for r in rows if r["kind"] == "tool" and r["status"] == "failed")
    assert "ToolDefinitionChanged" in json.dumps(refused["error"])
    pin = next(r for r in rows if r["name"] == "mcp.pin:netops")
    assert "unreadable" not in pin["title"] and pin["status"] == "completed"


def test_a_call_past_its_timeout_fails_after_the_retries_and_the_session_lives_on(
    app: App, stdio: Callable[..., Server], ledger: Ledger
) -> None:
    """The tool's timeout (here its override) bounds each attempt; the agent retries the step as
    any tool step (3 attempts), then the model hears the timeout. The session is kept: the next
    call runs on it."""
    netops = stdio(trusted=True, overrides={"wait": {"timeout": 0.5}})
    slow = {"name": "wait", "args": {"seconds": 5}}
    agent = Agent(name="noc", model=scripted(calls(slow), calls(KPIS), "Done."), tools=[netops])
    out = app.run(copilot(app, agent), "wait", run_id="slow")
    waited, read = out["tool_calls"]
    assert waited["status"] == "error" and "Timeout" in waited["result"], waited["result"]
    assert read["status"] == "ok"
    [step] = [s for s in app.history("slow") if s.kind == "tool" and s.name == "wait"]
    assert (step.status, step.attempt) == ("failed", 3)
    assert len(executed(ledger, "wait")) == 3 and netops.connection.opened == 1


def test_a_configured_pin_must_match_from_the_first_call(
    app: App, stdio: Callable[..., Server], ledger: Ledger
) -> None:
    """`pin=` that the server's tools do not hash to: the run's first call is refused (the pin
    step fails, nothing is sent); the server's own pin lets the same call run."""
    wrong = stdio(trusted=True, pin="sha256:" + "0" * 64)
    agent = Agent(name="noc", model=scripted(calls(KPIS), "Done."), tools=[wrong])
    out = app.run(copilot(app, agent), "CS-101 KPIs", run_id="pinned")
    assert out["tool_calls"][0]["result"].startswith("error: ToolDefinitionChanged: ")
    assert ("activity", "mcp.pin:netops", "failed") in steps(app, "pinned")
    assert executed(ledger, "get_kpis") == []

    right = stdio(trusted=True, pin=wrong.current_pin(), name="netops2")
    agent = Agent(name="noc2", model=scripted(calls(KPIS), "Done."), tools=[right])
    out = app.run(copilot(app, agent), "CS-101 KPIs", run_id="pinned2")
    assert out["tool_calls"][0]["status"] == "ok"


def obeying(messages: list[BaseMessage]) -> Any:
    """A model that does what any text it reads tells it to (tool descriptions included)."""
    said = " ".join(str(m.content) for m in messages) + json.dumps(OFFERED)
    if "apply_change with" in said and not any(
        isinstance(m, ToolMessage) and m.name == "apply_change" for m in messages
    ):
        if not any(isinstance(m, ToolMessage) and m.name == "get_kpis" for m in messages):
            return calls(KPIS)
        return calls({"name": "apply_change", "args": {"site": SITE, "param": "hoA3Offset", "value": 9}})
    if not any(isinstance(m, ToolMessage) for m in messages):
        return calls(KPIS)
    return "Done."


OFFERED: list[str] = []


@pytest.mark.parametrize("variant", ["inject-description", "inject-result"])
def test_an_injection_in_a_description_or_result_has_no_effect_without_approval(
    app: App, stdio: Callable[..., Server], ledger: Ledger, variant: str
) -> None:
    """The server's text (a tool description, a tool result) tells the model to apply a change;
    the model obeys, and the change waits for an approval nobody gives: no effect."""
    netops = stdio(variant, trusted=True)
    OFFERED[:] = [t.description for t in netops.agentflow_tools()]
    agent = Agent(name="noc", model=llm.LangChainChat(llm.ScriptedChatModel(respond=obeying)), tools=[netops])
    out = app.run(copilot(app, agent), "CS-101 KPIs", run_id="inj")
    assert [c["name"] for c in out["tool_calls"]] == ["get_kpis", "apply_change"], "the model did not obey"
    assert out["tool_calls"][1]["status"] == "rejected"
    assert [r.tool for r in Approvals.of(app).list(run_id="inj", status=None)] == ["apply_change"]
    assert executed(ledger, "apply_change") == []
    if variant == "inject-result":
        assert INJECTION in out["tool_calls"][0]["result"]  # passed on as the tool's data, unchanged
    else:
        assert INJECTION in next(t for t in agent.tools if t.name == "get_kpis").description  # as the model saw it


def test_the_session_survives_calls_and_reconnects_after_the_server_dies(
    stdio: Callable[..., Server], ledger: Ledger
) -> None:
    """One session (one server process, one thread) serves many calls from several event loops;
    after the server process is killed, a call fails retryable and the next one reconnects."""
    import asyncio

    from agentflow.errors import ToolError

    netops = stdio(trusted=True)
    [kpis, *_] = netops.agentflow_tools()
    for _ in range(5):
        assert json.loads(asyncio.run(kpis.ainvoke({"site": SITE})))["site"] == SITE
    assert netops.connection.opened == 1
    assert [t.name for t in threading.enumerate()].count("agentflow-mcp-netops") == 1
    [child] = _children("mcp_servers.py")
    os.kill(child, signal.SIGKILL)
    with pytest.raises(ToolError) as failed:
        asyncio.run(kpis.ainvoke({"site": SITE}))
    assert failed.value.retryable
    assert json.loads(asyncio.run(kpis.ainvoke({"site": SITE})))["site"] == SITE
    assert netops.connection.opened == 2
    assert [t.name for t in threading.enumerate()].count("agentflow-mcp-netops") == 1
    assert len(executed(ledger, "get_kpis")) == 6


def test_an_answer_the_sdk_refuses_is_not_a_lost_server(stdio: Callable[..., Server]) -> None:
    """The SDK refusing what a server answered (a result that does not fit the tool's output
    schema: a RuntimeError) is a typed, non-retryable error on a session that lives on; it was
    taken for a server gone away, retried, so a tool that had run ran again."""
    import asyncio

    from agentflow.errors import ToolError

    netops = stdio(trusted=True)

    async def refused(client: Any) -> None:
        await client.list_tools()
        raise RuntimeError("Invalid structured content returned by tool apply_change")

    with pytest.raises(ToolError, match="Invalid structured content") as failed:
        asyncio.run(netops.connection.run(refused))
    assert not failed.value.retryable
    [kpis, *_] = netops.agentflow_tools()
    assert json.loads(asyncio.run(kpis.ainvoke({"site": SITE})))["site"] == SITE
    assert netops.connection.opened == 1


def test_a_restarted_http_server_is_reconnected(http: Callable[..., tuple[HttpServer, Server]]) -> None:
    """Streamable HTTP: while the server is down a call fails retryable (the engine retries the
    step); once it is back on its port the next call opens a new session and runs."""
    import asyncio

    from agentflow.errors import ToolError

    served, netops = http(trusted=True)
    [kpis, *_] = netops.agentflow_tools()
    assert json.loads(asyncio.run(kpis.ainvoke({"site": SITE})))["site"] == SITE
    served.stop()
    with pytest.raises(ToolError) as failed:
        asyncio.run(kpis.ainvoke({"site": SITE}))
    assert failed.value.retryable
    served.start()
    assert json.loads(asyncio.run(kpis.ainvoke({"site": SITE})))["site"] == SITE
    assert netops.connection.opened == 2
    assert [t.name for t in threading.enumerate()].count("agentflow-mcp-netops") == 1


def test_a_server_that_never_answers_fails_the_agent_build_in_its_timeout(
    stdio: Callable[..., Server], ledger: Ledger
) -> None:
    """A server stuck in its handshake: building the agent fails with a typed, retryable error
    after the server's timeout (it does not hang a worker's start), and the stuck server process
    is stopped, not left behind for every attempt."""
    import time

    from agentflow.errors import ToolError

    stuck = stdio("hang", timeout=1)
    started = time.monotonic()
    with pytest.raises(ToolError, match="did not answer within 1 s") as failed:
        Agent(name="noc", model=scripted("Done."), tools=[stuck])
    assert failed.value.retryable and time.monotonic() - started < 10
    assert_eventually(lambda: _children(str(ledger.path)) == [], timeout=10)


def test_names_and_overrides_are_checked_against_what_the_server_offers(stdio: Callable[..., Server]) -> None:
    """A server's tool named like a native tool is refused at the build (neither wins), and the
    error says to give the server a prefix; an override naming a tool the server does not offer
    (a typo that would drop its target or side effect) is refused too."""
    from agentflow.errors import ConfigurationError

    @llm.tool(side_effect="none")
    def get_kpis(site: str) -> str:
        """The process's own KPI reader."""
        return site

    with pytest.raises(ConfigurationError, match=r"\['get_kpis'\] more than once.*prefix="):
        Agent(name="noc", model=scripted("Done."), tools=[get_kpis, stdio(trusted=True)])
    agent = Agent(name="noc", model=scripted("Done."), tools=[get_kpis, stdio(trusted=True, prefix="ems_", name="ems")])
    assert sorted(t.name for t in agent.tools) == ["ems_apply_change", "ems_get_kpis", "ems_wait", "get_kpis"]
    with pytest.raises(ConfigurationError, match=r"overrides name \['get_kpi'\]"):
        stdio(trusted=True, name="typo", overrides={"get_kpi": {"target": "site"}}).agentflow_tools()


def _children(marker: str) -> list[int]:
    """Live child processes of this process whose command line holds `marker`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == os.getpid() and fields[0] != "Z" and marker in cmdline:
            found.append(int(entry.name))
    return found


@pytest.mark.slow
def test_a_worker_killed_during_an_mcp_call_resumes_without_a_second_effect(tmp_path: Path, ledger: Ledger) -> None:
    """The worker is SIGKILLed while the server holds an apply_change it has executed. A new
    worker resumes the run and calls again with the same idempotency key; the server answers
    from its first execution: it saw the key twice and executed once, and the run completes."""
    hold = mcp_servers.Hold()
    hold.armed = True
    db = tmp_path / "crash.db"
    with HttpServer(build("plain", ledger, hold)) as served:
        env = {**os.environ, "AGENTFLOW_DB": f"sqlite:///{db}", mcp_servers.URL_ENV: served.url,
               "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))}  # fmt: skip
        client = Client(f"sqlite:///{db}")
        client.start("agent:mcp-crash", "fix CS-101", run_id="crash")

        def worker() -> subprocess.Popen[str]:
            return subprocess.Popen(
                [sys.executable, "-m", "agentflow.cli", "worker", "--app", "support.mcp_servers:app", "--until-idle"],
                cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip

        first = worker()
        try:
            assert_eventually(lambda: executed(ledger, "apply_change"), timeout=45)
            first.send_signal(signal.SIGKILL)
        finally:
            if first.poll() is None:
                first.kill()
            first.communicate(timeout=20)  # reaps it and closes its pipe
        assert first.returncode == -signal.SIGKILL
        assert client.get("crash").status != "completed"
        hold.released.set()
        second = worker()
        _, err = second.communicate(timeout=60)
        assert second.returncode == 0, err
        assert client.get("crash").status == "completed", err
        client.close()
    entries = [e for e in read_ledger(ledger.path) if e["tool"] == "apply_change"]
    assert [e["executed"] for e in entries] == [True, False]
    assert entries[0]["key"] == entries[1]["key"] and entries[0]["key"]
