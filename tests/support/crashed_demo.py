"""A recorded run that crashed and resumed: the NOC demo (`agentflow demo`) killed with SIGKILL
after its 12th recorded step result (`--crash-at 12`, the same kill the notebooks make), then
finished by another process (`--resume`). Its history has four leases: the one the kill ended,
the resuming process's, and one per wake after a durable wait (the approval, the maintenance
window)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from support.served import CLI, ROOT, env

CRASH_AT = 12


def crashed_demo(tmp: Path, db_file: str = "wf.db") -> tuple[str, str]:
    """Run the demo into `tmp/db_file`, kill it, resume it: (store URL, the run's store key)."""
    db = f"sqlite:///{tmp / db_file}"

    def demo(*args: str) -> subprocess.CompletedProcess[str]:
        command = [*CLI, "demo", "--db", db, "--json", *args]
        return subprocess.run(command, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)

    crashed = demo("--crash-at", str(CRASH_AT))
    assert crashed.returncode == -9, crashed.stderr[-2000:]
    resumed = demo("--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    summary = json.loads(resumed.stdout)
    assert summary["status"] == "completed" and summary["recalled_model_steps"] == 0, summary
    return db, str(summary["run_id"])
