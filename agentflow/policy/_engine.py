"""Evaluating a tool call against a pack.

Rules are read in order. The first matching `deny` (or a `limit` the call would exceed) decides
at once: deny wins. Otherwise the strictest matching effect decides, the first rule of that effect
naming it: `defer` (outside the maintenance window) > `require_approval` > `allow`. With no
matching rule, read-only tools are allowed and side-effecting ones (and tools without a
side-effect declaration) need an approval.

A condition that cannot be evaluated (a missing argument, a type error) fails closed: it counts
as matching for deny, limit, defer and require_approval rules, and as not matching for allow.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from pydantic import BaseModel, Field

from agentflow.policy._cel import evaluate as evaluate_condition
from agentflow.policy._pack import DAYS, ApprovalSpec, PolicyPack, Rule
from agentflow.store import MASK, unrepresentable

DEFAULT_APPROVAL = ApprovalSpec(roles=["*"])
HOUR = 3600.0


class CallFacts(BaseModel):
    """What a decision is about: the call, what the tool declares, and who asks."""

    tool: str
    args: dict[str, Any]
    tags: list[str] = Field(default_factory=list)
    side_effect: bool = True
    target: str | None = None
    region: str | None = None
    #: The server the tool comes from (an MCP server's name; "" for a tool of the process) and
    #: its MCP hints as agentflow takes them (`ToolFacts.hints`: an untrusted server's claims
    #: are not among them). Conditions see them as `server` and `annotations`.
    server: str = ""
    annotations: dict[str, bool] = Field(default_factory=dict)
    #: Whose call it is: limits are counted per tenant, so there is no default to fall into.
    tenant: str
    requester: str | None = None
    run_id: str = ""
    call_id: str = ""
    #: The gated call's own key (the idempotency key of its first decision step): limits count
    #: each gated call once by it, whatever call id the model gave (ids can be re-used).
    key: str = ""
    #: Why the tool could not name the call's target (its `canonical` or target function
    #: raised): such a call is denied, since no limit could be checked for it.
    target_error: str = ""

    @property
    def usage_key(self) -> str:
        return self.key or self.call_id


class PolicyDecision(BaseModel):
    """A recorded decision: the effect, the rule that fired and the pack version it came from."""

    effect: Literal["allow", "deny", "require_approval", "defer"]
    rule: str
    reason: str = ""
    pack: str = ""
    pack_hash: str = ""
    approval: ApprovalSpec | None = None
    approval_rule: str | None = None
    defer_until: float | None = None
    matched: list[str] = Field(default_factory=list)
    key: str = ""  # the gated call's key (see CallFacts.key), set by the gate
    #: What the decision was made on (set by the gate): a what-if re-decides from it.
    call: CallFacts | None = None


class Usage(Protocol):
    """What limits count: recent calls a policy let through, across every run of the store
    (`agentflow.store.PolicyUsage` reads them inside the deciding transaction)."""

    def calls(self, tenant: str, tool: str, since: float) -> int: ...

    def targets(self, tenant: str, region: str | None, since: float) -> set[str]: ...

    def busy(self, target: str, run_id: str) -> bool: ...


class NoUsage:
    """No recent calls (what-if evaluation without a store)."""

    def calls(self, tenant: str, tool: str, since: float) -> int:
        return 0

    def targets(self, tenant: str, region: str | None, since: float) -> set[str]:
        return set()

    def busy(self, target: str, run_id: str) -> bool:
        return False


def activation(pack: PolicyPack | None, facts: CallFacts, now: float, usage: Usage) -> dict[str, Any]:
    """The variables a condition sees (documented in policies/README.md)."""
    at = datetime.fromtimestamp(now, UTC)
    return {
        "tool": facts.tool,
        "tags": _tags(facts),
        "side_effect": facts.side_effect,
        "args": _doubles(facts.args),
        "target": facts.target or "",
        "region": facts.region or "",
        "server": facts.server,
        "annotations": facts.annotations,
        "tenant": facts.tenant,
        "requester": facts.requester or "",
        "run_id": facts.run_id,
        "now": int(now),
        "hour": at.hour,
        "weekday": DAYS[at.weekday()],
        "in_maintenance_window": bool(pack and pack.in_window(now)),
        "recent": {
            "calls_1h": usage.calls(facts.tenant, facts.tool, now - HOUR),
            "changes_region_1h": len(usage.targets(facts.tenant, facts.region, now - HOUR)) if facts.region else 0,
            "changes_tenant_1h": len(usage.targets(facts.tenant, None, now - HOUR)),
        },
    }


#: Condition results by (rule id, the activation they saw): see `decide(conditions=...)`.
Conditions = dict[tuple[str, str], tuple[bool, str]]


def decide(
    pack: PolicyPack | None, facts: CallFacts, now: float, usage: Usage | None = None,
    conditions: Conditions | None = None,
) -> PolicyDecision:  # fmt: skip
    """The pack's decision on one call at time `now` (see the module docstring for the order).

    `conditions` keeps each condition's result with the activation it saw: a second decision of
    the same call (inside the store transaction that records it) reuses them when the activation
    is unchanged, so conditions are evaluated outside that transaction, not while it holds the
    store's write lock."""
    usage = usage or NoUsage()
    name, digest = (pack.name, pack.version_hash) if pack else ("default", "")
    refused = invalid_call(facts, name, digest)
    if refused is not None:
        return refused
    env = activation(pack, facts, now, usage)
    seen = json.dumps(env, sort_keys=True, default=str) if conditions is not None else ""
    found: dict[str, tuple[Rule, str]] = {}
    matched: list[str] = []
    for rule in pack.rules if pack else []:
        hit, note = _matches(rule, facts, env, conditions, seen)
        if not hit:
            continue
        matched.append(rule.id)
        if rule.effect == "deny":
            return PolicyDecision(effect="deny", rule=rule.id, reason=_join(rule.reason, note), pack=name,
                                  pack_hash=digest, matched=matched)  # fmt: skip
        if rule.effect == "limit":
            over = _over_limit(rule, facts, now, usage)
            if over:
                return PolicyDecision(effect="deny", rule=rule.id, reason=_join(rule.reason or over, note), pack=name,
                                      pack_hash=digest, matched=matched)  # fmt: skip
            continue
        if rule.effect == "defer" and pack and pack.in_window(now):
            continue  # inside the window: nothing to defer
        found.setdefault(rule.effect, (rule, note))
    return _strictest(found, facts, pack, now, name, digest, matched)


def invalid_call(facts: CallFacts, pack: str = "", pack_hash: str = "") -> PolicyDecision | None:
    """A deny for a call whose arguments hold a number no condition can judge (NaN, an infinity,
    an integer beyond 64 bits: `NaN > 43.0` is false), or None. Decided before any rule, so no
    pack and no policy function ever sees such a call."""
    problem = unrepresentable(facts.args, "args")
    if problem is not None:
        return PolicyDecision(effect="deny", rule="invalid-arguments", pack=pack, pack_hash=pack_hash,
                              reason=f"{facts.tool} cannot be decided: {problem}")  # fmt: skip
    masked = _masked_secret(facts.args, "args", strict=facts.side_effect)
    if masked is not None:
        return PolicyDecision(effect="deny", rule="secret-in-arguments", pack=pack, pack_hash=pack_hash,
                              reason=f"{masked} of {facts.tool} held a secret, which is never recorded (the run "
                              f"has it as {MASK}): a tool reads its secrets from its own configuration; "
                              "call it without one")  # fmt: skip
    if facts.target_error:
        return PolicyDecision(effect="deny", rule="invalid-target", pack=pack, pack_hash=pack_hash,
                              reason=f"the target of {facts.tool} cannot be determined ({facts.target_error}): "
                              "no limit can be checked for it")  # fmt: skip
    return None


def _masked_secret(value: Any, path: str, *, strict: bool) -> str | None:
    """Where a masked secret stands in for an argument: a value that is the mask itself, or (for
    a side-effecting call, `strict`) any text containing it: such a call would act with the
    mask, not the secret (push `[redacted]` as a device's SNMP community)."""
    if isinstance(value, str):
        return path if value == MASK or (strict and MASK in value) else None
    if isinstance(value, dict):
        items: Iterable[tuple[Any, Any]] = value.items()
    elif isinstance(value, list | tuple):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = _masked_secret(item, f"{path}[{key}]" if isinstance(key, int) else f"{path}.{key}", strict=strict)
        if found is not None:
            return found
    return None


def _strictest(
    found: Mapping[str, tuple[Rule, str]], facts: CallFacts, pack: PolicyPack | None, now: float,
    name: str, digest: str, matched: list[str],
) -> PolicyDecision:  # fmt: skip
    base: dict[str, Any] = {"pack": name, "pack_hash": digest, "matched": matched}
    if "defer" in found:
        rule, note = found["defer"]
        until = pack.next_window(now) if pack else None
        if until is None:
            reason = "deferred to a maintenance window, but the pack defines none"
            return PolicyDecision(effect="deny", rule=rule.id, reason=reason, **base)
        people = found["require_approval"][0] if "require_approval" in found else None
        return PolicyDecision(effect="defer", rule=rule.id, reason=_join(rule.reason, note), defer_until=until,
                              approval=people.approval if people else None,
                              approval_rule=people.id if people else None, **base)  # fmt: skip
    if "require_approval" in found:
        rule, note = found["require_approval"]
        return PolicyDecision(effect="require_approval", rule=rule.id, reason=_join(rule.reason, note),
                              approval=rule.approval, approval_rule=rule.id, **base)  # fmt: skip
    if "allow" in found:
        rule, note = found["allow"]
        return PolicyDecision(effect="allow", rule=rule.id, reason=_join(rule.reason, note), **base)
    if not facts.side_effect:
        return PolicyDecision(effect="allow", rule="default:read-only", **base)
    return PolicyDecision(effect="require_approval", rule="default:side-effect", approval=DEFAULT_APPROVAL,
                          approval_rule="default:side-effect",
                          reason=f"{facts.tool} has side effects", **base)  # fmt: skip


def _matches(
    rule: Rule, facts: CallFacts, env: dict[str, Any], conditions: Conditions | None = None, seen: str = ""
) -> tuple[bool, str]:
    if not rule.match.matches(facts.tool, set(_tags(facts))):
        return False, ""
    if rule.when is None:
        return True, ""
    key = (rule.id, seen)
    if conditions is not None and key in conditions:
        return conditions[key]
    value, problem = evaluate_condition(rule.when, env)
    if conditions is not None:
        conditions[key] = _judged(rule, value, problem)
    return _judged(rule, value, problem)


def _judged(rule: Rule, value: bool | None, problem: str) -> tuple[bool, str]:
    if value is None:  # fail closed: only an allow is dropped
        return rule.effect != "allow", f"({rule.id}: {problem})"
    return value, ""


def _over_limit(rule: Rule, facts: CallFacts, now: float, usage: Usage) -> str:
    if rule.rate is not None:
        used = usage.calls(facts.tenant, facts.tool, now - rule.rate.window)
        if used >= rule.rate.max_calls:
            return (f"rate limit: {facts.tool} ran {used} times for tenant {facts.tenant} in the last "
                    f"{rule.rate.window:g}s (at most {rule.rate.max_calls})")  # fmt: skip
    if rule.blast_radius is not None and facts.target:
        scope = facts.region if rule.blast_radius.per == "region" else None
        if rule.blast_radius.per == "region" and scope is None:
            return f"blast radius: the region of {facts.target} is unknown, so the limit cannot be checked"
        seen = usage.targets(facts.tenant, scope, now - rule.blast_radius.window)
        if facts.target not in seen and len(seen) >= rule.blast_radius.max_targets:
            where = f"region {scope}" if scope else f"tenant {facts.tenant}"
            return (f"blast radius: {len(seen)} targets already changed in {where} in the last "
                    f"{rule.blast_radius.window:g}s (at most {rule.blast_radius.max_targets})")  # fmt: skip
    if rule.one_change_per_target and facts.target and usage.busy(facts.target, facts.run_id):
        return f"{facts.target} already has a change in progress in another run"
    return ""


def _tags(facts: CallFacts) -> list[str]:
    return [*facts.tags, "side_effect" if facts.side_effect else "read_only"]


def _doubles(value: Any) -> Any:
    """Numbers become doubles, so `args.value > 43.0` works whatever the model sent (CEL does not
    compare int with double)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, dict):
        return {str(k): _doubles(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_doubles(v) for v in value]
    return value


def _join(reason: str, note: str) -> str:
    return f"{reason} {note}".strip()
