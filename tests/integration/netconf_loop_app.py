"""The App the NETCONF crash tests run in worker subprocesses (`--app integration.netconf_loop_app:app`, tests/ on the path):
the closed loop on confirmed commit, on the store named by `AGENTFLOW_DB`, against the device
named by the `NOC_NETCONF_*` environment, with the simulated KPIs read from that device.

A short lease (2 s): a worker killed with SIGKILL leaves its run to the next worker quickly.
Timers are parked in the store, never waited inline, so a killed worker leaves a waiting run.
"""

from __future__ import annotations

from agentflow import App
from agentflow_noc.closed_loop_netconf import register


def make_app(db: str | None = None) -> App:
    application = App(db, lease_ttl=2.0, inline_wait=0.0)
    register(application)
    return application


def __getattr__(name: str) -> App:
    """`app`, built when the worker asks for it (a test importing `make_app` opens no store)."""
    if name != "app":
        raise AttributeError(name)
    application = globals()["app"] = make_app()
    return application
