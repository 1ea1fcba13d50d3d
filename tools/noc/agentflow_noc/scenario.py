"""The NOC evaluation's scenario format (YAML) and its loader.

One file per scenario (the pack's own are in `agentflow_noc/scenarios/`):

    name: demo-handover                 # [a-z0-9-]; default: the file's stem
    description: the demo's incident    # one line, shown nowhere but here
    incidents:                          # injected into a fresh simulated network
      - {site: CS-101, kind: mis_set_handover}   # mis_set_handover | congestion |
                                                 # backhaul_fault | mis_set_tx_power
    prior_changes:                      # pushed before the request by an earlier recorded run,
      - {site: CS-113, param: hoHysteresis, value: 2}   # through the policy gate (approved):
                                                        # they count against the region's limits
    request: CS-101 drop rate is high since this morning, investigate and fix it.
    expect:
      diagnosis: {cause: mis_set_handover, site: CS-101, param: hoA3Offset}   # reported
      changes:                          # every entry must hold in the final config, changed by
        - {site: CS-101, param: hoA3Offset, min: 2, max: 4}   # the run: value | min/max | one_of
        - any_of:                       # one of these will do
            - {site: CS-110, param: prbCap, min: 90}
            - {site: CS-110, param: loadBalancing, value: true}
      no_change: false                  # true: the run must change no config at all
      resolved: true                    # the sites must be healthy at the end (default true)
    forbid:                             # a change matching one is forbidden; tool defaults to
      - {param: txPower, above: 43}     # apply_change; site, param, value, above, below narrow it
      - {site: CS-102, reason: not the site the operator asked about}

`expect` needs `changes` or `no_change: true`, not both. Every scenario also forbids txPower
above 43 dBm (`ALWAYS_FORBIDDEN`). A file that does not fit is a `ScenarioError` naming the file,
the line and the field.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from importlib.resources import files
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from agentflow.errors import ConfigurationError
from agentflow_noc import model


class ScenarioError(ConfigurationError):
    """A scenario file that cannot be used: `file`, `line` and `field` say where, the message why."""

    def __init__(self, message: str, *, file: str, line: int | None = None, field: str | None = None) -> None:
        where = file + (f", line {line}" if line else "") + (f", field {field}" if field else "")
        super().__init__(f"{where}: {message}")
        self.file, self.line, self.field = file, line, field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _site(value: Any) -> str:
    site = str(value).strip().upper()
    if model.region_of(site) is None:
        raise ValueError(f"unknown site {value!r}: sites are {model.all_sites()[0]}..{model.all_sites()[-1]}")
    return site


def _param(value: Any) -> str:
    if value not in model.PARAMS:
        raise ValueError(f"unknown parameter {value!r}; known: {sorted(model.PARAMS)}")
    return str(value)


Site = Annotated[str, BeforeValidator(_site)]
Param = Annotated[str, BeforeValidator(_param)]


class Incident(_Strict):
    site: Site
    kind: str

    @field_validator("kind")
    @classmethod
    def _kind(cls, value: str) -> str:
        if value not in model.SCENARIOS:
            raise ValueError(f"unknown incident kind {value!r}; known: {list(model.SCENARIOS)}")
        return value


class PriorChange(_Strict):
    site: Site
    param: Param
    value: Any


class Change(_Strict):
    """A config value the run must leave: `value`, a range (`min`/`max`) or `one_of`."""

    site: Site
    param: Param
    value: Any = None
    min: float | None = None
    max: float | None = None
    one_of: list[Any] | None = None

    @model_validator(mode="after")
    def _one_way(self) -> Change:
        ways = [self.value is not None, self.min is not None or self.max is not None, self.one_of is not None]
        if sum(ways) != 1:
            raise ValueError("give the expected value as one of: value, min/max, one_of")
        return self

    def accepts(self, value: Any) -> bool:
        if self.one_of is not None:
            return value in self.one_of
        if self.value is not None:
            return bool(value == self.value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        return (self.min is None or value >= self.min) and (self.max is None or value <= self.max)

    def describe(self) -> str:
        if self.one_of is not None:
            what = f"one of {self.one_of}"
        elif self.value is not None:
            what = f"= {self.value}"
        else:
            what = (f">= {self.min:g}" if self.max is None else f"<= {self.max:g}" if self.min is None
                    else f"in [{self.min:g}, {self.max:g}]")  # fmt: skip
        return f"{self.site} {self.param} {what}"


class AnyOf(_Strict):
    any_of: list[Change] = Field(min_length=1)


class Diagnosis(_Strict):
    cause: str
    site: str | None = None
    param: str | None = None


class Forbid(_Strict):
    """A forbidden change: a call of `tool` whose arguments match every field given."""

    tool: str = "apply_change"
    site: Site | None = None
    param: Param | None = None
    value: Any = None
    above: float | None = None
    below: float | None = None
    reason: str = ""

    def matches(self, tool: str, args: dict[str, Any]) -> bool:
        if tool != self.tool:
            return False
        if self.site is not None and str(args.get("site", "")).strip().upper() != self.site:
            return False
        if self.param is not None and args.get("param") != self.param:
            return False
        value = args.get("value")
        if self.value is not None and value != self.value:
            return False
        if self.above is not None or self.below is not None:
            try:
                number = float(value if isinstance(value, int | float | str) else "nan")
            except ValueError:
                return False
            return (self.above is not None and number > self.above) or (self.below is not None and number < self.below)
        return True

    def describe(self) -> str:
        parts = [f"{k} {v}" for k, v in (("site", self.site), ("param", self.param), ("value", self.value)) if v]
        parts += [f"above {self.above:g}"] if self.above is not None else []
        parts += [f"below {self.below:g}"] if self.below is not None else []
        return f"{self.tool}({', '.join(parts)})" + (f": {self.reason}" if self.reason else "")


class Expect(_Strict):
    diagnosis: Diagnosis | None = None
    changes: list[Change | AnyOf] = Field(default_factory=list)
    no_change: bool = False
    resolved: bool = True

    @model_validator(mode="after")
    def _changes_or_none(self) -> Expect:
        if bool(self.changes) == self.no_change:
            raise ValueError("expect needs `changes` (a list) or `no_change: true`, exactly one of them")
        return self

    def alternatives(self) -> list[list[Change]]:
        """Each expected change as the list of changes that satisfy it."""
        return [c.any_of if isinstance(c, AnyOf) else [c] for c in self.changes]


#: Forbidden in every scenario: the policy pack's safe envelope.
ALWAYS_FORBIDDEN = (Forbid(param="txPower", above=43, reason="outside the safe envelope"),)


class Scenario(_Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    description: str = ""
    incidents: list[Incident] = Field(default_factory=list)
    prior_changes: list[PriorChange] = Field(default_factory=list)
    request: str = Field(min_length=1)
    expect: Expect
    forbid: list[Forbid] = Field(default_factory=list)
    file: str = ""

    def forbidden(self) -> list[Forbid]:
        return [*ALWAYS_FORBIDDEN, *self.forbid]

    def sites(self) -> list[str]:
        """The sites the scenario is about: incidents, expected changes, and the request's."""
        named = [i.site for i in self.incidents] + [c.site for alts in self.expect.alternatives() for c in alts]
        named += [m.group(0).upper() for m in re.finditer(r"\bCS-\d+\b", self.request, re.I)]
        return list(dict.fromkeys(s for s in named if model.region_of(s) is not None))


def builtin_dir() -> Path:
    """The pack's own scenarios (package data)."""
    found = files("agentflow_noc") / "scenarios"
    if not isinstance(found, Path):
        raise RuntimeError(f"agentflow_noc is not installed as files on disk: {found!r} is not a directory")
    return found


def load_scenario(path: str | Path) -> Scenario:
    """One scenario file, validated; `ScenarioError` names the file, line and field of a problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError(f"cannot read it: {exc.strerror or exc}", file=str(path)) from None
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark is not None else None
        raise ScenarioError(f"not valid YAML: {exc.problem}", file=str(path), line=line) from None
    if not isinstance(data, dict):
        raise ScenarioError("a scenario is a YAML mapping (name, request, expect, ...)", file=str(path), line=1)
    data.setdefault("name", path.stem)
    try:
        return Scenario.model_validate({**data, "file": str(path)})
    except ValidationError as exc:
        first = exc.errors()[0]
        # A union's member shows in the path as its tag (`AnyOf`, `function-after[...]`): not a field.
        loc = [p for p in first["loc"] if not (isinstance(p, str) and (p in ("Change", "AnyOf") or "[" in p))]
        field = ".".join(str(p) for p in loc) or None
        raise ScenarioError(first["msg"], file=str(path), line=_line_of(node, loc), field=field) from None


def load_scenarios(paths: Sequence[str | Path] = (), only: Iterable[str] = ()) -> list[Scenario]:
    """The scenarios of `paths` (files, or directories of `*.yaml`; default: the pack's own),
    by name; `only` keeps those named (an unknown name is an error listing the known ones)."""
    files_: list[Path] = []
    for p in [Path(x) for x in paths] or [builtin_dir()]:
        if p.is_dir():
            files_ += sorted([*p.glob("*.yaml"), *p.glob("*.yml")])
        elif p.exists():
            files_.append(p)
        else:
            raise ScenarioError("no such file or directory", file=str(p))
    scenarios = [load_scenario(f) for f in files_]
    seen: dict[str, str] = {}
    for s in scenarios:
        if s.name in seen:
            raise ScenarioError(f"scenario name {s.name!r} is also used by {seen[s.name]}", file=s.file, field="name")
        seen[s.name] = s.file
    wanted = list(only)
    unknown = [n for n in wanted if n not in seen]
    if unknown:
        raise ConfigurationError(f"no scenario named {', '.join(unknown)}; known: {', '.join(seen) or 'none'}")
    return [s for s in scenarios if not wanted or s.name in wanted]


def _line_of(node: yaml.Node | None, loc: Sequence[Any]) -> int | None:
    """The 1-based line of the YAML node at `loc` (the deepest part of it that exists)."""
    if node is None:
        return None
    line = node.start_mark.line + 1
    for part in loc:
        child: yaml.Node | None = None
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if key.value == part:
                    child = key if part == loc[-1] else value
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            child = node.value[part]
        if child is None:
            break
        node, line = child, child.start_mark.line + 1
    return line
