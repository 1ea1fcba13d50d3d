"""Models, tools and token accounting. Knows nothing about the engine (see agentflow.agent)."""

from typing import TYPE_CHECKING, Any

from agentflow.llm._guard import model_requests_allowed
from agentflow.llm._langchain import LangChainChat, as_chat_model
from agentflow.llm._messages import blob_hash, canonical_json, message_blob, message_from_blob
from agentflow.llm._parse import malformed_tool_call, recover_tool_calls
from agentflow.llm._pricing import DEFAULT_PRICES, PriceTable
from agentflow.llm._tokens import TokenCount, count_messages, count_text, encoding_for
from agentflow.llm._tools import (
    SideEffect,
    ToolFacts,
    ToolProvider,
    coerce_tool_args,
    expand_tools,
    tool,
    tool_facts,
    validate_tool_args,
    with_facts,
)
from agentflow.llm._types import ChatModel, ModelResponse, Usage

if TYPE_CHECKING:
    from agentflow.llm._openai import OpenAIChat
    from agentflow.testing import RunbookChatModel as RunbookChatModel
    from agentflow.testing import ScriptedChatModel as ScriptedChatModel

# The offline fakes live in `agentflow.testing`; these names stay here (and in `__all__`) as
# aliases for code written against agentflow 0.1, loaded on first use.
_TESTING_ALIASES = ("RunbookChatModel", "ScriptedChatModel")


def __getattr__(name: str) -> Any:
    # The openai SDK takes ~1 s to import: loaded when OpenAIChat is first used, so offline
    # models, workers of offline apps and the CLI start without it.
    if name == "OpenAIChat":
        from agentflow.llm._openai import OpenAIChat

        return OpenAIChat
    if name in _TESTING_ALIASES:
        import agentflow.testing

        return getattr(agentflow.testing, name)
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
    "ToolProvider",
    "Usage",
    "as_chat_model",
    "blob_hash",
    "canonical_json",
    "coerce_tool_args",
    "count_messages",
    "count_text",
    "encoding_for",
    "expand_tools",
    "malformed_tool_call",
    "message_blob",
    "message_from_blob",
    "model_requests_allowed",
    "recover_tool_calls",
    "tool",
    "tool_facts",
    "validate_tool_args",
    "with_facts",
]
