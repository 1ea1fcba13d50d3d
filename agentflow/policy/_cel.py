"""Rule conditions in CEL (the language of Kubernetes admission policies), via `cel-python`:
no `eval`, no hand-written parser. Programs are compiled once per expression and cached."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import celpy
from celpy import celtypes
from celpy.adapter import json_to_cel
from celpy.celparser import CELParseError
from celpy.evaluation import CELEvalError


@functools.cache
def _environment() -> celpy.Environment:
    return celpy.Environment()


@functools.lru_cache(maxsize=1024)
def _program(source: str) -> Any:
    env = _environment()
    return env.program(env.compile(source))


def compile_condition(source: str) -> str:
    """'' when `source` compiles, else the parser's reason (one line)."""
    try:
        _program(source)
    except CELParseError as exc:
        return "not a valid CEL expression: " + " ".join(str(exc).split())
    return ""


def evaluate(source: str, activation: Mapping[str, Any]) -> tuple[bool | None, str]:
    """Evaluate a condition: (True/False, '') or (None, why it could not be evaluated)."""
    try:
        value = _program(source).evaluate(json_to_cel(dict(activation)))
    except CELEvalError as exc:
        return None, f"the condition could not be evaluated: {exc.args[0] if exc.args else exc}"
    if isinstance(value, CELEvalError):
        return None, f"the condition could not be evaluated: {value.args[0] if value.args else value}"
    if not isinstance(value, celtypes.BoolType):
        return None, f"the condition gave {type(value).__name__}, not a bool"
    return bool(value), ""
