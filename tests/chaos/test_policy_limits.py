"""Policy limits, maintenance-window defers and approvals hold across concurrent runs, real worker
processes and SIGKILL.

The agents (see `policyapp`) push one configuration change each to a site of the simulated NOC
network; the network's ledger (`agentflow_noc.Network.effects()`) is the ground truth of what was
applied, the workflow store (`policy` steps, `af_policy_usage`, `af_approvals`) is what the engine
believed. Concurrency tests start several `agentflow worker --until-idle` subprocesses on one
SQLite file, so the decisions race for the store's write lock for real; crash tests run a worker
with `AGENTFLOW_CRASH_AT=<point>:<n>` (it must die with -9) and then plain workers.

Invariants, whatever the interleaving or the crash:

* a limit is never exceeded: the ledger holds at most `max_targets` sites per region, at most
  `max_calls` pushes per window, one run changing a site at a time;
* a call a limit refuses is recorded as a `deny` naming the limit's rule in a `policy` step, and
  the refusal goes back to the model;
* no effect happens twice, and `af_policy_usage` counts exactly the side effects that happened;
* a deferred call runs at (or after) the window's opening on the engine clock, exactly once;
* an approval request exists once per call, however often the run is resumed, and is honoured once.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import policyapp
import pytest
from langchain_core.messages import ToolMessage, messages_from_dict

import agentflow_noc as noc
from agentflow import App
from agentflow.agent import approval_signal
from agentflow.approvals import ApprovalRequest, Approvals
from agentflow.errors import ApprovalRefused
from agentflow.policy import PolicyDecision
from agentflow.testing import TestClock, assert_eventually
from agentflow_noc.network import run_of

HERE = Path(__file__).resolve().parent
WORKER_TIMEOUT = 60.0
# Racing worker processes. Two are enough for the decisions to contend for the store's write lock;
# each more costs seconds of interpreter start-up (langchain, openai) on a small CI machine.
WORKERS = 2
NORTH = [f"CS-{n}" for n in range(101, 107)]  # agentflow_noc.region_of: CS-101..CS-106 are north
SOUTH = ["CS-107", "CS-108"]
# One site per region and then another: no blast-radius interplay in the rate-limit test.
SPREAD = ["CS-101", "CS-107", "CS-113", "CS-119", "CS-102", "CS-108", "CS-114", "CS-120"]
DAY = datetime(2026, 1, 5, 14, 0, tzinfo=UTC).timestamp()  # a Monday afternoon: outside the window
OPENING = datetime(2026, 1, 6, policyapp.WINDOW_START_HOUR, 0, tzinfo=UTC).timestamp()  # the next window
TOOL_KINDS = {"apply_change": "apply", "notify": "notify"}  # tool -> kind of its ledger effect


# -- harness -----------------------------------------------------------------------------------
@dataclass
class Harness:
    """A workflow store and a NOC network in `tmp`, the test's App on them, and worker
    subprocesses serving `policyapp:app` on the same files."""

    tmp: Path
    net: noc.Network = field(init=False)
    app: App = field(init=False)

    def __post_init__(self) -> None:
        self.net = noc.configure(self.tmp / "net.db")
        self.app = policyapp.make_app(f"sqlite:///{self.tmp / 'wf.db'}")
        self.logs = 0

    def start(self, agent: str, site: str, run_id: str, *, tenant: str = "default") -> str:
        return policyapp.AGENTS[agent].start(self.app, policyapp.task(site), run_id=run_id, tenant=tenant).run_id

    def spawn(self, stack: ExitStack, *, crash: str | None = None, until_idle: bool = True) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if k != "AGENTFLOW_CRASH_AT"}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
        env["AGENTFLOW_DB"] = f"sqlite:///{self.tmp / 'wf.db'}"
        env[noc.ENV] = str(self.tmp / "net.db")
        if crash is not None:
            env["AGENTFLOW_CRASH_AT"] = crash
        cmd = [sys.executable, "-m", "agentflow.cli", "worker", "--app", "policyapp:app", "--concurrency", "4"]
        self.logs += 1
        # Output to a file, not a pipe: a chatty worker cannot block on a full pipe.
        out = stack.enter_context(open(self.tmp / f"worker{self.logs}.log", "wb"))
        proc = subprocess.Popen(
            [*cmd, "--until-idle"] if until_idle else cmd, cwd=self.tmp, env=env, stdout=out, stderr=subprocess.STDOUT
        )
        stack.callback(_reap, proc)
        return proc

    def workers(self, n: int = 1, *, crash: str | None = None) -> list[int]:
        """Run `n` workers at once until they are idle (or killed); their exit codes."""
        with ExitStack() as stack:
            procs = [self.spawn(stack, crash=crash) for _ in range(n)]
            codes = [p.wait(timeout=WORKER_TIMEOUT) for p in procs]
        return codes

    def log(self) -> str:
        return "\n".join((self.tmp / f"worker{i}.log").read_text()[-2000:] for i in range(1, self.logs + 1))

    def drive(self, run_id: str) -> None:
        """Drive `run_id` in this process until it has ended or waits for people only."""
        worker = self.app.worker(root_id=run_id)
        asyncio.run(worker.run_until_blocked(run_id, until_signal_wait=True))

    def plain_workers(self, n: int = 1) -> None:
        codes = self.workers(n)
        assert codes == [0] * n, f"worker exit codes {codes}:\n{self.log()}"

    def crashed_worker(self, crash: str) -> None:
        codes = self.workers(1, crash=crash)
        assert codes == [-signal.SIGKILL], (
            f"the worker with AGENTFLOW_CRASH_AT={crash} exited {codes[0]} instead of dying at the crash point:\n"
            f"{self.log()}"
        )


def _reap(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=10)


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(tmp_path)
    yield harness
    harness.app.close()


# -- what the store and the ledger say ---------------------------------------------------------
def decisions(app: App, run_id: str, tool: str = "apply_change") -> list[tuple[float, PolicyDecision]]:
    """The recorded policy decisions on a run's calls of `tool`, with the engine time of each."""
    return [
        (s.started_at, PolicyDecision.model_validate_json(s.result or "{}"))
        for s in app.history(run_id)
        if s.kind == "policy" and s.name == tool and s.status == "completed"
    ]


def told_model(app: App, run_id: str) -> list[str]:
    """The tool results the model was sent (read from the recorded model requests)."""
    refs = [ref for s in app.history(run_id) if s.kind == "llm" for ref in json.loads(s.args or "{}")["messages"]]
    blobs = app.store.get_blobs(refs)
    sent = messages_from_dict([json.loads(blobs[ref]) for ref in refs])
    return [str(m.content) for m in sent if isinstance(m, ToolMessage)]


def usage_rows(app: App, tenant: str | None = None) -> list[dict[str, Any]]:
    """The rows of af_policy_usage (of one tenant), oldest first."""
    cols = ["tenant", "tool", "target", "region", "run_id", "call_id", "side_effect", "at"]
    sql = f"SELECT {', '.join(cols)} FROM af_policy_usage WHERE ? IS NULL OR tenant = ? ORDER BY id"
    return [dict(zip(cols, r, strict=True)) for r in app.store.backend.query(sql, (tenant, tenant))]


def effects_of(net: noc.Network, run_id: str, kind: str = "apply") -> list[dict[str, Any]]:
    return [e for e in net.effects(kind) if run_of(e["idempotency_key"]) == run_id]


def open_request(app: App, run_id: str) -> ApprovalRequest:
    """The run's open approval request (what an operator sees in their inbox)."""
    return assert_eventually(lambda: Approvals.of(app).list(run_id=run_id), message=f"{run_id} asked for no approval")[
        0
    ]


def approval_rows(app: App, run_id: str) -> list[tuple[Any, ...]]:
    return list(app.store.backend.query("SELECT id, status FROM af_approvals WHERE run_id = ?", (run_id,)))


def check_ledger(app: App, net: noc.Network) -> None:
    """No effect twice; every side-effect usage row is an effect that happened, and back."""
    assert net.duplicate_keys() == []
    keys = [e["idempotency_key"] for e in net.effects()]
    assert len(keys) == len(set(keys)), keys
    counted = sorted((r["run_id"], TOOL_KINDS[r["tool"]]) for r in usage_rows(app) if r["side_effect"])
    happened = sorted((run_of(e["idempotency_key"]), e["kind"]) for e in net.effects())
    assert counted == happened, f"af_policy_usage counts {counted}, the ledger shows {happened}"


def check_refused(app: App, run_id: str, rule: str) -> None:
    """The run's apply_change was denied by `rule` (recorded), and the model was told so."""
    found = [d for _, d in decisions(app, run_id)]
    assert [(d.effect, d.rule) for d in found if d.effect == "deny"] == [("deny", rule)], found
    refusals = [t for t in told_model(app, run_id) if t.startswith("denied by policy")]
    assert len(refusals) == 1 and f"({rule})" in refusals[0], told_model(app, run_id)


def check_limited(h: Harness, run_ids: list[str], rule: str, most: int) -> list[str]:
    """Every run completed; at most `most` of them applied their change (each once, allowed by
    the pack); every other one was refused by `rule`. Returns the runs that applied."""
    applied = []
    for run_id in run_ids:
        run = h.app.get_run(run_id)
        assert run.status == "completed", (run, h.log())
        pushes = effects_of(h.net, run_id)
        assert len(pushes) <= 1, pushes
        if pushes:
            applied.append(run_id)
            assert [d.effect for _, d in decisions(h.app, run_id)] == ["allow"]
        else:
            check_refused(h.app, run_id, rule)
    assert len(applied) <= most, applied
    check_ledger(h.app, h.net)
    return applied


# -- 1. limits across concurrent runs ----------------------------------------------------------
# One store, one tenant per scenario (limits are counted per tenant; the one-change runs use a site
# no other scenario touches), all runs started before one set of racing worker processes: a
# worker process costs seconds of interpreter start-up, so the three scenarios share it.
SAME_SITE = "CS-110"
# Keyed by the store's key of each run: `<tenant>:<run id>` (run ids are per tenant).
RACED: dict[str, tuple[str, str]] = {
    **{f"blast:blast-{site}": ("blast", site) for site in NORTH + SOUTH},
    **{f"rate:rate-{site}": ("rate", site) for site in SPREAD},
    **{f"one-change:same-{i}": ("one-change", SAME_SITE) for i in (1, 2)},
}


def scenario(agent: str) -> list[str]:
    return [run_id for run_id, (name, _) in RACED.items() if name == agent]


@pytest.fixture(scope="module")
def raced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    """Every run of RACED started (tenant = agent), then WORKERS worker processes until idle."""
    harness = Harness(tmp_path_factory.mktemp("raced"))
    for key, (agent, site) in RACED.items():
        assert harness.start(agent, site, key.split(":", 1)[1], tenant=agent) == key
    harness.plain_workers(WORKERS)
    yield harness
    harness.app.close()


@pytest.fixture
def race(raced: Harness) -> Harness:
    raced.net = noc.configure(raced.tmp / "net.db")  # the tools of this process, for in-process runs
    return raced


@pytest.mark.slow
def test_blast_radius_holds_across_concurrent_runs(race: Harness) -> None:
    """8 runs (6 north sites, 2 south) driven by racing worker processes under a pack of at most
    3 sites per region per hour: exactly 3 north sites and both south sites are changed; the 3
    other north runs get a `deny` by the blast-radius rule, recorded and told to the model; no
    push happens twice; af_policy_usage holds one side-effect row per push."""
    h, runs = race, scenario("blast")
    applied = check_limited(h, runs, policyapp.BLAST_RULE, policyapp.MAX_TARGETS + len(SOUTH))
    sites = sorted(RACED[r][1] for r in applied)
    assert len([s for s in sites if s in NORTH]) == policyapp.MAX_TARGETS, sites
    assert set(SOUTH) <= set(sites), "the south region has its own budget"
    assert sorted(r["target"] for r in usage_rows(h.app, "blast")) == sites


@pytest.mark.slow
def test_rate_limit_holds_across_concurrent_runs(race: Harness) -> None:
    """8 runs on 8 sites driven by racing worker processes under a pack of at most 3
    apply_change calls per tenant per hour: exactly 3 pushes; the 5 other runs get a `deny` by
    the rate rule, recorded and told to the model; af_policy_usage counts exactly the 3 pushes."""
    h, runs = race, scenario("rate")
    applied = check_limited(h, runs, policyapp.RATE_RULE, policyapp.MAX_CALLS)
    assert len(applied) == policyapp.MAX_CALLS
    assert sorted(r["run_id"] for r in usage_rows(h.app, "rate")) == sorted(applied)


@pytest.mark.slow
def test_one_change_per_target_while_the_other_run_is_active(race: Harness) -> None:
    """Two runs on the same site raced by the worker processes: one pushes its change and stays
    active (its notification waits for an approval), the other gets a `deny` by the
    one-change-per-site rule. Once the first run has ended, a third run on the site may change it."""
    h, first = race, scenario("one-change")
    holders = [r for r in first if effects_of(h.net, r)]
    assert len(holders) == 1, [effects_of(h.net, r) for r in first]
    (holder,) = holders
    (other,) = set(first) - {holder}
    check_refused(h.app, other, policyapp.ONE_CHANGE_RULE)
    assert [h.app.get_run(r).status for r in first] == ["waiting", "waiting"]  # both on their notify approval
    check_ledger(h.app, h.net)

    alice = Approvals.of(h.app).add_operator("alice", tenant="one-change", roles=["noc-engineer"])[0]
    Approvals.of(h.app).approve(open_request(h.app, holder).id, by=alice)
    Approvals.of(h.app).reject(open_request(h.app, other).id, by=alice, comment="nothing was changed")
    for run_id in first:
        h.drive(run_id)
    assert [h.app.get_run(r).status for r in first] == ["completed", "completed"]
    assert len(effects_of(h.net, holder, "notify")) == 1 and not effects_of(h.net, other, "notify")
    third = h.start("one-change", SAME_SITE, "same-3", tenant="one-change")
    h.drive(third)
    assert len(effects_of(h.net, third)) == 1, "the site is free again once the holder has ended"
    assert [d.effect for _, d in decisions(h.app, third)] == ["allow"]
    check_ledger(h.app, h.net)


@pytest.mark.slow
def test_rate_limit_does_not_count_a_call_twice_after_a_crash(h: Harness) -> None:
    """A worker killed after the transaction that let a call through and counted it in
    af_policy_usage, but before the decision step's result was recorded: the decision is made
    again on resume and must not count the call against itself. The third call under a limit of
    3 is still allowed and pushed once; af_policy_usage counts exactly the pushes."""
    done = [h.start("rate", site, f"rate-{site}") for site in SPREAD[:2]]
    for run_id in done:
        h.drive(run_id)
    assert all(effects_of(h.net, r) for r in done)
    last = h.start("rate", SPREAD[2], "rate-last")
    # after_effect hits in the worker: 1 = the model call, 2 = the policy decision.
    h.crashed_worker("after_effect:2")
    assert [(s.kind, s.status) for s in h.app.history(last)] == [("llm", "completed")]
    assert [r["run_id"] for r in usage_rows(h.app)] == [*done, last], "the lost decision was counted"
    h.drive(last)
    assert h.app.get_run(last).status == "completed"
    assert [d.effect for _, d in decisions(h.app, last)] == ["allow"], (
        "the re-made decision counted the call's own reservation against the rate limit"
    )
    assert len(effects_of(h.net, last)) == 1
    check_ledger(h.app, h.net)


# -- 2. maintenance-window defers on the time-skipping clock -----------------------------------
@pytest.fixture
def night(make_app: Callable[..., App]) -> tuple[App, TestClock]:
    """An App on a Monday afternoon whose clock moves only when the test says so (so the test can
    look at a run parked on the window before it opens)."""
    clock = TestClock(start=DAY, skip=False)
    app = make_app(clock=clock, inline_wait=0.0)
    for agent in policyapp.AGENTS.values():
        agent.register(app)
    return app, clock


def parked(app: App, run_id: str, *, wake_at: float | None = None, signal_name: str | None = None) -> Any:
    """Wait until the run is parked in the store (no worker holds it) as described."""

    def check() -> Any:
        run = app.store.get_run(run_id)
        if run.status != "waiting" or run.owner is not None:
            return None
        if wake_at is not None and run.wake_at != wake_at:
            return None
        if signal_name is not None and json.loads(run.waiting_on or "{}").get("signals") != [signal_name]:
            return None
        return run

    return assert_eventually(check, message=f"{run_id} never parked (wake_at={wake_at}, signal={signal_name})")


def sleeps(app: App, run_id: str) -> list[tuple[str, float | None]]:
    return [(s.status, s.wake_at) for s in app.history(run_id) if s.kind == "sleep"]


def applied_at(app: App, run_id: str) -> float:
    (step,) = [s for s in app.history(run_id) if s.kind == "tool" and s.name == "apply_change"]
    return float(step.started_at)


def test_defer_sleeps_durably_until_the_window(
    night: tuple[App, TestClock], worker_thread: Callable[..., Any], tmp_path: Path
) -> None:
    """An apply outside the maintenance window is recorded as `defer` with defer_until = the next
    opening; the run sleeps durably (a `sleep` step, parked in the store, no worker holding it)
    and nothing is pushed before the window; at the opening it is decided again (allowed) and
    pushed exactly once, at or after the opening on the engine clock."""
    app, clock = night
    net = noc.configure(tmp_path / "net.db")
    policyapp.AGENTS["window"].start(app, policyapp.task("CS-104"), run_id="w")
    worker_thread(app)
    parked(app, "w", wake_at=OPENING)
    [(at, first)] = decisions(app, "w")
    assert (first.effect, first.rule, first.defer_until, at) == ("defer", policyapp.DEFER_RULE, OPENING, DAY)
    assert sleeps(app, "w") == [("waiting", OPENING)]
    assert net.effects("apply") == []

    clock.advance_to(OPENING)
    assert_eventually(lambda: app.get_run("w").status == "completed")
    assert [(d.effect, d.rule) for _, d in decisions(app, "w")] == [
        ("defer", policyapp.DEFER_RULE),
        ("allow", "changes-allowed"),
    ]
    assert decisions(app, "w")[1][0] >= OPENING
    assert applied_at(app, "w") >= OPENING
    assert sleeps(app, "w") == [("completed", OPENING)]
    assert len(effects_of(net, "w")) == 1 and net.effects("apply") == effects_of(net, "w")
    check_ledger(app, net)


def test_approval_is_asked_during_the_day_and_the_apply_waits_for_the_window(
    night: tuple[App, TestClock], worker_thread: Callable[..., Any], tmp_path: Path
) -> None:
    """With a window and an approval rule, the approval is requested at once (during the day);
    once approved, the run still sleeps until the window opens, then pushes the approved change
    exactly once, at or after the opening."""
    app, clock = night
    net = noc.configure(tmp_path / "net.db")
    policyapp.AGENTS["window-approve"].start(app, policyapp.task("CS-104"), run_id="wa")
    worker_thread(app)
    request = open_request(app, "wa")
    parked(app, "wa", signal_name=approval_signal(request.id))
    assert request.created_at == DAY and request.rule == policyapp.APPROVAL_RULE
    [(_, first)] = decisions(app, "wa")
    assert (first.effect, first.rule, first.approval_rule, first.defer_until) == (
        "defer",
        policyapp.DEFER_RULE,
        policyapp.APPROVAL_RULE,
        OPENING,
    )
    assert sleeps(app, "wa") == []  # people first, then the window

    clock.advance(600)
    alice = Approvals.of(app).add_operator("alice", tenant="default", roles=["noc-engineer"])[0]
    Approvals.of(app).approve(request.id, by=alice)
    parked(app, "wa", wake_at=OPENING)
    assert sleeps(app, "wa") == [("waiting", OPENING)]
    assert net.effects("apply") == []

    clock.advance_to(OPENING)
    assert_eventually(lambda: app.get_run("wa").status == "completed")
    effects = [d.effect for _, d in decisions(app, "wa")]
    assert effects == ["defer", "defer", "require_approval"], effects  # re-decided after each wait
    assert applied_at(app, "wa") >= OPENING
    assert len(effects_of(net, "wa")) == 1
    out = json.loads(app.store.get_run("wa").output or "{}")
    assert out["tool_calls"][0]["approved_by"] == "alice"
    check_ledger(app, net)


# -- 3. crashes around an approval -------------------------------------------------------------


def check_approve_again_changes_nothing(h: Harness, run_id: str, request_id: str, by: Any) -> None:
    before = ([(s.seq, s.status) for s in h.app.history(run_id)], h.net.effects(), usage_rows(h.app))
    with pytest.raises(ApprovalRefused) as refused:
        Approvals.of(h.app).approve(request_id, by=by)
    assert refused.value.code == "already_decided"
    assert ([(s.seq, s.status) for s in h.app.history(run_id)], h.net.effects(), usage_rows(h.app)) == before
    assert len(Approvals.of(h.app).get(request_id).votes) == 1


@pytest.mark.slow
def test_crash_while_waiting_for_approval_resumes_waiting(h: Harness) -> None:
    """A worker killed right after parking the run on its approval: a fresh worker process finds
    the run still waiting on the same, single approval request; the approval given then is
    honoured once (one push); approving again is refused and changes nothing."""
    run_id = h.start("approve", "CS-104", "ap")
    h.crashed_worker("while_waiting:1")
    request = open_request(h.app, run_id)
    parked(h.app, run_id, signal_name=approval_signal(request.id))
    with ExitStack() as stack:
        fresh = h.spawn(stack, until_idle=False)
        parked(h.app, run_id, signal_name=approval_signal(request.id))
        assert approval_rows(h.app, run_id) == [(request.id, "pending")]
        assert h.net.effects("apply") == []
        alice = Approvals.of(h.app).add_operator("alice", tenant="default", roles=["noc-engineer"])[0]
        Approvals.of(h.app).approve(request.id, by=alice)
        assert_eventually(lambda: h.app.get_run(run_id).status == "completed", timeout=WORKER_TIMEOUT)
        fresh.terminate()
        assert fresh.wait(timeout=WORKER_TIMEOUT) == 0, h.log()
    assert approval_rows(h.app, run_id) == [(request.id, "approved")]
    assert len(effects_of(h.net, run_id)) == 1
    check_ledger(h.app, h.net)
    check_approve_again_changes_nothing(h, run_id, request.id, alice)


# The worker that resumes an approved run hits, in order: the approval re-read (a step), the
# re-decision (a step), the apply (the only side-effecting step: its intent, then its effect).
# Per crash: why it matters, and the apply step's status and the pushes as the killed worker left them.
KILLS_AFTER_APPROVAL: dict[str, tuple[str, str | None, int]] = {
    "after_result:2": ("the re-decision is recorded, the apply has not started", None, 0),
    "after_effect:3": ("the push happened, its result is not recorded (reconciled by its key)", "started", 1),
}


@pytest.mark.slow
@pytest.mark.parametrize("crash", list(KILLS_AFTER_APPROVAL))
def test_kill_between_approval_and_apply_pushes_once(h: Harness, crash: str) -> None:
    """A worker killed between the approval and the end of the apply (see KILLS_AFTER_APPROVAL):
    the next worker finishes the run with exactly one push of the approved change, one approval
    request, and one af_policy_usage row."""
    run_id = h.start("approve", "CS-104", "ap")
    h.drive(run_id)
    request = open_request(h.app, run_id)
    parked(h.app, run_id, signal_name=approval_signal(request.id))
    alice = Approvals.of(h.app).add_operator("alice", tenant="default", roles=["noc-engineer"])[0]
    Approvals.of(h.app).approve(request.id, by=alice)
    h.crashed_worker(crash)
    why, apply_status, pushed = KILLS_AFTER_APPROVAL[crash]
    at_kill = [s.status for s in h.app.history(run_id) if s.kind == "tool"]
    assert (at_kill[0] if at_kill else None, len(h.net.effects("apply"))) == (apply_status, pushed), why
    assert len(decisions(h.app, run_id)) == 2, "killed after the re-decision was recorded"
    h.drive(run_id)  # a worker of this process takes the dead worker's run over
    assert h.app.get_run(run_id).status == "completed", h.log()
    assert approval_rows(h.app, run_id) == [(request.id, "approved")]
    assert len(effects_of(h.net, run_id)) == 1, (h.net.effects(), why)
    assert [d.effect for _, d in decisions(h.app, run_id)] == ["require_approval", "require_approval"]
    check_ledger(h.app, h.net)
    check_approve_again_changes_nothing(h, run_id, request.id, alice)
