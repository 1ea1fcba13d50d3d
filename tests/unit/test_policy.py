"""The policy engine: packs that fail at load with the file and the line, and `decide()` (deny
wins, then defer > require_approval > allow, defaults, CEL failing closed, globs and tags,
numbers as doubles, maintenance windows, rate and blast-radius limits, the pack's version hash).
Then the agent: a recorded decision stands on replay, and a call is decided again right before
it runs, after its approval."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import agentflow_noc as noc
from agentflow import App, WorkflowContext
from agentflow.agent import Agent, Decision
from agentflow.approvals import Approvals
from agentflow.errors import PolicyError
from agentflow.llm import LangChainChat, ScriptedChatModel, ToolFacts
from agentflow.policy import DEFAULT_APPROVAL, ApprovalSpec, CallFacts, PolicyPack, decide, load_pack, parse_pack
from agentflow_noc import model

MARK = "# <-"  # the line a load error must name


# ------------------------------------------------------------------------------------------
# load errors: PolicyError "<file>:<line>: reason"
# ------------------------------------------------------------------------------------------
HEAD = "schema_version: 1\nname: t\n"
LOAD_ERRORS: list[tuple[str, str, str]] = [
    (
        "bad-yaml",
        HEAD + "rules:\n  - id: a\n    effect: allow\n   match: {tools: [x]}  # <-\n",
        "not valid YAML",
    ),
    (
        "unclosed-flow",
        HEAD + "rules:\n  - id: a\n    match: {tools: [x}  # <-\n    effect: allow\n",
        "not valid YAML",
    ),
    ("unknown-field", HEAD + "rules:\n  - id: a\n    effect: allow\n    colour: red  # <-\n", "colour"),
    ("unknown-top-level-field", HEAD + "rulez: []  # <-\n", "rulez"),
    ("unknown-effect", HEAD + "rules:\n  - id: a\n    effect: permit  # <-\n", "effect"),
    (
        "deny-without-reason",
        HEAD
        + "rules:\n  - id: ok\n    effect: allow\n  - id: no-reason  # <-\n    match: {tools: [x]}\n    effect: deny\n",
        "needs a `reason:`",
    ),
    (
        "approval-on-allow",
        HEAD + "rules:\n  - id: a  # <-\n    effect: allow\n    approval:\n      roles: [noc-engineer]\n",
        "only goes with effect require_approval",
    ),
    (
        "require-approval-without-block",
        HEAD + "rules:\n  - id: a  # <-\n    effect: require_approval\n",
        "needs an `approval:` block",
    ),
    (
        "bad-cel",
        HEAD + "rules:\n  - id: a\n    effect: deny\n    reason: r\n    when: 'args.value >'  # <-\n",
        "not a valid CEL expression",
    ),
    (
        "bad-cel-second-rule",
        HEAD + "rules:\n  - id: a\n    effect: allow\n    when: 'true'\n  - id: b\n    effect: allow\n"
        "    when: 'args.(x'  # <-\n",
        "rules.1.when (b)",
    ),
    (
        "unknown-time-zone",
        HEAD + "maintenance_windows:\n  - start: '02:00'\n    duration: 4h\n    tz: Mars/Olympus_Mons  # <-\n",
        "unknown time zone 'Mars/Olympus_Mons'",
    ),
    (
        "bad-duration",
        HEAD + "maintenance_windows:\n  - start: '02:00'\n    duration: 5 minutes  # <-\n",
        "'5 minutes' is not a duration",
    ),
    (
        "bad-duration-in-approval",
        HEAD + "rules:\n  - id: a\n    effect: require_approval\n    approval:\n      roles: [x]\n"
        "      expires_in: 1 week  # <-\n",
        "not a duration",
    ),
    (
        "bad-start",
        HEAD + "maintenance_windows:\n  - start: '25:00'  # <-\n    duration: 1h\n",
        "start",
    ),
    (
        "duplicate-rule-ids",
        HEAD
        + "rules:\n  - id: a\n    effect: allow\n  - id: b\n    effect: allow\n  - id: a  # <-\n    effect: allow\n",
        "rule ids must be unique",
    ),
    ("wrong-schema-version", "schema_version: 2  # <-\nname: t\nrules: []\n", "schema_version"),
    ("missing-schema-version", "name: t  # <-\nrules: []\n", "schema_version"),
    ("not-a-mapping", "- a  # <-\n- b\n", "a policy pack is a mapping"),
    (
        "duplicate-yaml-key",
        HEAD
        + "rules:\n  - id: deny-all\n    effect: deny\n    reason: freeze\nrules:  # <-\n  - id: ok\n    effect: allow\n",
        "rules",
    ),
]


@pytest.mark.parametrize(("text", "reason"), [c[1:] for c in LOAD_ERRORS], ids=[c[0] for c in LOAD_ERRORS])
def test_an_invalid_pack_fails_at_load_naming_the_file_and_line(tmp_path: Path, text: str, reason: str) -> None:
    """Every invalid pack raises PolicyError "<file>:<line>: ..." at load, where <line> is the
    line marked `# <-` (the offending key or value, or the rule when a rule is inconsistent)."""
    line = next(i for i, row in enumerate(text.splitlines(), 1) if MARK in row)
    path = tmp_path / "pack.yaml"
    path.write_text(text)
    with pytest.raises(PolicyError) as caught:
        load_pack(path)
    message = str(caught.value)
    assert message.startswith(f"{path}:{line}: "), message
    assert (caught.value.file, caught.value.line) == (str(path), line)
    assert reason in message


def test_an_unreadable_pack_names_the_file(tmp_path: Path) -> None:
    """A missing file is a PolicyError naming it (no line to give)."""
    with pytest.raises(PolicyError, match="cannot read policy pack") as caught:
        load_pack(tmp_path / "nope.yaml")
    assert caught.value.file == str(tmp_path / "nope.yaml")


def test_the_shipped_noc_pack_loads() -> None:
    pack = load_pack(noc.policy_path())
    assert pack.name == "noc" and pack.source == str(noc.policy_path())
    assert len(pack.version_hash) == 16


# ------------------------------------------------------------------------------------------
# decide(): precedence and defaults
# ------------------------------------------------------------------------------------------
# 2026-01-01 is a Thursday. The window of the pack below: every day 02:00-04:00 UTC.
NOON = datetime(2026, 1, 1, 12, tzinfo=UTC).timestamp()
IN_WINDOW = datetime(2026, 1, 1, 3, tzinfo=UTC).timestamp()
NEXT_WINDOW = datetime(2026, 1, 2, 2, tzinfo=UTC).timestamp()

RULES = {
    "allow": "  - id: allow-x\n    match: {tools: [x]}\n    effect: allow\n",
    "allow2": "  - id: allow-x-again\n    match: {tools: [x]}\n    effect: allow\n",
    "deny": "  - id: deny-x\n    match: {tools: [x]}\n    effect: deny\n    reason: frozen\n",
    "approve": "  - id: approve-x\n    match: {tools: [x]}\n    effect: require_approval\n"
    "    approval: {roles: [noc-engineer], quorum: 2}\n",
    "approve2": "  - id: approve-x-again\n    match: {tools: [x]}\n    effect: require_approval\n"
    "    approval: {roles: [anyone]}\n",
    "defer": "  - id: defer-x\n    match: {tools: [x]}\n    when: '!in_maintenance_window'\n    effect: defer\n"
    "    reason: nights only\n",
    "defer-always": "  - id: defer-always\n    match: {tools: [x]}\n    effect: defer\n",
    "other": "  - id: deny-y\n    match: {tools: [y]}\n    effect: deny\n    reason: not x\n",
}


def pack_of(*names: str, windows: bool = True) -> PolicyPack:
    window = "maintenance_windows:\n  - {start: '02:00', duration: 2h}\n" if windows else ""
    return parse_pack(HEAD + window + "rules:\n" + "".join(RULES[n] for n in names), source="t.yaml")


PRECEDENCE: list[tuple[str, tuple[str, ...], float, str, str]] = [
    # (case, rules in order, now, effect, deciding rule)
    ("deny-after-allow-wins", ("allow", "deny"), NOON, "deny", "deny-x"),
    ("deny-before-allow-wins", ("deny", "allow"), NOON, "deny", "deny-x"),
    ("deny-wins-over-everything", ("allow", "approve", "defer", "deny"), NOON, "deny", "deny-x"),
    ("approval-over-allow", ("allow", "approve"), NOON, "require_approval", "approve-x"),
    ("defer-over-approval-outside-window", ("allow", "approve", "defer"), NOON, "defer", "defer-x"),
    ("defer-over-allow", ("allow", "defer"), NOON, "defer", "defer-x"),
    ("no-defer-inside-window", ("allow", "approve", "defer"), IN_WINDOW, "require_approval", "approve-x"),
    ("unconditional-defer-inside-window", ("allow", "defer-always"), IN_WINDOW, "allow", "allow-x"),
    ("first-rule-of-the-effect-names-it", ("approve", "approve2", "allow2", "allow"), NOON, "require_approval",
     "approve-x"),
    ("first-allow-names-it", ("allow2", "allow"), NOON, "allow", "allow-x-again"),
    ("rules-for-other-tools-do-not-apply", ("other", "allow"), NOON, "allow", "allow-x"),
    ("no-rule-side-effect", ("other",), NOON, "require_approval", "default:side-effect"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("rules", "now", "effect", "rule"), [c[1:] for c in PRECEDENCE], ids=[c[0] for c in PRECEDENCE]
)
def test_precedence(rules: tuple[str, ...], now: float, effect: str, rule: str) -> None:
    """Deny anywhere wins; otherwise defer (outside the window) > require_approval > allow, the
    first rule of that effect naming it; with no rule, a side effect needs an approval."""
    pack = pack_of(*rules)
    decision = decide(pack, CallFacts(tenant="t", tool="x", args={}), now)
    assert (decision.effect, decision.rule) == (effect, rule)
    assert (decision.pack, decision.pack_hash) == ("t", pack.version_hash)


def test_a_deferred_call_carries_its_approval_and_the_next_opening() -> None:
    """Defer with an approval rule matching too: the decision says when (the next opening) and
    who must approve (the approval rule's spec), so people approve during the day."""
    decision = decide(pack_of("allow", "approve", "defer"), CallFacts(tenant="t", tool="x", args={}), NOON)
    assert decision.defer_until == NEXT_WINDOW
    assert decision.approval_rule == "approve-x"
    assert decision.approval is not None and decision.approval.quorum == 2
    assert decision.reason == "nights only"
    assert decision.matched == ["allow-x", "approve-x", "defer-x"]
    assert decide(pack_of("defer"), CallFacts(tenant="t", tool="x", args={}), NOON).approval is None


def test_defer_without_any_window_is_a_denial() -> None:
    """A pack that defers to a maintenance window it does not define never runs the call."""
    decision = decide(pack_of("defer-always", windows=False), CallFacts(tenant="t", tool="x", args={}), NOON)
    assert (decision.effect, decision.rule) == ("deny", "defer-always")
    assert "defines none" in decision.reason


@pytest.mark.parametrize("pack", [None, "empty"], ids=["no-pack", "empty-pack"])
def test_defaults_without_a_matching_rule(pack: str | None) -> None:
    """No matching rule: a read-only tool runs (default:read-only); a side-effecting (or
    undeclared) one needs an approval by any operator (default:side-effect)."""
    chosen = parse_pack(HEAD + "rules: []\n") if pack else None
    read = decide(chosen, CallFacts(tenant="t", tool="get_kpis", args={}, side_effect=False), NOON)
    write = decide(chosen, CallFacts(tenant="t", tool="apply_change", args={}), NOON)
    assert (read.effect, read.rule) == ("allow", "default:read-only")
    assert (write.effect, write.rule, write.approval_rule) == (
        "require_approval",
        "default:side-effect",
        "default:side-effect",
    )
    assert write.approval == DEFAULT_APPROVAL and "apply_change has side effects" in write.reason
    assert (write.pack, write.pack_hash) == (("t", chosen.version_hash) if chosen else ("default", ""))


def test_the_decision_records_the_pack_name_hash_and_rule() -> None:
    pack = load_noc_like()
    decision = decide(pack, CallFacts(tenant="t", tool="apply_change", args={"param": "txPower", "value": 46}), NOON)
    assert (decision.pack, decision.pack_hash, decision.rule) == ("noc-like", pack.version_hash, "tx")
    assert decision.matched == ["tx"]
    dumped = json.loads(decision.model_dump_json())
    assert {"pack": "noc-like", "pack_hash": pack.version_hash, "rule": "tx"}.items() <= dumped.items()


def load_noc_like() -> PolicyPack:
    return parse_pack(
        "schema_version: 1\nname: noc-like\nrules:\n"
        "  - id: tx\n    match: {tools: [apply_change]}\n    when: 'args.param == \"txPower\" && args.value > 43.0'\n"
        "    effect: deny\n    reason: too hot\n"
    )


# ------------------------------------------------------------------------------------------
# CEL conditions: fail closed, numbers as doubles
# ------------------------------------------------------------------------------------------
def one_rule(effect: str, when: str, extra: str = "") -> PolicyPack:
    return parse_pack(
        HEAD + f"rules:\n  - id: r\n    match: {{tools: [x]}}\n    when: '{when}'\n    effect: {effect}\n{extra}"
    )


APPROVAL = "    approval: {roles: [noc-engineer]}\n"
FAIL_CLOSED: list[tuple[str, str, str, bool, str, str]] = [
    # (case, effect, condition, read-only tool, decided effect, decided rule)
    ("deny-missing-arg", "deny", "args.missing == \"x\"", False, "deny", "r"),
    ("deny-type-error", "deny", "args.site > 3.0", False, "deny", "r"),
    ("deny-not-a-bool", "deny", "args.value", False, "deny", "r"),
    ("approval-missing-arg", "require_approval", "args.missing > 1.0", True, "require_approval", "r"),
    ("allow-missing-arg-side-effect", "allow", "args.missing == \"x\"", False, "require_approval",
     "default:side-effect"),
    ("allow-missing-arg-read-only", "allow", "args.missing == \"x\"", True, "allow", "default:read-only"),
    ("allow-type-error", "allow", "args.site < 3.0", False, "require_approval", "default:side-effect"),
    ("defer-missing-arg", "defer", "args.missing", False, "defer", "r"),
    # README: "numbers are doubles: write 43.0, not 43": an int literal fails closed.
    ("deny-int-literal-equality", "deny", "args.value == 2", False, "deny", "r"),
    ("allow-int-literal-equality", "allow", "args.value == 2", False, "require_approval", "default:side-effect"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("effect", "when", "read_only", "decided", "rule"), [c[1:] for c in FAIL_CLOSED], ids=[c[0] for c in FAIL_CLOSED]
)
def test_a_condition_that_cannot_be_evaluated_fails_closed(
    effect: str, when: str, read_only: bool, decided: str, rule: str
) -> None:
    """A condition that errors (missing argument, type error, not a bool) counts as matching
    for deny / require_approval / defer and as not matching for allow; the reason says which
    rule's condition could not be evaluated."""
    reason = "    reason: blocked\n" if effect in ("deny", "defer") else ""
    pack = parse_pack(
        HEAD + "maintenance_windows:\n  - {start: '02:00', duration: 2h}\n"
        f"rules:\n  - id: r\n    match: {{tools: [x]}}\n    when: '{when}'\n    effect: {effect}\n{reason}"
        + (APPROVAL if effect == "require_approval" else "")
    )
    decision = decide(
        pack, CallFacts(tenant="t", tool="x", args={"site": "CS-101", "value": 2}, side_effect=not read_only), NOON
    )
    assert (decision.effect, decision.rule) == (decided, rule)
    if rule == "r":
        assert "(r: the condition" in decision.reason, decision.reason
    if effect == "deny":
        assert decision.reason.startswith("blocked ")


NUMBERS: list[tuple[str, str, dict[str, Any], bool]] = [
    ("int-above-double", "args.value > 43.0", {"value": 44}, True),
    ("int-equal-double", "args.value > 43.0", {"value": 43}, False),
    ("float-above", "args.value > 43.0", {"value": 43.5}, True),
    ("int-equals-double", "args.value == 3.0", {"value": 3}, True),
    ("float-equals-double", "args.value == 3.0", {"value": 3.0}, True),
    ("nested-list", "args.values[1] >= 2.0", {"values": [1, 2]}, True),
    ("nested-map", "args.cfg.prb > 90.0", {"cfg": {"prb": 95}}, True),
    ("bool-stays-bool", "args.flag == true", {"flag": True}, True),
    ("string", 'args.param == "txPower"', {"param": "txPower"}, True),
]


@pytest.mark.parametrize(("when", "args", "hit"), [c[1:] for c in NUMBERS], ids=[c[0] for c in NUMBERS])
def test_numbers_in_arguments_compare_as_doubles(when: str, args: dict[str, Any], hit: bool) -> None:
    """Whatever number type the model sent, `args.value > 43.0` compares it (CEL itself does not
    compare int with double: without the conversion the deny would fail closed on everything).
    Booleans stay booleans."""
    pack = one_rule("deny", when, "    reason: too much\n")
    decision = decide(pack, CallFacts(tenant="t", tool="x", args=args), NOON)
    assert (decision.effect == "deny") is hit
    assert "could not be evaluated" not in decision.reason


def test_conditions_see_the_call() -> None:
    """The activation: tool, tags, target, region, tenant, requester, weekday and hour."""
    when = (
        'tool == "x" && "config" in tags && "side_effect" in tags && target == "CS-101" && region == "north" && '
        'tenant == "noc-east" && requester == "ann" && weekday == "thu" && hour == 12 && run_id == "r1"'
    )
    pack = one_rule("deny", when, "    reason: seen\n")
    facts = CallFacts(tool="x", args={}, tags=["config"], target="CS-101", region="north", tenant="noc-east",
                      requester="ann", run_id="r1")  # fmt: skip
    assert decide(pack, facts, NOON).effect == "deny"
    assert decide(pack, facts.model_copy(update={"tenant": "noc-west"}), NOON).effect == "require_approval"


# ------------------------------------------------------------------------------------------
# match: globs and tags
# ------------------------------------------------------------------------------------------
MATCHES: list[tuple[str, str, str, list[str], bool, bool]] = [
    # (case, match, tool, tool tags, side effect, matches)
    ("exact", "{tools: [apply_change]}", "apply_change", [], True, True),
    ("exact-other", "{tools: [apply_change]}", "apply_changes", [], True, False),
    ("glob-prefix", "{tools: ['apply_*']}", "apply_change", [], True, True),
    ("glob-anchored", "{tools: ['apply_*']}", "reapply_change", [], True, False),
    ("glob-suffix", "{tools: ['*_change']}", "rollback_change", [], True, True),
    ("glob-one-char", "{tools: ['get_kpi?']}", "get_kpis", [], False, True),
    ("glob-class", "{tools: ['[ar]*_change']}", "stage_change", [], True, False),
    ("glob-case-sensitive", "{tools: ['apply_*']}", "Apply_change", [], True, False),
    ("tag", "{tags: [config]}", "apply_change", ["config"], True, True),
    ("tag-missing", "{tags: [config]}", "notify", ["notify"], True, False),
    ("implicit-read-only-tag", "{tags: [read_only]}", "get_kpis", [], False, True),
    ("implicit-side-effect-tag", "{tags: [side_effect]}", "notify", [], True, True),
    ("read-only-tag-not-on-writes", "{tags: [read_only]}", "notify", [], True, False),
    ("tools-or-tags", "{tools: [nope], tags: [ticket]}", "create_ticket", ["ticket"], True, True),
    ("empty-match-is-everything", "{}", "anything", [], True, True),
]


@pytest.mark.parametrize(
    ("match", "tool", "tags", "side_effect", "hit"), [c[1:] for c in MATCHES], ids=[c[0] for c in MATCHES]
)
def test_match_by_glob_and_tag(match: str, tool: str, tags: list[str], side_effect: bool, hit: bool) -> None:
    """A rule applies to a call whose tool name matches one of its globs (case-sensitive,
    anchored) or whose tags (its own, plus side_effect/read_only) meet one of its tags."""
    pack = parse_pack(HEAD + f"rules:\n  - id: m\n    match: {match}\n    effect: deny\n    reason: matched\n")
    decision = decide(pack, CallFacts(tenant="t", tool=tool, args={}, tags=tags, side_effect=side_effect), NOON)
    assert (decision.rule == "m") is hit


# ------------------------------------------------------------------------------------------
# maintenance windows
# ------------------------------------------------------------------------------------------
def at(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def window(**fields: Any) -> PolicyPack:
    spec = ", ".join(f"{k}: {v}" for k, v in fields.items())
    return parse_pack(HEAD + f"maintenance_windows:\n  - {{{spec}}}\n")


# Friday 23:00 UTC for 4 hours: into Saturday.
OVERNIGHT = {"days": "[fri]", "start": "'23:00'", "duration": "4h"}
WINDOWS: list[tuple[str, dict[str, str], str, bool, str | None]] = [
    # (case, window, at, inside, next opening)
    ("before-friday", OVERNIGHT, "2026-01-02T22:59:00+00:00", False, "2026-01-02T23:00:00+00:00"),
    ("friday-night", OVERNIGHT, "2026-01-02T23:30:00+00:00", True, "2026-01-09T23:00:00+00:00"),
    ("past-midnight", OVERNIGHT, "2026-01-03T01:00:00+00:00", True, "2026-01-09T23:00:00+00:00"),
    ("end-is-open", OVERNIGHT, "2026-01-03T03:00:00+00:00", False, "2026-01-09T23:00:00+00:00"),
    ("saturday-night-is-not-friday", OVERNIGHT, "2026-01-03T23:30:00+00:00", False, "2026-01-09T23:00:00+00:00"),
    ("thursday", OVERNIGHT, "2026-01-01T23:30:00+00:00", False, "2026-01-02T23:00:00+00:00"),
    # 02:00 Paris is 01:00 UTC in winter (CET) and 00:00 UTC in summer (CEST).
    ("paris-winter-before", {"start": "'02:00'", "duration": "2h", "tz": "Europe/Paris"},
     "2026-01-15T00:30:00+00:00", False, "2026-01-15T01:00:00+00:00"),
    ("paris-winter-inside", {"start": "'02:00'", "duration": "2h", "tz": "Europe/Paris"},
     "2026-01-15T02:30:00+00:00", True, "2026-01-16T01:00:00+00:00"),
    ("paris-winter-utc-02-is-03-paris", {"start": "'02:00'", "duration": "1h", "tz": "Europe/Paris"},
     "2026-01-15T02:30:00+00:00", False, "2026-01-16T01:00:00+00:00"),
    ("paris-summer", {"start": "'02:00'", "duration": "2h", "tz": "Europe/Paris"},
     "2026-07-14T23:30:00+00:00", False, "2026-07-15T00:00:00+00:00"),
    ("paris-summer-inside", {"start": "'02:00'", "duration": "2h", "tz": "Europe/Paris"},
     "2026-07-15T01:30:00+00:00", True, "2026-07-16T00:00:00+00:00"),
    # Sunday 23:30 Paris (22:30 UTC) for 3 hours: across midnight, local and UTC days differ.
    ("paris-overnight-utc-sunday", {"days": "[sun]", "start": "'23:30'", "duration": "3h", "tz": "Europe/Paris"},
     "2026-01-04T22:45:00+00:00", True, "2026-01-11T22:30:00+00:00"),
    ("paris-overnight-monday", {"days": "[sun]", "start": "'23:30'", "duration": "3h", "tz": "Europe/Paris"},
     "2026-01-05T01:00:00+00:00", True, "2026-01-11T22:30:00+00:00"),
    ("paris-overnight-over", {"days": "[sun]", "start": "'23:30'", "duration": "3h", "tz": "Europe/Paris"},
     "2026-01-05T01:30:00+00:00", False, "2026-01-11T22:30:00+00:00"),
    # Tokyo (UTC+9): Monday 01:00 local is Sunday 16:00 UTC.
    ("tokyo-monday-is-utc-sunday", {"days": "[mon]", "start": "'01:00'", "duration": "1h", "tz": "Asia/Tokyo"},
     "2026-01-04T15:00:00+00:00", False, "2026-01-04T16:00:00+00:00"),
]  # fmt: skip


@pytest.mark.parametrize(("spec", "when", "inside", "opening"), [c[1:] for c in WINDOWS], ids=[c[0] for c in WINDOWS])
def test_maintenance_windows(spec: dict[str, str], when: str, inside: bool, opening: str | None) -> None:
    """Windows recur on their days from a local start time in their time zone (DST included),
    may run past midnight (the part after midnight belongs to the day it started), and the
    next opening is the first start strictly after now."""
    pack = window(**spec)
    assert pack.in_window(at(when)) is inside
    assert pack.next_window(at(when)) == (at(opening) if opening else None)


def test_the_earliest_of_several_windows_opens_next() -> None:
    pack = parse_pack(
        HEAD + "maintenance_windows:\n  - {days: [sat], start: '02:00', duration: 1h}\n"
        "  - {days: [thu], start: '22:00', duration: 1h, tz: Europe/Paris}\n"
    )
    assert pack.next_window(NOON) == at("2026-01-01T21:00:00+00:00")  # Thursday 22:00 Paris


# ------------------------------------------------------------------------------------------
# limits: rate and blast radius, with a fake Usage
# ------------------------------------------------------------------------------------------
@dataclass
class FakeUsage:
    """`agentflow.policy._engine.Usage`: recent calls per tool, changed targets per region,
    targets with a change in progress elsewhere; and what the engine asked."""

    counts: dict[str, int] = field(default_factory=dict)
    changed: dict[str, set[str]] = field(default_factory=dict)
    in_progress: set[str] = field(default_factory=set)
    asked: list[tuple[Any, ...]] = field(default_factory=list)

    def calls(self, tenant: str, tool: str, since: float) -> int:
        self.asked.append(("calls", tenant, tool, since))
        return self.counts.get(tool, 0)

    def targets(self, tenant: str, region: str | None, since: float) -> set[str]:
        self.asked.append(("targets", tenant, region, since))
        if region is None:
            return set().union(*self.changed.values())
        return set(self.changed.get(region, set()))

    def busy(self, target: str, run_id: str) -> bool:
        self.asked.append(("busy", target, run_id))
        return target in self.in_progress


def limits(body: str) -> PolicyPack:
    return parse_pack(
        HEAD + "rules:\n  - id: lim\n    match: {tools: [apply_change]}\n    effect: limit\n" + body
        + "  - id: ok\n    match: {tools: [apply_change]}\n    effect: allow\n"
    )  # fmt: skip


def apply_on(site: str, region: str | None = "north", **kw: Any) -> CallFacts:
    return CallFacts(tool="apply_change", args={"site": site}, target=site, region=region, tenant="noc-east", **kw)


RATE = "    rate: {max_calls: 3, window: 30m}\n"
REGION = "    blast_radius: {max_targets: 2, window: 1h, per: region}\n"
TENANT_WIDE = "    blast_radius: {max_targets: 2, window: 1h, per: tenant}\n"
BUSY = "    one_change_per_target: true\n"
LIMITS: list[tuple[str, str, dict[str, Any], CallFacts, str]] = [
    # (case, limit, usage, call, effect: allow, or the start of the denial reason)
    ("rate-under", RATE, {"counts": {"apply_change": 2}}, apply_on("CS-101"), "allow"),
    ("rate-at-limit", RATE, {"counts": {"apply_change": 3}}, apply_on("CS-101"), "rate limit: apply_change ran 3"),
    ("rate-other-tool", RATE, {"counts": {"notify": 9}}, apply_on("CS-101"), "allow"),
    ("radius-room-left", REGION, {"changed": {"north": {"CS-101"}}}, apply_on("CS-102"), "allow"),
    ("radius-same-target-again", REGION, {"changed": {"north": {"CS-101", "CS-102"}}}, apply_on("CS-101"), "allow"),
    ("radius-new-target-full", REGION, {"changed": {"north": {"CS-101", "CS-102"}}}, apply_on("CS-103"),
     "blast radius: 2 targets already changed in region north"),
    ("radius-other-region", REGION, {"changed": {"north": {"CS-101", "CS-102"}}}, apply_on("CS-107", "south"),
     "allow"),
    ("radius-region-unknown", REGION, {}, apply_on("CS-999", None), "blast radius: the region of CS-999 is unknown"),
    ("radius-tenant-wide", TENANT_WIDE, {"changed": {"north": {"CS-101"}, "south": {"CS-107"}}},
     apply_on("CS-113", "east"), "blast radius: 2 targets already changed in tenant noc-east"),
    ("radius-tenant-same-target", TENANT_WIDE, {"changed": {"north": {"CS-101"}, "south": {"CS-107"}}},
     apply_on("CS-107", "south"), "allow"),
    ("busy-elsewhere", BUSY, {"in_progress": {"CS-101"}}, apply_on("CS-101", run_id="r1"),
     "CS-101 already has a change in progress in another run"),
    ("not-busy", BUSY, {"in_progress": {"CS-102"}}, apply_on("CS-101", run_id="r1"), "allow"),
]  # fmt: skip


@pytest.mark.parametrize(("limit", "usage", "facts", "expected"), [c[1:] for c in LIMITS], ids=[c[0] for c in LIMITS])
def test_rate_limits_and_blast_radius(limit: str, usage: dict[str, Any], facts: CallFacts, expected: str) -> None:
    """A limit rule denies a call that would exceed it (and otherwise decides nothing): at most
    N calls per tool per window, at most N distinct targets per region (or tenant) per window
    (the same target again is not a new one), one run at a time per target."""
    fake = FakeUsage(**usage)
    decision = decide(limits(limit), facts, NOON, fake)
    if expected == "allow":
        assert (decision.effect, decision.rule) == ("allow", "ok"), decision.reason
    else:
        assert (decision.effect, decision.rule) == ("deny", "lim")
        assert decision.reason.startswith(expected), decision.reason


def test_limits_count_over_their_own_window_and_tenant() -> None:
    """The engine asks Usage for the rule's window (30 min rate, 1 h radius) and the call's tenant."""
    fake = FakeUsage()
    decide(limits(RATE + REGION), apply_on("CS-101"), NOON, fake)
    assert ("calls", "noc-east", "apply_change", NOON - 1800) in fake.asked
    assert ("targets", "noc-east", "north", NOON - 3600) in fake.asked


def test_a_limit_rule_reason_replaces_the_computed_one() -> None:
    pack = parse_pack(
        HEAD + "rules:\n  - id: lim\n    effect: limit\n    reason: slow down\n    rate: {max_calls: 1, window: 1h}\n"
    )
    decision = decide(pack, apply_on("CS-101"), NOON, FakeUsage(counts={"apply_change": 1}))
    assert (decision.effect, decision.reason) == ("deny", "slow down")


def test_recent_usage_is_visible_to_conditions() -> None:
    pack = one_rule("deny", "recent.calls_1h >= 2 || recent.changes_region_1h >= 3", "    reason: busy hour\n")
    calm, busy = FakeUsage(counts={"x": 1}), FakeUsage(counts={"x": 2})
    facts = CallFacts(tenant="t", tool="x", args={}, target="CS-101", region="north")
    assert decide(pack, facts, NOON, calm).effect == "require_approval"
    assert decide(pack, facts, NOON, busy).effect == "deny"
    wide = FakeUsage(changed={"north": {"CS-101", "CS-102", "CS-103"}})
    assert decide(pack, facts, NOON, wide).effect == "deny"


# ------------------------------------------------------------------------------------------
# the version hash
# ------------------------------------------------------------------------------------------
BASE = """\
schema_version: 1
name: hashed
rules:
  - id: tx
    match: {tools: [apply_change]}
    when: 'args.value > 43.0'
    effect: deny
    reason: too hot
  - id: reads
    match: {tags: [read_only]}
    effect: allow
"""
REFORMATTED = """\
# The same pack, written differently.
name: "hashed"          # quoted now
schema_version: 1
rules:
- effect: deny          # keys in another order
  id: tx
  reason: >-
    too hot
  when: "args.value > 43.0"
  match:
    tools:
    - apply_change

- id: reads
  match: {tags: ["read_only"]}
  effect: allow
"""
CHANGED = {
    "reason": BASE.replace("too hot", "too hot!"),
    "condition": BASE.replace("43.0", "44.0"),
    "effect": BASE.replace("    effect: allow", "    effect: deny\n    reason: no reads"),
    "match": BASE.replace("[read_only]", "[read_only, ticket]"),
    "order": BASE.replace(
        BASE[BASE.index("  - id: tx") :], "  - id: reads\n    match: {tags: [read_only]}\n    effect: allow\n"
        + BASE[BASE.index("  - id: tx") : BASE.index("  - id: reads")]
    ),
    "rule-id": BASE.replace("id: reads", "id: read-only"),
    "window": BASE.replace("rules:", "maintenance_windows:\n  - {start: '02:00', duration: 2h}\nrules:"),
}  # fmt: skip


def test_the_version_hash_ignores_formatting_and_comments() -> None:
    assert parse_pack(BASE).version_hash == parse_pack(REFORMATTED).version_hash
    assert parse_pack(BASE, source="a.yaml").version_hash == parse_pack(BASE, source="b.yaml").version_hash


@pytest.mark.parametrize("change", sorted(CHANGED))
def test_the_version_hash_changes_with_any_rule_change(change: str) -> None:
    assert parse_pack(CHANGED[change]).version_hash != parse_pack(BASE).version_hash


# ------------------------------------------------------------------------------------------
# the agent: recorded decisions on replay, a fresh decision after an approval
# ------------------------------------------------------------------------------------------
TENANT = "noc-east"
R = f"{TENANT}:r"  # the store's key of run "r" of TENANT (run ids are per tenant)
CHANGE = {"site": "CS-101", "param": "hoA3Offset", "value": 3}


@pytest.fixture
def net(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> noc.Network:
    monkeypatch.setenv(noc.ENV, str(tmp_path / "network.db"))
    network = noc.network()
    network.inject("CS-101", "mis_set_handover")
    return network


def drive(app: App, run_id: str, *, until_signal_wait: bool = False) -> None:
    worker = app.worker(root_id=run_id, poll_interval=0.005)
    asyncio.run(worker.run_until_blocked(run_id, until_signal_wait=until_signal_wait))


def copilot(app: App, agent: Agent) -> Any:
    @app.workflow(name="copilot.policy")
    async def run(ctx: WorkflowContext, task: str) -> dict[str, Any]:
        return (await agent.run(ctx, task)).model_dump()

    return run


def policy_steps(app: App, run_id: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(request, decision) of each recorded policy step, in order."""
    return [
        (json.loads(s.args or "{}"), json.loads(s.result or "{}")) for s in app.history(run_id) if s.kind == "policy"
    ]


def engineer(app: App, name: str = "erin") -> Any:
    return Approvals.of(app).add_operator(name, tenant=TENANT, roles=["noc-engineer"])[0]


def output(app: App, run_id: str) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(app.store.get_run(run_id).output or "{}")
    return out


PACK_V1 = """\
schema_version: 1
name: replayed
rules:
  - id: reads
    match: {tags: [read_only]}
    effect: allow
  - id: apply-ok
    match: {tools: [apply_change]}
    effect: allow
  - id: rollback-approval
    match: {tools: [rollback_change]}
    effect: require_approval
    approval: {roles: [noc-engineer]}
"""
PACK_V2 = PACK_V1.replace(
    "  - id: apply-ok\n    match: {tools: [apply_change]}\n    effect: allow\n",
    "  - id: apply-frozen\n    match: {tools: [apply_change]}\n    effect: deny\n    reason: change freeze\n",
)


def test_a_recorded_decision_stands_on_replay(make_app: Callable[..., App], net: noc.Network, tmp_path: Path) -> None:
    """A decision is a recorded step: a run resumed by a process whose pack file has changed
    replays it (the apply it allowed is not decided again, not denied, and not re-run); the
    decisions the run makes from then on use the new pack, and each names its pack hash."""
    path = tmp_path / "pack.yaml"
    path.write_text(PACK_V1)
    v1 = load_pack(path).version_hash
    change_id = model.change_id("CS-101", "hoA3Offset", 3)
    responses = [
        {"tool_calls": [{"name": "apply_change", "args": CHANGE, "id": "apply-1"}]},
        {"tool_calls": [{"name": "rollback_change", "args": {"site": "CS-101", "change_id": change_id}, "id": "rb-1"}]},
        "Applied, then rolled back.",
    ]

    def agent(policies: Path) -> Agent:
        model_ = LangChainChat(ScriptedChatModel(responses=responses))
        return Agent(name="replayed", model=model_, tools=noc.NOC_TOOLS, policies=policies)

    first = make_app()
    first.start(copilot(first, agent(path)), "fix CS-101", run_id="r", tenant=TENANT)
    drive(first, R, until_signal_wait=True)
    assert [e["kind"] for e in net.effects()] == ["apply"]
    assert [(d["rule"], d["pack_hash"]) for _, d in policy_steps(first, R)] == [
        ("apply-ok", v1),
        ("rollback-approval", v1),
    ]

    path.write_text(PACK_V2)  # redeployed with a change freeze
    v2 = load_pack(path).version_hash
    assert v2 != v1
    second = make_app()
    wf = copilot(second, agent(path))
    request = Approvals.of(second).list(run_id=R)[0]
    Approvals.of(second).approve(request.id, by=engineer(second))
    drive(second, R)
    assert second.get_run(R).status == "completed"

    steps = policy_steps(second, R)
    assert [(r["tool"], d["effect"], d["rule"], d["pack"], d["pack_hash"]) for r, d in steps] == [
        ("apply_change", "allow", "apply-ok", "replayed", v1),  # recorded: not re-evaluated
        ("rollback_change", "require_approval", "rollback-approval", "replayed", v1),
        ("rollback_change", "require_approval", "rollback-approval", "replayed", v2),  # after the approval
    ]
    assert steps[2][0]["approved"] == request.id
    out = output(second, R)
    assert [(c["name"], c["status"], c["decision"]["pack_hash"]) for c in out["tool_calls"]] == [
        ("apply_change", "ok", v1),
        ("rollback_change", "ok", v2),
    ]
    assert [e["kind"] for e in net.effects()] == ["apply", "rollback"] and net.duplicate_keys() == []
    assert second.run(wf, "fix CS-101", run_id="r", tenant=TENANT) == out  # a finished run is not decided again


FLIP = {"deny": False}


def flipping_policy(ctx: WorkflowContext, tool: Any, facts: ToolFacts, args: dict[str, Any]) -> Decision:
    """Reads run; a change needs an engineer, or is denied once the freeze flag is up."""
    if facts.read_only:
        return Decision(effect="allow", rule="reads", pack="flip")
    if FLIP["deny"]:
        return Decision(effect="deny", rule="freeze", reason="change freeze since the approval", pack="flip")
    return Decision(effect="require_approval", rule="engineer", pack="flip", approval_rule="engineer",
                    approval=ApprovalSpec(roles=["noc-engineer"]))  # fmt: skip


def one_apply_model() -> LangChainChat:
    def respond(messages: list[Any]) -> Any:
        if not any(type(m).__name__ == "AIMessage" for m in messages):
            site = str(messages[1].content).split()[-1]
            return {"tool_calls": [{"name": "apply_change", "args": {**CHANGE, "site": site}, "id": "apply-1"}]}
        return "done"

    return LangChainChat(ScriptedChatModel(respond=respond))


def test_a_call_is_decided_again_after_its_approval(app: App, net: noc.Network) -> None:
    """An approval is not a pass: right before the approved call runs, the policy decides
    again. A policy that denies by then (a freeze declared while the request waited) stops the
    call: it is reported denied to the model and the network is untouched."""
    FLIP["deny"] = False
    agent = Agent(name="flip", model=one_apply_model(), tools=noc.NOC_TOOLS, policies=flipping_policy)
    app.start(copilot(app, agent), "fix CS-101", run_id="r", tenant=TENANT)
    drive(app, R, until_signal_wait=True)
    request = Approvals.of(app).list(run_id=R)[0]
    try:
        FLIP["deny"] = True
        approved = Approvals.of(app).approve(request.id, by=engineer(app))
        assert approved.status == "approved"
        drive(app, R)
    finally:
        FLIP["deny"] = False
    assert app.get_run(R).status == "completed"
    steps = policy_steps(app, R)
    assert [(d["effect"], d["rule"], r["approved"]) for r, d in steps] == [
        ("require_approval", "engineer", None),
        ("deny", "freeze", request.id),
    ]
    (call,) = output(app, R)["tool_calls"]
    assert call["status"] == "denied" and "change freeze since the approval" in call["result"]
    assert not [s for s in app.history(R) if s.kind == "tool"]
    assert net.effects() == []


RADIUS_PACK = """\
schema_version: 1
name: radius
rules:
  - id: reads
    match: {tags: [read_only]}
    effect: allow
  - id: one-site-per-hour
    match: {tools: [apply_change]}
    effect: limit
    blast_radius: {max_targets: 1, window: 1h, per: region}
  - id: engineer
    match: {tools: [apply_change]}
    effect: require_approval
    approval: {roles: [noc-engineer]}
"""


def test_an_approved_call_is_denied_when_another_run_used_up_the_blast_radius(app: App, net: noc.Network) -> None:
    """Two runs wait for approval to change two sites of one region, where one site an hour may
    change. The second approved runs; the first, approved afterwards, is decided again before
    it runs and denied by the blast radius the other run has used up meanwhile."""
    agent = Agent(name="radius", model=one_apply_model(), tools=noc.NOC_TOOLS, policies=parse_pack(RADIUS_PACK))
    wf = copilot(app, agent)
    for run_id, site in (("a", "CS-101"), ("b", "CS-102")):
        app.start(wf, f"fix {site}", run_id=run_id, tenant=TENANT)
        drive(app, f"{TENANT}:{run_id}", until_signal_wait=True)
    assert len(Approvals.of(app).list(tenant=TENANT)) == 2
    erin, olga = engineer(app, "erin"), engineer(app, "olga")
    Approvals.of(app).approve(Approvals.of(app).list(run_id=f"{TENANT}:b")[0].id, by=erin)
    drive(app, f"{TENANT}:b")
    Approvals.of(app).approve(Approvals.of(app).list(run_id=f"{TENANT}:a")[0].id, by=olga)
    drive(app, f"{TENANT}:a")
    assert [(e["site"], e["idempotency_key"].rsplit(":", 1)[0]) for e in net.effects()] == [("CS-102", f"{TENANT}:b")]
    (call,) = output(app, f"{TENANT}:a")["tool_calls"]
    assert call["status"] == "denied" and "blast radius" in call["result"]
    assert [d["rule"] for _, d in policy_steps(app, f"{TENANT}:a")] == ["engineer", "one-site-per-hour"]
    assert output(app, f"{TENANT}:b")["tool_calls"][0]["status"] == "ok"
