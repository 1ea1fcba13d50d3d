"""The App of the PostgreSQL fleet chaos test (`--app nocfleetapp:app` for worker subprocesses).

One NOC copilot agent (`agent:noc-fleet`), driven by a scripted runbook model (no network, no real
model) that answers after a short pause, like a model the run waits on. Each run works on the
site named in its task:

    get_kpis (read) -> stage_change (dry run) -> apply_change (the side effect) -> monitor_kpis

`apply_change` is the NOC pack's tool (its code and declared facts): it pushes `prbCap` to the
simulated network named by `NOC_DB` under the step's idempotency key (the network's ledger,
`Network.effects()`, records the push with its key; a repeated key is logged in `Network.noops()`
instead of pushed again), and its `reconcile` asks the network whether the key already took
effect, so a worker killed between the push and its record does not push again. A policy pack
allows the push under a rate limit far above what the test reaches, so every push is a recorded
decision counted in `af_policy_usage` under the tenant's lock.

A probe around the push (when `FLEET_PROBE_DB` names the store's PostgreSQL database, holding the
test's own `fleet_probe` table, see `PROBE_TABLE`) records, in one statement before each push,
what the store says at that moment: the step's recorded intent (its attempt and status) and the
pid of the run's owner; and after each reconcile, whether it found the push. The test reads it to
check the engine's side of exactly-once: intent durable before every push, no push after a
reconcile that found one, no blind re-push by a run's new owner.

The lease is short (`LEASE_TTL`): a frozen worker's runs are taken over within seconds. The
module-level `app` reads its database from `AGENTFLOW_DB` (as `agentflow worker` sets it); the
test process builds its own App with `make_app(url)`.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Sequence
from typing import Any

from langchain_core.messages import BaseMessage

from agentflow import Agent, App, current_activity
from agentflow.llm import LangChainChat, ModelResponse, RunbookChatModel, tool
from agentflow.policy import parse_pack
from agentflow_noc import get_kpis, monitor_kpis, stage_change
from agentflow_noc import tools as noc_tools

LEASE_TTL = 1.5
#: Seconds each model call takes (the run waits, as it would on a real model).
MODEL_LATENCY = 0.05
PARAM, VALUE = "prbCap", 80.0
RATE_RULE = "fleet-apply-rate"

RUNBOOK: list[dict[str, Any]] = [
    {"tool": "get_kpis", "args": {"site": "{site}", "window_minutes": 60}},
    {"tool": "stage_change", "args": {"site": "{site}", "param": PARAM, "value": VALUE}},
    {"tool": "apply_change",
     "args": {"site": "{site}", "param": "{result.stage_change.param}", "value": "{result.stage_change.to}"}},
    {"tool": "monitor_kpis", "args": {"site": "{site}", "minutes": 30}},
]  # fmt: skip

PACK = parse_pack(
    f"""schema_version: 1
name: noc-fleet
rules:
  - id: {RATE_RULE}
    match: {{tools: [apply_change]}}
    effect: limit
    rate: {{max_calls: 100000, window: 1h}}
  - id: fleet-changes-allowed
    match: {{tools: [apply_change]}}
    effect: allow
""",
    source="<nocfleetapp>",
)


PROBE_ENV = "FLEET_PROBE_DB"
PROBE_TABLE = """CREATE TABLE fleet_probe (
    id BIGSERIAL PRIMARY KEY, kind TEXT NOT NULL, key TEXT NOT NULL, pid INTEGER NOT NULL, attempt INTEGER,
    intent_attempt INTEGER, intent_status TEXT, owner_pid INTEGER, found BOOLEAN,
    at DOUBLE PRECISION NOT NULL DEFAULT extract(epoch FROM clock_timestamp()))"""
_PROBE = (
    "INSERT INTO fleet_probe (kind, key, pid, attempt, intent_attempt, intent_status, owner_pid, found) "
    "SELECT %(kind)s, %(key)s, %(pid)s, %(attempt)s, s.attempt, s.status, "
    "(SELECT w.pid FROM af_runs r JOIN af_workers w ON w.id = r.owner WHERE r.id = %(run)s), %(found)s "
    "FROM (SELECT 1) one LEFT JOIN af_steps s ON s.run_id = %(run)s AND s.seq = %(seq)s"
)
_probes: dict[str, Any] = {}
_probe_lock = threading.Lock()  # one connection per process: tools run on many threads


def _probe(kind: str, key: str, *, attempt: int | None = None, found: bool | None = None) -> None:
    """One row of `fleet_probe`, committed before this returns (nothing without `FLEET_PROBE_DB`)."""
    url = os.environ.get(PROBE_ENV)
    if not url:
        return
    run_id, _, seq = key.rpartition(":")
    params = {"kind": kind, "key": key, "pid": os.getpid(), "attempt": attempt, "found": found, "run": run_id,
              "seq": int(seq)}  # fmt: skip
    with _probe_lock:
        conn = _probes.get("conn")
        if conn is None or conn.closed:
            import psycopg

            conn = _probes["conn"] = psycopg.connect(url, autocommit=True)
        conn.execute(_PROBE, params)


def _apply(site: str, param: str, value: str | int | float | bool) -> dict[str, Any]:
    info = current_activity()
    _probe("call", info.idempotency_key, attempt=info.attempt)
    return noc_tools.network().apply(site, param, value, key=info.idempotency_key)


def _reconcile(key: str) -> dict[str, Any] | None:
    found = noc_tools.network().result_for_key(key)
    _probe("reconcile", key, found=found is not None)
    return found


_apply.__doc__ = noc_tools.apply_change.description
apply_change = tool(
    side_effect="idempotent", target="site", canonical=noc_tools._site, region=noc_tools._region,
    reconcile=_reconcile, compensate="rollback_change", tags=["config"], preview=noc_tools._diff,
    name="apply_change",
)(_apply)  # fmt: skip


class SlowChat(LangChainChat):
    """The runbook model, answering after `latency` seconds (awaited: the worker's loop goes on)."""

    def __init__(self, model: RunbookChatModel, *, latency: float = MODEL_LATENCY) -> None:
        super().__init__(model, name="runbook")
        self.latency = latency

    async def agenerate(self, messages: Sequence[BaseMessage], tools: Sequence[dict[str, Any]] = (), *,
                        max_tokens: int | None = None) -> ModelResponse:  # fmt: skip
        await asyncio.sleep(self.latency)
        return await super().agenerate(messages, tools, max_tokens=max_tokens)


AGENT = Agent(
    name="noc-fleet",
    model=SlowChat(RunbookChatModel(runbook=RUNBOOK)),
    tools=[get_kpis, stage_change, apply_change, monitor_kpis],
    policies=PACK,
    max_turns=8,
)


def task(site: str) -> str:
    """What a run is asked (the runbook model takes the site from it)."""
    return f"{site} is congested: cap its PRBs at {VALUE:g}%, then check its KPIs."


def make_app(db: str | None = None, **options: Any) -> App:
    """An App with the fleet agent registered (db None: `AGENTFLOW_DB`; `options` for `App`)."""
    app = App(db, **{"lease_ttl": LEASE_TTL, "inline_wait": 1.0, **options})
    AGENT.register(app)
    return app


app = make_app()
