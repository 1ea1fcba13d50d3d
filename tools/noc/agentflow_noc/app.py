"""The NOC copilot as an app to serve: `agentflow serve --app agentflow_noc.app:app`.

Configuration comes from the environment, like a deployment's would:

- `AGENTFLOW_DB`: the store (`agentflow serve --db` sets it).
- `NOC_DB`: the simulated network's file (default: next to a SQLite store's file; `noc.db` in the
  current directory for a PostgreSQL store). With `NOC_NETWORK=netconf` it still holds the
  copilot's tickets and notifications.
- `NOC_MODEL`: `runbook` (offline, the default) or `openai:<model>` (any OpenAI-compatible
  endpoint through `OPENAI_BASE_URL` / `OPENAI_API_KEY`).
- `NOC_INCIDENTS`: incidents to inject into the simulated network at start, e.g.
  `CS-101:mis_set_handover,CS-104:mis_set_handover` (each only if that site has none open).
- `NOC_CLOCK_START`: an ISO time the clock starts at, then flows at real speed; e.g.
  `2026-01-01T02:30:00+00:00` puts a demo inside the 02:00-06:00 UTC maintenance window so
  approved changes apply at once instead of waiting for tonight.
- `NOC_NETWORK`: `simulated` (the default) or `netconf`: the cells are those of the NETCONF device
  the `NOC_NETCONF_*` settings name (`HOST` required; `PORT`, `USER`, `KEY`, `HOSTKEY`,
  `CONFIRM_TIMEOUT`), and the app also registers the closed loop on confirmed commit
  (`noc.closed_loop_netconf`, under the NOC policy pack) against it. Its KPIs are read from the
  Prometheus `AGENTFLOW_NOC_PROMETHEUS_URL` names (scraping `ransim --netconf`), else computed
  by the model from the device's config. The copilot is registered with the NETCONF
  configuration tools (plus `get_config`, `confirm_change`) and the Prometheus KPI reads only
  when that URL is set: without it, its KPI reads would be the simulated network's, which do
  not follow the device.
"""

from __future__ import annotations

import os
import sys
from datetime import datetime

from agentflow import App
from agentflow.agent import Agent
from agentflow.engine import SystemClock
from agentflow.policy import load_pack
from agentflow_noc import NOC_TOOLS, policy_path
from agentflow_noc.demo import copilot, make_model
from agentflow_noc.env import ENV, beside, configure, network

ENV_NETWORK = "NOC_NETWORK"


def _clock() -> SystemClock:
    start = os.environ.get("NOC_CLOCK_START")
    if not start:
        return SystemClock()
    try:
        when = datetime.fromisoformat(start)
    except ValueError:
        raise SystemExit(f"NOC_CLOCK_START must be an ISO time like 2026-01-01T02:30:00+00:00, not {start!r}") from None
    if when.tzinfo is None:
        raise SystemExit(f"NOC_CLOCK_START needs a UTC offset (e.g. +00:00): {start!r}")
    return SystemClock(offset=when.timestamp() - SystemClock().now())


def _on_netconf(app: App, clock: SystemClock) -> Agent | None:
    """`NOC_NETWORK=netconf`: the closed loop against the configured device, and the copilot on
    the device and Prometheus when Prometheus is configured (see the module docstring)."""
    # Imported here: ncclient is the pack's optional `netconf` dependency.
    from agentflow_noc import closed_loop_netconf, promql
    from agentflow_noc.netconf_tools import on_device

    on_prometheus = bool(os.environ.get(promql.ENV_URL, "").strip())
    kpis = promql.window_reader(clock.offset) if on_prometheus else None
    closed_loop_netconf.register(app, policy=load_pack(policy_path()), kpis=kpis)
    if not on_prometheus:
        print(f"agentflow_noc.app: {ENV_NETWORK}=netconf without {promql.ENV_URL}: the closed loop reads KPIs "
              "computed from the device's config; the copilot is not served", file=sys.stderr)  # fmt: skip
        return None
    note = (
        " Changes are confirmed commits: after monitor_kpis shows the KPIs recovered, call confirm_change "
        "with the change_id apply_change returned (otherwise the device reverts it); if not, rollback_change."
    )
    tools = on_device(promql.with_prometheus(NOC_TOOLS))
    found = copilot(make_model(os.environ.get("NOC_MODEL", "runbook")), tools=tools, note=note)
    found.register(app)
    return found


_network = os.environ.get(ENV_NETWORK, "simulated").strip() or "simulated"
if _network not in ("simulated", "netconf"):
    raise SystemExit(f"{ENV_NETWORK} must be simulated or netconf, not {_network!r}")
if _network == "netconf":
    from agentflow_noc.netconf import DeviceSettings

    DeviceSettings.from_env()  # no device named: a ToolError saying which variables to set, before any store opens
_app_clock = _clock()
app = App(clock=_app_clock)
if not os.environ.get(ENV):
    configure(beside(app.store.backend.path))
for spec in filter(None, os.environ.get("NOC_INCIDENTS", "").split(",")):
    site, _, scenario = spec.strip().partition(":")
    if network().incident(site) is None:
        network().inject(site, scenario or "mis_set_handover")
agent: Agent | None  # the copilot served (None: NOC_NETWORK=netconf without Prometheus)
if _network == "netconf":
    agent = _on_netconf(app, _app_clock)
else:
    agent = copilot(make_model(os.environ.get("NOC_MODEL", "runbook")))
    agent.register(app)
