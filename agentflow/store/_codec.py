"""The payload codec: JSON through pydantic, never pickle.

A stored payload is decoded into the type the code declares (an activity's return annotation, a
workflow's parameter annotations). A payload that is not valid JSON or does not fit the type is a
`CorruptRecordError`: nothing stored is ever executed or unpickled.
"""

from __future__ import annotations

import hashlib
import inspect
import math
from collections.abc import Callable
from functools import lru_cache
from typing import Any, get_type_hints

import pydantic_core
from pydantic import TypeAdapter, ValidationError

from agentflow.errors import CorruptRecordError, PayloadError

_ANY_ADAPTER: TypeAdapter[Any] = TypeAdapter(Any)


@lru_cache(maxsize=1024)
def adapter_for(tp: Any) -> TypeAdapter[Any]:
    """A cached TypeAdapter; building one costs ~100 µs, so never on a hot path twice."""
    if tp is Any or tp is inspect.Parameter.empty:
        return _ANY_ADAPTER
    return TypeAdapter(tp)


def encode(value: Any, *, what: str = "value") -> str:
    """Encode a value as JSON text; raise `PayloadError` saying what could not be encoded."""
    try:
        return pydantic_core.to_json(value).decode()
    except (pydantic_core.PydanticSerializationError, TypeError, ValueError) as exc:
        raise PayloadError(
            f"{what} of type {type(value).__name__} cannot be encoded as JSON: {exc}. "
            "Pass JSON-compatible values (str, int, float, bool, None, list, dict), pydantic "
            "models, dataclasses, datetimes or UUIDs."
        ) from None


def decode(
    text: str | None,
    adapter: TypeAdapter[Any] = _ANY_ADAPTER,
    *,
    run_id: str | None = None,
    seq: int | None = None,
    what: str = "payload",
) -> Any:
    """Decode stored JSON into the adapter's type, or raise `CorruptRecordError`."""
    if text is None:
        return None
    try:
        return adapter.validate_json(text)
    except (ValidationError, ValueError) as exc:
        where = f"run {run_id}" + (f" step {seq}" if seq is not None else "")
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CorruptRecordError(
            f"the stored {what} of {where} does not decode: {first}. The row is left as it is; "
            "if the code's declared type changed, guard the change with ctx.patched(...)",
            run_id=run_id,
            seq=seq,
        ) from None


def digest(text: str) -> str:
    """A short, stable digest of encoded arguments (for the non-determinism check)."""
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def return_adapter(fn: Callable[..., Any]) -> TypeAdapter[Any]:
    """The adapter for a function's declared return type (Any when not annotated)."""
    try:
        hints = get_type_hints(fn)
    except Exception:  # noqa: BLE001 - unresolvable forward refs: fall back to plain JSON
        hints = {}
    return adapter_for(hints.get("return", Any))


def param_adapters(fn: Callable[..., Any], *, skip_first: bool) -> dict[str, TypeAdapter[Any]]:
    """Adapters for each parameter's declared type, to rebuild workflow inputs."""
    try:
        hints = get_type_hints(fn)
    except Exception:  # noqa: BLE001
        hints = {}
    params = list(inspect.signature(fn).parameters.values())
    if skip_first:
        params = params[1:]
    return {p.name: adapter_for(hints.get(p.name, Any)) for p in params}


#: Integers beyond 64 bits are refused: CEL's int is 64-bit, and a double cannot hold them exactly.
INT_LIMIT = 2**63


def unrepresentable(value: Any, where: str = "") -> str | None:
    """Where `value` holds a number that JSON, a policy condition or an approver would not see as
    it is (NaN, an infinity, an integer beyond 64 bits), in words; None when there is none.

    JSON has no NaN or infinity (they would be stored as `null` or as invalid JSON), comparisons
    with NaN are all false (`value > 43.0` lets NaN through), and a huge integer overflows the
    double a condition compares: such values must be refused before they reach a decision."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return f"{where or 'value'} is {value!r}, not a finite number"
    if isinstance(value, int) and not -INT_LIMIT <= value < INT_LIMIT:
        return f"{where or 'value'} is an integer of {len(str(abs(value)))} digits, beyond the 64-bit range"
    if isinstance(value, dict):
        for key, item in value.items():
            found = unrepresentable(item, f"{where}.{key}" if where else str(key))
            if found:
                return found
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            found = unrepresentable(item, f"{where}[{i}]")
            if found:
                return found
    return None
