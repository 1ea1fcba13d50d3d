"""Arguments read through a JSON Schema (a tool whose schema is a dict: an MCP server's tools) the
way pydantic reads a native tool's: coerced where the schema says what a value is (`"46"` for an
`integer` is 46, `"true"` for a `boolean` is True), then validated. The result is what the policy
gate, the approval card and the tool all see; a value that cannot be read is an invalid call.

The schema is a server's text, so it is treated as hostile: a `$ref` is resolved inside the
schema only (never fetched: a remote `$ref` would make the agent's worker open any URL a server
names), a regex (`pattern`, `patternProperties`) runs with a time limit and the steps one
reading takes are counted (a catastrophic regex, or nested `anyOf` over shared `$ref`s, would
stall the workflow's loop), recursion is bounded, and an error message is cut.
"""

from __future__ import annotations

import importlib
import math
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

_DEPTH = 32  # schema levels coercion follows (a `$ref` cycle stops here)
_PATTERN_SECONDS = 0.05  # one `pattern` match: longer is a hostile regex (or input), refused
_SAID = 300  # characters of a validation error the model is told
_INTEGER = re.compile(r"[+-]?\d{1,19}")
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d{1,3})?")
_TRUE = frozenset({"true", "t", "yes", "y", "on", "1"})  # what pydantic reads as a bool
_FALSE = frozenset({"false", "f", "no", "n", "off", "0"})
_KEEP = object()
_BUDGET = 30_000  # schema keywords and nodes one reading may visit (~0.5 s; a tool taking a list of 1,000 objects needs ~10,000)
_spent = threading.local()


class _TooComplex(Exception):
    """A schema whose reading would not end in reasonable time (nested anyOf over shared $refs
    grow exponentially: a 2 KB schema can ask for 2^30 steps)."""


def _charge() -> None:
    _spent.n = getattr(_spent, "n", 0) + 1
    if _spent.n > _BUDGET:
        raise _TooComplex


def coerce_json_args(schema: Mapping[str, Any], args: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """`(args, None)` with `args` as `schema` reads them, or `(None, why)` when they do not fit
    it (or the schema cannot be used). Without the `jsonschema` package (it comes with the `mcp`
    extra), only the `required` names are checked."""
    try:
        jsonschema, referencing = _libraries()
    except ImportError:  # pragma: no cover - agentflow without the mcp extra
        missing = [k for k in schema.get("required", []) if k not in args]
        return (None, f"missing {missing}") if missing else (dict(args), None)
    try:
        validator = _validator(dict(schema))
    except jsonschema.SchemaError as exc:
        return (
            None,
            f"the tool's input schema is not a valid JSON Schema ({_cut(exc.message)}), so no call can be checked",
        )
    _spent.n = 0
    try:
        coerced = _coerce(args, schema, _Reading(schema, validator), 0)
        extra = _unexpected(schema, coerced)
        if extra:
            return None, f"unexpected {extra}"
        error = jsonschema.exceptions.best_match(validator.iter_errors(coerced))
    except referencing.exceptions.Unresolvable as exc:
        return None, f"the tool's input schema refers to {_cut(str(exc))}, which is not in it (nothing is fetched)"
    except RecursionError:
        return None, "the tool's input schema refers to itself without end"
    except _TooComplex:
        return None, f"the tool's input schema asks for more than {_BUDGET} steps to check a call: refused as hostile"
    if error is not None:
        where = ".".join(str(p) for p in error.absolute_path) or "(arguments)"
        return None, f"{where}: {_cut(error.message)}"
    return coerced, None


def _libraries() -> tuple[Any, Any]:
    """jsonschema (no type stubs) and referencing, with the submodules used here."""
    jsonschema = importlib.import_module("jsonschema")
    importlib.import_module("referencing.exceptions")
    return jsonschema, importlib.import_module("referencing")


def _validator(schema: dict[str, Any]) -> Any:
    jsonschema, referencing = _libraries()
    base = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    base.check_schema(schema)
    timed = {
        "pattern": _pattern,
        "patternProperties": _pattern_properties,
        "additionalProperties": _additional_properties,
    }
    keywords = {k: _charged(fn) for k, fn in {**base.VALIDATORS, **timed}.items()}
    bounded = jsonschema.validators.extend(base, keywords)
    # An explicit empty registry: a `$ref` resolves inside the schema (and the bundled
    # metaschemas) only. jsonschema's default registry would fetch a remote one over the network.
    return bounded(schema, registry=referencing.Registry())


def _charged(keyword: Callable[..., Any]) -> Callable[..., Iterator[Any]]:
    """A keyword's validator that counts against the call's budget."""

    def run(validator: Any, value: Any, instance: Any, schema: Any) -> Iterator[Any]:
        _charge()
        yield from keyword(validator, value, instance, schema) or ()

    return run


class _Slow(Exception):
    """A schema's regex that took too long, or is none."""


def _search(pattern: str, text: str) -> bool:
    """Whether `pattern` matches in `text`, under a time limit (the `regex` package; tiktoken
    depends on it): Python's `re` has none, and a catastrophic regex would stall the loop."""
    regex: Any = importlib.import_module("regex")
    try:
        return regex.search(pattern, text, timeout=_PATTERN_SECONDS) is not None
    except TimeoutError:
        raise _Slow(f"the schema's pattern {_cut(pattern, 80)!r} took too long to match") from None
    except regex.error as exc:
        raise _Slow(f"the schema's pattern {_cut(pattern, 80)!r} is not a regex: {exc}") from None


def _pattern(validator: Any, pattern: Any, instance: Any, schema: Any) -> Iterator[Any]:
    """jsonschema's `pattern`, timed."""
    if not validator.is_type(instance, "string") or not isinstance(pattern, str):
        return
    try:
        if not _search(pattern, instance):
            yield _error(f"{_cut(repr(instance), 80)} does not match {_cut(pattern, 80)!r}")
    except _Slow as exc:
        yield _error(str(exc))


def _pattern_properties(validator: Any, patterns: Any, instance: Any, schema: Any) -> Iterator[Any]:
    """jsonschema's `patternProperties`, timed."""
    if not validator.is_type(instance, "object") or not isinstance(patterns, Mapping):
        return
    for pattern, subschema in patterns.items():
        for key, value in instance.items():
            try:
                if _search(str(pattern), str(key)):
                    yield from validator.descend(value, subschema, path=key, schema_path=pattern)
            except _Slow as exc:
                yield _error(str(exc))


def _additional_properties(validator: Any, more: Any, instance: Any, schema: Any) -> Iterator[Any]:
    """jsonschema's `additionalProperties`, its property names matched under the time limit."""
    if not validator.is_type(instance, "object"):
        return
    named = schema.get("properties") if isinstance(schema.get("properties"), Mapping) else {}
    patterns = [str(p) for p in schema.get("patternProperties") or {}]
    try:
        extras = [k for k in instance if k not in named and not any(_search(p, str(k)) for p in patterns)]
    except _Slow as exc:
        yield _error(str(exc))
        return
    if validator.is_type(more, "object"):
        for extra in extras:
            yield from validator.descend(instance[extra], more, path=extra)
    elif not more and extras:
        yield _error(f"additional properties are not allowed ({_cut(repr(sorted(map(str, extras))), 120)})")


def _error(message: str) -> Any:
    return _libraries()[0].ValidationError(message)


class _Reading:
    """The schema being read (its root, for `$ref`s) and its validator."""

    def __init__(self, root: Mapping[str, Any], validator: Any) -> None:
        self.root, self.validator = root, validator

    def local(self, ref: str) -> Any:
        """The part of the root a `#/...` reference points to (None: not there, or not local)."""
        if not ref.startswith("#/") and ref != "#":
            return None
        found: Any = self.root
        for part in ref[2:].split("/") if ref != "#" else []:
            part = part.replace("~1", "/").replace("~0", "~")
            if isinstance(found, Mapping) and part in found:
                found = found[part]
            elif isinstance(found, list) and part.isdigit() and int(part) < len(found):
                found = found[int(part)]
            else:
                return None
        return found

    def fits(self, value: Any, schema: Any) -> bool:
        return bool(self.validator.evolve(schema=schema).is_valid(value))


def _coerce(value: Any, schema: Any, reading: _Reading, depth: int) -> Any:
    """`value` with its scalars read as the schema types them (pydantic's lax reading)."""
    if depth > _DEPTH or not isinstance(schema, Mapping):
        return value
    _charge()
    ref = schema.get("$ref")
    if isinstance(ref, str):
        value = _coerce(value, reading.local(ref), reading, depth + 1)
    for key in ("anyOf", "oneOf"):
        branches = schema.get(key)
        if isinstance(branches, list) and branches:
            value = _first_fitting(value, branches, reading, depth)
    for sub in schema.get("allOf") or []:
        value = _coerce(value, sub, reading, depth + 1)
    types = schema.get("type")
    named = (
        [types]
        if isinstance(types, str)
        else [t for t in types if isinstance(t, str)]
        if isinstance(types, list)
        else []
    )
    if named and not any(_is(value, t) for t in named):
        for t in named:
            made = _scalar(value, t)
            if made is not _KEEP:
                value = made
                break
    if isinstance(value, dict):
        found = schema.get("properties")
        props: Mapping[str, Any] = found if isinstance(found, Mapping) else {}
        more = schema.get("additionalProperties")
        value = {
            k: _coerce(v, props[k] if k in props else more if isinstance(more, Mapping) else None, reading, depth + 1)
            for k, v in value.items()
        }
    elif isinstance(value, list):
        items, prefix = schema.get("items"), schema.get("prefixItems")
        ahead = prefix if isinstance(prefix, list) else []
        value = [_coerce(v, ahead[i] if i < len(ahead) else items, reading, depth + 1) for i, v in enumerate(value)]
    return value


def _first_fitting(value: Any, branches: list[Any], reading: _Reading, depth: int) -> Any:
    """For `anyOf`/`oneOf`: the value unchanged when a branch takes it as it is, else its reading
    by the first branch that takes that reading (`"46"` for an optional integer)."""
    fits = [b for b in branches if isinstance(b, Mapping | bool)]
    if any(reading.fits(value, b) for b in fits):
        return value
    for branch in fits:
        made = _coerce(value, branch, reading, depth + 1)
        if made != value and reading.fits(made, branch):
            return made
    return value


def _is(value: Any, kind: str) -> bool:
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    found = {"string": str, "boolean": bool, "object": dict, "array": list, "null": type(None)}.get(kind)
    return found is None or isinstance(value, found)


def _scalar(value: Any, kind: str) -> Any:
    """`value` read as a scalar of `kind`, or `_KEEP` when it cannot be (validation says why)."""
    if kind == "integer":
        if isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
            return int(value.strip())
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return int(value)
    elif kind == "number":
        if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
            text = value.strip()
            if _INTEGER.fullmatch(text):
                return int(text)
            number = float(text)
            return number if math.isfinite(number) else _KEEP
    elif kind == "boolean":
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        if isinstance(value, int) and not isinstance(value, bool) and value in (0, 1):
            return bool(value)
    return _KEEP


def _unexpected(schema: Mapping[str, Any], args: Mapping[str, Any]) -> list[str]:
    """Top-level arguments the schema does not name when it says nothing of others: refused, as
    a native tool refuses them (a misspelt `Value` must not pass as an ignored extra)."""
    props = schema.get("properties")
    if not isinstance(props, Mapping) or "additionalProperties" in schema or "patternProperties" in schema:
        return []
    return sorted(k for k in args if k not in props)


def _cut(text: str, limit: int = _SAID) -> str:
    return text if len(text) <= limit else f"{text[:limit]}..."
