"""What-if: every recorded policy decision of a run, decided again under another pack.

Each decision is re-evaluated with `agentflow.policy.decide` on the recorded call (tool,
arguments, tenant, requester) at the time it was recorded. No model is called and nothing is
re-run: the model's outputs are the recorded ones, so the question answered is "what would this
pack have said to exactly these calls?", not "what would the agent have done next?" (a call that
the new pack denies would have changed the rest of the run; fork the run to find out).

Rate and blast-radius limits count what the store recorded as let through, across every run, up
to the moment of each decision (the store's policy usage read `as_of` that moment): a limit the new pack sets lower is
found. The counts are the recorded ones, not those the new pack would have produced elsewhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from langchain_core.tools import BaseTool

from agentflow.engine import Client
from agentflow.llm import ToolFacts, tool_facts
from agentflow.policy import CallFacts, NoUsage, PolicyDecision, PolicyPack, decide, load_pack
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


def what_if_table(
    recorded: Recorded, policies: PolicyPack | str | Path, *, tools: Sequence[BaseTool] = (),
    changed_only: bool = True, client: Client | None = None,
) -> pd.DataFrame:  # fmt: skip
    """Each recorded decision beside the decision `policies` would have made (limits counted
    from `client`'s store's usage records; without a client, no earlier usage)."""
    pack = resolve_pack(policies)
    declared = {t.name: tool_facts(t) for t in tools}
    requester = recorded.run.meta_dict().get("requested_by")
    rows = []
    for row in decision_rows(recorded):
        facts = _facts(recorded, row, declared, requester)
        at = float(row["at"])
        deciding = (recorded.run_id, facts.usage_key)
        would = _decide(client, pack, facts, at, deciding)
        changed = would.effect != row["effect"] or would.rule != row["rule"]
        if changed_only and not changed:
            continue
        rows.append({
            "seq": row["seq"], "call_id": row["call_id"], "tool": row["tool"], "args": row["args"],
            "approved": row["approved"], "at": row["at"], "was_effect": row["effect"], "was_rule": row["rule"],
            "would_effect": would.effect, "would_rule": would.rule, "would_reason": would.reason, "changed": changed,
        })  # fmt: skip
    return frame(rows, WHAT_IF_COLUMNS, times=("at",))


def _decide(
    client: Client | None, pack: PolicyPack, facts: CallFacts, at: float, deciding: tuple[str, str]
) -> PolicyDecision:
    """The pack's decision at `at`, with the store's usage as it stood then (if there is one)."""
    if client is None:
        return decide(pack, facts, at, NoUsage())
    return client.store.read(lambda tx: decide(pack, facts, at, tx.usage(deciding=deciding, as_of=at)))
