"""LangChain's standard unit suites (the `langchain-tests` package every integration runs) on
agentflow's offline chat models and on tools declared with `agentflow.llm.tool`."""

from __future__ import annotations

from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.tools import BaseTool
from langchain_core.tools import tool as lc_tool
from langchain_tests.unit_tests import ChatModelUnitTests, ToolsUnitTests

from agentflow.llm import RunbookChatModel, ScriptedChatModel, tool, tool_facts


class TestScriptedChatModelStandard(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[BaseChatModel]:
        return ScriptedChatModel

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"model_name": "scripted-test", "responses": ["hello", {"content": "", "tool_calls": []}]}

    @property
    def has_tool_calling(self) -> bool:
        return True

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def returns_usage_metadata(self) -> bool:
        return True


class TestRunbookChatModelStandard(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[BaseChatModel]:
        return RunbookChatModel

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {
            "model_name": "runbook-test",
            "runbook": [{"tool": "get_kpis", "args": {"site": "{site}"}}],
        }

    @property
    def has_tool_calling(self) -> bool:
        return True

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def returns_usage_metadata(self) -> bool:
        return True


def get_site_kpis(site: str, window_minutes: int = 15) -> dict[str, float]:
    """Read the KPIs (drop rate, throughput) of a cell site over the last minutes."""
    return {"drop_rate": 0.01, "throughput_mbps": 120.0 + window_minutes + len(site)}


DECLARED_FUNCTION = tool(side_effect="none", target="site")(get_site_kpis)


@lc_tool
def restart_cell(site: str, cell: int) -> str:
    """Restart one cell of a cell site (safe to repeat)."""
    return f"{site}/{cell} restarted"


DECLARED_LANGCHAIN_TOOL = tool(restart_cell, side_effect="idempotent", target="site")


class TestDeclaredFunctionToolStandard(ToolsUnitTests):
    @property
    def tool_constructor(self) -> BaseTool:
        return DECLARED_FUNCTION

    @property
    def tool_invoke_params_example(self) -> dict[str, Any]:
        return {"site": "CS-1042", "window_minutes": 30}


class TestDeclaredLangChainToolStandard(ToolsUnitTests):
    @property
    def tool_constructor(self) -> BaseTool:
        return DECLARED_LANGCHAIN_TOOL

    @property
    def tool_invoke_params_example(self) -> dict[str, Any]:
        return {"site": "CS-1042", "cell": 2}


def test_declared_tools_keep_their_facts_and_work() -> None:
    """The tools the suites ran are the declared ones (facts present) and still execute."""
    assert tool_facts(DECLARED_FUNCTION).side_effect == "none"
    assert tool_facts(DECLARED_FUNCTION).declared
    assert tool_facts(DECLARED_LANGCHAIN_TOOL).side_effect == "idempotent"
    assert tool_facts(restart_cell).declared is False  # the wrapped original is untouched
    assert DECLARED_FUNCTION.invoke({"site": "CS-1", "window_minutes": 5})["throughput_mbps"] == 129.0
    assert DECLARED_LANGCHAIN_TOOL.invoke({"site": "CS-1", "cell": 3}) == "CS-1/3 restarted"
