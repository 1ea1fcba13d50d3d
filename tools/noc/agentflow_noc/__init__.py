"""The NOC tool pack: a simulated 5G network with an audit ledger, and the copilot's tools.

    import agentflow_noc as noc
    net = noc.configure("network.db")       # the tools of this process act on this file
    net.inject("CS-104", "mis_set_handover")
    pack = noc.policy_path()                # the NOC policy pack (noc.yaml, package data)
    # ... run noc.NOC_TOOLS from a workflow (each call an activity) ...
    assert net.duplicate_keys() == []       # no effect happened twice

See tools/README.md for a complete example.
"""

from agentflow_noc.closed_loop import CLOSED_LOOP, ClosedLoopResult
from agentflow_noc.closed_loop import register as register_closed_loop
from agentflow_noc.env import ENV, configure, network
from agentflow_noc.model import KPIS, PARAMS, SCENARIOS, region_of
from agentflow_noc.network import Network
from agentflow_noc.policy import policy_path
from agentflow_noc.tools import (
    NOC_TOOLS,
    apply_change,
    create_ticket,
    detect_anomalies,
    get_kpis,
    monitor_kpis,
    notify,
    propose_change,
    rank_root_causes,
    rollback_change,
    runbook,
    stage_change,
    update_ticket,
)

__all__ = [
    "CLOSED_LOOP",
    "ENV",
    "KPIS",
    "NOC_TOOLS",
    "PARAMS",
    "SCENARIOS",
    "ClosedLoopResult",
    "Network",
    "apply_change",
    "configure",
    "create_ticket",
    "detect_anomalies",
    "get_kpis",
    "monitor_kpis",
    "network",
    "notify",
    "policy_path",
    "propose_change",
    "rank_root_causes",
    "region_of",
    "register_closed_loop",
    "rollback_change",
    "runbook",
    "stage_change",
    "update_ticket",
]
