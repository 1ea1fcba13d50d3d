"""`agentflow demo --network netconf`: the closed loop on confirmed commit against a NETCONF device.

The device is the one the `NOC_NETCONF_*` environment names (`DeviceSettings.from_env`), or,
when none is named and netconfd and sshd are installed, a lab device started for the demo
(`netconf_lab.LabDevice`: CS-101's handover offset mis-set to 8 dB) and stopped after. The loop
(`closed_loop_netconf`, under the NOC policy pack) diagnoses CS-101 from the device's config and
the KPIs, stages the fix on the candidate datastore, waits for an engineer's approval, commits it
with a confirmed commit, monitors the KPIs through a short window (real time: the device's timer
is real) and confirms or cancels. The summary counts the commits from the device's audit log
when the device is the lab's.

The KPIs come from Prometheus (`promql.window_reader`): the one `AGENTFLOW_NOC_PROMETHEUS_URL`
names, or, when none is named and Debian's `prometheus` is installed, a lab Prometheus started for
the demo (`prometheus_lab`) scraping the RAN exporter (`ransim --netconf`'s collector, served in
this process), which reads the device's config on every scrape. With neither, the KPIs are
computed by the model from the device's config (`simulated_kpis`), and the demo says so. The
summary's `kpis` says where they came from.

The engine clock is the wall clock moved into tonight's 02:00-06:00 UTC maintenance window (the
policy pack defers pushes outside it): durations stay real, so the device and the run agree.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from agentflow import App
from agentflow.approvals import Approvals
from agentflow.engine import SystemClock
from agentflow.policy import load_pack
from agentflow.store import local_id, redact_url, run_key
from agentflow_noc import promql, ransim
from agentflow_noc.closed_loop_netconf import NETCONF_LOOP, KpiReader, register
from agentflow_noc.demo import SITE, TENANT, _decide, console
from agentflow_noc.netconf import ENV_HOST, DeviceSettings
from agentflow_noc.netconf_lab import LabDevice, free_port, missing
from agentflow_noc.policy import policy_path
from agentflow_noc.prometheus_lab import INSTALL, LabPrometheus, binary

#: The monitoring window's length in seconds (default 10; tests shorten it).
ENV_MONITOR = "NOC_NETCONF_DEMO_MONITOR"
CONFIRM_TIMEOUT = 60
#: The lab Prometheus' scrape interval: a scrape opens a NETCONF session (about half a second).
SCRAPE_SECONDS = 2


def _device() -> tuple[DeviceSettings, LabDevice | None]:
    """The configured device, or a lab device started here; SystemExit says what is missing."""
    if os.environ.get(ENV_HOST):
        return DeviceSettings.from_env(), None
    reason = missing()
    if reason is not None:
        raise SystemExit(f"--network netconf: set {ENV_HOST} (and _PORT, _USER, _KEY) to a device, or install "
                         f"netconfd and sshd for a lab device ({reason})")  # fmt: skip
    lab = LabDevice().start()
    return lab.settings, lab


class _Kpis:
    """Where the loop reads its KPIs: `reader` (None: the model's, from the device's config),
    `source` (one line for the summary), and what to stop after the demo."""

    def __init__(self, offset: float, say: Callable[[str], None]) -> None:
        self.reader: KpiReader | None = None
        self.lab: LabPrometheus | None = None
        self._stop_exporter: Callable[[], None] | None = None
        url = os.environ.get(promql.ENV_URL, "").strip()
        if url:
            self.reader, self.source = promql.window_reader(offset), f"prometheus {url}"
        elif binary() is not None:
            self._start_lab()
            self.reader = promql.window_reader(offset)
            self.source = f"prometheus {promql.settings().url} (started for the demo, scraping ransim --netconf)"
        else:
            self.source = f"model (computed from the device's config; no {promql.ENV_URL} and no prometheus binary)"
            say(f"  KPIs: no Prometheus ({promql.ENV_URL} unset, prometheus not installed: {INSTALL}); "
                "computed by the model from the device's config instead")  # fmt: skip

    def _start_lab(self) -> None:
        port = free_port()
        self._stop_exporter = ransim.serve(ransim.netconf_collector(), port=port)
        try:
            self.lab = LabPrometheus(targets=[f"127.0.0.1:{port}"], interval=SCRAPE_SECONDS).start()
            promql.configure(self.lab.url)
            # Up means scraped once; wait until the sample is queryable, so the diagnosis sees it.
            deadline = time.monotonic() + 20
            while not self.lab.query(f'ran_cell_drop_rate_pct{{site="{SITE}"}}'):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the lab Prometheus has no sample of {SITE} after 20 s")
                time.sleep(0.2)
        except BaseException:
            self.close()
            raise

    def window(self, monitor: float, checks: int) -> float:
        """The monitoring window: with Prometheus, at least two scrapes per check."""
        return monitor if self.reader is None else max(monitor, checks * 2.0 * SCRAPE_SECONDS)

    def close(self) -> None:
        if self.lab is not None:
            self.lab.close()
        if self._stop_exporter is not None:
            self._stop_exporter()


def _in_window() -> SystemClock:
    """The wall clock, moved to 02:30 UTC (inside the pack's maintenance window) of tomorrow."""
    now = datetime.now(UTC)  # noqa: TID251 - a demo's setup, not workflow code
    target = (now + timedelta(days=1)).replace(hour=2, minute=30, second=0, microsecond=0)
    return SystemClock(offset=target.timestamp() - now.timestamp())


def main(*, db: str, approve: str, quiet: bool, crash_at: int | None = None, resume: bool = False,
         **_: Any) -> dict[str, Any]:  # fmt: skip
    """Run the loop once and return the summary `agentflow demo` prints (its `--model`/`--mode`
    do not apply: the closed loop calls no model)."""
    if crash_at is not None or resume:
        raise SystemExit("--crash-at/--resume work on the simulated network; with --network netconf the "
                         "crash behaviour is pinned by tests/integration/test_netconf_crash.py")  # fmt: skip

    def say(text: str) -> None:
        if not quiet:
            console.print(text, no_wrap=True, overflow="ellipsis", highlight=False)

    settings, lab = _device()
    for name, value in settings.environ().items():
        os.environ[name] = value  # the loop's activities find the device here
    clock = _in_window()
    app = App(db, clock=clock, inline_wait=0.0)
    started = time.perf_counter()
    kpis: _Kpis | None = None
    try:
        kpis = _Kpis(clock.offset, say)
        loop = register(app, policy=load_pack(policy_path()), kpis=kpis.reader)
        stamp = int(time.time() * 1000) % 10_000_000  # noqa: TID251 - a fresh run id per demo, outside any run
        run_id = run_key(TENANT, f"netconf-{os.getpid()}-{stamp}")
        say(f"[bold]agentflow demo[/] --network netconf: closed loop on {SITE}, run [cyan]{run_id}[/] on "
            f"{redact_url(db)}, device {settings.name}" + (" (a lab device started for the demo)" if lab else ""))  # fmt: skip
        say(f"  KPIs from {kpis.source}")
        app.start(loop, SITE, run_id=local_id(run_id, TENANT), tenant=TENANT, meta={"requested_by": "demo"},
                  monitor_seconds=kpis.window(float(os.environ.get(ENV_MONITOR, "10")), 2), checks=2,
                  confirm_timeout=CONFIRM_TIMEOUT)  # fmt: skip
        asyncio.run(_drive(app, run_id, approve, say))
        return {**_summary(app, run_id, lab, settings, time.perf_counter() - started), "kpis": kpis.source}
    finally:
        app.close()
        if kpis is not None:
            kpis.close()
        if lab is not None:
            lab.close()


async def _drive(app: App, run_id: str, approve: str, say: Callable[[str], None]) -> None:
    shown: set[int] = set()
    while True:
        await app.worker(root_id=run_id).run_until_blocked(run_id, until_signal_wait=True)
        _show(app, run_id, shown, say)
        if app.store.get_run(run_id).terminal:
            return
        for request in Approvals.of(app).list(run_id=run_id):
            _decide(app, request, approve, say, shown)


def _show(app: App, run_id: str, shown: set[int], say: Callable[[str], None]) -> None:
    for step in app.store.load_steps(run_id):
        if step.seq in shown or step.status not in ("completed", "failed"):
            continue
        shown.add(step.seq)
        body = json.loads(step.result or step.error or "{}")
        name = step.name.removeprefix(f"{NETCONF_LOOP}.")
        if step.kind == "activity" and isinstance(body, dict):
            keep = ("state", "from", "to", "anomalies", "applied", "confirmed", "rolled_back", "how", "message")
            brief = ", ".join(f"{k}={body[k]}" for k in keep if k in body)
            say(f"  [dim]{step.seq:>3}[/] [cyan]device[/]   {name} -> {brief or step.status}")
        elif step.kind == "policy":
            say(f"  [dim]{step.seq:>3}[/] policy   {name}: {body.get('effect')} ({body.get('rule')})")
        elif step.kind == "approval":
            say(f"  [dim]{step.seq:>3}[/] approval {name}: {body.get('status')}")
        elif step.kind == "sleep":
            say(f"  [dim]{step.seq:>3}[/] [blue]wait[/]     monitoring window (durable timer, real time)")


def _summary(app: App, run_id: str, lab: LabDevice | None, settings: DeviceSettings, seconds: float) -> dict[str, Any]:
    record = app.store.get_run(run_id)
    out = json.loads(record.output) if record.output else {}
    change = out.get("change") or {}
    commits = None if lab is None else len(lab.cell_transactions(SITE))
    return {
        "run_id": run_id,
        "status": record.status,
        "outcome": out.get("status"),
        "device": settings.name,
        "change": f"{change.get('param')} {change.get('previous')} -> {change.get('value')}" if change else None,
        "device_state": out.get("device_state"),
        "incident_open": out.get("status") != "confirmed",
        "commits_on_device": commits,
        "approved_by": (out.get("approval") or {}).get("by"),
        "detail": out.get("detail"),
        "error": {k: v for k, v in record.error_dict().items() if k in ("type", "message")} or None,
        "seconds": round(seconds, 3),
    }
