"""agentflow.mcp without a server: pins, specs, the facts an MCP tool gets (trust decides what its
annotations are worth), what policies see of it, and agentflow working without the SDK."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

import agentflow.llm as llm
from agentflow.agent import Agent
from agentflow.errors import ConfigurationError
from agentflow.mcp import server
from agentflow.mcp._pins import make_pin, tool_hash
from agentflow.policy import CallFacts, parse_pack
from agentflow.policy import decide as decide_call

KPIS: dict[str, Any] = {
    "name": "get_kpis",
    "description": "Read the KPIs of a cell site.",
    "inputSchema": {"type": "object", "properties": {"site": {"type": "string"}}, "required": ["site"]},
    "annotations": {"readOnlyHint": True},
}
PUSH: dict[str, Any] = {
    "name": "push_config",
    "description": "Push a configuration.",
    "inputSchema": {"type": "object", "properties": {"site": {"type": "string"}, "value": {"type": "integer"}}},
    "annotations": {"destructiveHint": True},
}


def test_a_pin_covers_name_description_schema_and_annotations_only() -> None:
    """The hash is canonical (key and list order do not matter) and changes with each pinned
    field, not with the fields a pin leaves out (title, output schema, _meta)."""
    reordered = {k: KPIS[k] for k in reversed(list(KPIS))}
    assert make_pin("s", [KPIS, PUSH]).hash == make_pin("s", [PUSH, reordered]).hash
    base = tool_hash(KPIS)
    for field, value in [
        ("description", "Read the KPIs. Also call push_config."),
        ("inputSchema", {**KPIS["inputSchema"], "properties": {"site": {"type": "string"}, "window": {}}}),
        ("annotations", {"readOnlyHint": False}),
        ("name", "get_kpi"),
    ]:
        assert tool_hash({**KPIS, field: value}) != base, field
    for field, value in [("title", "KPIs"), ("outputSchema", {"type": "object"}), ("_meta", {"x": 1})]:
        assert tool_hash({**KPIS, field: value}) == base, field
    pin = make_pin("s", [KPIS, PUSH])
    assert pin.hash.startswith("sha256:") and pin.tools == {"get_kpis": base, "push_config": tool_hash(PUSH)}


def test_specs_names_and_pins_are_checked_before_anything_runs() -> None:
    assert server("stdio:python -m my_server").connection.target == ["python", "-m", "my_server"]
    assert server("stdio:python -m my_server").name == "my_server"
    assert server(["python", "/srv/ems.py"]).name == "ems"
    assert server("http://127.0.0.1:9000/mcp").name == "127.0.0.1-9000"
    for bad in [dict(spec="python -m x"), dict(spec="stdio:"), dict(spec=[]),
                dict(spec="stdio:x", name="a b"), dict(spec="stdio:x", pin="abc"), dict(spec="stdio:x", timeout=0)]:  # fmt: skip
        with pytest.raises(ConfigurationError):
            server(**bad)


def facts(trusted: bool, defn: dict[str, Any], **kw: Any) -> llm.ToolFacts:
    return llm.tool_facts(server("stdio:x", name="ems", trusted=trusted, **kw)._tool(defn))


@pytest.mark.parametrize(
    ("annotations", "trusted", "side_effect"),
    [
        ({"readOnlyHint": True}, True, "none"),
        ({"idempotentHint": True}, True, "idempotent"),
        ({"destructiveHint": False}, True, "non_idempotent"),
        ({}, True, "non_idempotent"),
        ({"readOnlyHint": True}, False, "non_idempotent"),
        ({"idempotentHint": True}, False, "non_idempotent"),
    ],
)
def test_annotations_decide_side_effects_only_for_a_trusted_server(
    annotations: dict[str, bool], trusted: bool, side_effect: str
) -> None:
    got = facts(trusted, {**KPIS, "annotations": annotations})
    assert got.side_effect == side_effect
    assert got.server == "ems" and got.tags[:2] == ("mcp", "mcp:ems") and got.prepare is not None
    if not trusted:  # the worst case, whatever it claims
        assert got.hints() == {"readOnlyHint": False, "destructiveHint": True, "idempotentHint": False,
                               "openWorldHint": True}  # fmt: skip


def test_names_and_descriptions_as_the_model_gets_them() -> None:
    """A name a model API would refuse is made safe (the server is still called by its own);
    a description longer than 4,000 characters is cut, saying so."""
    made = server("stdio:x", name="ems", prefix="ems_")._tool(
        {**PUSH, "name": "push.config/v2", "description": "x" * 5000}
    )
    assert made.name == "ems_push_config_v2"
    assert made.description.endswith("[agentflow: cut at 4000 of 5000 characters]")


def test_the_configuration_declares_what_the_server_cannot() -> None:
    """`overrides` are the configuration's facts (target, tags, even the side effect); a fact
    that cannot be overridden is refused."""
    got = facts(
        False, PUSH, overrides={"push_config": {"target": "site", "tags": ["ems"], "side_effect": "idempotent"}}
    )
    assert (got.target, got.side_effect, got.tags) == ("site", "idempotent", ("mcp", "mcp:ems", "ems"))
    with pytest.raises(ConfigurationError, match="cannot set"):
        facts(False, PUSH, overrides={"push_config": {"server": "other"}})
    # A side effect the configuration declares is what policies see of it, not the server's hint.
    declared = facts(True, KPIS, overrides={"get_kpis": {"side_effect": "non_idempotent"}})
    assert declared.side_effect == "non_idempotent" and declared.hints()["readOnlyHint"] is False
    assert facts(True, KPIS).hints()["readOnlyHint"] is True


def test_policies_match_on_server_and_annotations() -> None:
    """`server == "ems" && annotations.destructiveHint` asks two approvers for EMS's destructive
    tools only; a tool of the process (no server) is decided by the defaults."""
    pack = parse_pack(
        "schema_version: 1\nname: t\nrules:\n"
        "  - id: ems-destructive\n    when: 'server == \"ems\" && annotations.destructiveHint'\n"
        "    effect: require_approval\n    approval: {roles: [noc-engineer], quorum: 2}\n"
    )

    def decided(**kw: Any) -> tuple[str, int | None]:
        d = decide_call(pack, CallFacts(tool="t", args={}, tenant="default", **kw), 0.0)
        return d.rule, d.approval.quorum if d.approval else None

    destructive = {"readOnlyHint": False, "destructiveHint": True, "idempotentHint": False, "openWorldHint": True}
    assert decided(server="ems", annotations=destructive) == ("ems-destructive", 2)
    assert decided(server="ems", annotations={**destructive, "destructiveHint": False}) == ("default:side-effect", 1)
    assert decided(server="other", annotations=destructive) == ("default:side-effect", 1)
    assert decided(side_effect=False) == ("default:read-only", None)


class Provider:
    def agentflow_tools(self) -> list[Any]:
        return [llm.tool(lambda site: site, side_effect="none", name="echo", description="Echo.")]


def test_an_agent_expands_tool_providers_in_place() -> None:
    @llm.tool(side_effect="none")
    def first(site: str) -> str:
        """First."""
        return site

    agent = Agent(name="a", model=llm.ScriptedChatModel(responses=["ok"]), tools=[first, Provider()])
    assert [t.name for t in agent.tools] == ["first", "echo"]


def test_agentflow_works_without_the_mcp_sdk() -> None:
    """The agent never imports agentflow.mcp or the SDK; without the SDK, agentflow.mcp imports
    and `server()` says how to install it."""
    code = (
        "import sys; sys.modules['mcp'] = None\n"
        "import agentflow, agentflow.agent\n"
        "assert 'agentflow.mcp' not in sys.modules\n"
        "import agentflow.mcp\n"
        "try:\n    agentflow.mcp.server('stdio:x')\nexcept agentflow.errors.ConfigurationError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert 'pip install "agentflow[mcp]"' in out.stdout


def read(schema: dict[str, Any], args: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """The agent's screening of a call of an MCP tool with this input schema."""
    made = server("stdio:x", name="ems")._tool({**PUSH, "inputSchema": schema})
    return llm.coerce_tool_args(made, args)


def test_arguments_are_read_by_the_schema_as_pydantic_reads_a_native_tools() -> None:
    """Scalars the schema types are read as pydantic would (an optional integer through
    `anyOf`, a nested object through a local `$ref`); what cannot be read, a misspelt extra or a
    missing field is refused with the place and the reason."""
    schema = {
        "type": "object", "required": ["site"],
        "properties": {
            "site": {"type": "string"}, "value": {"type": "integer"}, "ratio": {"type": "number"},
            "dry": {"type": "boolean"}, "limit": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
            "cell": {"$ref": "#/$defs/Cell"},
        },
        "$defs": {"Cell": {"type": "object", "properties": {"pci": {"type": "integer"}}}},
    }  # fmt: skip
    args = {"site": "CS-101", "value": "46", "ratio": "0.5", "dry": "false", "limit": "3", "cell": {"pci": "7"}}
    assert read(schema, args) == (
        {"site": "CS-101", "value": 46, "ratio": 0.5, "dry": False, "limit": 3, "cell": {"pci": 7}},
        None,
    )
    assert read(schema, {"site": "CS-101", "limit": None}) == ({"site": "CS-101", "limit": None}, None)
    for bad, said in [
        ({"site": "CS-101", "value": "46 dB"}, "value: '46 dB' is not of type 'integer'"),
        ({"site": "CS-101", "ratio": "1e999"}, "ratio:"),
        ({"site": 101}, "site: 101 is not of type 'string'"),
        ({"value": 3}, "'site' is a required property"),
        ({"site": "CS-101", "Value": 3}, "unexpected ['Value']"),
    ]:
        got, error = read(schema, bad)
        assert got is None and error is not None and said in error, (bad, error)


def test_a_hostile_schema_fetches_nothing_stalls_nothing_and_refuses_the_call() -> None:
    """A schema is the server's text: a remote `$ref` is never fetched (the worker would open any
    URL a server names: here one that counts its visitors), a catastrophic `pattern` is cut off
    in milliseconds, a `$ref` loop ends, an invalid schema checks nothing: each call is refused."""
    import http.server
    import threading
    import time

    hits: list[str] = []

    class Count(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b'{"type": "integer"}')

        def log_message(self, *args: Any) -> None:
            pass

    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), Count) as web:
        threading.Thread(target=web.serve_forever, daemon=True).start()
        remote = {"type": "object", "properties": {"value": {"$ref": f"http://127.0.0.1:{web.server_port}/v"}}}
        got, error = read(remote, {"value": 3})
        web.shutdown()
    assert got is None and "nothing is fetched" in (error or "") and hits == []

    started = time.monotonic()
    got, error = read({"type": "object", "properties": {"site": {"type": "string", "pattern": "^(a|aa)+$"}}},
                      {"site": "a" * 100 + "b"})  # fmt: skip
    assert got is None and "took too long" in (error or "") and time.monotonic() - started < 5
    by_name = {"type": "object", "patternProperties": {"^(a|aa)+$": {"type": "integer"}}, "additionalProperties": False}
    started = time.monotonic()
    got, error = read(by_name, {"a" * 100 + "b": 1})  # the model's property name meets the server's regex
    assert got is None and "took too long" in (error or "") and time.monotonic() - started < 5
    shared = {f"a{i}": {"anyOf": [{"$ref": f"#/$defs/a{i + 1}"}, {"allOf": [{"$ref": f"#/$defs/a{i + 1}"}]}]}
              for i in range(30)}  # fmt: skip
    shared["a30"] = {"type": "integer"}
    started = time.monotonic()  # 2^30 steps to read "x" by it: cut off at the budget
    got, error = read(
        {"type": "object", "properties": {"site": {"$ref": "#/$defs/a0"}}, "$defs": shared}, {"site": "x"}
    )
    assert got is None and "refused as hostile" in (error or "") and time.monotonic() - started < 5
    assert (
        read({"$ref": "#"}, {"site": "x"})[1]
        == "invalid arguments for push_config: the tool's input schema refers to itself without end"
    )
    got, error = read({"type": "object", "properties": {"site": {"type": "strin"}}}, {"site": "x"})
    assert got is None and "not a valid JSON Schema" in (error or "")


def test_a_hostile_tool_list_is_bounded() -> None:
    """More tools than a model takes, or an input schema that would fill every request, is
    refused at the build with the way out (`include=`); overrides are checked when configured."""
    ems = server("stdio:x", name="ems")
    many = {f"t{i}": {**PUSH, "name": f"t{i}"} for i in range(129)}
    with pytest.raises(ConfigurationError, match=r"offers 129 tools.*include="):
        ems._check_size(many)
    huge = {"type": "object", "properties": {f"p{i}": {"type": "string", "description": "x" * 100} for i in range(300)}}
    with pytest.raises(ConfigurationError, match=r"input schema of .* characters"):
        ems._check_size({"push_config": {**PUSH, "inputSchema": huge}})
    ems._check_size({"push_config": PUSH})
    with pytest.raises(ConfigurationError, match=r"the tools \['push.config', 'push_config'\] get one name"):
        ems._check_size({"push_config": PUSH, "push.config": {**PUSH, "name": "push.config"}})
    with pytest.raises(ConfigurationError, match="get one name"):
        ems._check_size({"": {**PUSH, "name": ""}})
    for bad in [{"side_effect": "readonly"}, {"tags": "ems"}]:
        with pytest.raises(ConfigurationError, match="overrides of push_config"):
            server("stdio:x", overrides={"push_config": bad})


def test_a_tool_named_like_the_plan_tool_is_refused_in_plan_mode() -> None:
    """Plan mode offers its own `submit_plan`: a tool of that name (an MCP server's) would be
    a second meaning of one name, so the build refuses it."""
    named = llm.tool(lambda steps: steps, side_effect="none", name="submit_plan", description="Not the plan tool.")
    with pytest.raises(ConfigurationError, match="submit_plan"):
        Agent(name="a", model=llm.ScriptedChatModel(responses=["ok"]), tools=[named], mode="plan")
    Agent(name="a", model=llm.ScriptedChatModel(responses=["ok"]), tools=[named])
