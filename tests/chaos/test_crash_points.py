"""A worker process killed with SIGKILL at each named crash point loses nothing and duplicates
nothing: a new worker process resumes the run to the result an uncrashed run gets.

Each scenario runs `agentflow worker --until-idle` as a real subprocess with
`AGENTFLOW_CRASH_AT=<point>:<n>` (it must die with -9), then plain workers until the run ends.
Executions are counted in an external ledger (see `crashapp`), split into *phases* (one phase per
worker process, by ledger row id), and checked against a snapshot of the store taken after every
phase:

* a step whose result was committed is never executed again;
* a worker process executes a step at most once (no retries are configured);
* the committed result of a step comes from an execution in the phase that committed it, and
  executions in earlier phases happened only in processes that crashed (their result was lost);
* every execution of a step carries the same idempotency key, `<run_id>:<seq>`.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import crashapp
import pytest

from agentflow.testing import assert_eventually

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent
WORKER_TIMEOUT = 60.0
N = 3  # the workflow's input, the same for the reference run and every crashed run
ACTIVITY_SEQS = {1, 2, 3, 4, 6}
GATHER_SEQS = {3, 4}


@dataclass
class Phase:
    """One worker process: how it ended, and the store and ledger as it left them."""

    crash: str | None
    returncode: int
    stderr: str
    ledger_max_id: int
    steps: dict[int, str]  # seq -> status, at the end of the phase

    @property
    def crashed(self) -> bool:
        return self.returncode == -9


@dataclass
class Harness:
    """A workflow store and a ledger in `tmp`, and worker subprocesses on them."""

    tmp: Path
    db_path: Path = field(init=False)
    ledger: Path = field(init=False)

    def __post_init__(self) -> None:
        self.db_path = self.tmp / "wf.db"
        self.ledger = self.tmp / "ledger.db"
        crashapp.init_ledger(str(self.ledger))
        self.app = crashapp.make_app(f"sqlite:///{self.db_path}")
        self.phases: list[Phase] = []

    def close(self) -> None:
        self.app.close()

    def start(self, run_id: str) -> None:
        self.app.start(self.app.workflow_named("chaos"), N, run_id=run_id)

    def worker(self, run_id: str, crash: str | None = None) -> Phase:
        env = {k: v for k, v in os.environ.items() if k != "AGENTFLOW_CRASH_AT"}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
        env["AGENTFLOW_DB"] = f"sqlite:///{self.db_path}"
        env[crashapp.LEDGER_ENV] = str(self.ledger)
        if crash is not None:
            env["AGENTFLOW_CRASH_AT"] = crash
        proc = subprocess.run(
            [sys.executable, "-m", "agentflow.cli", "worker", "--app", "crashapp:app", "--until-idle"],
            cwd=self.tmp, env=env, capture_output=True, text=True, timeout=WORKER_TIMEOUT,
        )  # fmt: skip
        rows = crashapp.ledger_rows(str(self.ledger))
        phase = Phase(
            crash=crash, returncode=proc.returncode, stderr=proc.stderr[-3000:],
            ledger_max_id=rows[-1][0] if rows else 0,
            steps={s.seq: s.status for s in self.app.history(run_id)},
        )  # fmt: skip
        self.phases.append(phase)
        return phase

    def wait_until_due(self, run_id: str) -> None:
        """A parked timer: wait (polling) until it is due, so the next worker finds work."""
        run = self.app.get_run(run_id)
        if run.status == "waiting" and run.wake_at is not None:
            wake_at = run.wake_at
            assert_eventually(lambda: time.time() >= wake_at, timeout=10, message=f"{run_id} never came due")

    def drive(self, run_id: str, crashes: list[str]) -> None:
        """One worker per crash spec (each must die with SIGKILL), then plain workers until the
        run has ended (a worker started with --until-idle leaves a run parked on a timer)."""
        for spec in crashes:
            self.wait_until_due(run_id)
            phase = self.worker(run_id, spec)
            assert phase.returncode == -9, (
                f"the worker with AGENTFLOW_CRASH_AT={spec} exited {phase.returncode} instead of "
                f"being killed at the crash point; stderr:\n{phase.stderr}"
            )
        for _ in range(4):
            if self.app.get_run(run_id).status in ("completed", "failed", "cancelled"):
                return
            self.wait_until_due(run_id)
            phase = self.worker(run_id)
            assert phase.returncode == 0, f"a plain worker exited {phase.returncode}; stderr:\n{phase.stderr}"
        raise AssertionError(f"run {run_id} is still {self.app.get_run(run_id).status} after 4 plain workers")

    def executions(self, run_id: str) -> dict[int, list[tuple[Any, ...]]]:
        by_seq: dict[int, list[tuple[Any, ...]]] = defaultdict(list)
        for row in crashapp.ledger_rows(str(self.ledger)):
            if row[1] == run_id:
                by_seq[row[2]].append(row)
        return dict(by_seq)


def integrity(path: Path) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(path)) as conn:
        return conn.execute("PRAGMA integrity_check").fetchall()


def shape(app: Any, run_id: str) -> list[tuple[int, str, str, str]]:
    return [(s.seq, s.kind, s.name, s.status) for s in app.history(run_id)]


def check_executions(h: Harness, run_id: str, ref_shape: list[tuple[int, str, str, str]]) -> set[int]:
    """Check the ledger of `run_id` phase by phase (see the module docstring); return the steps
    that ran twice."""
    phases = h.phases
    crashed = [i for i, p in enumerate(phases) if p.crashed]
    runs = h.executions(run_id)
    assert sorted(runs) == sorted(ACTIVITY_SEQS), f"executions of non-activity steps: {runs}"
    bounds = [0] + [p.ledger_max_id for p in phases]
    first_crash = phases[crashed[0]] if crashed else None
    twice = set()
    for seq, rows in runs.items():
        # Same key, same activity, every time.
        assert {r[4] for r in rows} == {f"{run_id}:{seq}"}, rows
        assert {r[3] for r in rows} == {ref_shape[seq - 1][2]}, rows
        per_phase = [[r for r in rows if bounds[i] < r[0] <= bounds[i + 1]] for i in range(len(phases))]
        assert sum(map(len, per_phase)) == len(rows)
        assert all(len(p) <= 1 for p in per_phase), f"step {seq} ran twice in one worker: {rows}"
        done = next(i for i, p in enumerate(phases) if p.steps.get(seq) == "completed")
        # The recorded result comes from an execution in the phase that committed it ...
        assert len(per_phase[done]) == 1, f"step {seq}: committed in phase {done} without running there: {rows}"
        # ... never runs again afterwards ...
        assert not any(per_phase[done + 1 :]), f"step {seq} ran again after its result was committed: {rows}"
        # ... and ran earlier only in workers killed before they could commit its result.
        for i in range(done):
            assert not per_phase[i] or phases[i].crashed, f"step {seq} ran in phase {i}, which did not crash"
        if first_crash is not None and first_crash.steps.get(seq) == "completed":
            assert len(rows) == 1, f"step {seq} was completed before the crash but ran {len(rows)} times"
        assert len(rows) <= 1 + len(crashed), rows
        if len(rows) == 2:
            twice.add(seq)
    return twice


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The chaos workflow run without any crash, under its own run id: the expected result and
    history shape; every activity ran exactly once."""
    h = Harness(tmp_path_factory.mktemp("reference"))
    try:
        h.start("reference")
        h.drive("reference", [])
        run = h.app.get_run("reference")
        assert run.status == "completed", run.error
        runs = h.executions("reference")
        assert sorted(runs) == sorted(ACTIVITY_SEQS)
        assert all(len(rows) == 1 for rows in runs.values()), runs
        assert integrity(h.db_path) == [("ok",)]
        yield {"result": h.app.result_of(h.app.store.get_run("reference")), "shape": shape(h.app, "reference")}
    finally:
        h.close()


@dataclass(frozen=True)
class Scenario:
    crashes: list[str]
    twice: set[int]  # the steps that must have run exactly twice (an effect whose result was lost)
    at_kill: dict[int, str]  # the steps' statuses in the store as the (last) killed worker left them
    twice_within: set[int] | None = None  # instead of `twice`: a non-empty subset of these
    why: str = ""


# Hits of each point in one process: after_intent: seq 1, 3, 4 (lookup is a read: no intent);
# after_effect / after_result: seq 1, 2, 3|4, 4|3 (seq 6 comes after the parked timer).
SCENARIOS = {
    "after_intent": Scenario(
        ["after_intent:1"],
        set(),
        {1: "started"},
        why="reserve's intent committed, the effect never ran: it runs once, later",
    ),
    "after_intent-gather": Scenario(
        ["after_intent:3"],
        set(),
        {1: "completed", 2: "completed", 3: "started", 4: "started"},
        twice_within=GATHER_SEQS,
        why="killed at the second gather branch's intent while the first branch's effect is in flight",
    ),
    "after_effect": Scenario(
        ["after_effect:1"], {1}, {1: "started"}, why="reserve ran, its result was lost: it runs again with the same key"
    ),
    "after_result": Scenario(
        ["after_result:2"], set(), {1: "completed", 2: "completed"}, why="lookup's result committed: nothing runs again"
    ),
    "while_waiting": Scenario(
        ["while_waiting:1"],
        set(),
        {1: "completed", 2: "completed", 3: "completed", 4: "completed", 5: "waiting"},
        why="killed right after parking on the timer",
    ),
    "during_recovery": Scenario(
        ["after_effect:2", "during_recovery:1"],
        {2},
        {1: "completed"},
        why="lookup (a read: no intent) ran, its result was lost; the first recovering worker dies too",
    ),
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_crash_point(name: str, tmp_path: Path, reference: dict[str, Any]) -> None:
    """SIGKILL at the crash point, then resume in a new process: the run completes with the
    uncrashed run's result and history; every step whose result was committed before the kill
    ran exactly once; the in-flight one ran at most twice, with the same idempotency key; the
    database passes `PRAGMA integrity_check`."""
    scenario = SCENARIOS[name]
    run_id = f"crash-{name}"
    h = Harness(tmp_path)
    try:
        h.start(run_id)
        h.drive(run_id, scenario.crashes)

        # The run ends as if nothing had happened.
        run = h.app.get_run(run_id)
        assert run.status == "completed", run.error
        assert h.app.result_of(h.app.store.get_run(run_id)) == reference["result"]
        assert shape(h.app, run_id) == reference["shape"]
        assert integrity(h.db_path) == [("ok",)]
        assert integrity(h.ledger) == [("ok",)]

        phases = h.phases
        crashed = [i for i, p in enumerate(phases) if p.crashed]
        assert len(crashed) == len(scenario.crashes)
        # The kill came where the crash point says (e.g. intent committed, result not).
        assert phases[crashed[-1]].steps == scenario.at_kill, (phases[crashed[-1]].steps, scenario.why)
        if "during_recovery" in name:
            # The recovering worker died before replaying: it executed and recorded nothing.
            assert phases[1].ledger_max_id == phases[0].ledger_max_id
            assert phases[1].steps == phases[0].steps

        twice = check_executions(h, run_id, reference["shape"])
        runs = h.executions(run_id)
        assert all(len(rows) <= 2 for rows in runs.values()), runs
        if scenario.twice_within is not None:
            assert twice and twice <= scenario.twice_within, (twice, scenario.why)
        else:
            assert twice == scenario.twice, (twice, scenario.why)
        # A re-run of a side-effecting step is a new attempt of the same step (same key).
        for seq in twice:
            if reference["shape"][seq - 1][2] != "lookup":
                assert [r[5] for r in runs[seq]] == [1, 2], runs[seq]
    finally:
        h.close()
