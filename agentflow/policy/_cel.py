"""Rule conditions in CEL (the language of Kubernetes admission policies), via `cel-python`:
no `eval`, no hand-written parser. Programs are compiled once per expression and cached.

Every evaluation has a budget of syntax-tree steps (`BUDGET`, about 75 ms of CPU here): a
condition that needs more (`[1..7].map(a, [1..7].map(b, ...))` nested five deep visits 10^5
nodes) stops, and is reported as not evaluable, so the rule fails closed. A pack whose condition
is over the budget even on an empty call is refused when it is loaded (`policy check`).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import celpy
import lark
from celpy import celtypes
from celpy.adapter import json_to_cel
from celpy.celparser import CELParseError
from celpy.evaluation import Activation, CELEvalError, Evaluator

#: Syntax-tree steps one evaluation of a condition may take (~15 µs each with cel-python).
BUDGET = 5_000


class _OverBudget(BaseException):
    """Raised through the evaluator (a BaseException, so its `except Exception` cannot swallow it)."""


class _Budgeted(Evaluator):
    """An evaluator whose steps, its macros' included, draw on one shared budget."""

    def __init__(self, ast: lark.Tree[Any], activation: Activation, budget: list[int]) -> None:
        super().__init__(ast, activation)
        self._budget = budget

    def sub_evaluator(self, ast: lark.Tree[Any]) -> Evaluator:
        return _Budgeted(ast, self.activation, self._budget)

    def visit_children(self, tree: lark.Tree[Any]) -> Any:
        self._budget[0] -= 1
        if self._budget[0] < 0:
            raise _OverBudget
        return super().visit_children(tree)


class _Runner(celpy.InterpretedRunner):
    def evaluate(self, context: Any) -> Any:
        return _Budgeted(self.ast, self.new_activation(), [BUDGET]).evaluate(context)


@functools.cache
def _environment() -> celpy.Environment:
    return celpy.Environment(runner_class=_Runner)


@functools.lru_cache(maxsize=1024)
def _program(source: str) -> Any:
    env = _environment()
    return env.program(env.compile(source))


#: What a condition sees when nothing is known of the call: the cost check's probe.
_PROBE = {
    "tool": "", "tags": [], "side_effect": True, "args": {}, "target": "", "region": "", "tenant": "",
    "requester": "", "run_id": "", "now": 0, "hour": 0, "weekday": "mon", "in_maintenance_window": False,
    "recent": {"calls_1h": 0, "changes_region_1h": 0, "changes_tenant_1h": 0},
}  # fmt: skip


def compile_condition(source: str) -> str:
    """'' when `source` compiles and fits the budget on an empty call, else why not (one line)."""
    try:
        _program(source)
    except CELParseError as exc:
        return "not a valid CEL expression: " + " ".join(str(exc).split())
    _, problem = evaluate(source, _PROBE)
    if "too costly" in problem:
        return f"{problem}: simplify it (nested comprehensions over literals multiply)"
    return ""


def evaluate(source: str, activation: Mapping[str, Any]) -> tuple[bool | None, str]:
    """Evaluate a condition: (True/False, '') or (None, why it could not be evaluated)."""
    try:
        value = _program(source).evaluate(json_to_cel(dict(activation)))
    except _OverBudget:
        return None, f"the condition is too costly: over {BUDGET} evaluation steps"
    except CELEvalError as exc:
        return None, f"the condition could not be evaluated: {exc.args[0] if exc.args else exc}"
    if isinstance(value, CELEvalError):
        return None, f"the condition could not be evaluated: {value.args[0] if value.args else value}"
    if not isinstance(value, celtypes.BoolType):
        return None, f"the condition gave {type(value).__name__}, not a bool"
    return bool(value), ""
