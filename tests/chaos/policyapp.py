"""The App the policy-limit tests run in (`--app policyapp:app` for worker subprocesses).

One agent per policy pack, each following a one- or two-step runbook on the site named in its
task: push `prbCap = 80` with the NOC `apply_change` tool (and, for `one-change`, then post a
notification that needs an approval, which keeps the run active after its change). The packs are
small on purpose, so each test isolates one mechanism of the policy engine:

    blast           at most 3 sites per region per hour (blast_radius), otherwise allowed
    rate            at most 3 apply_change calls per tenant per hour (rate), otherwise allowed
    one-change      one run at a time changes a site (one_change_per_target); notify needs approval
    approve         apply_change needs a noc-engineer's approval
    window          apply_change waits for the 02:00-06:00 UTC window (defer), otherwise allowed
    window-approve  apply_change needs an approval (asked at once) and then waits for the window

The tools act on the NOC network named by `NOC_DB`; its ledger shows every config push with the
idempotency key that caused it. The module-level `app` reads its database from `AGENTFLOW_DB` (as
`agentflow worker` sets it); the test process builds its own App with `make_app(url)`.
"""

from __future__ import annotations

from typing import Any

from agentflow import Agent, App
from agentflow.engine import Clock
from agentflow.llm import LangChainChat, RunbookChatModel
from agentflow.policy import PolicyPack, parse_pack
from agentflow_noc import apply_change, notify

PARAM, VALUE = "prbCap", 80.0
APPLY = {"tool": "apply_change", "args": {"site": "{site}", "param": PARAM, "value": VALUE}}
NOTIFY = {
    "tool": "notify",
    "args": {"channel": "noc-oncall", "message": "{site}", "notification_type": "change_applied"},
}
BLAST_RULE, RATE_RULE, ONE_CHANGE_RULE = "region-blast-radius", "apply-rate", "one-change-per-site"
APPROVAL_RULE, DEFER_RULE = "config-change-approval", "changes-in-window"
MAX_TARGETS = MAX_CALLS = 3
WINDOW_START_HOUR, WINDOW_HOURS = 2, 4

_HEAD = "schema_version: 1\nname: {name}\n"
_WINDOW = f"""maintenance_windows:
  - start: "{WINDOW_START_HOUR:02d}:00"
    duration: {WINDOW_HOURS}h
"""
_ALLOW = """  - id: changes-allowed
    match: {tools: [apply_change]}
    effect: allow
"""
_APPROVAL = f"""  - id: {APPROVAL_RULE}
    match: {{tools: [apply_change]}}
    effect: require_approval
    approval: {{roles: [noc-engineer], expires_in: 8h}}
"""
_DEFER = f"""  - id: {DEFER_RULE}
    match: {{tools: [apply_change]}}
    when: '!in_maintenance_window'
    effect: defer
"""
PACKS = {
    "blast": f"""rules:
  - id: {BLAST_RULE}
    match: {{tools: [apply_change]}}
    effect: limit
    blast_radius: {{max_targets: {MAX_TARGETS}, window: 1h, per: region}}
{_ALLOW}""",
    "rate": f"""rules:
  - id: {RATE_RULE}
    match: {{tools: [apply_change]}}
    effect: limit
    rate: {{max_calls: {MAX_CALLS}, window: 1h}}
{_ALLOW}""",
    "one-change": f"""rules:
  - id: {ONE_CHANGE_RULE}
    match: {{tags: [config]}}
    effect: limit
    one_change_per_target: true
{_ALLOW}  - id: notify-approval
    match: {{tools: [notify]}}
    effect: require_approval
    approval: {{roles: [noc-engineer], four_eyes: false}}
""",
    "approve": f"rules:\n{_APPROVAL}",
    "window": f"{_WINDOW}rules:\n{_DEFER}{_ALLOW}",
    "window-approve": f"{_WINDOW}rules:\n{_DEFER}{_APPROVAL}",
}


def pack(name: str) -> PolicyPack:
    """The policy pack of agent `name`, validated like a pack file."""
    return parse_pack(_HEAD.format(name=f"chaos-{name}") + PACKS[name], source=f"<policyapp:{name}>")


def _agent(name: str) -> Agent:
    runbook: list[dict[str, Any]] = [APPLY, NOTIFY] if name == "one-change" else [APPLY]
    return Agent(
        name=name,
        model=LangChainChat(RunbookChatModel(runbook=runbook), name="runbook"),
        tools=[apply_change, notify] if name == "one-change" else [apply_change],
        policies=pack(name),
        max_turns=4,
    )


AGENTS = {name: _agent(name) for name in PACKS}


def task(site: str) -> str:
    """What a run is asked (the runbook model takes the site from it)."""
    return f"Cap the PRBs of {site} at {VALUE:g}%."


def make_app(db: str | None = None, *, clock: Clock | None = None) -> App:
    """An App with every agent registered (db None: `AGENTFLOW_DB`)."""
    # inline_wait 0: every wait (approval, maintenance window) parks the run in the store.
    app = App(db, clock=clock, inline_wait=0.0, lease_ttl=10.0)
    for agent in AGENTS.values():
        agent.register(app)
    return app


app = make_app()
