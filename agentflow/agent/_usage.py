"""Usage and cost rolled up per run and per tenant, from the recorded model-call steps."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from agentflow.engine import App, Client
from agentflow.store import EventStore


@dataclass(slots=True)
class UsageSummary:
    """Tokens and cost of recorded model calls."""

    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    by_model: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def to_dict(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "total_tokens": self.total_tokens,
            "cost_usd": round(self.cost_usd, 8),
            "by_model": self.by_model,
        }


def usage(source: App | Client | EventStore, *, run_id: str | None = None, tenant: str | None = None) -> UsageSummary:
    """Sum the usage of completed model calls of one run, a tenant's runs, or everything.

    Each call is one recorded step, so a replayed or resumed run is never counted twice."""
    store = source if isinstance(source, EventStore) else source.store
    summary = UsageSummary()
    for model, result in store.llm_usage(run_id=run_id, tenant=tenant):
        u = json.loads(result).get("usage", {})
        summary.calls += 1
        summary.input_tokens += int(u.get("input_tokens", 0))
        summary.output_tokens += int(u.get("output_tokens", 0))
        summary.cost_usd += float(u.get("cost_usd", 0.0))
        per = summary.by_model.setdefault(model, {"calls": 0, "tokens": 0, "cost_usd": 0.0})
        per["calls"] += 1
        per["tokens"] += int(u.get("input_tokens", 0)) + int(u.get("output_tokens", 0))
        per["cost_usd"] += float(u.get("cost_usd", 0.0))
    return summary
