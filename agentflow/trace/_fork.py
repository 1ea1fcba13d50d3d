"""Fork: a new run that starts from a prefix of a recorded run's history and goes on live.

The new run gets the original's workflow, tenant and input, the meta `{"forked_from": <id>,
"at_seq": n}` (plus the original's meta), and copies of the steps with seq <= n (the message blobs
they refer to are content-addressed, so they are shared, not copied). It is pending: a worker
serving the workflow replays the copied prefix (no model, no tool called) and executes what
follows for real, e.g. with another model or prompt if the code replays the prefix identically.

Limits:
- Idempotency keys are `<new run id>:<seq>`: a side-effecting step after the fork point runs
  again for real, as a new effect. That is the point of a fork; fork from a store whose tools
  talk to a test system when the original's effects must not be repeated.
- The cut must be between steps: steps the prefix keeps must not have received their outcome
  after a step it drops (concurrent steps); such a cut is refused with the seq to use instead.
- Only final steps (completed or failed) are copied; an unfinished step at or before the cut
  ends the prefix there.
- Approval requests, signals, policy usage counters and child runs belong to the original run
  and are not copied: fork before an approval wait, not inside one.
- Either backend (the copy is one store transaction).
"""

from __future__ import annotations

import json
import secrets
from typing import Any

from agentflow.engine import Client, RunHandle
from agentflow.errors import ConfigurationError
from agentflow.store import StepRecord
from agentflow.trace._records import Recorded


def prefix(recorded: Recorded, at_seq: int) -> list[StepRecord]:
    """The steps a fork at `at_seq` keeps (refused if the cut splits concurrent steps)."""
    if at_seq < 0:
        raise ConfigurationError(f"at_seq must be >= 0, not {at_seq}")
    kept: list[StepRecord] = []
    for step in recorded.steps:
        if step.seq > at_seq or step.status not in ("completed", "failed"):
            break
        kept.append(step)
    deliveries = sorted(s.delivery for s in kept if s.delivery is not None)
    if deliveries != list(range(1, len(deliveries) + 1)):
        last_ok = _safe_cut(recorded.steps, at_seq)
        raise ConfigurationError(
            f"cannot fork run {recorded.run_id} at step {at_seq}: it splits steps that ran concurrently "
            f"(a kept step got its outcome after a dropped one); fork at step {last_ok} instead",
        )
    return kept


def _safe_cut(steps: list[StepRecord], at_seq: int) -> int:
    for cut in range(at_seq, -1, -1):
        got = sorted(s.delivery for s in steps if s.seq <= cut and s.delivery is not None)
        if got == list(range(1, len(got) + 1)):
            return cut
    return 0


def fork_run(
    client: Client, recorded: Recorded, at_seq: int, *, run_id: str | None = None, meta: dict[str, Any] | None = None
) -> RunHandle:
    """Create the forked run (pending) in `client`'s store; see the module docstring."""
    kept = prefix(recorded, at_seq)
    run = recorded.run
    new_id = run_id or f"{run.id}-fork-{secrets.token_hex(4)}"
    if "/" in new_id:
        raise ConfigurationError(f"run id {new_id!r} must not contain '/' (reserved for child runs)")
    merged = {**run.meta_dict(), **(meta or {}), "forked_from": run.id, "at_seq": at_seq}
    if not client.store.fork(run, kept, new_id=new_id, meta=json.dumps(merged), now=client.clock.now()):
        raise ConfigurationError(f"a run with id {new_id!r} already exists; choose another run_id")
    return RunHandle(client, new_id, created=True)
