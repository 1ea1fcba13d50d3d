"""The closed loop on confirmed commit, against a real NETCONF device (netconfd behind sshd,
`support.netconf`), in one process: what the device did is read from the device itself (its
running datastore and its audit log of commits), never from what the run believes. The fix
confirmed end to end: test_netconf_demo (the demo, on a lab Prometheus) and test_prometheus_kpis (the exporter, monitor_kpis);
confirmed and cancelled after a worker's death: test_netconf_crash.

The device's confirm timer runs on the wall clock, so these runs use the real clock with a
monitoring window of a second and a confirm timeout of a few seconds.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from support.netconf import INCIDENT_SITE, NetconfServer, initial_cells, netconf_server

from agentflow import App
from agentflow.errors import ToolError
from agentflow_noc.closed_loop_netconf import register, simulated_kpis

pytestmark = pytest.mark.slow
SITE = INCIDENT_SITE  # hoA3Offset mis-set to 8 dB on the device: drops and failed handovers


@pytest.fixture(scope="module")
def shared() -> Iterator[NetconfServer]:
    """One device for the module: each test leaves its cells and change record as it found
    them (nothing committed, or cancelled), and counts commits from where it started."""
    with netconf_server() as server:
        yield server


@pytest.fixture
def device(shared: NetconfServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[NetconfServer]:
    for name, value in shared.settings.environ().items():
        monkeypatch.setenv(name, value)
    assert shared.device.configs() == initial_cells() and shared.device.last_change() is None, "left changed"
    yield shared


@pytest.fixture
def app(tmp_path: Path) -> Iterator[App]:
    application = App(f"sqlite:///{tmp_path / 'runs.db'}")  # the real clock: the device's timer is real
    yield application
    application.close()


def test_a_value_outside_the_yang_range_is_refused_by_the_device_and_the_run_ends(
    device: NetconfServer, app: App
) -> None:
    """20 dB is outside the module's 0..15 range: the device refuses the staged edit, the run
    ends `refused` with the device's words (it does not fail), and nothing is committed."""
    before = device.cell_transactions(SITE)
    result = app.run(register(app), SITE, value=20, monitor_seconds=1, checks=1, confirm_timeout=8, auto_approve=True)
    assert result.status == "refused"
    assert "not in range" in result.detail and "hoA3Offset" in result.detail
    assert device.device.config(SITE)["hoA3Offset"] == 8
    assert device.cell_transactions(SITE) == before


def test_kpis_that_cannot_be_read_in_the_window_cancel_the_change(device: NetconfServer, app: App) -> None:
    """The KPI source fails during the monitoring window (here: refusing every read after the
    diagnosis): nothing shows the change helped, so the loop cancels it instead of confirming."""
    simulated = simulated_kpis()
    reads: list[float] = []

    def flaky(site: str, seconds: float, at: float) -> Mapping[str, float]:
        reads.append(at)
        if len(reads) > 1:
            raise ToolError("the KPI source refused the query", system="test")
        return simulated(site, seconds, at)

    result = app.run(register(app, name="loop-flaky", kpis=flaky), SITE, monitor_seconds=1, checks=1,
                     confirm_timeout=8, auto_approve=True)  # fmt: skip
    assert result.status == "cancelled", result.detail
    assert result.checks[-1].anomalies[0].startswith("unreadable (ToolError")
    assert device.device.config(SITE)["hoA3Offset"] == 8


def test_a_second_change_while_one_is_pending_on_the_device_ends_refused_saying_so(
    device: NetconfServer, app: App
) -> None:
    """Another loop's change (on CS-102) awaits its confirmation: the device holds one pending
    confirmed commit, so this loop's apply is refused, retried (the refusal is retryable), and
    the run ends `refused` naming the pending change; nothing of CS-101 is committed."""
    before = device.cell_transactions(SITE)
    other = device.device.apply("CS-102", "hoA3Offset", 4, key="other-loop:9", timeout=30)
    result = app.run(register(app), SITE, monitor_seconds=1, checks=1, confirm_timeout=8, auto_approve=True)
    assert result.status == "refused", result.detail
    assert f"{other['change_id']} on CS-102 is pending confirmation" in result.detail
    assert device.cell_transactions(SITE) == before
    assert device.device.rollback("CS-102", other["change_id"], key="other-loop:10")["how"] == "cancel-commit"
