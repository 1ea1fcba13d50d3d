"""The served app (`agentflow serve --app agentflow_noc.app:app`) with `NOC_NETWORK=netconf`:
the module loads against a real NETCONF device (the lab's netconfd behind sshd) and the closed
loop on confirmed commit it registers fixes CS-101 through the app."""

from __future__ import annotations

import asyncio
import importlib.util
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType

import pytest
from support.netconf import INCIDENT_SITE, netconf_device

from agentflow_noc import app as served
from agentflow_noc.closed_loop_netconf import NETCONF_LOOP
from agentflow_noc.demo import TENANT
from agentflow_noc.demo_netconf import _drive as drive
from agentflow_noc.netconf_tools import apply_change as netconf_apply
from agentflow_noc.promql import ENV_URL

pytestmark = pytest.mark.slow


def load_app(name: str) -> ModuleType:
    """A fresh copy of agentflow_noc.app, read with the environment as it is now."""
    spec = importlib.util.spec_from_file_location(name, served.__file__)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_served_app_runs_the_netconf_closed_loop_against_the_configured_device(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NOC_NETWORK=netconf: the app registers the closed loop against the device of the
    NOC_NETCONF_* settings; a run through the app commits the fix once and confirms it (the
    device's record says so). Without a Prometheus URL the copilot is not served (its KPI reads
    would not follow the device); with one, it is, on the NETCONF tools."""
    in_window = (datetime.now(UTC) + timedelta(days=1)).replace(hour=2, minute=30, second=0, microsecond=0)
    monkeypatch.setenv("NOC_NETWORK", "netconf")
    monkeypatch.setenv("NOC_CLOCK_START", in_window.isoformat())  # the policy pack's maintenance window
    monkeypatch.setenv("NOC_DB", str(tmp_path / "noc.db"))
    monkeypatch.delenv(ENV_URL, raising=False)
    with netconf_device(monkeypatch) as server:
        monkeypatch.setenv("AGENTFLOW_DB", f"sqlite:///{tmp_path / 'runs.db'}")
        module = load_app("noc_app_netconf")
        app = module.app
        try:
            assert module.agent is None and "agent:noc-copilot" not in app.workflow_names
            handle = app.start(app.workflow_named(NETCONF_LOOP), INCIDENT_SITE, monitor_seconds=1, checks=1,
                               confirm_timeout=8, tenant=TENANT, run_id="through-the-app")  # fmt: skip
            asyncio.run(drive(app, handle.run_id, "auto", lambda _: None))  # the engineer approves (the pack asks)
            result = app.store.get_run(handle.run_id)
        finally:
            app.close()
        assert result.status == "completed", result.error
        output = json.loads(result.output or "{}")
        assert output["status"] == "confirmed", output["detail"]
        assert output["approval"]["by"] == "oncall-engineer"
        assert server.device.config(INCIDENT_SITE)["hoA3Offset"] == 3
        assert len(server.cell_transactions(INCIDENT_SITE)) == 1
        monkeypatch.setenv(ENV_URL, "http://127.0.0.1:9")  # never asked here: the copilot is only built
        monkeypatch.setenv("AGENTFLOW_DB", f"sqlite:///{tmp_path / 'runs2.db'}")
        with_prometheus = load_app("noc_app_netconf_prometheus")
        try:
            names = [t.name for t in with_prometheus.agent.tools]
            assert {"get_config", "confirm_change"} <= set(names)
            assert "agent:noc-copilot" in with_prometheus.app.workflow_names
            assert with_prometheus.agent.tools[names.index("apply_change")] is netconf_apply
        finally:
            with_prometheus.app.close()


def test_an_unknown_network_or_a_missing_device_stops_the_app_at_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A typo in NOC_NETWORK, or netconf with no device named, fails when the app loads, saying what to set."""
    monkeypatch.setenv("AGENTFLOW_DB", f"sqlite:///{tmp_path / 'runs.db'}")
    monkeypatch.setenv("NOC_DB", str(tmp_path / "noc.db"))
    monkeypatch.setenv("NOC_NETWORK", "netconff")
    with pytest.raises(SystemExit, match="simulated or netconf"):
        load_app("noc_app_typo")
    monkeypatch.setenv("NOC_NETWORK", "netconf")
    monkeypatch.delenv("NOC_NETCONF_HOST", raising=False)
    with pytest.raises(Exception, match="NOC_NETCONF_HOST"):
        load_app("noc_app_nodevice")
