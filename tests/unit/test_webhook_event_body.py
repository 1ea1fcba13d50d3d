"""The body of a `run.finished` event is written out directly on the path of every run's end;
it must be byte for byte what the general `event_body` makes of the same event, for any text
(quotes, backslashes, non-ASCII, control characters) and any time."""

from __future__ import annotations

import json

import pytest

from agentflow.store._events import event_body, run_finished_ops
from agentflow.store._seal import Sealer


@pytest.mark.parametrize(
    ("run_id", "tenant", "workflow", "status", "error", "now"),
    [
        ("r1", "default", "agent", "completed", None, 1_700_000_000),
        ("acme:r/2", "acme", 'we"ird\\flow\n', "failed", json.dumps({"type": "Value\u00e9Error", "message": "x"}),
         1_700_000_000.123456),
        ("r3", "noc-east", "agent:noc", "cancelled", "not json", 0.5),
        ("r4", "t", "wf\u2028", "failed", json.dumps(["no", "type"]), 2e9),
    ],
)  # fmt: skip
def test_the_run_finished_body_is_the_general_bodys_bytes(
    run_id: str, tenant: str, workflow: str, status: str, error: str | None, now: float
) -> None:
    ((_, params, _), _) = run_finished_ops(Sealer(None), run_id=run_id, tenant=tenant, workflow=workflow,
                                           status=status, error=error, now=now)  # fmt: skip
    event_id, body = params[0], params[4]
    error_type = None if error is None else json.loads(error).get("type") if error.startswith("{") else "Error"
    local = run_id.removeprefix(f"{tenant}:")
    data = {"run_id": local, "workflow": workflow, "status": status, "error_type": error_type, "finished_at": now}
    assert body == event_body(event_id, tenant, "run.finished", data, now)
    assert json.loads(body)["data"]["finished_at_epoch"] == float(now)
