"""The console's approval cards: `agentflow.chat`'s card, plus what an approver reads beside it
on the page: why they may not decide, in words; when it was decided; and the evidence (the
agent's reason and diagnosis, the reads it made, the rule in words, the limits and what they
have used: `agentflow.chat.evidence`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from agentflow.approvals import ApprovalRequest, Principal
from agentflow.chat import card, evidence, why_not_text
from agentflow.errors import CorruptRecordError
from agentflow.server._state import Served
from agentflow.store import StepRecord

log = logging.getLogger("agentflow.server")


def web_card(
    state: Served, req: ApprovalRequest, viewer: Principal, steps: Sequence[StepRecord] | None = None,
    *, with_evidence: bool = True,
) -> dict[str, Any]:  # fmt: skip
    """`Card` of API.md with `why_not_text`, `decided_at` and `evidence` (None without it: the
    inbox lists decided requests without theirs; `GET /api/approvals/{id}` has it; None with
    `evidence_error` saying why when the run's records cannot be read for it)."""
    history = list(steps) if steps is not None else state.chat.store.load_steps(req.run_id) if with_evidence else []
    shown = card(state.chat, req, viewer, history)
    shown["why_not_text"] = why_not_text(state.chat, req, viewer) if shown["why_not"] else None
    shown["decided_at"] = req.decided_at
    shown["evidence"], shown["evidence_error"] = None, None
    if with_evidence:
        try:
            shown["evidence"] = evidence(state.chat, req, history, pack=state.pack)
        except (CorruptRecordError, ValueError, TypeError, KeyError, AttributeError) as exc:
            # A record the evidence cannot read (a damaged message, an odd output) must not keep
            # the card, and so the decision, from the approver: the card shows without it.
            log.warning("approval %s: its evidence cannot be read: %s", req.id, exc)
            shown["evidence_error"] = f"{type(exc).__name__}: {exc}"[:500]
    return shown


def run_web_cards(
    state: Served, run_id: str, tenant: str, viewer: Principal, steps: Sequence[StepRecord]
) -> list[dict[str, Any]]:
    """The cards of every approval request of a run (its tenant's), with their evidence."""
    requests = state.chat.approvals.list(tenant=tenant, run_id=run_id, status=None)
    return [web_card(state, r, viewer, steps) for r in requests]
