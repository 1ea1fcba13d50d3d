"""Workers killed around a confirmed commit on a real NETCONF device (netconfd behind sshd).

Each test drives the closed loop (`netconf_loop_app`) in `agentflow worker` subprocesses, kills
them with SIGKILL, and checks the device's own record: its running datastore, its
`/ran/last-change` (the idempotency key the apply wrote in its own commit) and netconfd's audit
log of every commit to running (a client's commits, and the server's own reverts).

* killed between the commit and its record: the resumed run asks the device (reconcile), finds
  its key and does not commit again;
* killed during the monitoring window and not restarted: the device reverts the change at its
  confirm timeout by itself; a worker resuming later reports `reverted_by_device` and confirms
  nothing;
* killed during the window and restarted in time: the run confirms or cancels as the KPIs say.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from support.netconf import INCIDENT_SITE, NetconfServer, netconf_server

from agentflow import App
from agentflow.testing import assert_eventually
from agentflow_noc.closed_loop_netconf import NETCONF_LOOP
from agentflow_noc.netconf import COMMITTED
from integration.netconf_loop_app import make_app

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
SITE = INCIDENT_SITE
APPLY = f"{NETCONF_LOOP}.apply"


class Harness:
    """A store, a device, and worker subprocesses acting on both."""

    def __init__(self, tmp: Path, server: NetconfServer) -> None:
        self.db = f"sqlite:///{tmp / 'runs.db'}"
        self.server = server
        self.app: App = make_app(self.db)
        self.workers: list[subprocess.Popen[str]] = []

    def env(self, crash: str | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "AGENTFLOW_CRASH_AT"}
        env.update(self.server.settings.environ())
        env["AGENTFLOW_DB"] = self.db
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "tests"), env.get("PYTHONPATH")]))
        if crash is not None:
            env["AGENTFLOW_CRASH_AT"] = crash
        return env

    def worker(self, *, crash: str | None = None, until_idle: bool = False) -> subprocess.Popen[str]:
        argv = [sys.executable, "-m", "agentflow.cli", "worker", "--app", "integration.netconf_loop_app:app"]
        proc = subprocess.Popen(argv + (["--until-idle"] if until_idle else []), env=self.env(crash), cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
        self.workers.append(proc)
        return proc

    def start(self, run_id: str, **kwargs: Any) -> str:
        workflow = self.app.workflow_named(NETCONF_LOOP)
        self.app.start(workflow, SITE, run_id=run_id, auto_approve=True, checks=1, **kwargs)
        return run_id

    def applied(self, run_id: str) -> bool:
        return any(s.name == APPLY and s.status == "completed" for s in self.app.history(run_id))

    def finish(self, run_id: str, timeout: float = 40.0) -> dict[str, Any]:
        """Plain workers (each until idle) until the run has ended; its output."""
        deadline = time.monotonic() + timeout
        while not self.app.store.get_run(run_id).terminal:
            assert time.monotonic() < deadline, f"{run_id} still {self.app.get_run(run_id).status}"
            proc = self.worker(until_idle=True)
            out, _ = proc.communicate(timeout=60)
            assert proc.returncode == 0, out[-3000:]
            time.sleep(0.2)  # a run whose dead owner's lease has not expired yet is not idle work
        record = self.app.store.get_run(run_id)
        assert record.status == "completed", record.error
        output: dict[str, Any] = json.loads(record.output or "{}")
        return output

    def kill_while_waiting(self, run_id: str) -> None:
        """A worker that applies the change, then is killed (SIGKILL) in the monitoring window."""
        proc = self.worker()
        assert_eventually(lambda: self.applied(run_id), timeout=30, message="the change was never applied")
        assert_eventually(lambda: self.app.get_run(run_id).status == "waiting", timeout=10)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=10)

    def close(self) -> None:
        for proc in self.workers:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=10)
        self.app.close()


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    with netconf_server() as server:
        h = Harness(tmp_path, server)
        try:
            yield h
        finally:
            h.close()


def test_a_worker_killed_between_commit_and_record_does_not_commit_twice(harness: Harness) -> None:
    """SIGKILL right after the device took the confirmed commit, before the engine recorded
    it: the next worker reconciles with the device (the key is in /ran/last-change) and goes
    on; the device's audit log holds one commit to the cell, and the run confirms it."""
    run_id = harness.start("killed-after-commit", monitor_seconds=1, confirm_timeout=30)
    first = harness.worker(crash=f"{COMMITTED}:1", until_idle=True)
    out, _ = first.communicate(timeout=60)
    assert first.returncode == -signal.SIGKILL, out[-3000:]
    assert not harness.applied(run_id)  # the engine never recorded the apply ...
    record = harness.server.device.last_change()
    assert record is not None and record["key"] == f"{run_id}:{_apply_seq(harness, run_id)}"  # ... the device did
    output = harness.finish(run_id)
    assert output["status"] == "confirmed", output["detail"]
    assert len(harness.server.cell_transactions(SITE)) == 1, harness.server.commits()
    assert harness.server.device.config(SITE)["hoA3Offset"] == 3
    [apply] = [s for s in harness.app.history(run_id) if s.name == APPLY]
    assert apply.status == "completed"
    assert json.loads(apply.result or "{}")["deduplicated"] is True  # answered by the device's record


def test_a_worker_killed_in_the_window_and_never_restarted_leaves_the_device_to_revert(harness: Harness) -> None:
    """Every worker dead during the monitoring window: the device reverts the change at its
    confirm timeout on its own. A worker resuming afterwards reads the device, finds the change
    gone and ends the run `reverted_by_device`, without confirming or committing anything."""
    run_id = harness.start("killed-in-window", monitor_seconds=2, confirm_timeout=5)
    harness.kill_while_waiting(run_id)
    assert harness.server.device.config(SITE)["hoA3Offset"] == 3  # applied, pending confirmation
    # Polled every 2 s: netconfd looks at its confirm timer only when no session has spoken for
    # a second, so a client polling faster would hold the revert off.
    assert_eventually(lambda: harness.server.device.config(SITE)["hoA3Offset"] == 8, timeout=20,
                      interval=2.0, message="the device never reverted the unconfirmed change")  # fmt: skip
    assert len(harness.server.cell_transactions(SITE, by_server=True)) == 1  # netconfd's own revert
    output = harness.finish(run_id)
    assert output["status"] == "reverted_by_device", output["detail"]
    assert output["device_state"] == "gone"
    assert "nothing was confirmed" in output["detail"]
    assert harness.server.device.config(SITE)["hoA3Offset"] == 8
    assert len(harness.server.cell_transactions(SITE)) == 1  # the resumed run committed nothing
    assert not [s for s in harness.app.history(run_id) if s.name.endswith((".confirm", ".rollback"))]


@pytest.mark.parametrize(("value", "status", "final"), [(None, "confirmed", 3), (7, "cancelled", 8)])
def test_a_worker_restarted_in_the_window_confirms_or_cancels_as_the_kpis_say(
    harness: Harness, value: int | None, status: str, final: int
) -> None:
    """Killed in the window, a new worker takes the run over before the confirm timeout:
    healthy KPIs (the 3 dB fix) are confirmed and outlive the timeout; KPIs still bad (7 dB)
    are cancelled with cancel-commit."""
    run_id = harness.start(f"restarted-{status}", value=value, monitor_seconds=2, confirm_timeout=8)
    harness.kill_while_waiting(run_id)
    output = harness.finish(run_id)
    assert output["status"] == status, output["detail"]
    assert harness.server.device.config(SITE)["hoA3Offset"] == final
    assert len(harness.server.cell_transactions(SITE)) == 1
    if status == "cancelled":  # cancel-commit: netconfd's own revert, the change's record gone with it
        assert "cancel-commit" in output["detail"]
        assert len(harness.server.cell_transactions(SITE, by_server=True)) == 1
        assert harness.server.device.last_change() is None
    if status == "confirmed":
        left = datetime.fromisoformat(output["applied_at"]).timestamp() + 8 + 1 - time.time()
        time.sleep(max(0.0, left))  # past the confirm timeout: a confirmed change stays
        assert harness.server.device.config(SITE)["hoA3Offset"] == 3
        assert harness.server.cell_transactions(SITE, by_server=True) == []


def _apply_seq(harness: Harness, run_id: str) -> int:
    return next(s.seq for s in harness.app.history(run_id) if s.name == APPLY)


def test_an_apply_retried_after_its_confirm_timeout_does_not_push_again(harness: Harness) -> None:
    """SIGKILL between the commit and its record, and no worker until the device has reverted
    the change at its timeout (the record gone with it): the retried apply cannot tell a commit
    that was reverted from one never made, so it does not push again on an approval given for
    the first; the run ends `refused`, saying why. One commit to the cell, one revert."""
    run_id = harness.start("retried-too-late", monitor_seconds=1, confirm_timeout=3)
    first = harness.worker(crash=f"{COMMITTED}:1", until_idle=True)
    out, _ = first.communicate(timeout=60)
    assert first.returncode == -signal.SIGKILL, out[-3000:]
    assert_eventually(lambda: harness.server.device.config(SITE)["hoA3Offset"] == 8, timeout=20, interval=2.0,
                      message="the device never reverted the unconfirmed change")  # fmt: skip
    output = harness.finish(run_id)
    assert output["status"] == "refused", output["detail"]
    assert "not pushed again" in output["detail"]
    assert harness.server.device.config(SITE)["hoA3Offset"] == 8
    assert len(harness.server.cell_transactions(SITE)) == 1, harness.server.commits()
    assert len(harness.server.cell_transactions(SITE, by_server=True)) == 1
