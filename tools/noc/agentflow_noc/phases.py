"""The NOC runbook as phases (`agentflow.agent.Phase`): the structure the copilot follows in
`guided` mode, for small local models that otherwise read one KPI series and answer in prose.

Each phase offers only its tools and requires a call of one of them; the change phases may be
skipped (a false alarm, or a request the diagnosis does not support), reporting may not."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from agentflow.agent import Phase, ToolCallRecord

_SITE = re.compile(r"\bCS-\d+\b", re.I)


def sites_in(task: str) -> list[str]:
    """The cell sites a request names, in order (`CS-103 and cs-104` -> CS-103, CS-104): the
    guided copilot runs the phases once per site."""
    return list(dict.fromkeys(m.group(0).upper() for m in _SITE.finditer(task)))


def fault_found(records: Sequence[ToolCallRecord]) -> bool:
    """Whether the latest diagnosis (rank_root_causes) found a cause: then proposing, staging and
    applying the fix may not be skipped (a small model skipped them with "no fault found")."""
    diagnosis = _latest(records, "rank_root_causes")
    return diagnosis is not None and diagnosis.get("top_cause", "none") != "none"


def _latest(records: Sequence[ToolCallRecord], tool: str) -> dict[str, Any] | None:
    for record in reversed(records):
        if record.name == tool and record.status == "ok":
            try:
                found = json.loads(record.result)
            except ValueError:
                return None
            return found if isinstance(found, dict) else None
    return None


def fix_failed(records: Sequence[ToolCallRecord]) -> bool:
    """Whether a change was applied and the KPIs checked after it did not recover: then (only
    then) the rollback phase runs (a small model rolled back a fix that had worked)."""
    applied = _latest(records, "apply_change") is not None
    checked = _latest(records, "monitor_kpis")
    return applied and checked is not None and not checked.get("healthy", False)


NOC_PHASES = (
    Phase("read", "Read the site's KPIs.", ("get_kpis",)),
    Phase("investigate", "Detect the site's anomalies.", ("detect_anomalies",)),
    Phase("diagnose", "Rank the root causes of the site's anomalies.", ("rank_root_causes",)),
    Phase(
        "propose",
        "Propose the change that fixes the top root cause (skip it if the diagnosis found no fault).",
        ("propose_change",),
        required=fault_found,
    ),
    Phase(
        "stage",
        "Stage the proposed change with the site, param and value of the proposal.",
        ("stage_change",),
        required=fault_found,
    ),
    Phase(
        "apply",
        "Apply the staged change with the same site, param and value (it waits for an operator's "
        "approval and the maintenance window).",
        ("apply_change",),
        required=fault_found,
    ),
    Phase("verify", "Monitor the site's KPIs after the change (or now, if nothing changed).", ("monitor_kpis",)),
    Phase(
        "rollback",
        "The KPIs did not recover after the change: roll it back with the change_id apply_change returned.",
        ("rollback_change",),
        when=fix_failed,
    ),
    Phase("ticket", "Open a ticket that says what was found and done.", ("create_ticket",)),
    Phase("notify", "Notify the noc-oncall channel of the outcome.", ("notify",)),
)
