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

SUBCOMMANDS = [
    [],
    ["demo"],
    ["worker"],
    ["runs"],
    ["runs", "list"],
    ["runs", "show"],
    ["runs", "history"],
    ["runs", "usage"],
    ["runs", "cancel"],
    ["runs", "signal"],
    ["db"],
    ["db", "upgrade"],
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


def _summary(out: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert out.returncode == 0, out.stdout + out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def _assert_resolved_once(summary: dict[str, Any], db_path: Path) -> None:
    assert summary["status"] == "completed" and summary["outcome"] == "answered"
    assert summary["kpis_healthy_after"] is True
    assert summary["config_pushes"] == 1 and summary["duplicate_effects"] == 0
    ledger = sqlite3.connect(f"{db_path}.noc.db")
    per_key = ledger.execute("SELECT idempotency_key, count(*) FROM effects GROUP BY idempotency_key").fetchall()
    assert per_key and all(n == 1 for _, n in per_key)
    kinds = sorted(k for (k,) in ledger.execute("SELECT kind FROM effects"))
    assert kinds == ["apply", "notify", "ticket_create"]  # one ticket, one notification, one push


def test_demo_uncrashed_json(tmp_path: Path) -> None:
    """The NOC copilot runs end to end offline: investigates, applies one approved change,
    monitors, tickets; every model call is a recorded step and none is repeated."""
    out = agentflow("demo", "--db", f"sqlite:///{tmp_path}/d.db", "--json", cwd=tmp_path)
    summary = _summary(out)
    _assert_resolved_once(summary, tmp_path / "d.db")
    assert summary["model_calls"] == summary["model_steps_recorded"] == 10
    assert summary["recalled_model_steps"] == 0
    assert summary["tool_calls"] == 9 and summary["tokens"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("crash_at", [1, 3, 6, 9, 12, 15, 16, 18, 21, 24, 27])
def test_demo_crash_and_resume(tmp_path: Path, crash_at: int) -> None:
    """The copilot killed with SIGKILL after its N-th recorded step, then `demo --resume`:
    the run resolves with the same outcome, the model is never called again for a recorded
    step, and the config is pushed exactly once (the network's audit ledger)."""
    db = f"sqlite:///{tmp_path}/demo.db"
    crashed = agentflow("demo", "--db", db, "--crash-at", str(crash_at), cwd=tmp_path)
    assert crashed.returncode == -9, crashed.stdout + crashed.stderr
    summary = _summary(agentflow("demo", "--db", db, "--resume", "--json", cwd=tmp_path))
    _assert_resolved_once(summary, tmp_path / "demo.db")
    # A kill between a response and its record re-calls that one model step (never here: the
    # crash point is after a step's result is committed).
    assert summary["recalled_model_steps"] == 0
    assert summary["model_calls"] == 10


def test_runs_commands(tmp_path: Path) -> None:
    """`runs list|show|history|usage --json` print what the store recorded; an unknown run is a
    clear error with exit code 2, not a traceback."""
    db = f"sqlite:///{tmp_path}/d.db"
    run_id = _summary(agentflow("demo", "--db", db, "--json", cwd=tmp_path))["run_id"]
    listed = json.loads(agentflow("runs", "list", "--db", db, "--json", cwd=tmp_path).stdout)
    assert [r["id"] for r in listed] == [run_id]
    shown = json.loads(agentflow("runs", "show", run_id, "--db", db, "--json", cwd=tmp_path).stdout)
    assert shown["status"] == "completed" and shown["tenant"] == "noc-east"
    history = json.loads(agentflow("runs", "history", run_id, "--db", db, "--json", cwd=tmp_path).stdout)
    assert [s["seq"] for s in history["steps"]] == list(range(1, shown["steps"] + 1))
    assert [s["name"] for s in history["steps"] if s["kind"] == "tool"].count("apply_change") == 1
    table = agentflow("runs", "history", run_id, "--db", db, cwd=tmp_path)
    assert "apply_change" in table.stdout
    spent = json.loads(agentflow("runs", "usage", "--run", run_id, "--db", db, "--json", cwd=tmp_path).stdout)
    assert spent["calls"] == 10 and spent["total_tokens"] > 0
    missing = agentflow("runs", "show", "nope", "--db", db, cwd=tmp_path)
    assert missing.returncode == 2
    assert "UnknownRunError" in missing.stderr and "Traceback" not in missing.stderr


def test_worker_bad_app_reference(tmp_path: Path) -> None:
    """`worker --app` with a bad reference says what is wrong."""
    out = agentflow("worker", "--app", "no_such_module:app", "--db", f"sqlite:///{tmp_path}/w.db", cwd=tmp_path)
    assert out.returncode != 0
    assert "cannot import" in out.stderr
