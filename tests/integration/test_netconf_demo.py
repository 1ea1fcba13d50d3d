"""`agentflow demo --network netconf`, as a user runs it: with no device configured it starts a
lab device (netconfd behind sshd, CS-101's handover offset mis-set) and, with no Prometheus
configured, a lab Prometheus scraping the RAN exporter; the closed loop fixes the incident with
one confirmed commit, approved by the on-call engineer, on the KPIs Prometheus scraped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.netconf import require
from support.prometheus import require_binary

from agentflow_noc.demo_netconf import ENV_MONITOR
from agentflow_noc.netconf import ENV_HOST
from agentflow_noc.promql import ENV_URL

pytestmark = pytest.mark.slow


def test_the_demo_fixes_the_incident_over_netconf_with_one_commit_on_the_device(tmp_path: Path) -> None:
    """Exit 0, outcome confirmed (hoA3Offset 8 -> 3), the device's state confirmed, and the
    lab device's audit log holds exactly one commit to CS-101; the KPIs came from the lab
    Prometheus the demo started."""
    require()
    require_binary()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("NOC_NETCONF_", "AGENTFLOW_NOC_PROMETHEUS")) and k != "AGENTFLOW_DB"}  # fmt: skip
    env[ENV_MONITOR] = "2"
    assert ENV_HOST not in env and ENV_URL not in env
    proc = subprocess.run(
        [sys.executable, "-m", "agentflow.cli", "demo", "--network", "netconf", "--json",
         "--db", f"sqlite:///{tmp_path / 'demo.db'}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["outcome"] == "confirmed", summary
    assert summary["change"] == "hoA3Offset 8 -> 3"
    assert summary["device_state"] == "confirmed"
    assert summary["commits_on_device"] == 1
    assert summary["approved_by"] == "oncall-engineer"
    assert summary["incident_open"] is False
    assert summary["kpis"].startswith("prometheus http://127.0.0.1:"), summary["kpis"]
    assert "started for the demo" in summary["kpis"]
