"""`agentflow.tool`: the facts the framework needs about a tool, on any langchain-core tool.

A tool stays a langchain-core `BaseTool` (schemas, validation and the OpenAI conversion are
langchain-core's); agentflow's facts ride in its `metadata["agentflow"]`. A tool without them is
treated as side-effecting and not idempotent: the safe default.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, overload, runtime_checkable

from langchain_core.tools import BaseTool, StructuredTool
from pydantic import BaseModel, ValidationError

from agentflow.errors import ConfigurationError
from agentflow.llm._schema import coerce_json_args
from agentflow.store import unrepresentable

if TYPE_CHECKING:
    from agentflow.engine import WorkflowContext

SideEffect = Literal["none", "idempotent", "non_idempotent"]
_KEY = "agentflow"
_SIDE_EFFECTS = ("none", "idempotent", "non_idempotent")


@dataclass(frozen=True, slots=True)
class ToolFacts:
    """What agentflow knows about a tool.

    Attributes:
        side_effect: "none" (read-only), "idempotent" (safe to repeat with the same key) or
            "non_idempotent". Undeclared tools are "non_idempotent".
        declared: whether the tool was declared with `agentflow.tool`.
        target: the argument naming what the tool touches (e.g. "site"), or a function of the
            arguments returning it; used by blast-radius policies.
        canonical: how the system the tool acts on names a target: `canonical(value)` is the one
            form of it (e.g. `str.upper` when "cs-101" and "CS-101" are the same site). Limits,
            approval cards and policy conditions see targets in this form, so a spelling
            variant is the same target to them as it is to the tool.
        region: the same, for the region.
        reconcile: `reconcile(idempotency_key)` returns the outcome of an effect that may have
            happened before a crash, or None.
        timeout: seconds per attempt.
        compensate: the name of the tool that undoes this one (apply -> rollback).
        tags: free-form tags for policies.
        preview: `preview(args)` returns what the call would change (a dry-run diff), shown to
            the approvers of a staged call; read-only, it must not change anything.
        server: the server the tool comes from (an MCP server's name), seen by policies as
            `server`; None for a tool of this process.
        annotations: MCP tool annotations taken as true, as (hint, value) pairs (`readOnlyHint`,
            `destructiveHint`, `idempotentHint`, `openWorldHint`): only a trusted server's; see
            `hints`. (Pairs, not a dict: the facts stay hashable.)
        prepare: `await prepare(ctx)` is run by the agent in the workflow before each call of
            the tool executes (after its gate): a step helper recording what the call is checked
            against (an MCP server's pinned tool definitions). Its error is the call's.
    """

    side_effect: SideEffect = "non_idempotent"
    declared: bool = False
    target: str | Callable[[Mapping[str, Any]], Any] | None = None
    canonical: Callable[[Any], Any] | None = None
    region: str | Callable[[Mapping[str, Any]], Any] | None = None
    reconcile: Callable[[str], Any] | None = None
    timeout: float | None = None
    compensate: str | None = None
    tags: tuple[str, ...] = ()
    preview: Callable[[Mapping[str, Any]], Any] | None = None
    server: str | None = None
    annotations: tuple[tuple[str, bool], ...] = ()
    prepare: Callable[[WorkflowContext], Awaitable[None]] | None = None

    @property
    def read_only(self) -> bool:
        return self.side_effect == "none"

    def hints(self) -> dict[str, bool]:
        """The four MCP hints as policies see them (`annotations`): derived from the side
        effect, then overridden by the annotations taken as true. An undeclared tool (or any
        tool of an untrusted server) gets MCP's worst case: not read-only, destructive, not
        idempotent, open world."""
        derived = {
            "readOnlyHint": self.read_only, "destructiveHint": not self.read_only,
            "idempotentHint": self.side_effect != "non_idempotent", "openWorldHint": True,
        }  # fmt: skip
        return {**derived, **dict(self.annotations)}

    def target_of(self, args: Mapping[str, Any]) -> Any:
        """The call's target, in its canonical form (None when the tool declares none)."""
        found = _pick(self.target, args)
        return self.canonical(found) if found is not None and self.canonical is not None else found

    def region_of(self, args: Mapping[str, Any]) -> Any:
        return _pick(self.region, args)


def _pick(how: str | Callable[[Mapping[str, Any]], Any] | None, args: Mapping[str, Any]) -> Any:
    if how is None:
        return None
    if callable(how):
        return how(args)
    return args.get(how)


def tool_facts(t: BaseTool) -> ToolFacts:
    """The facts declared on a tool; an undeclared tool gets the safe default."""
    facts = (t.metadata or {}).get(_KEY)
    return facts if isinstance(facts, ToolFacts) else ToolFacts()


def with_facts(t: BaseTool, facts: ToolFacts) -> BaseTool:
    """A copy of the tool carrying `facts` (what `tool(...)` does with the facts it is given;
    for tool sources building `ToolFacts` themselves, like `agentflow.mcp`)."""
    copy = t.model_copy()
    copy.metadata = {**(t.metadata or {}), _KEY: facts}
    return copy


@runtime_checkable
class ToolProvider(Protocol):
    """A source of tools standing in an agent's tool list: `Agent(tools=[provider, get_kpis])`
    offers the provider's tools in its place (an MCP server: `agentflow.mcp.server(...)`)."""

    def agentflow_tools(self) -> Sequence[BaseTool]:
        """The tools, each a langchain `BaseTool` carrying its facts (`with_facts`)."""
        ...


def expand_tools(items: Iterable[BaseTool | ToolProvider]) -> list[BaseTool]:
    """The tools of a tool list, each provider replaced by the tools it offers, in place."""
    out: list[BaseTool] = []
    for item in items:
        if isinstance(item, ToolProvider) and not isinstance(item, BaseTool):
            out.extend(item.agentflow_tools())
        else:
            out.append(item)
    return out


Target = str | Callable[[Mapping[str, Any]], Any] | None


@overload
def tool(
    fn: Callable[..., Any] | BaseTool,
    /,
    *,
    side_effect: SideEffect,
    target: Target = None,
    canonical: Callable[[Any], Any] | None = None,
    region: Target = None,
    reconcile: Callable[[str], Any] | None = None,
    timeout: float | None = None,
    compensate: str | None = None,
    tags: Sequence[str] = (),
    preview: Callable[[Mapping[str, Any]], Any] | None = None,
    name: str | None = None,
    description: str | None = None,
    args_schema: type[BaseModel] | None = None,
) -> BaseTool: ...
@overload
def tool(
    fn: None = None,
    /,
    *,
    side_effect: SideEffect,
    target: Target = None,
    canonical: Callable[[Any], Any] | None = None,
    region: Target = None,
    reconcile: Callable[[str], Any] | None = None,
    timeout: float | None = None,
    compensate: str | None = None,
    tags: Sequence[str] = (),
    preview: Callable[[Mapping[str, Any]], Any] | None = None,
    name: str | None = None,
    description: str | None = None,
    args_schema: type[BaseModel] | None = None,
) -> Callable[[Callable[..., Any]], BaseTool]: ...


def tool(
    fn: Callable[..., Any] | BaseTool | None = None,
    /,
    *,
    side_effect: SideEffect,
    target: str | Callable[[Mapping[str, Any]], Any] | None = None,
    canonical: Callable[[Any], Any] | None = None,
    region: str | Callable[[Mapping[str, Any]], Any] | None = None,
    reconcile: Callable[[str], Any] | None = None,
    timeout: float | None = None,
    compensate: str | None = None,
    tags: Sequence[str] = (),
    preview: Callable[[Mapping[str, Any]], Any] | None = None,
    name: str | None = None,
    description: str | None = None,
    args_schema: type[BaseModel] | None = None,
) -> Any:
    """Declare a tool's facts. Returns a langchain `BaseTool` (or a decorator making one). A decorator on a plain function, or a wrapper of a langchain tool.

    Examples:
        >>> @tool(side_effect="none", target="site")
        ... def get_kpis(site: str) -> dict:
        ...     '''Read the KPIs of a cell site.'''
        ...     return {}
        >>> search = tool(some_langchain_tool, side_effect="none")

    Declare `canonical=` when the system the tool acts on names a target several ways (case,
    spaces): limits then count "cs-101" and "CS-101" as the one site they are.

    Side-effecting tools get the step's idempotency key from
    `agentflow.current_activity().idempotency_key`; it never appears in the schema the model sees.
    """
    if side_effect not in _SIDE_EFFECTS:
        raise ConfigurationError(f"side_effect must be one of {_SIDE_EFFECTS}, not {side_effect!r}")
    facts = ToolFacts(
        side_effect=side_effect, declared=True, target=target, canonical=canonical, region=region,
        reconcile=reconcile, timeout=timeout, compensate=compensate, tags=tuple(tags), preview=preview,
    )  # fmt: skip

    def wrap(f: Callable[..., Any] | BaseTool) -> BaseTool:
        if isinstance(f, BaseTool):
            return with_facts(f, facts)
        if not callable(f):
            raise ConfigurationError(f"agentflow.tool() wraps a function or a langchain BaseTool, not {f!r}")
        if not (description or f.__doc__):
            raise ConfigurationError(
                f"tool {getattr(f, '__name__', f)!r} needs a description (a docstring or description=...): "
                "the model chooses tools by it"
            )
        _check_parameter_names(f)
        made = StructuredTool.from_function(
            f if not _is_async(f) else None,
            coroutine=f if _is_async(f) else None,
            name=name or f.__name__,
            description=description or (f.__doc__ or "").strip(),
            args_schema=args_schema,
            parse_docstring=False,
        )
        return with_facts(made, facts)

    return wrap(fn) if fn is not None else wrap


# Parameter names langchain keeps for itself when it calls a tool: `config` is shown to the model
# yet never passed (the call fails: "missing 1 required positional argument"), the others are
# dropped from the schema. A NOC tool that pushes a `config` would break at its first call.
_RESERVED = ("config", "callbacks", "run_manager")


def _check_parameter_names(f: Callable[..., Any]) -> None:
    import inspect

    from langchain_core.runnables import RunnableConfig

    for param in inspect.signature(f).parameters.values():
        if param.name in _RESERVED and param.annotation not in (RunnableConfig, "RunnableConfig"):
            raise ConfigurationError(
                f"tool {getattr(f, '__name__', f)!r}: the parameter name {param.name!r} is reserved by langchain "
                f"(it would never reach the tool); rename it (e.g. {param.name}_)"
            )


def _is_async(f: Callable[..., Any]) -> bool:
    import inspect

    return inspect.iscoroutinefunction(f)


def validate_tool_args(t: BaseTool, args: Any) -> str | None:
    """Check arguments against the tool's schema; return an error message or None.

    This is the gate in front of every tool execution: a call that fails it never reaches the
    tool, and the message goes back to the model."""
    return coerce_tool_args(t, args)[1]


def coerce_tool_args(t: BaseTool, args: Any) -> tuple[dict[str, Any] | None, str | None]:
    """`(args, None)` with the arguments as the tool's schema reads them (`"46"` for an int
    field is `46`; an enum is its value), or `(None, error)` when they do not fit it.

    Policies, approval cards and the tool itself all see the coerced values, so a condition
    like `args.value > 43` compares numbers whatever type the model wrote them in. Only the
    fields the model sent are kept (defaults are the tool's business). A tool whose schema is a
    JSON Schema dict (an MCP server's) is read the same way: `coerce_json_args`."""
    if not isinstance(args, dict):
        return None, f"arguments of {t.name} must be a JSON object, got {type(args).__name__}"
    problem = unrepresentable(args)
    if problem is not None:
        return None, f"invalid arguments for {t.name}: {problem}; send plain finite numbers"
    schema = t.tool_call_schema
    if isinstance(schema, type) and issubclass(schema, BaseModel):
        try:
            parsed = schema.model_validate(args)
        except (ValidationError, OverflowError) as exc:
            return None, f"invalid arguments for {t.name}: {_problems(exc)}"
        extra = set(args) - set(schema.model_fields)
        if extra:
            return None, f"invalid arguments for {t.name}: unexpected {sorted(extra)}"
        # The schema may turn text into numbers ("NaN" into a float NaN): check what it made too
        # (before the JSON dump, which would write a NaN as null).
        problem = unrepresentable(parsed.model_dump())
        if problem is not None:
            return None, f"invalid arguments for {t.name}: {problem}; send plain finite numbers"
        try:
            return parsed.model_dump(mode="json", exclude_unset=True), None
        except (ValueError, TypeError) as exc:  # a value the schema accepts but JSON cannot hold
            return None, f"invalid arguments for {t.name}: {exc}"
    if isinstance(schema, dict):  # a JSON Schema (an MCP server's tool): read the same way
        coerced, error = coerce_json_args(schema, args)
        if coerced is None:
            return None, f"invalid arguments for {t.name}: {error}"
        problem = unrepresentable(coerced)
        if problem is not None:
            return None, f"invalid arguments for {t.name}: {problem}; send plain finite numbers"
        return coerced, None
    return dict(args), None


def _problems(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}" for e in exc.errors()[:5])
    return f"a number is out of range ({exc})"
