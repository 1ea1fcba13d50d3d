"""Policy packs: YAML files validated by pydantic, with CEL conditions compiled at load.

An invalid pack fails at load with the file, the line and the reason (the YAML node of the
offending field is looked up from pydantic's error location), never at the first tool call.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from agentflow.errors import PolicyError

SCHEMA_VERSION = 1
Day = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
DAYS: tuple[Day, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _seconds(value: Any) -> Any:
    """'90s', '30m', '2h', '1d' or a number of seconds."""
    if isinstance(value, str):
        found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*", value)
        if not found:
            raise ValueError(f"{value!r} is not a duration: write e.g. 90s, 30m, 2h or 1d")
        return float(found.group(1)) * _UNITS[found.group(2)]
    return value


Duration = Annotated[float, BeforeValidator(_seconds), Field(gt=0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Match(_Strict):
    """Which tool calls a rule applies to: any listed name/glob, or any listed tag. Tags are the
    tool's own tags plus `side_effect` or `read_only` from its declaration. Empty: every call."""

    tools: list[str] = Field(default_factory=list)
    tags: list[str] = Field(default_factory=list)

    def matches(self, tool: str, tags: set[str]) -> bool:
        if not self.tools and not self.tags:
            return True
        return any(fnmatch.fnmatchcase(tool, p) for p in self.tools) or bool(tags & set(self.tags))


class ApprovalSpec(_Strict):
    """Who must approve, how many, for how long, and what they may change."""

    roles: list[str] = Field(min_length=1, description="roles that may decide; '*' = any operator of the tenant")
    quorum: int = Field(default=1, ge=1, description="distinct approvers needed")
    four_eyes: bool = Field(default=True, description="the requester may not approve")
    expires_in: Duration = 3600.0
    on_expiry: Literal["deny", "escalate"] = "deny"
    escalate_to: list[str] = Field(default_factory=list, description="roles that may decide after escalation")
    editable_args: list[str] = Field(default_factory=list, description="arguments an approver may change")

    @model_validator(mode="after")
    def _escalation(self) -> ApprovalSpec:
        if self.on_expiry == "escalate" and not self.escalate_to:
            raise ValueError("on_expiry: escalate needs escalate_to (the roles that decide after expiry)")
        return self


class RateLimit(_Strict):
    """At most `max_calls` allowed calls per `window`, counted per tenant and tool."""

    max_calls: int = Field(ge=1)
    window: Duration


class BlastRadius(_Strict):
    """At most `max_targets` distinct targets changed per `window`, per region (or tenant)."""

    max_targets: int = Field(ge=1)
    window: Duration
    per: Literal["region", "tenant"] = "region"


Effect = Literal["allow", "deny", "require_approval", "defer", "limit"]


class Rule(_Strict):
    """One rule: what it matches, an optional CEL condition, and its effect."""

    id: str = Field(pattern=r"^[A-Za-z0-9_.:-]+$")
    description: str = ""
    match: Match = Field(default_factory=Match)
    when: str | None = Field(default=None, description="a CEL expression over the call")
    effect: Effect
    reason: str = ""
    approval: ApprovalSpec | None = None
    rate: RateLimit | None = None
    blast_radius: BlastRadius | None = None
    one_change_per_target: bool = False

    @model_validator(mode="after")
    def _effect_fields(self) -> Rule:
        if self.effect == "require_approval" and self.approval is None:
            raise ValueError("effect require_approval needs an `approval:` block (roles, quorum, ...)")
        if self.effect != "require_approval" and self.approval is not None:
            raise ValueError(f"`approval:` only goes with effect require_approval, not {self.effect}")
        limits = self.rate is not None or self.blast_radius is not None or self.one_change_per_target
        if self.effect == "limit" and not limits:
            raise ValueError("effect limit needs `rate:`, `blast_radius:` or `one_change_per_target: true`")
        if self.effect != "limit" and limits:
            raise ValueError(
                f"rate / blast_radius / one_change_per_target only go with effect limit, not {self.effect}"
            )
        if self.effect == "deny" and not self.reason:
            raise ValueError("effect deny needs a `reason:` (it is handed back to the model)")
        return self


class MaintenanceWindow(_Strict):
    """A recurring window: on `days`, from `start` (HH:MM, in `tz`) for `duration`."""

    days: list[Day] = Field(default_factory=lambda: list(DAYS))
    start: str = Field(pattern=r"^([01]\d|2[0-3]):[0-5]\d$")
    duration: Duration
    tz: str = "UTC"

    @field_validator("tz")
    @classmethod
    def _zone(cls, tz: str) -> str:
        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {tz!r}: use an IANA name like UTC or Europe/Paris") from None
        return tz

    def _openings(self, at: datetime) -> list[datetime]:
        zone = ZoneInfo(self.tz)
        local = at.astimezone(zone)
        hour, minute = (int(x) for x in self.start.split(":"))
        out = []
        for offset in range(-1, 9):  # yesterday (a window running past midnight) .. next week
            day = (local + timedelta(days=offset)).date()
            if DAYS[day.weekday()] in self.days:
                out.append(datetime(day.year, day.month, day.day, hour, minute, tzinfo=zone))
        return out

    def contains(self, when: float) -> bool:
        at = datetime.fromtimestamp(when, UTC)
        return any(o <= at < o + timedelta(seconds=self.duration) for o in self._openings(at))

    def next_opening(self, when: float) -> float | None:
        at = datetime.fromtimestamp(when, UTC)
        later = [o for o in self._openings(at) if o > at]
        return min(later).timestamp() if later else None


class PolicyPack(_Strict):
    """A policy pack: ordered rules and the maintenance calendar they may refer to."""

    schema_version: Literal[1]
    name: str = Field(min_length=1)
    description: str = ""
    maintenance_windows: list[MaintenanceWindow] = Field(default_factory=list)
    rules: list[Rule] = Field(default_factory=list)
    _source: str = PrivateAttr(default="<memory>")

    @model_validator(mode="after")
    def _unique_ids(self) -> PolicyPack:
        ids = [r.id for r in self.rules]
        twice = sorted({i for i in ids if ids.count(i) > 1})
        if twice:
            raise ValueError(f"rule ids must be unique; repeated: {twice}")
        return self

    @property
    def version_hash(self) -> str:
        """sha256 of the pack's canonical JSON: what each recorded decision names."""
        body = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(body.encode()).hexdigest()[:16]

    @property
    def source(self) -> str:
        return self._source

    def in_window(self, when: float) -> bool:
        return any(w.contains(when) for w in self.maintenance_windows)

    def next_window(self, when: float) -> float | None:
        found = [t for w in self.maintenance_windows if (t := w.next_opening(when)) is not None]
        return min(found) if found else None


def load_pack(path: str | Path) -> PolicyPack:
    """Load and validate a pack file; CEL conditions are compiled too.

    Raises:
        PolicyError: naming the file, the line and the reason, for any invalid content.
    """
    source = Path(path)
    try:
        data = source.read_bytes()
    except OSError as exc:
        raise PolicyError(f"cannot read policy pack {source}: {exc.strerror}", file=str(source)) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise PolicyError(
            _where(str(source), line, f"not UTF-8 text (byte {data[exc.start]:#04x} at offset {exc.start}): "
                   "save the pack as UTF-8"), file=str(source), line=line,
        ) from None  # fmt: skip
    return parse_pack(text, source=str(source))


def parse_pack(text: str, *, source: str = "<string>") -> PolicyPack:
    """Validate a pack from YAML text (see `load_pack`)."""
    from agentflow.policy._cel import compile_condition

    try:
        root = yaml.compose(text, Loader=_UniqueKeyLoader)
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise PolicyError(
            _where(source, line, f"not valid YAML: {getattr(exc, 'problem', exc)}"), file=source, line=line
        ) from None
    if not isinstance(data, dict):
        raise PolicyError(
            _where(source, 1, "a policy pack is a mapping with schema_version, name and rules"), file=source, line=1
        )
    _check_rule_ids(data, root, source)
    try:
        pack = PolicyPack.model_validate(data)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        line = _line_of(root, error["loc"])
        field = ".".join(str(p) for p in error["loc"]) or "the pack"
        raise PolicyError(_where(source, line, f"{field}: {error['msg']}"), file=source, line=line) from None
    for i, rule in enumerate(pack.rules):
        if rule.when is not None:
            problem = compile_condition(rule.when)
            if problem:
                line = _line_of(root, ("rules", i, "when"))
                raise PolicyError(
                    _where(source, line, f"rules.{i}.when ({rule.id}): {problem}"), file=source, line=line
                )
    pack._source = source
    return pack


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that refuses a key repeated in one mapping (YAML would keep the last one
    silently: a second `rules:` would replace the first, deny rules included)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key!r} appears twice in this mapping", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _check_rule_ids(data: dict[str, Any], root: Any, source: str) -> None:
    """A repeated rule id, reported at the line of its second use."""
    seen: set[Any] = set()
    for j, rule in enumerate(data.get("rules") or []):
        rid = rule.get("id") if isinstance(rule, dict) else None
        if rid is not None and rid in seen:
            line = _line_of(root, ("rules", j, "id"))
            message = f"rules.{j}.id: rule ids must be unique; {rid!r} is used twice"
            raise PolicyError(_where(source, line, message), file=source, line=line)
        seen.add(rid)


def _where(source: str, line: int | None, reason: str) -> str:
    return f"{source}:{line}: {reason}" if line else f"{source}: {reason}"


def _line_of(node: Any, loc: tuple[Any, ...]) -> int | None:
    """The 1-based line of the YAML node at pydantic location `loc` (its nearest existing parent)."""
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        child = None
        if isinstance(node, yaml.MappingNode):
            child = next((v for k, v in node.value if k.value == str(part)), None)
            if child is None:  # a missing or unknown key: point at the key if present, else the mapping
                child = next((k for k, _ in node.value if k.value == str(part)), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            child = node.value[part]
        if child is None:
            break
        node, line = child, child.start_mark.line + 1
    return line
