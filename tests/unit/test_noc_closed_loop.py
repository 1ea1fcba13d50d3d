"""The NOC closed loop as a coded workflow: it waits (durably, on the engine clock) for the
maintenance window, applies once, monitors the KPIs after the change, and commits or rolls back;
the network's own ledger shows every effect happened once, in order, and re-driving a run
changes nothing."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import agentflow_noc as noc
from agentflow import App, RunFailedError, Workflow
from agentflow.agent import Decision, approval_signal
from agentflow.approvals import Approvals
from agentflow.testing import TestClock, assert_eventually
from agentflow_noc import model
from agentflow_noc.closed_loop import Approval, window_opens

Loop = Workflow[..., noc.ClosedLoopResult]
START = datetime.fromtimestamp(1_700_000_000, UTC)  # conftest's TestClock start: 2023-11-14 22:13:20Z
WINDOW = datetime(2023, 11, 15, 2, tzinfo=UTC)  # the first 02:00 UTC maintenance window after START


@pytest.fixture
def net(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> noc.Network:
    """A fresh network file the NOC tools of this process act on (NOC_DB restored afterwards)."""
    monkeypatch.setenv(noc.ENV, "")  # configure() sets it for good; monkeypatch puts it back
    return noc.configure(tmp_path / "network.db")


@pytest.fixture
def loop(app: App, net: noc.Network) -> Loop:
    return noc.register_closed_loop(app)


def drive_until_blocked(app: App, run_id: str) -> dict[str, Any]:
    """Drive the run until it waits for a signal (its approval); return what it waits on."""
    asyncio.run(app.worker(root_id=run_id).run_until_blocked(run_id, until_signal_wait=True))
    waiting = app.get_run(run_id).waiting_on
    assert waiting is not None
    return waiting


def decide(app: App, run_id: str, name: str, *, approve: bool, comment: str) -> Any:
    """An operator of the run's tenant decides the run's open approval request."""
    (request,) = Approvals.of(app).list(run_id=run_id)
    who = Approvals.of(app).add_operator(name, tenant="default", roles=["noc-engineer"])[0]
    if approve:
        return Approvals.of(app).approve(request.id, by=who, comment=comment)
    return Approvals.of(app).reject(request.id, by=who, comment=comment)


def kinds(net: noc.Network, run_id: str) -> list[str]:
    return [e["kind"] for e in net.effects(run_prefix=f"{run_id}:")]


def test_window_opens() -> None:
    """Before the window: today's opening; inside it: its own opening (apply at once); after
    it: tomorrow's; a window that spans midnight is found from the next day too."""
    day = datetime(2026, 3, 1, tzinfo=UTC)
    assert window_opens(day.replace(hour=1), 2) == day.replace(hour=2)
    assert window_opens(day.replace(hour=3), 2) == day.replace(hour=2)
    assert window_opens(day.replace(hour=6), 2) == day.replace(hour=2) + timedelta(days=1)
    assert window_opens(day.replace(hour=1), 23, hours=4) == day.replace(hour=23) - timedelta(days=1)
    assert window_opens(START, 2) == WINDOW


def test_right_diagnosis_waits_for_the_window_applies_once_and_commits(app: App, net: noc.Network, loop: Loop) -> None:
    """Right diagnosis: the run parks on its approval, then sleeps until the window opens, applies
    the change once at the window's time, reads the KPIs at 15/30/45 minutes after it (engine
    time), commits and notes the ticket. Ledger: one apply, no rollback; KPIs healthy."""
    net.inject("CS-104", "mis_set_handover")
    app.start(loop, "CS-104", window_start_hour=2, run_id="fix")
    waiting = drive_until_blocked(app, "fix")
    (request,) = Approvals.of(app).list(run_id="fix")
    assert waiting["signals"] == [approval_signal(request.id)]
    assert request.call_id == model.change_id("CS-104", "hoA3Offset", 3)
    assert request.args == {"site": "CS-104", "param": "hoA3Offset", "value": 3}
    assert kinds(net, "fix") == ["ticket_create"]
    decide(app, "fix", "alice", approve=True, comment="go")
    out = app.run(loop, "CS-104", window_start_hour=2, run_id="fix")

    assert (out.status, out.diagnosed_cause, out.cause) == ("committed", "mis_set_handover", "mis_set_handover")
    assert out.approval == Approval(approved=True, by="alice", comment="go")
    assert out.decision is not None and out.decision.rule == "default:side-effect"
    (sleep, *monitor_sleeps) = [s for s in app.history("fix") if s.kind == "sleep"]
    assert sleep.wake_at == WINDOW.timestamp() and out.window_opens == WINDOW
    (applied,) = net.effects("apply")
    assert applied["at"] == WINDOW.timestamp() == out.applied_at.timestamp()  # network clock = engine clock
    assert applied["detail"]["previous"] == 8 and applied["detail"]["value"] == 3
    assert out.monitor is not None and out.monitor.healthy and len(monitor_sleeps) == 3
    assert [(c.minutes_after_apply, c.at) for c in out.monitor.checks] == [
        (m, WINDOW + timedelta(minutes=m)) for m in (15, 30, 45)
    ]
    first = out.monitor.checks[0]  # read at the engine's time, over the 15 minutes after the apply
    assert first.mean == net.kpis("CS-104", window_minutes=15, at=first.at.timestamp())["mean"]
    assert kinds(net, "fix") == ["ticket_create", "apply", "ticket_update"]
    assert net.effects("rollback") == [] and net.duplicate_keys() == []
    assert net.config("CS-104")["hoA3Offset"] == 3
    assert model.anomalies(net.seed, "CS-104", net.kpis("CS-104")["mean"]) == []
    assert net.ticket(out.ticket_id)["notes"] == [f"committed: {out.detail}"]
    assert "anomalies 2 -> 0" in out.detail and "resolved" in out.detail


@pytest.mark.parametrize(
    ("scenario", "wrong"), [("backhaul_fault", "congestion"), ("mis_set_handover", "backhaul_fault")]
)
def test_wrong_diagnosis_is_rolled_back_and_the_incident_stays_open(
    app: App, net: noc.Network, loop: Loop, scenario: str, wrong: str
) -> None:
    """A forced wrong diagnosis: the change does not clear the anomalies at any check, so it is
    rolled back (the config is restored), the ticket says so and the incident stays open. The
    ledger shows apply then rollback (of that apply), once each."""
    net.inject("CS-110", scenario)
    config = net.config("CS-110")
    out = app.run(loop, "CS-110", cause=wrong, auto_approve=True, run_id="wrong")

    assert (out.status, out.diagnosed_cause, out.cause, out.rolled_back) == ("rolled_back", scenario, wrong, True)
    assert out.monitor is not None and not out.monitor.healthy
    assert all(check.anomalies for check in out.monitor.checks)
    assert kinds(net, "wrong") == ["ticket_create", "apply", "rollback", "ticket_update"]
    (applied,), (undone,) = net.effects("apply"), net.effects("rollback")
    assert undone["detail"]["undoes"] == applied["id"] and undone["at"] == applied["at"] + 45 * 60
    assert net.config("CS-110") == config and net.duplicate_keys() == []
    assert net.incident("CS-110") == scenario
    assert model.anomalies(net.seed, "CS-110", net.kpis("CS-110")["mean"]) != []
    (note,) = net.ticket(out.ticket_id)["notes"]
    assert note.startswith("rolled_back:") and "rolled back" in note and "the incident stays open" in note


def test_a_rollback_passes_the_gate_like_the_change_did(app: App, net: noc.Network, loop: Loop) -> None:
    """Issue 13 hole 1, the closed loop's side: the rollback of a change people approved is a
    change too. Under the default policy it waits for an operator (no rollback in the ledger
    meanwhile); approved, it runs once; rejected, the change stays and the ticket says why."""
    for run_id, approve in (("kept", False), ("undone", True)):
        net.inject("CS-110" if approve else "CS-111", "backhaul_fault")
        site = "CS-110" if approve else "CS-111"
        app.start(loop, site, cause="congestion", run_id=run_id)  # a wrong diagnosis: KPIs stay bad
        drive_until_blocked(app, run_id)
        decide(app, run_id, f"alice-{run_id}", approve=True, comment="apply it")  # the change itself
        waiting = drive_until_blocked(app, run_id)
        (rollback,) = [r for r in Approvals.of(app).list(run_id=run_id) if r.tool == "rollback_change"]
        assert waiting["signals"] == [approval_signal(rollback.id)] and kinds(net, run_id) == ["ticket_create", "apply"]
        bob = Approvals.of(app).add_operator(f"bob-{run_id}", tenant="default", roles=["noc-engineer"])[0]
        if approve:
            Approvals.of(app).approve(rollback.id, by=bob, comment="roll it back")
        else:
            Approvals.of(app).reject(rollback.id, by=bob, comment="leave it, I am on site")
        asyncio.run(app.worker(root_id=run_id).run_until_done(run_id))
        out = app.result_of(app.store.get_run(run_id))
        assert out.rolled_back is approve
        expected = (
            ["ticket_create", "apply", "rollback", "ticket_update"]
            if approve
            else ["ticket_create", "apply", "ticket_update"]
        )
        assert kinds(net, run_id) == expected
        if not approve:
            (note,) = net.ticket(out.ticket_id)["notes"]
            assert "not rolled back" in note and "leave it, I am on site" in note


def test_rejection_applies_nothing(app: App, net: noc.Network, loop: Loop) -> None:
    """An approver's rejection ends the run as `rejected`: no apply, no window wait, the
    config untouched, the ticket notes who rejected it and why."""
    net.inject("CS-104", "mis_set_handover")
    app.start(loop, "CS-104", run_id="no")
    drive_until_blocked(app, "no")
    decide(app, "no", "bob", approve=False, comment="not tonight")
    out = app.run(loop, "CS-104", run_id="no")

    assert out.status == "rejected" and out.approval == Approval(approved=False, by="bob", comment="not tonight")
    assert out.applied_at is None and out.monitor is None and out.window_opens is None
    assert kinds(net, "no") == ["ticket_create", "ticket_update"]
    assert net.config("CS-104")["hoA3Offset"] == 8
    assert not any(s.kind == "sleep" for s in app.history("no"))
    (note,) = net.ticket(out.ticket_id)["notes"]
    assert "bob: not tonight" in note


def test_an_approval_that_never_comes_expires_as_a_rejection(app: App, net: noc.Network, loop: Loop) -> None:
    """A missing approval expires (the policy's expiry, one hour by default, on the skipping
    clock): a recorded expiry and a rejection."""
    net.inject("CS-104", "mis_set_handover")
    out = app.run(loop, "CS-104", run_id="late")
    assert out.status == "rejected" and out.approval is not None and out.approval.comment == "expired"
    assert Approvals.of(app).list(run_id="late", status=None)[0].status == "expired"
    assert kinds(net, "late") == ["ticket_create", "ticket_update"]


def test_re_driving_a_finished_run_adds_no_effect(make_app: Callable[..., App], net: noc.Network) -> None:
    """Running a finished run again, in the same App or a fresh one on the same store (a
    redeployed process), replays it: the same result, no new effect and no new no-op."""
    net.inject("CS-104", "mis_set_handover")
    first = make_app()
    loop = noc.register_closed_loop(first)
    out = first.run(loop, "CS-104", auto_approve=True, run_id="once")
    effects, noops = net.effects(), net.noops()
    assert [e["kind"] for e in effects] == ["ticket_create", "apply", "ticket_update"] and noops == []
    assert first.run(loop, "CS-104", auto_approve=True, run_id="once") == out
    second = make_app()
    assert second.run(noc.register_closed_loop(second), "CS-104", auto_approve=True, run_id="once") == out
    assert net.effects() == effects and net.noops() == noops


def test_a_run_parked_on_its_approval_is_finished_by_another_app(
    make_app: Callable[..., App], net: noc.Network
) -> None:
    """A run parked on its approval is finished by a fresh App (another process): the steps
    before the wait replay from the history, so the ticket is opened once and nothing repeats."""
    net.inject("CS-104", "mis_set_handover")
    first = make_app()
    first.start(noc.register_closed_loop(first), "CS-104", run_id="handover")
    drive_until_blocked(first, "handover")
    first.close()
    second = make_app()
    decide(second, "handover", "carol", approve=True, comment="")
    out = second.run(noc.register_closed_loop(second), "CS-104", run_id="handover")
    assert out.status == "committed" and out.approval is not None and out.approval.by == "carol"
    assert kinds(net, "handover") == ["ticket_create", "apply", "ticket_update"]
    assert net.noops() == [] and net.duplicate_keys() == []


def test_a_value_out_of_range_is_refused_at_staging(app: App, net: noc.Network, loop: Loop) -> None:
    """A value the model refuses (hoA3Offset 99 dB) fails the dry run: the loop ends `refused`
    before any policy decision, approval or push."""
    net.inject("CS-104", "mis_set_handover")
    out = app.run(loop, "CS-104", value=99, auto_approve=True, run_id="bad")
    assert out.status == "refused" and "hoA3Offset takes a number in [0, 15]" in out.detail
    assert out.change is None and out.decision is None
    assert kinds(net, "bad") == ["ticket_create", "ticket_update"]
    assert not any(s.kind == "policy" for s in app.history("bad"))


def test_a_policy_deny_is_recorded_and_refuses_the_change(app: App, net: noc.Network) -> None:
    """A policy that denies the apply: its decision is a recorded policy step and nothing is
    pushed, even with auto-approval on."""

    def freeze(ctx: Any, tool: Any, facts: Any, args: dict[str, Any]) -> Decision:
        return Decision(effect="deny", rule="freeze", reason="change freeze until Monday")

    loop = noc.register_closed_loop(app, policy=freeze)
    net.inject("CS-104", "mis_set_handover")
    out = app.run(loop, "CS-104", auto_approve=True, run_id="frozen")
    assert out.status == "refused" and out.decision is not None
    assert (out.decision.effect, out.decision.rule, out.decision.reason) == (
        "deny", "freeze", "change freeze until Monday"
    )  # fmt: skip
    assert [(s.kind, s.name) for s in app.history("frozen") if s.kind == "policy"] == [("policy", "apply_change")]
    assert kinds(net, "frozen") == ["ticket_create", "ticket_update"]


def test_a_healthy_site_needs_no_action(app: App, net: noc.Network, loop: Loop) -> None:
    """No anomaly: no diagnosis is acted on, even a forced one; the record says so."""
    out = app.run(loop, "CS-104", cause="congestion", auto_approve=True, run_id="calm")
    assert out.status == "no_action" and out.anomalies == [] and out.change is None
    assert kinds(net, "calm") == ["ticket_create", "ticket_update"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"monitor_minutes": 90}, "monitor_minutes must be 30..60, not 90"),
        ({"monitor_minutes": 20}, "monitor_minutes must be 30..60"),
        ({"window_start_hour": 24}, "window_start_hour must be 0..23"),
        ({"cause": "sunspots"}, "cause must be one of"),
        ({"site": "CS-999"}, "site must be CS-101..CS-124"),
    ],
)
def test_bad_parameters_fail_the_run_before_any_step(
    app: App, net: noc.Network, loop: Loop, kwargs: dict[str, Any], match: str
) -> None:
    """Out-of-range parameters fail the run with a message naming the allowed range; nothing is
    recorded and nothing touches the network."""
    args = {"site": "CS-104", **kwargs}
    with pytest.raises(RunFailedError, match=match):
        app.run(loop, args.pop("site"), run_id="p", **args)
    assert app.history("p") == [] and net.effects() == []


def test_cancel_while_monitoring_rolls_the_change_back(
    make_app: Callable[..., App], net: noc.Network, worker_thread: Callable[..., Any]
) -> None:
    """A run cancelled after its apply (parked between KPI reads) rolls the change back before
    it ends cancelled: an unmonitored change never stays. Inside the window it applies at once."""
    net.inject("CS-104", "mis_set_handover")
    app = make_app(clock=TestClock(start=(WINDOW + timedelta(minutes=10)).timestamp(), skip=False))
    app.start(noc.register_closed_loop(app), "CS-104", auto_approve=True, run_id="stop")
    worker_thread(app)
    assert_eventually(lambda: net.effects("apply") and app.get_run("stop").status == "waiting")
    assert not any(s.kind == "sleep" and s.wake_at == WINDOW.timestamp() for s in app.history("stop"))
    app.cancel("stop")
    assert_eventually(lambda: app.get_run("stop").status == "cancelled", message=str(app.get_run("stop").error))
    assert kinds(net, "stop") == ["ticket_create", "apply", "rollback", "ticket_update"]
    assert net.config("CS-104")["hoA3Offset"] == 8
    ticket_id = net.effects("ticket_create")[0]["detail"]["ticket_id"]
    (note,) = net.ticket(ticket_id)["notes"]
    assert note.startswith("cancelled") and "rolled back" in note


@pytest.mark.slow
def test_readme_example_runs(tmp_path: Path) -> None:
    """tools/README.md's closed-loop example runs as written and prints what it says it prints."""
    text = (Path(__file__).resolve().parents[2] / "tools" / "README.md").read_text()
    section = text.split("## `tools/noc/agentflow_noc/closed_loop.py`", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    env = {k: v for k, v in os.environ.items() if k not in (noc.ENV, "AGENTFLOW_DB")}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    for line in ("committed 2026-01-01 02:00:00+00:00 [15, 30, 45]", "['ticket_create', 'apply', 'ticket_update']"):
        assert line in out.stdout and f"# {line}" in code
