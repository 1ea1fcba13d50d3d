"""The NOC pack's MCP server (`python -m agentflow_noc.mcp_server`), started as a real process over
stdio and over streamable HTTP on 127.0.0.1, read with the `mcp` SDK's own client.

It offers exactly the pack's read tools, under their names, descriptions and argument schemas,
each annotated read-only / idempotent / closed-world; a call answers what the pack's tool answers
in-process over the same network file; no effect tool is offered and the network's ledger stays
empty whatever is called.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from mcp import Client, StdioServerParameters
from pydantic import BaseModel
from support.http_process import http_process
from support.served import ROOT, env, free_port

import agentflow_noc as noc
from agentflow.llm import tool_facts
from agentflow_noc.mcp_server import read_tools

SERVER = [sys.executable, "-m", "agentflow_noc.mcp_server"]
READS = ["get_kpis", "detect_anomalies", "rank_root_causes", "propose_change", "stage_change", "monitor_kpis"]


@pytest.fixture
def net_path(tmp_path: Path) -> Path:
    """A network file with CS-104 in trouble, made by the pack itself (not through the server)."""
    path = tmp_path / "net.db"
    noc.Network(path).inject("CS-104", "mis_set_handover")
    return path


@asynccontextmanager
async def over_stdio(net_path: Path) -> AsyncIterator[Client]:
    params = StdioServerParameters(command=SERVER[0], args=[*SERVER[1:], "--network-db", str(net_path)], env=env())
    async with Client(params, read_timeout_seconds=30) as client:
        yield client


@pytest.fixture
def http_server(net_path: Path, tmp_path: Path) -> Iterator[str]:
    """The server over streamable HTTP on 127.0.0.1 (the network named by $NOC_DB this time)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    cmd = [*SERVER, "--transport", "http", "--port", str(port)]
    with http_process(cmd, env=env(NOC_DB=str(net_path)), log=tmp_path / "mcp.log", url=url):
        yield url


async def check_server(client: Client, net_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    listed = {t.name: t for t in (await client.list_tools()).tools}
    assert sorted(listed) == sorted(READS)
    for pack_tool in read_tools():
        served = listed[pack_tool.name]
        assert tool_facts(pack_tool).read_only
        assert served.description == pack_tool.description
        args_model = pack_tool.tool_call_schema
        assert isinstance(args_model, type) and issubclass(args_model, BaseModel)
        schema = args_model.model_json_schema()
        assert served.input_schema["properties"] == schema["properties"], pack_tool.name
        assert sorted(served.input_schema.get("required", [])) == sorted(schema.get("required", []))
        hints = served.annotations
        assert hints is not None, pack_tool.name
        assert (hints.read_only_hint, hints.idempotent_hint, hints.open_world_hint) == (True, True, False)
        assert hints.destructive_hint is False

    answer = await client.call_tool("get_kpis", {"site": "CS-104", "window_minutes": 30})
    assert not answer.is_error, answer.content
    monkeypatch.setenv(noc.ENV, str(net_path))  # the pack's tool, in this process, on the same file
    direct = noc.get_kpis.invoke({"site": "CS-104", "window_minutes": 30})
    assert answer.structured_content == direct
    ranked = await client.call_tool("rank_root_causes", {"site": "cs-104"})
    assert ranked.structured_content == noc.rank_root_causes.invoke({"site": "cs-104"})
    assert ranked.structured_content is not None and ranked.structured_content["top_cause"] == "mis_set_handover"

    # The pack's own error text reaches the caller (not a bare "error executing tool").
    unknown = await client.call_tool("get_kpis", {"site": "XX-1"})
    assert unknown.is_error and "unknown site 'XX-1'" in str(unknown.content)
    # No effect tool: asking for one is an error, and the network changed nothing.
    pushed = await client.call_tool("apply_change", {"site": "CS-104", "param": "hoA3Offset", "value": 3})
    assert pushed.is_error
    config = await client.read_resource("noc://sites/CS-104/config")
    assert '"hoA3Offset": 8' in str(config.contents)
    net = noc.Network(net_path)
    assert net.effects() == [] and net.config("CS-104")["hoA3Offset"] == 8


async def test_stdio_serves_the_pack_read_tools(net_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Over stdio: the read tools only, the pack's names/descriptions/schemas, read-only
    annotations, the same answers as in-process, no effect possible."""
    async with over_stdio(net_path) as client:
        assert client.instructions is not None and "Nothing here changes the network" in client.instructions
        await check_server(client, net_path, monkeypatch)


async def test_http_serves_the_pack_read_tools(
    http_server: str, net_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over streamable HTTP on 127.0.0.1 (network from $NOC_DB): the same tools and answers."""
    async with Client(http_server, read_timeout_seconds=30) as client:
        await check_server(client, net_path, monkeypatch)


def test_no_network_is_refused() -> None:
    """Without --network-db or $NOC_DB the server does not start, and says how to fix it."""
    done = subprocess.run(SERVER, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "pass --network-db PATH or set NOC_DB" in done.stderr
