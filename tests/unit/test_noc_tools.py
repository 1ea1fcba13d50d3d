"""The NOC tool pack: a simulated network whose KPIs are reproducible and respond to the right
change only, and tools whose effects the network's own ledger shows happened exactly once —
when run as real agentflow activities (keys from the engine), across retries, repeated calls,
runs and processes."""

from __future__ import annotations

import json
import multiprocessing
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import BaseMessage, HumanMessage, ToolMessage

import agentflow_noc as noc
from agentflow import App, RetryPolicy, WorkflowContext, current_activity
from agentflow.agent import chat
from agentflow.errors import NotInActivityError
from agentflow.llm import LangChainChat, RunbookChatModel, tool_facts
from agentflow_noc import model

BY_NAME = {t.name: t for t in noc.NOC_TOOLS}
# A change that does not fix each scenario (and may make it worse).
WRONG = {
    "mis_set_handover": [("txPower", 46), ("prbCap", 100), ("backhaul_link", "secondary")],
    "congestion": [("backhaul_link", "secondary"), ("hoA3Offset", 2), ("txPower", 46)],
    "backhaul_fault": [("prbCap", 100), ("hoA3Offset", 3), ("loadBalancing", True)],
    "mis_set_tx_power": [("hoA3Offset", 2), ("prbCap", 100), ("backhaul_link", "secondary")],
}
RIGHT = {
    "mis_set_handover": [("hoA3Offset", 3), ("hoA3Offset", 2)],
    "congestion": [("prbCap", 100), ("loadBalancing", True)],
    "backhaul_fault": [("backhaul_link", "secondary")],
    "mis_set_tx_power": [("txPower", 40), ("txPower", 43)],
}


@pytest.fixture
def net(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> noc.Network:
    """A fresh network file that the tools of this process act on."""
    monkeypatch.setenv(noc.ENV, str(tmp_path / "network.db"))
    return noc.network()


@pytest.fixture
def run_calls(app: App, net: noc.Network) -> Callable[..., list[dict[str, Any]]]:
    """Run [(tool, args), ...] as a workflow whose every tool call is a recorded activity."""

    @app.activity(name="call_tool", retry=RetryPolicy(max_attempts=1))
    def call_tool(name: str, args: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = BY_NAME[name].invoke(args)
        return result

    @app.workflow(name="noc.calls")
    async def calls(ctx: WorkflowContext, steps: list[list[Any]]) -> list[dict[str, Any]]:
        return [await ctx.run(call_tool, name, args) for name, args in steps]

    def run(steps: list[tuple[str, dict[str, Any]]], run_id: str = "run-1") -> list[dict[str, Any]]:
        return app.run(calls, [list(s) for s in steps], run_id=run_id)

    return run


# ------------------------------------------------------------------------------------------
# the network model
# ------------------------------------------------------------------------------------------
def test_kpis_are_reproducible(tmp_path: Path) -> None:
    """Same seed, site and time -> the same series (in another file too); another site, seed or
    time -> another series. Nothing reads the wall clock."""
    a, b = noc.Network(tmp_path / "a.db", seed=7), noc.Network(tmp_path / "b.db", seed=7)
    other = noc.Network(tmp_path / "c.db", seed=8)
    assert a.kpis("CS-104") == b.kpis("CS-104") == a.kpis("CS-104")
    assert a.kpis("CS-104")["series"] != a.kpis("CS-105")["series"]
    assert a.kpis("CS-104")["series"] != other.kpis("CS-104")["series"]
    assert len(a.kpis("CS-104", window_minutes=60)["series"]) == 12
    later = a.kpis("CS-104", at=a.now() + 3600)
    a.set_time(a.now() + 3600)
    assert a.kpis("CS-104") == later != b.kpis("CS-104")
    assert noc.Network(tmp_path / "a.db", seed=99).seed == 7, "an existing file keeps its seed"


def test_topology_and_healthy_baseline(net: noc.Network) -> None:
    """24 sites in four regions; no site shows an anomaly before an incident."""
    assert len(net.sites()) == 24 and net.sites("north")[0] == "CS-101"
    assert {noc.region_of(s) for s in net.sites()} == {"north", "south", "east", "west"}
    assert noc.region_of("CS-999") is None
    for site in net.sites():
        assert model.anomalies(net.seed, site, net.kpis(site)["mean"]) == [], site


@pytest.mark.parametrize("scenario", model.SCENARIOS)
def test_every_site_is_fixed_by_the_right_change_only(tmp_path: Path, scenario: str) -> None:
    """On every site: the incident shows anomalies and is diagnosed as itself; each right change
    clears them; each wrong change leaves them. A wrong txPower change (46 dBm) makes drops worse."""
    for param, value in RIGHT[scenario] + WRONG[scenario]:
        net = noc.Network(tmp_path / f"{param}-{value}.db")
        for site in net.sites():
            net.inject(site, scenario)
            mean = net.kpis(site)["mean"]
            assert model.root_causes(net.seed, site, mean, net.config(site))[0]["cause"] == scenario
            net.apply(site, param, value, key=f"sweep:{site}")
            after = net.kpis(site)["mean"]
            fixed = not model.anomalies(net.seed, site, after)
            assert fixed == ((param, value) in RIGHT[scenario]), (site, scenario, param, value, after)
            if param == "txPower" and scenario != "mis_set_tx_power":
                assert after["drop_rate_pct"] > mean["drop_rate_pct"]


# ------------------------------------------------------------------------------------------
# the tools, as recorded activities
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("scenario", model.SCENARIOS)
def test_diagnose_and_fix_through_the_tools(net: noc.Network, run_calls: Any, scenario: str) -> None:
    """detect -> rank -> propose -> stage -> apply -> monitor: the proposed change fixes the
    incident; the dry run changed nothing; the apply is one effect under the step's key."""
    net.inject("CS-113", scenario)
    site = {"site": "CS-113"}
    found, ranked, proposed = run_calls(
        [("detect_anomalies", site), ("rank_root_causes", site), ("propose_change", {**site, "cause": scenario})]
    )
    assert found["count"] > 0 and ranked["top_cause"] == scenario
    change = {**site, "param": proposed["param"], "value": proposed["to"]}
    staged, applied, watched = run_calls(
        [("stage_change", change), ("apply_change", change), ("monitor_kpis", site)], run_id="run-2"
    )
    assert staged["change_id"] == proposed["change_id"] == applied["change_id"] and staged["dry_run"]
    assert applied["applied"] and applied["previous"] == proposed["from"] == staged["from"]
    assert watched["improved"] and watched["healthy"], watched
    assert [(e["kind"], e["idempotency_key"]) for e in net.effects()] == [("apply", "run-2:2")]
    assert net.duplicate_keys() == []


def test_a_wrong_change_is_seen_not_to_help(net: noc.Network, run_calls: Any) -> None:
    """monitor_kpis after a change that misses the cause: improved is false, anomalies remain."""
    net.inject("CS-102", "backhaul_fault")
    _, watched = run_calls(
        [("apply_change", {"site": "CS-102", "param": "prbCap", "value": 100}), ("monitor_kpis", {"site": "CS-102"})]
    )
    assert not watched["improved"] and not watched["healthy"]
    assert "latency_ms" in {a["kpi"] for a in watched["anomalies"]}


def test_apply_is_idempotent_by_key_across_a_retry(app: App, net: noc.Network) -> None:
    """An attempt that pushed the change and then failed (its result lost) is retried with the
    same key: the network records one apply and a no-op, and the step's result is the first
    push's. Calling the tool twice inside one attempt is deduplicated the same way."""
    attempts: list[str] = []

    @app.activity(name="push", retry=RetryPolicy(max_attempts=3, initial_interval=0))
    def push(args: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = noc.apply_change.invoke(args)
        attempts.append(current_activity().idempotency_key)
        if len(attempts) == 1:
            raise ConnectionError("lost the reply after the push")
        return result

    @app.activity(name="push_twice")
    def push_twice(args: dict[str, Any]) -> list[dict[str, Any]]:
        return [noc.apply_change.invoke(args), noc.apply_change.invoke(args)]

    @app.workflow(name="noc.push")
    async def flow(ctx: WorkflowContext) -> list[Any]:
        retried = await ctx.run(push, {"site": "CS-104", "param": "hoA3Offset", "value": 3})
        twice = await ctx.run(push_twice, {"site": "CS-105", "param": "prbCap", "value": 100})
        return [retried, twice]

    retried, (first, second) = app.run(flow, run_id="idem")
    assert attempts == ["idem:1", "idem:1"]
    assert retried["deduplicated"] and retried["applied"] and retried["effect_id"] == 1
    assert not first["deduplicated"] and second["deduplicated"] and first["effect_id"] == second["effect_id"]
    assert net.applies_per_key() == {"idem:1": 1, "idem:2": 1}
    assert [(n["idempotency_key"], n["reason"]) for n in net.noops()] == [
        ("idem:1", "repeated idempotency key"),
        ("idem:2", "repeated idempotency key"),
    ]
    assert net.duplicate_keys() == []
    assert noc.apply_change.metadata is not None
    assert tool_facts(noc.apply_change).reconcile is not None
    assert tool_facts(noc.apply_change).reconcile("idem:1")["effect_id"] == 1  # type: ignore[misc]
    assert tool_facts(noc.apply_change).reconcile("idem:9") is None  # type: ignore[misc]


def test_ticket_is_deduplicated_per_run(net: noc.Network, run_calls: Any) -> None:
    """Two create_ticket steps of one run open one ticket (one ledger effect, one no-op); another
    run opens its own; a note is added once per key."""
    args = {"site": "CS-107", "summary": "drop rate high", "severity": "major"}
    one, again, note = run_calls(
        [("create_ticket", args), ("create_ticket", {**args, "summary": "again"}),
         ("update_ticket", {"ticket_id": "INC-10001", "note": "hoA3Offset 8 -> 3"})]
    )  # fmt: skip
    (other,) = run_calls([("create_ticket", args)], run_id="run-other")
    assert one["ticket_id"] == again["ticket_id"] == "INC-10001" and again["deduplicated"]
    assert other["ticket_id"] == "INC-10002"
    assert [e["idempotency_key"] for e in net.effects("ticket_create")] == ["run-1:1", "run-other:1"]
    assert [n["idempotency_key"] for n in net.noops("ticket_create")] == ["run-1:2"]
    assert note["notes"] == ["hoA3Offset 8 -> 3"]
    assert net.update_ticket("INC-10001", "hoA3Offset 8 -> 3", key="run-1:3")["deduplicated"]
    assert net.ticket("INC-10001")["notes"] == ["hoA3Offset 8 -> 3"]
    with pytest.raises(ValueError, match="unknown ticket"):
        net.update_ticket("INC-9", "x", key="k")


def test_notify_is_deduplicated_per_run_and_type(net: noc.Network, run_calls: Any) -> None:
    """A run delivers one notification per type; another type or another run delivers again."""
    msg = {"channel": "noc-oncall", "message": "CS-107 fixed"}
    results = run_calls(
        [("notify", {**msg, "notification_type": "change_applied"}),
         ("notify", {**msg, "notification_type": "change_applied"}),
         ("notify", {**msg, "notification_type": "escalation"})]
    )  # fmt: skip
    run_calls([("notify", {**msg, "notification_type": "change_applied"})], run_id="run-other")
    assert [r["delivered"] for r in results] == [True, False, True]
    assert [e["idempotency_key"] for e in net.effects("notify")] == ["run-1:1", "run-1:3", "run-other:1"]
    assert [n["idempotency_key"] for n in net.noops("notify")] == ["run-1:2"]


def test_rollback_restores_the_previous_value(net: noc.Network, run_calls: Any) -> None:
    """rollback_change puts back the value the apply replaced, as a "rollback" effect; rolling
    back again changes nothing (a logged no-op)."""
    before = net.config("CS-120")["prbCap"]
    cid = model.change_id("CS-120", "prbCap", 100)
    undo = ("rollback_change", {"site": "CS-120", "change_id": cid})
    applied, undone, again = run_calls(
        [("apply_change", {"site": "CS-120", "param": "prbCap", "value": 100}), undo, undo]
    )
    assert applied["change_id"] == cid and applied["previous"] == before
    assert undone["rolled_back"] and undone["value"] == before
    assert net.config("CS-120")["prbCap"] == before
    assert not again["rolled_back"] and again["reason"] == "change already rolled back"
    assert [e["kind"] for e in net.effects(run_prefix="run-1")] == ["apply", "rollback"]
    assert net.noops("rollback")[0]["reason"] == "change already rolled back"
    assert net.duplicate_keys() == []


# ------------------------------------------------------------------------------------------
# the ledger reveals double effects (negative controls)
# ------------------------------------------------------------------------------------------
def test_duplicate_keys_reveals_a_double_push(net: noc.Network, run_calls: Any) -> None:
    """Negative control: the same change pushed by two steps of one run (two keys) is a double
    push the ledger shows; so is a key that caused two effects (a broken dedupe). Re-applying
    after a rollback, or after another change superseded it, is not a duplicate."""
    change = {"site": "CS-110", "param": "hoA3Offset", "value": 3}
    cid = model.change_id("CS-110", "hoA3Offset", 3)
    run_calls(
        [("apply_change", change), ("rollback_change", {"site": "CS-110", "change_id": cid}),
         ("apply_change", change), ("apply_change", {**change, "value": 2}), ("apply_change", change)]
    )  # fmt: skip
    assert net.duplicate_keys() == []
    run_calls([("apply_change", change), ("apply_change", change)], run_id="double")
    (dup,) = net.duplicate_keys()
    assert dup["key"] == f"double:{cid}" and dup["reason"] == "change pushed again while in effect"
    with sqlite3.connect(net.path) as conn:  # what a dedupe without a lock could let through
        conn.execute(
            "INSERT INTO effects (kind, site, idempotency_key, detail, at) SELECT kind, site, idempotency_key, "
            "detail, at FROM effects WHERE idempotency_key = 'run-1:1'"
        )
    assert {d["reason"] for d in net.duplicate_keys()} == {
        "change pushed again while in effect",
        "key applied more than once",
    }
    assert net.applies_per_key()["run-1:1"] == 2


def test_effect_tools_take_the_key_from_the_engine_only(net: noc.Network) -> None:
    """Outside an activity an effect tool refuses to run (no key, no push); the key is not in
    any schema the model sees; tool facts declare what policies need."""
    with pytest.raises(NotInActivityError):
        noc.apply_change.invoke({"site": "CS-101", "param": "prbCap", "value": 100})
    assert net.effects() == []
    for t in noc.NOC_TOOLS:
        assert "key" not in json.dumps(t.tool_call_schema.model_json_schema()).replace("_keys", ""), t.name
        assert tool_facts(t).declared and t.description
    facts = tool_facts(noc.apply_change)
    assert (facts.side_effect, facts.compensate, facts.target_of({"site": "CS-119"})) == (
        "idempotent",
        "rollback_change",
        "CS-119",
    )
    assert facts.region_of({"site": "CS-119"}) == "west"
    read_only = {t.name for t in noc.NOC_TOOLS if tool_facts(t).read_only}
    assert read_only == {
        "get_kpis", "detect_anomalies", "rank_root_causes", "propose_change", "stage_change", "monitor_kpis"
    }  # fmt: skip


@pytest.mark.parametrize(
    ("tool", "args", "match"),
    [
        ("stage_change", {"site": "CS-101", "param": "hoA3Offset", "value": 99}, "number in"),
        # the schema lists the parameters (the model sees them too)
        ("stage_change", {"site": "CS-101", "param": "antennaTilt", "value": 2}, "hoA3Offset.*backhaul_link"),
        ("stage_change", {"site": "CS-101", "param": "backhaul_link", "value": "tertiary"}, "one of"),
        ("get_kpis", {"site": "CS-999"}, "unknown site"),
        ("propose_change", {"site": "CS-101", "cause": "sunspots"}, "unknown cause"),
    ],
)
def test_bad_arguments_say_what_is_allowed(net: noc.Network, tool: str, args: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        BY_NAME[tool].invoke(args)


# ------------------------------------------------------------------------------------------
# processes
# ------------------------------------------------------------------------------------------
def _writer(path: str, name: str, count: int, start: Any) -> None:
    """One process's pushes: its own keys, plus keys every writer repeats (at most one wins)."""
    net = noc.Network(path)
    start.wait(30)  # both processes push at the same time
    for i in range(count):
        site = model.all_sites()[i % 24]
        net.apply(site, "prbCap", 60 + i % 40, key=f"{name}:{i}")
        net.apply(site, "txPower", 40, key=f"shared:{i}")
        net.create_ticket(site, f"{name} {i}", "minor", key=f"{name}:t{i}", dedupe=f"shared-ticket:{i % 5}")


@pytest.mark.slow
def test_two_processes_write_one_network(tmp_path: Path) -> None:
    """Two processes pushing at once: every write lands, a key both push is applied once (the
    other's is a no-op), a ticket both open exists once, and the file passes integrity_check."""
    path = str(tmp_path / "network.db")
    noc.Network(path)
    spawn = multiprocessing.get_context("spawn")
    start = spawn.Barrier(2)
    procs = [spawn.Process(target=_writer, args=(path, f"p{n}", 60, start)) for n in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    net = noc.Network(path)
    counts = net.applies_per_key()
    assert all(counts[f"p{n}:{i}"] == 1 for n in range(2) for i in range(60))
    assert all(counts[f"shared:{i}"] == 1 for i in range(60))
    assert len(net.effects("apply")) == 180 and len(net.noops("apply")) == 60
    assert len(net.effects("ticket_create")) == 5 and len(net.noops("ticket_create")) == 115
    assert [d for d in net.duplicate_keys() if d["reason"] == "key applied more than once"] == []
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)


# ------------------------------------------------------------------------------------------
# the runbook, with a model in the loop
# ------------------------------------------------------------------------------------------
@pytest.fixture
def copilot(app: App, net: noc.Network) -> Iterator[Any]:
    """A workflow where the runbook model picks each tool and every tool call is an activity."""
    model_ = LangChainChat(RunbookChatModel(runbook=noc.runbook()), context_window=64_000)

    @app.activity(name="tool")
    def run_tool(name: str, args: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = BY_NAME[name].invoke(args)
        return result

    @app.workflow(name="noc.copilot")
    async def copilot(ctx: WorkflowContext, task: str) -> dict[str, Any]:
        messages: list[BaseMessage] = [HumanMessage(task)]
        calls: list[str] = []
        for _ in range(20):
            response = await chat(ctx, model_, messages, noc.NOC_TOOLS)
            messages.append(response.message)
            if not response.message.tool_calls:
                return {"calls": calls, "answer": response.message.content}
            for call in response.message.tool_calls:
                result = await ctx.run(run_tool, call["name"], call["args"])
                calls.append(call["name"])
                messages.append(ToolMessage(json.dumps(result), tool_call_id=call["id"], name=call["name"]))
        raise AssertionError("the runbook did not finish")

    yield copilot


def test_runbook_resolves_an_incident_once(app: App, net: noc.Network, copilot: Any) -> None:
    """The runbook investigates, diagnoses, stages, applies, monitors, tickets and notifies in
    that order and fixes the site; running the finished run again replays it: no new effect."""
    net.inject("CS-104", "mis_set_handover")
    out = app.run(copilot, "Drop rate alarm on CS-104, please investigate", run_id="noc-1")
    assert out["calls"] == [step["tool"] for step in noc.runbook()]
    assert "Runbook complete for CS-104" in out["answer"]
    assert net.config("CS-104")["hoA3Offset"] == 3
    assert model.anomalies(net.seed, "CS-104", net.kpis("CS-104")["mean"]) == []
    kinds = [e["kind"] for e in net.effects(run_prefix="noc-1")]
    assert kinds == ["apply", "ticket_create", "notify"]
    (ticket,) = net.effects("ticket_create")
    assert "hoA3Offset 8 -> 3" in ticket["detail"]["summary"] and "resolved" in ticket["detail"]["summary"]
    assert ticket["detail"]["severity"] == "major"
    assert app.run(copilot, "Drop rate alarm on CS-104, please investigate", run_id="noc-1") == out
    assert len(net.effects()) == 3 and net.noops() == [] and net.duplicate_keys() == []


@pytest.mark.slow
def test_readme_example_runs(tmp_path: Path) -> None:
    """tools/README.md's example runs as written and prints what the README says it prints."""
    text = (Path(__file__).resolve().parents[2] / "tools" / "README.md").read_text()
    code = text.split("```python\n", 1)[1].split("```", 1)[0]
    env = {k: v for k, v in os.environ.items() if k not in (noc.ENV, "AGENTFLOW_DB")}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    for line in ("CS-104: hoA3Offset 8 -> 3; anomalies 2 -> 0 (open: none); resolved",
                 "[('apply', 'CS-104', 'fix-cs104:2')]"):  # fmt: skip
        assert line in out.stdout and f"# {line}" in code
