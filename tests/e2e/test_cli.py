"""The `agentflow` command as a user runs it: a real subprocess each time."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agentflow.store import EventStore

SUBCOMMANDS = [
    [],
    ["demo"],
    ["eval"],
    ["worker"],
    ["runs"],
    ["runs", "list"],
    ["runs", "show"],
    ["runs", "history"],
    ["runs", "usage"],
    ["runs", "cancel"],
    ["runs", "signal"],
    ["runs", "watch"],
    ["db"],
    ["db", "upgrade"],
    ["run"],
    ["serve"],
    ["chat"],
    ["operators"],
    ["operators", "add"],
    ["operators", "list"],
    ["approvals"],
    ["approvals", "list"],
    ["approvals", "show"],
    ["approvals", "approve"],
    ["approvals", "reject"],
    ["policy"],
    ["policy", "check"],
    ["mcp"],
    ["mcp", "serve"],
]


def agentflow(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTFLOW_")}
    full_env.update({"COLUMNS": "200", **(env or {})})
    return subprocess.run(
        [sys.executable, "-m", "agentflow.cli", *args],
        cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


@pytest.mark.parametrize("sub", SUBCOMMANDS, ids=lambda s: " ".join(s) or "agentflow")
def test_every_subcommand_has_help(sub: list[str], tmp_path: Path) -> None:
    """`--help` works for every subcommand and describes it."""
    out = agentflow(*sub, "--help", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "Usage" in out.stdout
    assert len(out.stdout.strip().splitlines()) > 3


# The uncrashed demo, step by step (`runs history`): the runbook model calls one tool per turn;
# each call is a recorded policy decision, then the tool step; a last model call answers.
# `test_demo_records_the_plan` pins it, so the crash points derived from it below cannot go stale
# when the runbook, the policy pack or the agent loop changes.
def _turn(tool: str, *gate: tuple[str, str]) -> list[tuple[str, str]]:
    return [("llm", "runbook"), ("policy", tool), *gate, ("tool", tool)]


# Under policies/noc.yaml only apply_change needs an operator: the approval request is recorded,
# the run parks on the approval signal, re-reads the request, decides again, sleeps (durably)
# until the maintenance window and decides once more before the push.
APPROVAL_GATE = [
    ("approval", "request:apply_change"),
    ("now", "now"),
    ("signal", "approval"),  # signal names are cut at ':' (the request id after it is random)
    ("approval", "read"),
    ("policy", "apply_change"),
    ("sleep", "sleep"),
    ("policy", "apply_change"),
]
DEMO_PLAN = [
    *_turn("get_kpis"),
    *_turn("detect_anomalies"),
    *_turn("rank_root_causes"),
    *_turn("propose_change"),
    *_turn("stage_change"),
    *_turn("apply_change", *APPROVAL_GATE),
    *_turn("monitor_kpis"),
    *_turn("create_ticket"),
    *_turn("notify"),
    ("llm", "runbook"),
    ("activity", "noc.verify_incident"),  # the incident checked on the network (agentflow_noc/verdict.py)
]
# `--crash-at N` is the engine's `after_result:N` crash point: SIGKILL right after the N-th step
# result is committed in that process. Every activity step (model call, policy decision, approval
# request/read, tool, the verification) is a result: 33 of the 36 steps. The other three are committed without that
# point (`now` with the next commit, the signal when it arrives, the sleep when it fires) and are
# covered by INSIDE_A_STEP below.
RESULT_KINDS = ("llm", "policy", "approval", "tool", "activity")
DEMO_RESULTS = [step for step in DEMO_PLAN if step[0] in RESULT_KINDS]
DEMO_STEP_RESULTS = len(DEMO_RESULTS)  # 33: --crash-at 1..33 is every step result of the run
DEMO_MODEL_CALLS = sum(1 for kind, _ in DEMO_PLAN if kind == "llm")
DEMO_TOOL_CALLS = sum(1 for kind, _ in DEMO_PLAN if kind == "tool")
# The tools declared side-effecting (tools/noc/agentflow_noc/tools.py), in plan order: `after_intent:k` is the k-th.
SIDE_EFFECT_TOOLS = ["apply_change", "create_ticket", "notify"]


def _summary(out: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert out.returncode == 0, out.stdout + out.stderr  # 0: the agent answered (cli/_exit.py)
    summary: dict[str, Any] = json.loads(out.stdout)
    return summary


def _assert_resolved_once(summary: dict[str, Any], db_path: Path) -> None:
    assert summary["status"] == "completed" and summary["outcome"] == "answered"
    assert summary["kpis_healthy_after"] is True
    assert summary["config_pushes"] == 1 and summary["duplicate_effects"] == 0
    ledger = sqlite3.connect(f"{db_path}.noc.db")
    try:
        per_key = ledger.execute("SELECT idempotency_key, count(*) FROM effects GROUP BY idempotency_key").fetchall()
        assert per_key and all(n == 1 for _, n in per_key)
        kinds = sorted(k for (k,) in ledger.execute("SELECT kind FROM effects"))
        assert kinds == ["apply", "notify", "ticket_create"]  # one push, one ticket, one notification
        # The network's own tables, not just its effect log: one ticket and one notification.
        assert ledger.execute("SELECT count(*) FROM tickets").fetchone() == (1,)
        assert ledger.execute("SELECT count(*) FROM notifications").fetchone() == (1,)
    finally:
        ledger.close()


def _recorded(db: str, cwd: Path) -> list[tuple[str, str]]:
    """The (kind, name) of every finished step of the one run in `db`, as `runs history` lists
    them (signal names cut at ':': what follows is an approval request's random id). Read
    in-process: a subprocess per look would double the cost of the crash tests."""
    store = EventStore(db)
    try:
        (run,) = store.list_runs()
        steps = store.load_steps(run.id)
    finally:
        store.close()
    return [
        (s.kind, s.name.split(":")[0] if s.kind == "signal" else s.name)
        for s in steps
        if s.status in ("completed", "failed")
    ]


def test_demo_uncrashed_json(tmp_path: Path) -> None:
    """The NOC copilot runs end to end offline: investigates, applies one approved change,
    monitors, tickets; every model call is a recorded step and none is repeated."""
    out = agentflow("demo", "--db", f"sqlite:///{tmp_path}/d.db", "--json", cwd=tmp_path)
    summary = _summary(out)
    _assert_resolved_once(summary, tmp_path / "d.db")
    assert summary["model_calls"] == summary["model_steps_recorded"] == DEMO_MODEL_CALLS
    assert summary["recalled_model_steps"] == 0
    assert summary["tool_calls"] == DEMO_TOOL_CALLS and summary["tokens"] > 0


def test_demo_records_the_plan(tmp_path: Path) -> None:
    """The uncrashed demo records exactly DEMO_PLAN, so exactly DEMO_STEP_RESULTS step results:
    the crash points below are every step of the run, not a sample that drifted."""
    db = f"sqlite:///{tmp_path}/d.db"
    _summary(agentflow("demo", "--db", db, "--json", cwd=tmp_path))
    recorded = _recorded(db, tmp_path)
    assert recorded == DEMO_PLAN, "the demo's plan changed: update DEMO_PLAN (and what derives from it) here"
    assert sum(1 for kind, _ in recorded if kind in RESULT_KINDS) == DEMO_STEP_RESULTS


@pytest.mark.parametrize("how", ["python -m", "console script"])
def test_demo_runs_in_a_project_with_its_own_tools_package(tmp_path: Path, how: str) -> None:
    """`agentflow demo` completes from a project that has its own `tools` package, first on
    sys.path, whose `tools.noc` fails if imported: the NOC pack is `agentflow_noc`, and agentflow
    installs no top-level package a project's own could shadow (the wheel used to ship `tools`)."""
    (tmp_path / "tools" / "noc").mkdir(parents=True)
    (tmp_path / "tools" / "__init__.py").write_text('"""The project\'s own tools."""\n')
    (tmp_path / "tools" / "noc" / "__init__.py").write_text('raise ImportError("the project\'s tools.noc")\n')
    # Negative control: from this directory, `tools.noc` is the project's, and importing it fails.
    shadowed = subprocess.run(
        [sys.executable, "-c", "import tools.noc"], cwd=tmp_path, capture_output=True, text=True, timeout=30
    )
    assert shadowed.returncode != 0 and "the project's tools.noc" in shadowed.stderr
    args = ("demo", "--db", f"sqlite:///{tmp_path}/d.db", "--json")
    if how == "python -m":  # the current directory is sys.path[0]
        out = agentflow(*args, cwd=tmp_path)
    else:  # the installed command, in a project that is importable (installed, or on PYTHONPATH)
        script = Path(sys.executable).with_name("agentflow")
        env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTFLOW_")}
        out = subprocess.run(
            [str(script), *args], cwd=tmp_path, env={**env, "PYTHONPATH": str(tmp_path)},
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    summary = _summary(out)
    _assert_resolved_once(summary, tmp_path / "d.db")


def _crash_and_resume_once(db: str, tmp_path: Path, crash_at: int) -> dict[str, Any]:
    crashed = agentflow("demo", "--db", db, "--crash-at", str(crash_at), cwd=tmp_path)
    assert crashed.returncode == -9, crashed.stdout + crashed.stderr
    # The kill hit where N says: the first N results are recorded, nothing after them.
    done = [step for step in _recorded(db, tmp_path) if step[0] in RESULT_KINDS]
    assert done == DEMO_RESULTS[:crash_at]
    return _summary(agentflow("demo", "--db", db, "--resume", "--json", cwd=tmp_path))


# A sample of single kills (investigation, the approval gate, the push, the last step); the
# chain test below kills the same run after every one of its steps.
SAMPLED = sorted(
    {1, DEMO_RESULTS.index(("approval", "request:apply_change")) + 1, DEMO_RESULTS.index(("approval", "read")) + 1,
     DEMO_RESULTS.index(("tool", "apply_change")) + 1, DEMO_STEP_RESULTS // 2, DEMO_STEP_RESULTS}
)  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(
    "crash_at", SAMPLED, ids=[f"{n}-{DEMO_RESULTS[n - 1][0]}-{DEMO_RESULTS[n - 1][1]}" for n in SAMPLED]
)
def test_demo_crash_and_resume(tmp_path: Path, crash_at: int) -> None:
    """The copilot killed with SIGKILL after its N-th recorded step result, then `demo
    --resume`: the run resolves with the same outcome, the model is never called again for a
    recorded step, and the config is pushed, the ticket opened and the on-call notified exactly
    once (the network's audit ledger)."""
    db = f"sqlite:///{tmp_path}/demo.db"
    summary = _crash_and_resume_once(db, tmp_path, crash_at)
    _assert_resolved_once(summary, tmp_path / "demo.db")
    # A kill between a response and its record re-calls that one model step (never here: the
    # crash point is after a step's result is committed).
    assert summary["recalled_model_steps"] == 0
    assert summary["model_calls"] == DEMO_MODEL_CALLS


@pytest.mark.slow
@pytest.mark.timeout(900)  # ~33 demo processes of a few seconds each
def test_demo_killed_after_every_step_of_one_run(tmp_path: Path) -> None:
    """One run, killed with SIGKILL after every one of its step results in turn: each process
    (`demo --crash-at 1`, then `demo --resume --crash-at 1` again and again) replays what is
    recorded, records exactly one more result and dies. The run still resolves with the model
    called once per recorded step, one push, one ticket, one notification."""
    db = f"sqlite:///{tmp_path}/demo.db"
    crashed = agentflow("demo", "--db", db, "--crash-at", "1", cwd=tmp_path)
    kills = 0
    while crashed.returncode == -9:
        kills += 1
        done = [step for step in _recorded(db, tmp_path) if step[0] in RESULT_KINDS]
        assert done == DEMO_RESULTS[:kills], f"kill {kills} did not stop right after result {kills}"
        crashed = agentflow("demo", "--db", db, "--resume", "--crash-at", "1", "--json", cwd=tmp_path)
    assert kills == DEMO_STEP_RESULTS, crashed.stdout + crashed.stderr
    summary = _summary(crashed)
    _assert_resolved_once(summary, tmp_path / "demo.db")
    assert summary["recalled_model_steps"] == 0 and summary["model_calls"] == DEMO_MODEL_CALLS


# Kills inside a step, through the engine's other crash points (AGENTFLOW_CRASH_AT, which the
# subprocess reads at import). With the 33 results above, every one of the run's 36 steps has a
# kill right after it (or right after the commit that records it).
INSIDE_A_STEP = [
    # Parked on the approval (request, `now` and the signal wait committed), then on the
    # maintenance window (the sleep committed).
    pytest.param("while_waiting:1", 0, id="while_waiting-approval"),
    pytest.param("while_waiting:2", 0, id="while_waiting-maintenance-window"),
    # An effect's intent is committed, the effect has not run.
    *(pytest.param(f"after_intent:{k}", 0, id=f"after_intent-{tool}") for k, tool in enumerate(SIDE_EFFECT_TOOLS, 1)),
    # The model answered but the response was not recorded: that one call is made again.
    pytest.param("after_effect:1", 1, id="after_effect-first-model-call"),
    # The approval was read right after the signal arrived, but not recorded: read again.
    pytest.param(f"after_effect:{DEMO_RESULTS.index(('approval', 'read')) + 1}", 0, id="after_effect-approval-read"),
    # The config was pushed but the result not recorded: reconciled from the network, not re-pushed.
    pytest.param(f"after_effect:{DEMO_RESULTS.index(('tool', 'apply_change')) + 1}", 0, id="after_effect-apply_change"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("point", "recalled"), INSIDE_A_STEP)
def test_demo_crash_inside_a_step_and_resume(tmp_path: Path, point: str, recalled: int) -> None:
    """Killed while parked, after an effect's intent but before the effect, or after an effect
    but before its record: the resumed run still pushes, tickets and notifies exactly once, and
    re-calls the model only for a response that was never recorded."""
    db = f"sqlite:///{tmp_path}/demo.db"
    crashed = agentflow("demo", "--db", db, cwd=tmp_path, env={"AGENTFLOW_CRASH_AT": point})
    assert crashed.returncode == -9, crashed.stdout + crashed.stderr
    summary = _summary(agentflow("demo", "--db", db, "--resume", "--json", cwd=tmp_path))
    _assert_resolved_once(summary, tmp_path / "demo.db")
    assert summary["recalled_model_steps"] == recalled
    assert summary["model_calls"] == DEMO_MODEL_CALLS + recalled


def test_runs_commands(tmp_path: Path) -> None:
    """`runs list|show|history|usage --json` print what the store recorded; an unknown run is a
    clear error with exit code 2, not a traceback."""
    db = f"sqlite:///{tmp_path}/d.db"
    run_id = _summary(agentflow("demo", "--db", db, "--json", cwd=tmp_path))["run_id"]
    listed = json.loads(agentflow("runs", "list", "--db", db, "--json", cwd=tmp_path).stdout)
    assert [r["run_id"] for r in listed] == [run_id]
    shown = json.loads(agentflow("runs", "show", run_id, "--db", db, "--json", cwd=tmp_path).stdout)
    assert shown["status"] == "completed" and shown["tenant"] == "noc-east"
    history = json.loads(agentflow("runs", "history", run_id, "--db", db, "--json", cwd=tmp_path).stdout)
    assert [s["seq"] for s in history["steps"]] == list(range(1, shown["steps"] + 1))
    assert [s["name"] for s in history["steps"] if s["kind"] == "tool"].count("apply_change") == 1
    table = agentflow("runs", "history", run_id, "--db", db, cwd=tmp_path)
    assert "apply_change" in table.stdout
    spent = json.loads(agentflow("runs", "usage", "--run", run_id, "--db", db, "--json", cwd=tmp_path).stdout)
    assert spent["calls"] == DEMO_MODEL_CALLS and spent["total_tokens"] > 0
    missing = agentflow("runs", "show", "nope", "--db", db, cwd=tmp_path)
    assert missing.returncode == 2
    assert "UnknownRunError" in missing.stderr and "Traceback" not in missing.stderr


def test_worker_bad_app_reference(tmp_path: Path) -> None:
    """`worker --app` with a bad reference says what is wrong."""
    out = agentflow("worker", "--app", "no_such_module:app", "--db", f"sqlite:///{tmp_path}/w.db", cwd=tmp_path)
    assert out.returncode != 0
    assert "cannot import" in out.stderr
