"""Policy packs: which tool calls run, which are denied, which need people or a maintenance
window. A pack is YAML validated by pydantic (format: policies/README.md); conditions are CEL."""

from agentflow.policy._engine import (
    DEFAULT_APPROVAL,
    CallFacts,
    Conditions,
    NoUsage,
    PolicyDecision,
    Usage,
    decide,
    invalid_call,
)
from agentflow.policy._pack import (
    SCHEMA_VERSION,
    ApprovalSpec,
    BlastRadius,
    MaintenanceWindow,
    Match,
    PolicyPack,
    RateLimit,
    Rule,
    load_pack,
    parse_pack,
)

__all__ = [
    "DEFAULT_APPROVAL",
    "SCHEMA_VERSION",
    "ApprovalSpec",
    "BlastRadius",
    "CallFacts",
    "Conditions",
    "MaintenanceWindow",
    "Match",
    "NoUsage",
    "PolicyDecision",
    "PolicyPack",
    "RateLimit",
    "Rule",
    "Usage",
    "decide",
    "invalid_call",
    "load_pack",
    "parse_pack",
]
