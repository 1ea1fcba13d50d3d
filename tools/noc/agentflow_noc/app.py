"""The NOC copilot as an app to serve: `agentflow serve --app agentflow_noc.app:app`.

Configuration comes from the environment, like a deployment's would:

- `AGENTFLOW_DB`: the store (`agentflow serve --db` sets it).
- `NOC_DB`: the simulated network's file (default: next to a SQLite store's file; `noc.db` in the
  current directory for a PostgreSQL store).
- `NOC_MODEL`: `runbook` (offline, the default) or `openai:<model>` (any OpenAI-compatible
  endpoint through `OPENAI_BASE_URL` / `OPENAI_API_KEY`).
- `NOC_INCIDENTS`: incidents to inject into the simulated network at start, e.g.
  `CS-101:mis_set_handover,CS-104:mis_set_handover` (each only if that site has none open).
- `NOC_CLOCK_START`: an ISO time the clock starts at, then flows at real speed; e.g.
  `2026-01-01T02:30:00+00:00` puts a demo inside the 02:00-06:00 UTC maintenance window so
  approved changes apply at once instead of waiting for tonight.
"""

from __future__ import annotations

import os
from datetime import datetime

from agentflow import App
from agentflow.engine import SystemClock
from agentflow_noc.demo import copilot, make_model
from agentflow_noc.env import ENV, beside, configure, network


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


app = App(clock=_clock())
if not os.environ.get(ENV):
    configure(beside(app.store.backend.path))
for spec in filter(None, os.environ.get("NOC_INCIDENTS", "").split(",")):
    site, _, scenario = spec.strip().partition(":")
    if network().incident(site) is None:
        network().inject(site, scenario or "mis_set_handover")
agent = copilot(make_model(os.environ.get("NOC_MODEL", "runbook")))
agent.register(app)
