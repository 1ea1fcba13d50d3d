"""The NOC copilot's configuration tools on a real NETCONF device (`agentflow_noc.netconf`).

Same names and declarations as the simulated pack (`agentflow_noc.tools`) where they mean the
same: `stage_change` is a dry run (the device validates the edit in its candidate datastore and
the diff from running comes back; nothing is committed), `apply_change` pushes a change (here: a
confirmed commit the device reverts by itself unless `confirm_change` confirms it before its
timeout), `rollback_change` undoes one (cancel-commit while pending, a restoring change once
confirmed). `get_config` and `confirm_change` are new: the simulated network has no candidate
and commits at once.

A value the device refuses (outside its YANG range) reaches the model as a tool error in the
device's own words (`ToolError`, not retried); an unreachable device is a retryable `ToolError`.

The device comes from the environment (`NOC_NETCONF_HOST`, `_PORT`, `_USER`, `_KEY`,
`_HOSTKEY`, `_CONFIRM_TIMEOUT`: see `DeviceSettings.from_env`), read at each call, so worker
processes started with it find the same device.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from langchain_core.tools import BaseTool

from agentflow import current_activity
from agentflow.errors import ToolError
from agentflow.llm import tool
from agentflow_noc.netconf import Device, DeviceSettings
from agentflow_noc.tools import Param, Value, _region, _site


def device() -> Device:
    """The configured device (`NOC_NETCONF_*`)."""
    return Device(DeviceSettings.from_env())


def push_once(dev: Device, site: str, param: str, value: Any, *, timeout: int | None = None) -> dict[str, Any]:
    """`dev.apply` as the running activity's one push: keyed by its idempotency key, and never
    made again once the step's first attempt started a confirm timeout ago or more. By then a
    commit that attempt made (its outcome unknown: the worker died) has been reverted by the
    device, taking its record with it, so "not on the device" no longer means "never made":
    pushing again would make a second change on the approval, and in the window, given for the
    first. Past that point it answers from the device's record or refuses (not retryable)."""
    info = current_activity()
    timeout = dev.settings.confirm_timeout if timeout is None else int(timeout)
    if info.app is not None:
        step = next((s for s in info.app.store.load_steps(info.run_id, after=info.seq - 1) if s.seq == info.seq), None)
        if step is not None and info.app.clock.now() - step.started_at >= timeout:
            done = dev.result_for_key(info.idempotency_key)
            if done is not None:
                return done
            raise ToolError(f"not pushed again: this apply first started over {timeout} s ago (the confirm timeout), "
                            "so a commit it made may have been reverted by the device already; ask again for a "
                            "fresh decision and approval", system=dev.settings.name)  # fmt: skip
    return dev.apply(site, param, value, key=info.idempotency_key, timeout=timeout)


def _reconcile(key: str) -> dict[str, Any] | None:
    """Whether the change of `key` is on the device (its `/ran/last-change` names the key)."""
    return device().result_for_key(key)


@tool(side_effect="none", target="site", canonical=_site, region=_region, tags=["read"])
def get_config(site: str) -> dict[str, Any]:
    """Read a cell site's running configuration from the NETCONF device (hoA3Offset,
    hoHysteresis, txPower, prbCap, loadBalancing, backhaul_link) and the device's record of the
    latest change made through this pack (`last_change`: its change_id and state)."""
    dev, site = device(), _site(site)
    return {"site": site, "config": dev.config(site), "last_change": dev.last_change()}


@tool(side_effect="none", target="site", canonical=_site, region=_region, tags=["read"])
def stage_change(site: str, param: Param, value: Value) -> dict[str, Any]:
    """Dry-run a configuration change on a cell site: the device validates it in its candidate
    datastore and returns the diff (`from`, `to`) against the running config and its change_id;
    nothing is committed. Stage before applying; a refused value comes back as an error."""
    return device().stage(_site(site), param, value)


def _diff(args: Mapping[str, Any]) -> dict[str, Any]:
    """What apply_change would change (shown to its approvers): the device's dry run."""
    staged = device().stage(_site(args.get("site", "")), str(args.get("param", "")), args.get("value"))
    return {k: staged[k] for k in ("site", "param", "from", "to")}


@tool(side_effect="idempotent", target="site", canonical=_site, region=_region, reconcile=_reconcile,
      compensate="rollback_change", tags=["config"], preview=_diff)  # fmt: skip
def apply_change(site: str, param: Param, value: Value) -> dict[str, Any]:
    """Push a configuration change to a live cell site (e.g. hoA3Offset, prbCap, loadBalancing,
    backhaul_link, txPower) as a confirmed commit: the device reverts it by itself unless
    confirm_change confirms it in time. Stage it first. Returns `applied`, the `previous` value
    and the change_id for confirm_change or rollback_change."""
    return push_once(device(), _site(site), param, value)


@tool(side_effect="idempotent", target="site", canonical=_site, region=_region, tags=["config"])
def confirm_change(site: str, change_id: str) -> dict[str, Any]:
    """Confirm an applied change (by the change_id apply_change returned) once monitor_kpis
    shows the KPIs recovered; otherwise the device reverts it at its timeout. Reports
    `confirmed: false, reverted: true` when the device already reverted it."""
    return device().confirm(_site(site), change_id)


@tool(side_effect="idempotent", target="site", canonical=_site, region=_region, tags=["config"])
def rollback_change(site: str, change_id: str) -> dict[str, Any]:
    """Undo an applied configuration change (by the change_id apply_change returned): cancel it
    while it awaits confirmation, or restore the value it replaced once confirmed. Use it when
    monitor_kpis shows the change did not help."""
    return device().rollback(_site(site), change_id, key=current_activity().idempotency_key)


NETCONF_TOOLS = [get_config, stage_change, apply_change, confirm_change, rollback_change]


def on_device(tools: Sequence[BaseTool]) -> list[BaseTool]:
    """`tools` (e.g. the simulated pack's `NOC_TOOLS`) with the configuration tools replaced by
    their NETCONF versions (same names, same order), and `get_config` and `confirm_change` added."""
    by_name = {t.name: t for t in NETCONF_TOOLS}
    swapped = [by_name.get(t.name, t) for t in tools]
    return swapped + [t for t in NETCONF_TOOLS if t.name not in {s.name for s in swapped}]
