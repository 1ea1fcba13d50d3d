"""`agentflow.mcp.server(...)`: an MCP server's tools, offered to an `Agent` as its own tools.

    Agent(tools=[agentflow.mcp.server("stdio:python -m inventory", name="inv"), get_kpis])

Each of the server's tools becomes a langchain tool carrying agentflow's facts, so a call of it
is gated and recorded like any tool call (policy decision, approval, a tool step with its
idempotency key, answered from the history on resume). What the facts say:

- side effect: from the annotations only for a server the configuration trusts (`trusted=True`):
  `readOnlyHint` -> "none", `idempotentHint` -> "idempotent", else "non_idempotent". An
  untrusted server's tools are all "non_idempotent", whatever they claim: each call needs the
  approval a side-effecting call needs.
- policies see `server` (this server's name) and `annotations` (a trusted server's hints; the
  worst case for an untrusted one), and the tags `mcp` and `mcp:<name>`.
- the pin: when a run first calls one of the server's tools, the offered tools' definitions are
  hashed and recorded (a step of the run, so a resumed run keeps the pin it took); before every
  call the server's tool list is read again and the tool's definition compared with the pin. A
  changed definition (or a list not matching `pin=`) is refused with `ToolDefinitionChanged`:
  the call is not sent, the failed step is in the trace and the model hears why.
- arguments: the agent reads a call's arguments by the tool's input schema before the gate
  (`agentflow.llm.coerce_tool_args`: `"46"` for an integer is 46 for the policy, the card and
  the server; unreadable ones are an invalid call, sent back to the model); at the call they
  are checked again (an approver's edit). The schema is the server's: no remote `$ref` is
  fetched, regexes and the steps of a reading are bounded (`agentflow/llm/_schema.py`).
- bounds: a list of more than 1,000 tools, more than 128 offered, an input schema over 20,000
  characters, two tools given one name: refused when the agent is built (`include=`).
- the call carries the step's idempotency key in its request's `_meta`, under `META_KEY`
  ("agentflow/idempotency_key"): the same on every attempt, after a crash too, so a server can
  run a side effect once. Each attempt waits at most `timeout` seconds; failed attempts are
  retried as the agent retries any tool step.

Descriptions and results are the server's text: the model reads them as tool data (a result is a
tool message, cut at the agent's `limits.max_tool_output_chars`), and nothing a description or
result says reaches past the gate.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import json
import re
import shlex
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlparse

from langchain_core.tools import BaseTool, StructuredTool

from agentflow.engine import Activity, RetryPolicy, current_activity
from agentflow.errors import ConfigurationError, NotInActivityError, ToolDefinitionChanged, ToolError
from agentflow.llm import SideEffect, ToolFacts, canonical_json, coerce_tool_args, with_facts
from agentflow.mcp._connection import Connection
from agentflow.mcp._pins import Definition, Pin, make_pin, tool_hash

if TYPE_CHECKING:
    from mcp import Client
    from mcp_types import CallToolResult, RequestParamsMeta

    from agentflow.engine import WorkflowContext

#: Where a call's idempotency key travels: `params._meta["agentflow/idempotency_key"]`.
META_KEY = "agentflow/idempotency_key"
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_PIN_RETRY = RetryPolicy(max_attempts=3, initial_interval=1.0, backoff=2.0, max_interval=10.0)
_DESCRIBED = 4000  # characters of a tool's description the model is shown (all of it is pinned)
# A server's tool list is its text too: bounded, so a hostile or broken server cannot fill the
# worker's memory or every model request (model APIs take at most 128 tools per request).
_LISTED = 1000  # tools read from a server's list (all pages)
_OFFERED = 128  # tools offered from one server (after `include`)
_SCHEMA = 20_000  # characters of one tool's input schema (as canonical JSON)
_KEPT_RUNS = 1024  # runs whose pin a process keeps in memory (a run's next call re-reads it anyway)
_EFFECT_HINTS = ("readOnlyHint", "destructiveHint", "idempotentHint")  # what an overridden side effect decides
#: What `overrides` may declare of a server's tool: the configuration's own facts (trusted).
_OVERRIDABLE = ("side_effect", "target", "canonical", "region", "timeout", "compensate", "tags", "preview", "reconcile")


class Server:
    """An MCP server as a source of an agent's tools (make one with `agentflow.mcp.server`)."""

    def __init__(
        self, name: str, target: str | list[str], *, trusted: bool, pin: str | None, timeout: float,
        include: Sequence[str] | None, prefix: str, overrides: Mapping[str, Mapping[str, Any]],
        env: dict[str, str] | None, cwd: str | None,
    ) -> None:  # fmt: skip
        self.name = name
        self.trusted = trusted
        self.pin = pin
        self.timeout = timeout
        self.include = None if include is None else tuple(include)
        self.prefix = prefix
        self.overrides = {k: dict(v) for k, v in overrides.items()}
        self.connection = Connection(name, target, timeout=timeout, env=env, cwd=cwd)
        self._loaded: dict[str, Definition] | None = None
        self._tools: list[BaseTool] | None = None
        self._by_mcp_name: dict[str, BaseTool] = {}
        self._pins: OrderedDict[str, Pin] = OrderedDict()

    def __repr__(self) -> str:
        return f"<agentflow.mcp.Server {self.name} trusted={self.trusted}>"

    # -- what the agent asks -----------------------------------------------------------------
    def agentflow_tools(self) -> list[BaseTool]:
        """The server's tools as langchain tools with their facts (listed once per process)."""
        if self._tools is None:
            self._loaded = self.connection.run_sync(self._offered, timeout=self.timeout + 5)
            self._check_size(self._loaded)
            unknown = sorted(set(self.overrides) - set(self._loaded))
            if unknown:  # a misspelt name would drop its facts (a target, a side effect) unseen
                raise ConfigurationError(f"MCP server {self.name}: overrides name {unknown}, which it does not "
                                         f"offer (it offers {sorted(self._loaded)})")  # fmt: skip
            self._by_mcp_name = {name: self._tool(d) for name, d in self._loaded.items()}
            self._tools = list(self._by_mcp_name.values())
        return list(self._tools)

    def current_pin(self) -> str:
        """The hash the server's offered tools have now: what `pin=` is set to, to hold the
        server to the definitions reviewed (`agentflow.mcp.server(..., pin="sha256:...")`)."""
        return make_pin(self.name, self.connection.run_sync(self._offered, timeout=self.timeout + 5).values()).hash

    def close(self) -> None:
        """End the session (a stdio server's process with it)."""
        self.connection.close()

    # -- listing -----------------------------------------------------------------------------
    async def _offered(self, client: Client) -> dict[str, Definition]:
        """The definitions of the tools offered (all, or `include`), by their MCP name."""
        found: dict[str, Definition] = {}
        cursor: str | None = None
        for _ in range(100):  # a paginator that never ends cannot hang a call
            page = await client.list_tools(cursor=cursor, cache_mode="refresh")
            for listed in page.tools:
                found[listed.name] = listed.model_dump(mode="json", by_alias=True, exclude_none=True)
            if len(found) > _LISTED:
                raise ToolError(f"MCP server {self.name} lists more than {_LISTED} tools: refused as broken or "
                                "hostile (a server of that many tools needs splitting)", system=f"mcp {self.name}",
                                retryable=False)  # fmt: skip
            cursor = page.next_cursor
            if cursor is None:
                break
        if self.include is not None:
            missing = sorted(set(self.include) - set(found))
            if missing:
                raise ConfigurationError(f"MCP server {self.name} lists no tool {missing} (it lists {sorted(found)})")
            found = {k: v for k, v in found.items() if k in self.include}
        return found

    def _check_size(self, offered: Mapping[str, Definition]) -> None:
        if len(offered) > _OFFERED:
            raise ConfigurationError(f"MCP server {self.name} offers {len(offered)} tools, more than a model "
                                     f"takes ({_OFFERED}): name the ones the agent needs with include=[...]")  # fmt: skip
        given: dict[str, list[str]] = {}
        for name in offered:
            given.setdefault(offered_name(self.prefix, name), []).append(name)
        clash = sorted(n for made, names in given.items() if len(names) > 1 or not made for n in names)
        if clash:
            raise ConfigurationError(f"MCP server {self.name}: the tools {clash} get one name (or none) once made "
                                     "safe for model APIs: leave them out with include=[...]")  # fmt: skip
        for name, defn in offered.items():
            size = len(canonical_json(defn.get("inputSchema") or {}))
            if size > _SCHEMA:
                raise ConfigurationError(
                    f"MCP tool {name} of server {self.name} has an input schema of {size} characters (at most "
                    f"{_SCHEMA}): it would fill every model request; leave it out with include=[...]"
                )  # fmt: skip

    def _tool(self, defn: Definition) -> BaseTool:
        mcp_name = str(defn["name"])
        hints = {k: v for k, v in (defn.get("annotations") or {}).items() if k.endswith("Hint") and isinstance(v, bool)}
        side: SideEffect = "non_idempotent"
        if self.trusted:
            side = "none" if hints.get("readOnlyHint") else "idempotent" if hints.get("idempotentHint") else side
        given = self.overrides.get(mcp_name, {})
        if "side_effect" in given:  # the configuration's side effect, not a hint contradicting it
            hints = {k: v for k, v in hints.items() if k not in _EFFECT_HINTS}
        facts = ToolFacts(**{
            "side_effect": side, "declared": True, "timeout": self.timeout, "server": self.name,
            "annotations": tuple(sorted(hints.items())) if self.trusted else (), "prepare": self._prepare,
            **given, "tags": ("mcp", f"mcp:{self.name}", *given.get("tags", ())),
        })  # fmt: skip

        async def call(**args: Any) -> str:
            return await self._call(mcp_name, args)

        described = str(defn.get("description") or f"{mcp_name} ({self.name})")
        if len(described) > _DESCRIBED:  # the server's text: it may not fill the model's context
            described = f"{described[:_DESCRIBED]} [agentflow: cut at {_DESCRIBED} of {len(described)} characters]"
        made = StructuredTool(
            name=offered_name(self.prefix, mcp_name), description=described,
            args_schema=dict(defn.get("inputSchema") or {"type": "object", "properties": {}}), coroutine=call,
        )  # fmt: skip
        return with_facts(made, facts)

    # -- the pin -----------------------------------------------------------------------------
    async def _prepare(self, ctx: WorkflowContext) -> None:
        """Before each call of one of the server's tools: the run's pin, taken and recorded at
        its first call (one step however many calls ask at once), replayed after that."""
        key = f"agentflow.mcp.pin:{self.name}"
        taking = ctx.locals.get(key)
        if taking is None:

            async def take() -> Pin:
                return await self.connection.run(self._take_pin)

            step: Activity[[], Pin] = Activity(take, name=f"mcp.pin:{self.name}", retry=_PIN_RETRY,
                                               timeout=self.timeout, side_effect=False, reconcile=None)  # fmt: skip
            request = canonical_json({"server": self.name, "pin": self.pin})
            taking = ctx.locals[key] = ctx.run_step(step, request=request)
        pin = Pin.model_validate(await taking)
        self._pins[ctx.run_id] = pin
        self._pins.move_to_end(ctx.run_id)
        while len(self._pins) > _KEPT_RUNS:
            self._pins.popitem(last=False)

    async def _take_pin(self, client: Client) -> Pin:
        """The pin of the definitions this process offered the model, checked against what the
        server lists now and against the configured `pin`."""
        offered = self._loaded or {}
        current = await self._offered(client)
        for name, defn in offered.items():
            self._check(name, tool_hash(defn), current.get(name))
        pin = make_pin(self.name, offered.values())
        if self.pin is not None and pin.hash != self.pin:
            raise ToolDefinitionChanged(
                f"MCP server {self.name}'s tools hash to {pin.hash}, not to the configured pin {self.pin}: its "
                "definitions changed since they were reviewed; review them (`Server.current_pin()`) and update the pin",
                server=self.name, pinned=self.pin, current=pin.hash,
            )  # fmt: skip
        return pin

    def _check(self, name: str, pinned: str, now: Definition | None) -> None:
        current = "" if now is None else tool_hash(now)
        if current == pinned:
            return
        what = "no longer lists it" if now is None else f"now defines it as {current}"
        raise ToolDefinitionChanged(
            f"MCP tool {name} of server {self.name} was pinned as {pinned} and the server {what}: its definition "
            "(description, input schema or annotations) changed under the run, so the call was not sent. Review "
            "the server's new definition; a new run pins it afresh",
            server=self.name, tool=name, pinned=pinned, current=current,
        )  # fmt: skip

    # -- one call ----------------------------------------------------------------------------
    async def _call(self, name: str, args: dict[str, Any]) -> str:
        try:
            info = current_activity()
            run_id: str | None = info.run_id
            meta = {META_KEY: info.idempotency_key}
        except NotInActivityError:  # called outside a workflow (a test, a notebook): no key
            run_id, meta = None, {}
        pin = self._pins.get(run_id) if run_id is not None else None
        loaded = (self._loaded or {}).get(name)
        pinned = pin.tools.get(name, "") if pin is not None else tool_hash(loaded) if loaded is not None else ""
        _check_args(self.name, self._by_mcp_name.get(name), args)

        async def checked_call(client: Client) -> CallToolResult:
            self._check(name, pinned, (await self._offered(client)).get(name))
            sent = cast("RequestParamsMeta", meta) if meta else None
            return await client.call_tool(name, args, read_timeout_seconds=self.timeout, meta=sent)

        result = await asyncio.wait_for(self.connection.run(checked_call), self.timeout * 2 + 5)
        text = _text(result)
        if result.is_error:
            raise ToolError(f"MCP tool {name} of server {self.name} failed: {text[:2000]}", system=f"mcp {self.name}",
                            retryable=False)  # fmt: skip
        return text


def offered_name(prefix: str, mcp_name: str) -> str:
    """The name the model (and policies) know a tool by: `prefix` + its MCP name, with what a
    function name may not hold (OpenAI: letters, digits, `_`, `-`; at most 64) made `_`."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", f"{prefix}{mcp_name}")[:64]


def _check_args(server: str, tool: BaseTool | None, args: dict[str, Any]) -> None:
    """At the call: the arguments the gate let through must be the schema's reading of themselves
    (the agent screened the model's before the policy; an approver's edit is checked here), or
    they never reach the server."""
    if tool is None:
        return
    read, error = coerce_tool_args(tool, args)
    if read is None or read != args:
        raise ToolError(error or f"invalid arguments for {tool.name}: {args} are not as its input schema reads them",
                        system=f"mcp {server}", retryable=False)  # fmt: skip


def _text(result: CallToolResult) -> str:
    """A result as the text the model reads: its text blocks, else its structured content."""
    parts = []
    for block in result.content:
        text = getattr(block, "text", None)
        parts.append(text if isinstance(text, str) else f"[{getattr(block, 'type', 'content')} not shown]")
    if not any(getattr(b, "text", None) for b in result.content) and result.structured_content is not None:
        return json.dumps(result.structured_content, ensure_ascii=False, default=str)
    return "\n".join(parts)


def server(
    spec: str | Sequence[str], *, name: str | None = None, trusted: bool = False, pin: str | None = None,
    timeout: float = 30.0, include: Sequence[str] | None = None, prefix: str = "",
    overrides: Mapping[str, Mapping[str, Any]] | None = None, env: Mapping[str, str] | None = None,
    cwd: str | None = None,
) -> Server:  # fmt: skip
    """An MCP server whose tools an `Agent` offers: `Agent(tools=[agentflow.mcp.server(...), ...])`.

    Args:
        spec: `"stdio:<command line>"` or a command list (a server the agent's process starts
            and talks to over stdin/stdout), or an `http(s)://` URL (streamable HTTP).
        name: the server's name in policies (`server`), tags (`mcp:<name>`) and errors
            (default: from the command or the host).
        trusted: whether its tool annotations are believed (`readOnlyHint`, `idempotentHint`
            decide side effects). Untrusted (the default): every tool is side-effecting.
        pin: `sha256:...`, the hash its offered tools must have (`Server.current_pin()`), from
            the first call on; None: the run pins what it first sees.
        timeout: seconds per attempt of a call (and to connect).
        include: offer only these tools (default: all it lists).
        prefix: put before each tool's name (two servers listing the same name). Characters a
            model API refuses in a function name are made `_` (the server is called by its own).
        overrides: facts the configuration declares per tool name (`side_effect`, `target`,
            `canonical`, `region`, `timeout`, `tags`, `compensate`, `preview`, `reconcile`): the
            configuration is trusted, the server is not.
        env: a stdio server's environment (the SDK passes only a safe few variables otherwise).
        cwd: a stdio server's working directory.

    Raises:
        ConfigurationError: the `mcp` SDK is missing (`pip install "agentflow[mcp]"`), or the
            spec, name or pin cannot work.
    """
    if importlib.util.find_spec("mcp") is None:
        raise ConfigurationError('tools from MCP servers need the MCP SDK: pip install "agentflow[mcp]"')
    target = _target(spec)
    name = name or _default_name(target)
    if not _NAME.match(name):
        raise ConfigurationError(f"MCP server name {name!r} may hold only letters, digits, '_', '.' and '-'")
    if pin is not None and not re.fullmatch(r"sha256:[0-9a-f]{64}", pin):
        raise ConfigurationError(f"pin {pin!r} is not a pin: write sha256:<64 hex digits> (Server.current_pin())")
    if timeout <= 0:
        raise ConfigurationError(f"timeout must be positive, not {timeout}")
    _check_overrides(name, overrides or {})
    return Server(name, target, trusted=trusted, pin=pin, timeout=timeout, include=include, prefix=prefix,
                  overrides=overrides or {}, env=dict(env) if env is not None else None, cwd=cwd)  # fmt: skip


def _check_overrides(name: str, overrides: Mapping[str, Mapping[str, Any]]) -> None:
    for tool, given in overrides.items():
        unknown = sorted(set(given) - set(_OVERRIDABLE))
        if unknown:
            raise ConfigurationError(f"MCP server {name}: overrides of {tool} cannot set {unknown}")
        if "side_effect" in given and given["side_effect"] not in ("none", "idempotent", "non_idempotent"):
            raise ConfigurationError(f"MCP server {name}: overrides of {tool}: side_effect must be 'none', "
                                     f"'idempotent' or 'non_idempotent', not {given['side_effect']!r}")  # fmt: skip
        tags = given.get("tags", ())
        if isinstance(tags, str) or not all(isinstance(t, str) for t in tags):
            raise ConfigurationError(f"MCP server {name}: overrides of {tool}: tags must be a list of strings")


def _target(spec: str | Sequence[str]) -> str | list[str]:
    if not isinstance(spec, str):
        command = [str(part) for part in spec]
        if not command:
            raise ConfigurationError("an MCP server's command list is empty")
        return command
    if spec.startswith(("http://", "https://")):
        return spec
    if spec.startswith("stdio:") and shlex.split(spec[len("stdio:") :]):
        return shlex.split(spec[len("stdio:") :])
    raise ConfigurationError(f"MCP server spec {spec!r}: write 'stdio:<command>' or an http(s):// URL")


def _default_name(target: str | list[str]) -> str:
    if isinstance(target, str):
        url = urlparse(target)
        raw = f"{url.hostname}-{url.port}" if url.port else str(url.hostname)
    else:
        raw = target[-1].rsplit("/", 1)[-1].removesuffix(".py")
    return re.sub(r"[^A-Za-z0-9_.-]", "_", raw) or "mcp"
