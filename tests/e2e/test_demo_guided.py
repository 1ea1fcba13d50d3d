"""`agentflow demo --mode guided`: the NOC copilot follows the runbook's phases (one required
call each, the change phases skippable), then answers; crash-and-resume re-calls nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow


def demo(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AGENTFLOW_", "OPENAI_", "NOC_"))}
    env.update({"COLUMNS": "200", "AGENTFLOW_ALLOW_MODEL_REQUESTS": "0"})
    return subprocess.run(
        [sys.executable, "-m", "agentflow.cli", "demo", "--mode", "guided", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_guided_demo_follows_the_phases_and_fixes_the_incident(tmp_path: Path) -> None:
    out = demo("--db", "sqlite:///guided.db", "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    found: dict[str, Any] = json.loads(out.stdout)
    assert (found["status"], found["outcome"], found["config_pushes"]) == ("completed", "answered", 1), found
    assert found["plan_steps_done"] == 9 and found["kpis_healthy_after"] is True
    # One model call per phase and the answer: the phases kept the model on the runbook.
    assert found["model_calls"] == 10


def test_guided_demo_resumes_after_a_crash_without_recalling_the_model(tmp_path: Path) -> None:
    crashed = demo("--db", "sqlite:///guided.db", "--crash-at", "14", cwd=tmp_path)
    assert crashed.returncode != 0
    out = demo("--db", "sqlite:///guided.db", "--resume", "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    found = json.loads(out.stdout)
    assert (found["outcome"], found["config_pushes"], found["recalled_model_steps"]) == ("answered", 1, 0), found
    assert found["duplicate_effects"] == 0
