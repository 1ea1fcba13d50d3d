"""The NETCONF tool pack (`agentflow_noc.netconf_tools`) in an agent run against a real
netconfd behind sshd: the device validates, the device refuses, the device confirms.

A scripted model stages a value outside the YANG range (the device refuses it; the model reads
the device's words as a tool error and the run goes on), stages and applies the fix (a
confirmed commit), and confirms it. The device's running config, its change record and its
audit log say what happened.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from support.netconf import INCIDENT_SITE, NetconfServer, initial_cells, netconf_device

from agentflow import App
from agentflow.agent import Agent
from agentflow.errors import ToolError
from agentflow.llm import LangChainChat, tool_facts
from agentflow.policy import parse_pack
from agentflow.testing import ScriptedChatModel
from agentflow_noc import tools as simulated
from agentflow_noc.netconf import Device, cell_configs
from agentflow_noc.netconf_tools import NETCONF_TOOLS

pytestmark = pytest.mark.slow
SITE = INCIDENT_SITE


@pytest.fixture
def device(monkeypatch: pytest.MonkeyPatch) -> Iterator[NetconfServer]:
    with netconf_device(monkeypatch) as server:
        yield server


def call(name: str, **args: Any) -> dict[str, Any]:
    return {"tool_calls": [{"name": name, "args": args}]}


def test_an_agent_reads_the_devices_refusal_and_fixes_the_cell_with_one_confirmed_commit(
    device: NetconfServer, tmp_path: Path
) -> None:
    """stage_change(20 dB) is refused by the device (value not in range): the model gets the
    refusal as a tool error, not the run; the 3 dB fix is staged (the diff from running),
    applied as a confirmed commit and confirmed: one commit to the cell, state confirmed."""
    script = [
        call("get_config", site=SITE),
        call("stage_change", site=SITE, param="hoA3Offset", value=20),
        call("stage_change", site=SITE, param="hoA3Offset", value=3),
        call("apply_change", site=SITE, param="hoA3Offset", value=3),
        call("confirm_change", site=SITE, change_id="{change_id}"),
        "Fixed: hoA3Offset 8 -> 3, confirmed on the device.",
    ]

    def respond(messages: list[Any]) -> Any:
        turn = sum(1 for m in messages if type(m).__name__ == "AIMessage")
        step = script[min(turn, len(script) - 1)]
        if isinstance(step, dict) and step["tool_calls"][0]["name"] == "confirm_change":
            applied = json.loads(str(messages[-1].content))  # apply_change's result
            step = call("confirm_change", site=SITE, change_id=applied["change_id"])
        return step

    rules = [{"id": "lab", "match": {"tools": ["apply_change", "confirm_change"]}, "effect": "allow"}]
    pack = parse_pack(json.dumps({"schema_version": 1, "name": "netconf-lab", "rules": rules}))
    agent = Agent(name="netconf-copilot", model=LangChainChat(ScriptedChatModel(respond=respond)),
                  tools=NETCONF_TOOLS, policies=pack)  # fmt: skip
    app = App(f"sqlite:///{tmp_path / 'runs.db'}")
    try:
        outcome = app.run(agent.register(app), f"{SITE} drop rate is high: fix it")
    finally:
        app.close()
    assert outcome.status == "answered"
    by_name = [(c.name, c.status) for c in outcome.tool_calls]
    assert by_name == [("get_config", "ok"), ("stage_change", "error"), ("stage_change", "ok"),
                       ("apply_change", "ok"), ("confirm_change", "ok")]  # fmt: skip
    refused = outcome.tool_calls[1].result
    assert "ToolError" in refused and "not in range" in refused and "hoA3Offset" in refused
    staged = json.loads(outcome.tool_calls[2].result)
    assert (staged["from"], staged["to"], staged["diff"]) == (8, 3, {"hoA3Offset": {"from": 8, "to": 3}})
    assert device.device.config(SITE)["hoA3Offset"] == 3
    record = device.device.last_change()
    assert record is not None and record["state"] == "confirmed"
    assert len(device.cell_transactions(SITE)) == 1


def test_the_pack_declares_its_tools_as_the_simulated_pack_does(device: NetconfServer) -> None:
    """Tools that mean the same have the same names, argument schemas and facts as the
    simulated pack's; the exporter's config source reads every cell from the device; a device
    whose host key is not the pinned one is refused before anything is sent."""
    mine = {t.name: t for t in NETCONF_TOOLS}
    for name in ("stage_change", "apply_change", "rollback_change"):
        theirs = getattr(simulated, name)
        assert mine[name].args == theirs.args, name
        facts, their_facts = tool_facts(mine[name]), tool_facts(theirs)
        assert (facts.side_effect, facts.target, facts.compensate) == (
            their_facts.side_effect, their_facts.target, their_facts.compensate), name  # fmt: skip
    assert cell_configs() == initial_cells()
    other_key = (device.root / "user_key.pub").read_text().split()[1]  # a valid key, not the host's
    impostor = replace(device.settings, hostkey=other_key)
    with pytest.raises(ToolError, match="Unknown host key") as refused:
        Device(impostor).configs()
    assert not refused.value.retryable


def test_a_device_that_stops_answering_is_a_retryable_error_in_bounded_time(device: NetconfServer) -> None:
    """netconfd frozen (SIGSTOP) behind a live sshd: the session never gets its hello. The call
    fails within about its timeout as a retryable ToolError (a worker is not held forever), and
    works again once the device answers."""
    netconfd = next(p for p in device._procs if "netconfd" in str(p.args[0]))
    impatient = Device(replace(device.settings, timeout=2.0))
    netconfd.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(ToolError) as hung:
            impatient.configs()
        assert hung.value.retryable
        assert time.monotonic() - started < 10
    finally:
        netconfd.send_signal(signal.SIGCONT)
    assert impatient.config(SITE)["hoA3Offset"] == 8
