"""`/api/doctor`: what is wrong with the store, as far as the caller's tenant is concerned."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from agentflow.engine import diagnose
from agentflow.server._auth import State, Who
from agentflow.store import local_id

router = APIRouter(prefix="/api/doctor", tags=["doctor"])


@router.get("")
def doctor(who: Who, state: State) -> dict[str, Any]:
    """`agentflow doctor` for the caller's tenant: its stuck runs, its approvals past expiry, its
    runs no worker serves; the schema and worker liveness are the store's (no other tenant's ids)."""
    tenant = who.principal.tenant
    found = diagnose(state.chat.store, tenant=tenant, clock=state.chat.clock).to_dict()
    for finding in found["findings"]:
        # Ids as the tenant's operators know their runs (the store keys them `<tenant>:<run id>`).
        if finding["run_id"] is not None:
            finding["run_id"] = local_id(finding["run_id"], tenant)
        finding["run_ids"] = [local_id(r, tenant) for r in finding["run_ids"]]
    return found
