"""The `agentflow` command as a user runs it: a real subprocess each time."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

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


@pytest.mark.slow
def test_demo_crash_and_resume(tmp_path: Path) -> None:
    """The demo killed with SIGKILL after step 4 resumes with `--resume`: the config is pushed
    exactly once and the completed steps are not run again."""
    db = f"sqlite:///{tmp_path}/demo.db"
    crashed = agentflow("demo", "--db", db, "--crash-at", "4", cwd=tmp_path)
    assert crashed.returncode == -9, crashed.stdout + crashed.stderr
    assert crashed.stdout.count("apply_change") == 1
    resumed = agentflow("demo", "--db", db, "--resume", "--json", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert summary["status"] == "completed"
    assert summary["effects_applied"] == 2  # the config push and the ticket
    assert summary["duplicate_effects"] == 0
    assert summary["result"]["resolved"] is True
    ledger = sqlite3.connect(f"{tmp_path}/demo.db.network.db")
    applies = ledger.execute("SELECT key, count(*) FROM effects WHERE kind = 'apply' GROUP BY key").fetchall()
    assert len(applies) == 1 and applies[0][1] == 1


def test_demo_uncrashed_json(tmp_path: Path) -> None:
    """A plain demo run completes and reports its figures as one JSON object."""
    out = agentflow("demo", "--db", f"sqlite:///{tmp_path}/d.db", "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["status"] == "completed"
    assert summary["steps"] == 11
    assert summary["duplicate_effects"] == 0


def test_runs_commands(tmp_path: Path) -> None:
    """`runs list|show|history --json` print what the store recorded; an unknown run is a
    clear error with exit code 2, not a traceback."""
    db = f"sqlite:///{tmp_path}/d.db"
    summary = json.loads(agentflow("demo", "--db", db, "--json", cwd=tmp_path).stdout)
    run_id = summary["run_id"]
    listed = json.loads(agentflow("runs", "list", "--db", db, "--json", cwd=tmp_path).stdout)
    assert [r["id"] for r in listed] == [run_id]
    shown = json.loads(agentflow("runs", "show", run_id, "--db", db, "--json", cwd=tmp_path).stdout)
    assert shown["status"] == "completed" and shown["steps"] == 11
    history = json.loads(agentflow("runs", "history", run_id, "--db", db, "--json", cwd=tmp_path).stdout)
    assert [s["seq"] for s in history["steps"]] == list(range(1, 12))
    assert history["steps"][3]["name"] == "apply_change"
    table = agentflow("runs", "history", run_id, "--db", db, cwd=tmp_path)
    assert "apply_change" in table.stdout
    missing = agentflow("runs", "show", "nope", "--db", db, cwd=tmp_path)
    assert missing.returncode == 2
    assert "UnknownRunError" in missing.stderr and "Traceback" not in missing.stderr


def test_worker_bad_app_reference(tmp_path: Path) -> None:
    """`worker --app` with a bad reference says what is wrong."""
    out = agentflow("worker", "--app", "no_such_module:app", "--db", f"sqlite:///{tmp_path}/w.db", cwd=tmp_path)
    assert out.returncode != 0
    assert "cannot import" in out.stderr
