"""The PostgreSQL backend: what the SQLite tests show for one file, shown for a database shared by
many processes, plus the races that only a backend with concurrent writers can lose.

* Conformance: one workflow (retried activity, signal, timer, child run, gather, local records)
  gives the same result, history, attempts and child history on SQLite and PostgreSQL.
* Scale-out: four `agentflow worker` processes share forty runs (claims with SKIP LOCKED); a worker
  SIGKILLed at a crash point is resumed by another process. Side effects are counted in an
  external ledger (see `tests/chaos/crashapp.py`), never in the store under test.
* Races: each one is played out, not hoped for. A `support.pg.Gate` holds the first write of the
  critical transaction (by a trigger on the table it writes) until every party of the race is at
  the gate or blocked by the backend's own locking (or, for a claim, has passed the run over);
  then both go on. A backend that reads, decides and writes without serializing (SQLite's BEGIN
  IMMEDIATE does it for free) loses the race here: a lost approval quorum, a rate limit exceeded,
  a lost wake-up, a run stuck after a takeover. Each of these tests fails on a backend with the
  locks taken out (checked by hand when they were written).
* The read side: `agentflow.trace` and `Approvals.of(app)` on a PostgreSQL App.

The storage tests that do not depend on the backend run on both through the `backends` marker
(tests/integration/test_store.py, test_leases.py); this module is about PostgreSQL itself.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from support.pg import Gate

import agentflow_noc as noc
from agentflow import App, RetryPolicy, WorkflowContext, current_activity
from agentflow.approvals import Approvals, approval_signal_name
from agentflow.engine._executor import RunExecutor
from agentflow.errors import LeaseLostError
from agentflow.policy import ApprovalSpec, PolicyDecision
from agentflow.testing import TestClock, assert_eventually
from agentflow_noc.network import run_of

CHAOS = Path(__file__).resolve().parents[1] / "chaos"
if str(CHAOS) not in sys.path:
    sys.path.append(str(CHAOS))  # the chaos tests' apps, served by worker processes here too

import crashapp  # noqa: E402
import policyapp  # noqa: E402

pytestmark = pytest.mark.backends("postgresql")

START = 1_700_000_000
WORKER_TIMEOUT = 60.0


# -- worker processes --------------------------------------------------------------------------
class Workers:
    """`agentflow worker --db <url>` subprocesses serving an app of tests/chaos, logs in `tmp`."""

    def __init__(self, stack: ExitStack, tmp: Path, db: str, app_ref: str, **env: str) -> None:
        self.stack, self.tmp, self.db, self.app_ref, self.extra = stack, tmp, db, app_ref, env
        self.logs: list[Path] = []

    def spawn(self, *, crash: str | None = None, until_idle: bool = False) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if k not in ("AGENTFLOW_CRASH_AT", "AGENTFLOW_DB")}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(CHAOS), env.get("PYTHONPATH")]))
        env.update(self.extra)
        if crash is not None:
            env["AGENTFLOW_CRASH_AT"] = crash
        cmd = [sys.executable, "-m", "agentflow.cli", "worker", "--app", self.app_ref, "--db", self.db]
        cmd += ["--concurrency", "4", *(["--until-idle"] if until_idle else [])]
        log = self.tmp / f"worker{len(self.logs)}.log"
        self.logs.append(log)
        # Output to a file, not a pipe: a chatty worker cannot block on a full pipe.
        out = self.stack.enter_context(open(log, "wb"))
        proc = subprocess.Popen(cmd, cwd=self.tmp, env=env, stdout=out, stderr=subprocess.STDOUT)
        self.stack.callback(_reap, proc)
        return proc

    def log(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2500:]}" for p in self.logs)

    def stop(self, procs: list[subprocess.Popen[bytes]]) -> list[int]:
        """SIGTERM (a clean shutdown) and the exit codes."""
        for p in procs:
            p.terminate()
        return [p.wait(timeout=WORKER_TIMEOUT) for p in procs]


def _reap(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=10)


def count(app: App, sql: str, params: tuple[Any, ...] = ()) -> int:
    return int(app.store.backend.query(sql, params)[0][0])


# -- 1. conformance ----------------------------------------------------------------------------
def _conformance_app(url: str) -> App:
    app = App(url, clock=TestClock(start=START), inline_wait=0.0)
    flaky: list[int] = []

    @app.activity(name="fetch_kpis", side_effect=False, retry=RetryPolicy(max_attempts=3, initial_interval=30))
    def fetch_kpis(site: str) -> dict[str, Any]:
        flaky.append(1)
        if len(flaky) < 3:
            raise ConnectionError(f"KPI service timed out (attempt {len(flaky)})")
        return {"site": site, "prb": 0.93}

    @app.activity(name="push")
    def push(site: str, value: float) -> str:
        return f"{site}:{value}:{current_activity().idempotency_key}"

    @app.workflow(name="leaf")
    async def leaf(ctx: WorkflowContext, site: str) -> str:
        return await ctx.run(push, site, 1.0)

    @app.workflow(name="conform")
    async def conform(ctx: WorkflowContext, site: str) -> dict[str, Any]:
        kpis = await ctx.run(fetch_kpis, site)  # 1: two failed attempts, then the result
        go = await ctx.wait_signal("go", timeout=86_400)  # 2: parks until the signal
        await ctx.sleep(600)  # 3: a timer on the test clock
        pushed, child = await asyncio.gather(ctx.run(push, site, 0.8), ctx.child(leaf, site))  # 4, 5
        return {"kpis": kpis, "go": go, "pushed": pushed, "child": child, "at": ctx.now().isoformat()}

    return app


def _recorded(app: App, run_id: str) -> dict[str, Any]:
    """Everything the store holds about a run tree, as plain values."""
    runs = {r.run_id: r for r in app.list_runs(limit=100)}
    out: dict[str, Any] = {}
    for rid in sorted(runs):
        record = app.store.get_run(rid).to_dict()
        out[rid] = {
            "run": {k: record[k] for k in ("workflow", "status", "input", "output", "error", "parent_id", "root_id")},
            "times": {k: record[k] for k in ("created_at", "completed_at")},
            "steps": [s.to_dict() for s in app.history(rid)],
            "attempts": [tuple(a) for a in app.store.load_attempts(rid)],
        }
    return out


def _drive_conformance(url: str) -> tuple[Any, dict[str, Any]]:
    app = _conformance_app(url)
    try:
        wf = app.workflow_named("conform")
        app.start(wf, "CS-101", run_id="c")
        worker = app.worker(root_id="c")
        asyncio.run(worker.run_until_blocked("c", until_signal_wait=True))
        parked = app.get_run("c")
        assert (parked.status, parked.waiting_on["signals"]) == ("waiting", ["go"]), parked
        app.signal("c", "go", {"by": "alice"})
        asyncio.run(app.worker(root_id="c").run_until_done("c"))
        return app.result_of(app.store.get_run("c")), _recorded(app, "c")
    finally:
        app.close()


def test_same_workflow_same_history_on_both_backends(tmp_path: Path, pg_url: str) -> None:
    """The conformance run (a read retried twice, a signal wait that parks, a timer on the test
    clock, an activity gathered with a child run) ends with the same result on SQLite and
    PostgreSQL, and the store holds the same runs, steps (every column: seq, kind, name, digest,
    status, attempt, args, result, error, times, epoch, delivery) and failed attempts."""
    result_sqlite, recorded_sqlite = _drive_conformance(f"sqlite:///{tmp_path / 'ref.db'}")
    result_pg, recorded_pg = _drive_conformance(pg_url)

    assert result_pg == result_sqlite
    assert result_pg["go"] == {"by": "alice"} and result_pg["child"].startswith("CS-101:1.0:c/5:")
    assert sorted(recorded_pg) == ["c", "c/5"]
    shape = [(s["seq"], s["kind"], s["name"], s["status"], s["attempt"]) for s in recorded_pg["c"]["steps"]]
    assert [x[1:4] for x in shape] == [
        ("activity", "fetch_kpis", "completed"),
        ("signal", "go", "completed"),
        ("sleep", "sleep", "completed"),
        ("activity", "push", "completed"),
        ("child", "leaf", "completed"),
        ("now", "now", "completed"),
    ], shape
    assert shape[0][4] == 3 and len(recorded_pg["c"]["attempts"]) == 2
    assert recorded_pg == recorded_sqlite


def test_both_url_forms_open_the_same_database(pg_url: str) -> None:
    """`postgresql://` and `postgresql+psycopg://` name the same database; the backend says it
    is PostgreSQL."""
    first = App(pg_url)
    second = App(pg_url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        first.store.create_run(run_id="r", workflow="wf", tenant="t", input="[[],{}]", now=1.0)
        assert second.store.get_run("r").tenant == "t"
        assert (first.store.backend.dialect, second.store.backend.dialect) == ("postgresql", "postgresql")
    finally:
        first.close()
        second.close()


# -- 2. many worker processes ------------------------------------------------------------------
RUNS = 40
WORKERS = 4


@pytest.mark.slow
def test_four_worker_processes_share_forty_runs(pg_url: str, tmp_path: Path) -> None:
    """Four `agentflow worker` processes poll one PostgreSQL database before forty `race` runs
    (effects, a read, a gather, a child run handed between workers) are started. Every run and
    child completes with its expected result; no (run, seq) is recorded twice; every activity
    step ran exactly once, as its first attempt, under its idempotency key; the claims were
    spread (every worker executed activities); every worker stops cleanly on SIGTERM."""
    ledger = tmp_path / "ledger.db"
    crashapp.init_ledger(str(ledger))
    app = crashapp.make_app(pg_url)
    try:
        with ExitStack() as stack:
            workers = Workers(stack, tmp_path, pg_url, "crashapp:app", **{crashapp.LEDGER_ENV: str(ledger)})
            procs = [workers.spawn() for _ in range(WORKERS)]
            assert_eventually(
                lambda: count(app, "SELECT count(*) FROM af_workers WHERE dead = 0") == WORKERS,
                timeout=WORKER_TIMEOUT,
                message="the workers did not all register",
            )
            race = app.workflow_named("race")
            run_ids = [f"run-{i:02d}" for i in range(RUNS)]
            for i, run_id in enumerate(run_ids):
                assert app.start(race, i, run_id=run_id).created
            assert_eventually(
                lambda: count(app, "SELECT count(*) FROM af_runs WHERE status = 'completed'") == 2 * RUNS,
                timeout=WORKER_TIMEOUT,
                message=f"not every run completed:\n{workers.log()}",
            )
            assert workers.stop(procs) == [0] * WORKERS, workers.log()

        runs = {r.run_id: r for r in app.list_runs(limit=1000)}
        children = [f"{run_id}/5" for run_id in run_ids]
        assert sorted(runs) == sorted(run_ids + children)
        for i, run_id in enumerate(run_ids):
            assert app.result_of(app.store.get_run(run_id)) == crashapp.expected_race(i)
        dup = app.store.backend.query("SELECT run_id, seq FROM af_steps GROUP BY run_id, seq HAVING count(*) > 1")
        assert dup == []
        steps = app.store.backend.query("SELECT run_id, seq, kind, name, status FROM af_steps ORDER BY run_id, seq")
        by_run: dict[str, list[tuple[int, str, str]]] = {}
        for run_id, seq, kind, name, status in steps:
            assert status == "completed", (run_id, seq, kind, name, status)
            by_run.setdefault(run_id, []).append((seq, kind, name))
        for run_id, shape in by_run.items():
            assert shape == (crashapp.RACE_CHILD_SHAPE if "/" in run_id else crashapp.RACE_SHAPE), run_id
        assert [r[0] for r in app.store.backend.query("SELECT dead FROM af_workers")] == [1] * WORKERS

        rows = crashapp.ledger_rows(str(ledger))
        activity_steps = {(run_id, seq): name for run_id, seq, kind, name, _ in steps if kind == "activity"}
        executions = Counter((r[1], r[2]) for r in rows)
        assert {k: n for k, n in executions.items() if n != 1} == {}, "activities executed more than once"
        assert set(executions) == set(activity_steps)
        for _, run_id, seq, name, key, attempt, _pid in rows:
            assert (name, key, attempt) == (activity_steps[(run_id, seq)], f"{run_id}:{seq}", 1)
        per_worker = Counter(r[6] for r in rows)
        assert len(per_worker) == WORKERS, f"the claims were not spread over the workers: {per_worker}"
    finally:
        app.close()


# -- 3. a worker killed at a crash point -------------------------------------------------------
N = 3  # the chaos workflow's input
CHAOS_RESULT = {
    "base": 30,
    "info": {"x": 30, "sq": 900},
    "charges": ["a:900", "b:30"],
    "receipt": "a:900+b:30",
}
CHAOS_SHAPE = [
    (1, "activity", "reserve"),
    (2, "activity", "lookup"),
    (3, "activity", "charge"),
    (4, "activity", "charge"),
    (5, "sleep", "sleep"),
    (6, "activity", "notify"),
]
# crash -> (the steps as the killed worker left them, the steps that must have run twice).
KILLS: dict[str, tuple[dict[int, str], set[int]]] = {
    # reserve's intent is committed, the effect never ran: it runs once, in the next worker.
    "after_intent:1": ({1: "started"}, set()),
    # reserve ran, its result was lost: it runs again, with the same key, as attempt 2.
    "after_effect:1": ({1: "started"}, {1}),
    # killed right after parking on the timer: nothing runs again.
    "while_waiting:1": ({1: "completed", 2: "completed", 3: "completed", 4: "completed", 5: "waiting"}, set()),
}


@pytest.mark.slow
@pytest.mark.parametrize("crash", list(KILLS))
def test_killed_worker_is_resumed_by_another_process(pg_url: str, tmp_path: Path, crash: str) -> None:
    """A worker process SIGKILLed at the crash point leaves the run where the point says; a new
    worker process takes it over and finishes it with the uncrashed result and history. Every
    step committed before the kill ran once; the step in flight ran at most twice, under the
    same idempotency key (so an effect keyed by it happens once)."""
    ledger = tmp_path / "ledger.db"
    crashapp.init_ledger(str(ledger))
    app = crashapp.make_app(pg_url)
    try:
        app.start(app.workflow_named("chaos"), N, run_id="r")
        with ExitStack() as stack:
            workers = Workers(stack, tmp_path, pg_url, "crashapp:app", **{crashapp.LEDGER_ENV: str(ledger)})
            killed = workers.spawn(crash=crash, until_idle=True)
            assert killed.wait(timeout=WORKER_TIMEOUT) == -signal.SIGKILL, workers.log()
            at_kill, twice = KILLS[crash]
            assert {s.seq: s.status for s in app.history("r")} == at_kill
            executed_before = len(crashapp.ledger_rows(str(ledger)))

            resumer = workers.spawn()
            assert_eventually(
                lambda: app.get_run("r").status == "completed",
                timeout=WORKER_TIMEOUT,
                message=f"the run was not resumed:\n{workers.log()}",
            )
            assert workers.stop([resumer]) == [0], workers.log()

        run = app.store.get_run("r")
        assert app.result_of(run) == CHAOS_RESULT
        assert run.epoch >= 2, "the resuming worker did not take the run over"
        assert [(s.seq, s.kind, s.name) for s in app.history("r")] == CHAOS_SHAPE
        rows = crashapp.ledger_rows(str(ledger))
        by_seq: dict[int, list[tuple[Any, ...]]] = {}
        for row in rows:
            by_seq.setdefault(row[2], []).append(row)
        assert {seq for seq, ran in by_seq.items() if len(ran) > 1} == twice
        for seq, ran in by_seq.items():
            assert {r[4] for r in ran} == {f"r:{seq}"}, ran
            attempts = [r[5] for r in ran]
            assert attempts == sorted(set(attempts)), ran  # a re-execution is a later attempt
        for seq in at_kill:
            if at_kill[seq] == "completed":
                assert len(by_seq.get(seq, [])) <= 1 and all(r[0] <= executed_before for r in by_seq.get(seq, []))
    finally:
        app.close()


# -- 4. races ----------------------------------------------------------------------------------
def _in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    """Run `fn` on a thread; its result or exception lands in the returned dict."""
    out: dict[str, Any] = {}

    def main() -> None:
        try:
            out["result"] = fn()
        except BaseException as exc:  # reported by the test
            out["error"] = exc

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    return thread, out


def _eventually(check: Callable[[], bool], describe: Callable[[], str], timeout: float = 20.0) -> None:
    """`assert_eventually`, with the failure described by the state at the deadline."""
    try:
        assert_eventually(check, timeout=timeout)
    except AssertionError:
        raise AssertionError(describe()) from None


SIGNALS = "SELECT run_id, name, consumed_seq FROM af_signals ORDER BY id"


def _failed(*outs: dict[str, Any]) -> Callable[[], BaseException | None]:
    """A check for `Gate.wait_*`: the first error one of these threads stopped with."""
    return lambda: next((out["error"] for out in outs if "error" in out), None)


def _join(thread: threading.Thread, out: dict[str, Any]) -> Any:
    thread.join(WORKER_TIMEOUT)
    assert not thread.is_alive(), "the thread is still blocked"
    if "error" in out:
        raise out["error"]
    return out.get("result")


def test_concurrent_approvals_reach_the_quorum_once(make_app: Callable[..., App], pg_url: str) -> None:
    """Two approvers vote at the same moment (two Apps, two threads) on a request that needs a
    quorum of 2; both votes are held after the request was read and before the vote is written.
    The request ends approved, with both votes, one `approved (2/2)` audit entry and exactly one
    wake-up signal to the run: neither vote was decided on a stale count (the lost quorum) and
    the transition happened once."""
    app_a, app_b = make_app(), make_app()
    alice, _ = Approvals.of(app_a).add_operator("alice", tenant="t", roles=["noc"])
    bob, _ = Approvals.of(app_a).add_operator("bob", tenant="t", roles=["noc"])
    app_a.store.create_run(run_id="r", workflow="wf", tenant="t", input="[[],{}]", now=START)
    decision = PolicyDecision(
        effect="require_approval", rule="two-keys", approval=ApprovalSpec(roles=["noc"], quorum=2)
    )
    request = Approvals.of(app_a).request(
        run_id="r", call_id="c1", tenant="t", requested_by="carol", tool="apply_change", args={"site": "CS-101"},
        decision=decision,
    )  # fmt: skip

    with Gate(pg_url, "af_approval_votes") as gate:
        votes = [
            _in_thread(lambda: Approvals.of(app_a).approve(request.id, by=alice)),
            _in_thread(lambda: Approvals.of(app_b).approve(request.id, by=bob)),
        ]
        failed = _failed(*(out for _, out in votes))
        gate.wait_at_gate(1, failed=failed)
        gate.wait_blocked(2, failed=failed)  # the other vote is at the gate too, or held by the backend's lock
        gate.open()
        for thread, out in votes:
            _join(thread, out)

    final = Approvals.of(app_a).get(request.id)
    assert (final.status, sorted(v.principal for v in final.votes)) == ("approved", ["alice", "bob"])
    notes = [e.reason for e in Approvals.of(app_a).audit(approval_id=request.id) if e.action == "approve"]
    assert len(notes) == 2 and sum(n.startswith("approved (2/2)") for n in notes) == 1, notes
    wakes = app_a.store.backend.query(
        "SELECT payload FROM af_signals WHERE run_id = ? AND name = ?", ("r", approval_signal_name(request.id))
    )
    assert [json.loads(p)["status"] for (p,) in wakes] == ["approved"]


def _noc(tmp_path: Path) -> noc.Network:
    return noc.configure(tmp_path / "net.db")


def _policy_app(make_app: Callable[..., App]) -> App:
    app = make_app(inline_wait=0.0, lease_ttl=10.0)
    for agent in policyapp.AGENTS.values():
        agent.register(app)
    return app


def _decisions(app: App, run_id: str) -> list[PolicyDecision]:
    return [
        PolicyDecision.model_validate_json(s.result or "{}")
        for s in app.history(run_id)
        if s.kind == "policy" and s.name == "apply_change" and s.status == "completed"
    ]


def _drive(app: App, run_id: str) -> None:
    asyncio.run(app.worker(root_id=run_id).run_until_done(run_id))


def test_rate_limit_holds_under_concurrent_decisions(make_app: Callable[..., App], tmp_path: Path, pg_url: str) -> None:
    """Under a limit of 3 apply_change calls per hour, with 2 already made, two runs decide at the
    same moment (two Apps, two threads), each held after it counted the usage and before it
    recorded its own: exactly one is allowed and pushes its change, the other is denied by the
    rate rule; af_policy_usage counts exactly the 3 pushes."""
    net = _noc(tmp_path)
    app_a, app_b = _policy_app(make_app), _policy_app(make_app)
    agent = policyapp.AGENTS["rate"]
    for site in ("CS-101", "CS-107"):
        agent.start(app_a, policyapp.task(site), run_id=f"before-{site}")
        _drive(app_a, f"before-{site}")
    assert len(net.effects("apply")) == policyapp.MAX_CALLS - 1

    racers = {"race-a": (app_a, "CS-113"), "race-b": (app_b, "CS-119")}
    for run_id, (app, site) in racers.items():
        agent.start(app, policyapp.task(site), run_id=run_id)
    with Gate(pg_url, "af_policy_usage") as gate:
        threads = [_in_thread(lambda a=app, r=run_id: _drive(a, r)) for run_id, (app, _) in racers.items()]
        failed = _failed(*(out for _, out in threads))
        gate.wait_at_gate(1, failed=failed)
        gate.wait_blocked(2, failed=failed)
        gate.open()
        for thread, out in threads:
            _join(thread, out)

    effects = {r: [e for e in net.effects("apply") if run_of(e["idempotency_key"]) == r] for r in racers}
    assert sorted(len(e) for e in effects.values()) == [0, 1], effects
    for run_id in racers:
        assert app_a.get_run(run_id).status == "completed"
        [decision] = _decisions(app_a, run_id)
        assert (decision.effect, decision.rule if decision.effect == "deny" else None) == (
            ("allow", None) if effects[run_id] else ("deny", policyapp.RATE_RULE)
        )
    assert len(net.effects("apply")) == policyapp.MAX_CALLS
    usage = app_a.store.backend.query("SELECT run_id FROM af_policy_usage WHERE side_effect = 1 ORDER BY id")
    assert sorted(r for (r,) in usage) == sorted(run_of(e["idempotency_key"]) for e in net.effects("apply"))


SPREAD = ["CS-101", "CS-107", "CS-113", "CS-119", "CS-102", "CS-108", "CS-114", "CS-120"]


@pytest.mark.slow
def test_rate_limit_holds_across_worker_processes(pg_url: str, tmp_path: Path) -> None:
    """8 runs on 8 sites driven by 3 racing worker processes on one PostgreSQL database, under a
    limit of 3 apply_change calls per hour: exactly 3 pushes (none twice), every other run is
    denied by the rate rule; af_policy_usage counts exactly the pushes."""
    net = _noc(tmp_path)
    app = policyapp.make_app(pg_url)
    try:
        run_ids = [f"rate-{site}" for site in SPREAD]
        for run_id, site in zip(run_ids, SPREAD, strict=True):
            policyapp.AGENTS["rate"].start(app, policyapp.task(site), run_id=run_id)
        with ExitStack() as stack:
            workers = Workers(stack, tmp_path, pg_url, "policyapp:app", **{noc.ENV: str(tmp_path / "net.db")})
            procs = [workers.spawn(until_idle=True) for _ in range(3)]
            assert [p.wait(timeout=WORKER_TIMEOUT) for p in procs] == [0, 0, 0], workers.log()
        applied = []
        for run_id in run_ids:
            assert app.get_run(run_id).status == "completed", workers.log()
            pushes = [e for e in net.effects("apply") if run_of(e["idempotency_key"]) == run_id]
            assert len(pushes) <= 1
            effects = [d.effect for d in _decisions(app, run_id)]
            if pushes:
                applied.append(run_id)
                assert effects == ["allow"]
            else:
                assert [(d.effect, d.rule) for d in _decisions(app, run_id)] == [("deny", policyapp.RATE_RULE)]
        assert len(applied) == policyapp.MAX_CALLS, applied
        assert net.duplicate_keys() == []
        usage = app.store.backend.query("SELECT run_id FROM af_policy_usage WHERE side_effect = 1")
        assert sorted(r for (r,) in usage) == sorted(applied)
    finally:
        app.close()


def test_signal_sent_while_the_run_parks_is_not_lost(
    make_app: Callable[..., App], worker_thread: Callable[..., Any], pg_url: str
) -> None:
    """A run decides to park (its wait found no signal) and is held just as it writes `waiting`;
    the signal it waits for is sent then, from another App. Once the park goes on, the run is
    woken and gets the payload: the signal was not lost between the check and the park."""
    app, sender = make_app(inline_wait=0.0), make_app()

    @app.workflow(name="waiter")
    async def waiter(ctx: WorkflowContext) -> Any:
        return await ctx.wait_signal("go")

    app.start(waiter, run_id="r")
    with Gate(pg_url, "af_runs", timing="BEFORE UPDATE", when="OLD.status = 'running' AND NEW.status = 'waiting'") as g:
        worker_thread(app)
        g.wait_at_gate(1)
        thread, out = _in_thread(lambda: sender.signal("r", "go", {"by": "alice"}))
        assert_eventually(lambda: not thread.is_alive() or g.blocked() >= 2, message=g.activity())
        g.open()
        _join(thread, out)
    _eventually(
        lambda: app.get_run("r").status == "completed",
        lambda: f"lost wake-up: the run is {app.store.get_run('r')}; signals {app.store.backend.query(SIGNALS)}",
    )
    assert app.result_of(app.store.get_run("r")) == {"by": "alice"}


def _effect_workflow(app: App, calls: list[str]) -> None:
    """Workflow `wf`: one side-effecting activity, whose executions land in `calls` (by key)."""

    @app.activity(name="effect")
    def effect() -> str:
        calls.append(current_activity().idempotency_key)
        return "applied"

    @app.workflow(name="wf")
    async def wf(ctx: WorkflowContext) -> str:
        return await ctx.run(effect)


def _count_claims(app: App) -> list[object]:
    """Make `app.store.claim` note each call that returned (so a test can wait for whole claims)."""
    store, done = app.store, []
    claim = store.claim

    def counting(*args: Any, **kwargs: Any) -> Any:
        result = claim(*args, **kwargs)
        done.append(result)
        return result

    store.claim = counting  # type: ignore[method-assign]
    return done


def test_zombie_write_racing_a_takeover_leaves_no_stuck_run(
    make_app: Callable[..., App], worker_thread: Callable[..., Any], pg_url: str
) -> None:
    """A worker whose lease is gone (a zombie) is in the middle of recording a step's result when
    another, live worker tries to take the run over (held until the takeover waits for the
    zombie's transaction, overtakes it, or passes the run over). Whichever commits first, the
    history stays one: the run
    completes (the new owner is not stuck behind a result it did not see), its output is the
    recorded step's result, the step is recorded once, and the effect ran at most twice, always
    under the run's idempotency key. A zombie that lost the race stops with `LeaseLostError`."""
    app, other = make_app(), make_app()
    calls: list[str] = []
    for application in (app, other):
        _effect_workflow(application, calls)

    app.start(app.workflow_named("wf"), run_id="r")
    # Claimed by a worker id no live worker has: the lease is as good as expired.
    [(_, epoch, _)] = app.store.claim("zombie", now=app.clock.now(), lease_ttl=app.lease_ttl, limit=1)
    zombie = RunExecutor(app, app.store.get_run("r"), epoch)
    claims = _count_claims(other)
    with Gate(pg_url, "af_steps", timing="BEFORE INSERT OR UPDATE", when="NEW.status = 'completed'") as gate:
        thread, out = _in_thread(lambda: asyncio.run(zombie.execute()))
        gate.wait_at_gate(1, failed=_failed(out))
        tried_before = len(claims)
        worker_thread(other)  # a live worker: it renews its lease on whatever it claims

        def takeover_played_out() -> bool:
            if gate.blocked() >= 2:  # one side waits for the other's transaction
                return True
            # Or the new worker passed the run over (SKIP LOCKED) in two whole claims.
            taken = gate.scalar("SELECT epoch FROM af_runs WHERE id = ?", ("r",)) != epoch
            return not taken and len(claims) >= tried_before + 2

        gate.wait(takeover_played_out, "the other worker neither took the run over nor passed it", _failed(out))
        gate.open()
        thread.join(WORKER_TIMEOUT)
        assert not thread.is_alive()

    _eventually(
        lambda: other.get_run("r").status == "completed",
        lambda: f"the run is stuck after the takeover: {app.store.get_run('r')}, history {app.history('r')}",
    )
    run = app.store.get_run("r")
    steps = app.history("r")
    assert [(s.seq, s.status, s.result) for s in steps] == [(1, "completed", '"applied"')]
    assert app.result_of(run) == "applied"
    assert 1 <= len(calls) <= 2 and set(calls) == {"r:1"}, calls
    if run.epoch > epoch:  # the run was taken over: the zombie's last write was refused
        assert isinstance(out.get("error"), LeaseLostError), out
    else:
        assert "error" not in out, out


# -- 5. the read side ------------------------------------------------------------------------
def test_trace_and_approvals_on_postgres(make_app: Callable[..., App], tmp_path: Path, pg_url: str) -> None:
    """On a PostgreSQL App, an agent run waits for an approval listed by `Approvals.of(app)`;
    alice's approval wakes it and it pushes once. `agentflow.trace.load` (from the App and from
    the URL) has the run's steps, its decision and the approval; `trace.runs` finds the run by
    tool and approver; the audit holds the request and the approval."""
    from agentflow import trace

    net = _noc(tmp_path)
    app = _policy_app(make_app)
    policyapp.AGENTS["approve"].start(app, policyapp.task("CS-104"), run_id="ap")
    asyncio.run(app.worker(root_id="ap").run_until_blocked("ap", until_signal_wait=True))
    [request] = Approvals.of(app).list(run_id="ap")
    assert (request.status, request.tool, request.args["site"]) == ("pending", "apply_change", "CS-104")
    alice, _ = Approvals.of(app).add_operator("alice", tenant="default", roles=["noc-engineer"])
    Approvals.of(app).approve(request.id, by=alice, comment="window agreed")
    _drive(app, "ap")
    assert app.get_run("ap").status == "completed"
    assert len([e for e in net.effects("apply") if run_of(e["idempotency_key"]) == "ap"]) == 1

    history = app.history("ap")
    with trace.load(app, "ap") as t:
        assert list(t.steps["seq"]) == [s.seq for s in history]
        assert list(t.steps["kind"]) == [s.kind for s in history]
        assert "require_approval" in set(t.decisions["effect"])
        assert list(t.approvals["status"]) == ["approved"]
        assert "alice" in str(t.approvals["approved_by"].iloc[0])
    with trace.load(pg_url, "ap") as t:
        assert len(t.steps) == len(history)
    found = trace.runs(app, tool="apply_change", approved_by="alice")
    assert list(found["run_id"]) == ["ap"]
    actions = [e.action for e in Approvals.of(app).audit(run_id="ap")]
    assert actions[0] == "requested" and "approve" in actions


def test_decisions_of_other_tenants_do_not_wait_for_each_other(make_app: Callable[..., App]) -> None:
    """Issue 14: a transaction holds its tenant's lock (`tenant:east`) for as long as it likes.
    Another tenant's transaction commits at once (there used to be one lock for the database);
    one naming the same tenant, with another key beside it, waits until the first has committed."""
    app_a, app_b = make_app(), make_app()
    entered, release = threading.Event(), threading.Event()

    def hold(_: Any) -> str:
        entered.set()
        release.wait(WORKER_TIMEOUT)
        return "held"

    holder = _in_thread(lambda: app_a.store.transaction(hold, locks=["tenant:east"]))
    assert entered.wait(WORKER_TIMEOUT)
    try:
        started = time.monotonic()
        assert app_b.store.transaction(lambda _: "west", locks=["tenant:west", "target:CS-1"]) == "west"
        assert time.monotonic() - started < 1.0, "another tenant waited for east's lock"
        same = _in_thread(lambda: app_b.store.transaction(lambda _: "east", locks=["target:CS-1", "tenant:east"]))
        time.sleep(0.5)
        assert same[1] == {} and same[0].is_alive(), "a transaction of the same tenant did not wait"
    finally:
        release.set()
    assert _join(*holder) == "held" and _join(*same) == "east"
