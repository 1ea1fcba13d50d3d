"""Models, tools and token accounting. Knows nothing about the engine (see agentflow.agent)."""

from typing import TYPE_CHECKING, Any

from agentflow.llm._guard import model_requests_allowed
from agentflow.llm._langchain import LangChainChat
from agentflow.llm._offline import RunbookChatModel, ScriptedChatModel
from agentflow.llm._parse import recover_tool_calls
from agentflow.llm._pricing import DEFAULT_PRICES, PriceTable
from agentflow.llm._tokens import TokenCount, count_messages, count_text, encoding_for
from agentflow.llm._tools import SideEffect, ToolFacts, tool, tool_facts, validate_tool_args
from agentflow.llm._types import ChatModel, ModelResponse, Usage

if TYPE_CHECKING:
    from agentflow.llm._openai import OpenAIChat


def __getattr__(name: str) -> Any:
    # The openai SDK takes ~1 s to import: loaded when OpenAIChat is first used, so offline
    # models, workers of offline apps and the CLI start without it.
    if name == "OpenAIChat":
        from agentflow.llm._openai import OpenAIChat

        return OpenAIChat
    raise AttributeError(f"module 'agentflow.llm' has no attribute {name!r}")


__all__ = [
    "DEFAULT_PRICES",
    "ChatModel",
    "LangChainChat",
    "ModelResponse",
    "OpenAIChat",
    "PriceTable",
    "RunbookChatModel",
    "ScriptedChatModel",
    "SideEffect",
    "TokenCount",
    "ToolFacts",
    "Usage",
    "count_messages",
    "count_text",
    "encoding_for",
    "model_requests_allowed",
    "recover_tool_calls",
    "tool",
    "tool_facts",
    "validate_tool_args",
]
