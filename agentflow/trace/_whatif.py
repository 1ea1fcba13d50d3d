"""What-if: every recorded policy decision of a run, decided again under another pack.

Each decision is re-evaluated with `agentflow.policy.decide` on the recorded call (tool,
arguments, tenant, requester) at the time it was recorded. No model is called and nothing is
re-run: the model's outputs are the recorded ones, so the question answered is "what would this
pack have said to exactly these calls?", not "what would the agent have done next?" (a call that
the new pack denies would have changed the rest of the run; fork the run to find out).

Rate and blast-radius limits count what the store recorded as let through, across every run, up
to the moment of each decision (`RecordedUsage`): a limit the new pack sets lower is found. The
counts are the recorded ones, not those the new pack would have produced in other runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from langchain_core.tools import BaseTool

from agentflow.engine import App
from agentflow.llm import ToolFacts, tool_facts
from agentflow.policy import CallFacts, PolicyPack, decide, load_pack
from agentflow.policy._engine import NoUsage
from agentflow.trace._records import Recorded
from agentflow.trace._tables import decision_rows, frame

WHAT_IF_COLUMNS = ["seq", "call_id", "tool", "args", "approved", "at", "was_effect", "was_rule", "would_effect",
                   "would_rule", "would_reason", "changed"]  # fmt: skip


def resolve_pack(policies: PolicyPack | str | Path) -> PolicyPack:
    """A pack, or the path of a pack file (validated like the agent does)."""
    return policies if isinstance(policies, PolicyPack) else load_pack(policies)


def _facts(recorded: Recorded, row: dict[str, Any], declared: dict[str, ToolFacts], requester: str | None) -> CallFacts:
    args: dict[str, Any] = row["args"] if isinstance(row["args"], dict) else {}
    facts = declared.get(str(row["tool"]))
    if facts is None and isinstance(row.get("facts"), dict):
        # What the decision was made on, as recorded with it (tags, side effect, target, ...).
        return CallFacts.model_validate({**row["facts"], "args": args})
    # Neither declared nor recorded (a decision from before the facts were recorded): treated
    # as the engine treats an undeclared tool: side-effecting, no tags, no target or region.
    target = facts.target_of(args) if facts else None
    region = facts.region_of(args) if facts else None
    return CallFacts(
        tool=str(row["tool"]), args=args, tags=list(facts.tags) if facts else [],
        side_effect=not facts.read_only if facts else True,
        target=None if target is None else str(target), region=None if region is None else str(region),
        tenant=recorded.run.tenant, requester=requester, run_id=recorded.run_id, call_id=str(row["call_id"] or ""),
    )  # fmt: skip


class RecordedUsage:
    """The `Usage` limits saw at time `as_of`, read back from the store's usage records: calls
    let through strictly before `as_of` (the decided call's own record excluded), and runs that were
    still open then."""

    def __init__(self, app: App, as_of: float, deciding: tuple[str, str]) -> None:
        self.query, self.as_of, self.deciding = app.store.backend.query, as_of, deciding

    def calls(self, tenant: str, tool: str, since: float) -> int:
        sql = ("SELECT count(*) FROM af_policy_usage WHERE tenant = ? AND tool = ? AND at > ? AND at < ? "
               "AND NOT (run_id = ? AND call_id = ?)")  # fmt: skip
        return int(self.query(sql, (tenant, tool, since, self.as_of, *self.deciding))[0][0])

    def targets(self, tenant: str, region: str | None, since: float) -> set[str]:
        sql = ("SELECT DISTINCT target FROM af_policy_usage WHERE tenant = ? AND side_effect = 1 "
               "AND target IS NOT NULL AND at > ? AND at < ? AND NOT (run_id = ? AND call_id = ?)")  # fmt: skip
        params: tuple[Any, ...] = (tenant, since, self.as_of, *self.deciding)
        if region is not None:
            sql, params = sql + " AND region = ?", (*params, region)
        return {row[0] for row in self.query(sql, params)}

    def busy(self, target: str, run_id: str) -> bool:
        sql = ("SELECT 1 FROM af_policy_usage u JOIN af_runs r ON r.id = u.run_id WHERE u.target = ? "
               "AND u.side_effect = 1 AND u.run_id != ? AND u.at < ? "
               "AND (r.completed_at IS NULL OR r.completed_at > ?) LIMIT 1")  # fmt: skip
        return bool(self.query(sql, (target, run_id, self.as_of, self.as_of)))


def what_if_table(
    recorded: Recorded, policies: PolicyPack | str | Path, *, tools: Sequence[BaseTool] = (),
    changed_only: bool = True, app: App | None = None,
) -> pd.DataFrame:  # fmt: skip
    """Each recorded decision beside the decision `policies` would have made (limits counted
    from `app`'s usage records; without an app, no earlier usage)."""
    pack = resolve_pack(policies)
    declared = {t.name: tool_facts(t) for t in tools}
    requester = recorded.run.meta_dict().get("requested_by")
    rows = []
    for row in decision_rows(recorded):
        facts = _facts(recorded, row, declared, requester)
        at = float(row["at"])
        used = NoUsage() if app is None else RecordedUsage(app, at, (recorded.run_id, facts.usage_key))
        would = decide(pack, facts, at, used)
        changed = would.effect != row["effect"] or would.rule != row["rule"]
        if changed_only and not changed:
            continue
        rows.append({
            "seq": row["seq"], "call_id": row["call_id"], "tool": row["tool"], "args": row["args"],
            "approved": row["approved"], "at": row["at"], "was_effect": row["effect"], "was_rule": row["rule"],
            "would_effect": would.effect, "would_rule": would.rule, "would_reason": would.reason, "changed": changed,
        })  # fmt: skip
    return frame(rows, WHAT_IF_COLUMNS, times=("at",))
