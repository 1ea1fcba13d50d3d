"""`agentflow demo` can run again on the same database: each new run starts a fresh incident (the
simulated network's fix from the run before is undone) on a day of its own (the policy pack's
hourly limits count across the store's runs), and `--resume` keeps the state of the run it
resumes. A model that cannot work (no API key) is refused before anything starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow


def demo(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("AGENTFLOW_", "OPENAI_", "NOC_"))}
    full_env.update({"COLUMNS": "200", "AGENTFLOW_ALLOW_MODEL_REQUESTS": "0", **(env or {})})
    return subprocess.run(
        [sys.executable, "-m", "agentflow.cli", "demo", *args],
        cwd=cwd, env=full_env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def summary(out: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert out.returncode == 0, out.stderr[-2000:]
    found: dict[str, Any] = json.loads(out.stdout)
    return found


def fixed_it(found: dict[str, Any]) -> None:
    assert (found["status"], found["outcome"]) == ("completed", "answered"), found
    assert (found["config_pushes"], found["duplicate_effects"], found["kpis_healthy_after"]) == (1, 0, True), found
    assert found["effects_applied"] == 3  # the push, the ticket, the notification: none rate-limited


def test_the_demo_runs_again_on_the_same_database(tmp_path: Path) -> None:
    """The second run used to end max_turns after 16 model calls with no push: the network
    remembered the first fix. The seventh used to lose its ticket and notification to the
    pack's 6-an-hour limit, had every run shared one day: three runs here, each a day apart."""
    db = f"sqlite:///{tmp_path / 'demo.db'}"
    runs = [summary(demo("--db", db, "--json", cwd=tmp_path)) for _ in range(3)]
    for found in runs:
        fixed_it(found)
    assert len({r["run_id"] for r in runs}) == 3
    history = subprocess.run(
        [sys.executable, "-m", "agentflow.cli", "runs", "list", "--db", db, "--json"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("AGENTFLOW_")},
    )  # fmt: skip
    assert history.returncode == 0, history.stderr
    assert all(r["run_id"] in history.stdout for r in runs)


def test_resume_keeps_the_state_of_the_run_it_resumes(tmp_path: Path) -> None:
    """After a completed run, a crashed second run resumes on its own day and incident: no model
    re-called, one push (from the network's ledger)."""
    db = f"sqlite:///{tmp_path / 'demo.db'}"
    fixed_it(summary(demo("--db", db, "--json", cwd=tmp_path)))
    crashed = demo("--db", db, "--crash-at", "16", cwd=tmp_path)
    assert crashed.returncode == -9, crashed.stderr[-2000:]
    resumed = summary(demo("--db", db, "--resume", "--json", cwd=tmp_path))
    fixed_it(resumed)
    assert resumed["recalled_model_steps"] == 0 and resumed["model_calls"] == resumed["model_steps_recorded"]
    assert resumed["run_id"] in crashed.stderr  # the header names the run that crashed


def test_no_api_key_is_refused_before_the_demo_starts(tmp_path: Path) -> None:
    """`--model openai:<name>` with no OPENAI_API_KEY (and OpenAI's endpoint): exit 2, one line
    naming the variable, no database made, no run started."""
    out = demo("--db", f"sqlite:///{tmp_path / 'demo.db'}", "--model", "openai:gpt-4o-mini", cwd=tmp_path)
    assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
    assert "OPENAI_API_KEY" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "demo.db").exists()
