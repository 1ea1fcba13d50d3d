"""The closed loop on confirmed commit with its KPIs from a real Prometheus: netconfd behind
sshd holds the cells' config, the RAN simulator exporter (`ransim`) reads it from the device on
every scrape, Prometheus scrapes the exporter, and the loop reads the KPIs with PromQL
(`promql.window_kpis`) before the change and through its monitoring window."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
from support.netconf import INCIDENT_SITE, netconf_device
from support.prometheus import Prometheus
from support.served import free_port

from agentflow import App
from agentflow.testing import assert_eventually
from agentflow_noc import promql, ransim
from agentflow_noc.closed_loop_netconf import register
from agentflow_noc.netconf import cell_configs

pytestmark = pytest.mark.slow
SITE = INCIDENT_SITE


def test_the_loop_confirms_the_fix_when_prometheus_sees_the_kpis_recover(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The KPIs Prometheus scraped over the last hour show CS-101 sick (its offset at 8 dB on the
    device); the loop commits 3 dB with a confirmed commit, the exporter serves the new config
    at the next scrape, the window's samples are healthy, and the loop confirms: one commit to
    the cell, confirmed on the device."""
    with netconf_device(monkeypatch) as server:
        port = free_port()
        stop = ransim.serve(ransim.RanCollector(configs=functools.partial(cell_configs, server.settings)), port=port)
        # A scrape opens a NETCONF session (about half a second): one every 2 s.
        prom = Prometheus(tmp_path / "prometheus", targets=[f"127.0.0.1:{port}"], interval=2)
        app = App(f"sqlite:///{tmp_path / 'runs.db'}")  # the real clock: samples carry wall-clock times
        try:
            prom.start()
            monkeypatch.setenv(promql.ENV_URL, prom.url)
            assert_eventually(lambda: prom.query(f'ran_cell_drop_rate_pct{{site="{SITE}"}}'), timeout=20)
            loop = register(app, kpis=promql.window_kpis)
            result = app.run(loop, SITE, monitor_seconds=6, checks=1, confirm_timeout=30, auto_approve=True)
        finally:
            app.close()
            prom.stop()
            stop()
        assert result.status == "confirmed", result.detail
        assert "drop_rate_pct" in result.anomalies
        assert result.change is not None and (result.change.previous, result.change.value) == (8, 3)
        assert result.checks[-1].healthy, result.checks
        assert server.device.config(SITE)["hoA3Offset"] == 3
        assert len(server.cell_transactions(SITE)) == 1
