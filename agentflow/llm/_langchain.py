"""`LangChainChat`: any langchain-core chat model behind agentflow's model interface, and
`as_chat_model`: what `Agent` and `chat()` call, so a `BaseChatModel` is wrapped automatically.

What agentflow knows of a model it has no entry for: its tokens are counted with tiktoken's
cl100k_base (bundled offline, said to be approximate), its context window is the model's
langchain `profile["max_input_tokens"]` when it has one (else unknown: no pre-flight check, the
provider's own limit applies), and its price is unknown (cost 0, `Usage.cost_source == "unknown"`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool

from agentflow.errors import ConfigurationError, ModelError, ModelRequestsForbidden
from agentflow.llm._guard import ENV, model_requests_allowed
from agentflow.llm._parse import parse_tool_call
from agentflow.llm._types import ChatModel, ModelResponse, Usage

# Chat models that never leave the process (allowed when model requests are disabled).
_OFFLINE_MODULES = ("langchain_core.language_models.fake_chat_models", "agentflow.")


class LangChainChat:
    """Wrap a langchain-core `BaseChatModel`; tools are bound with its own `bind_tools`.

    Args:
        model: the chat model.
        name: the recorded (and priced) model name; default: the model's `model_name`, `model`,
            `name` or, failing those, its `_llm_type` (e.g. "generic-fake-chat-model").
        context_window: tokens the model accepts, for the pre-flight check; default: the model's
            `profile["max_input_tokens"]`, else None (unknown: not checked before sending).
    """

    def __init__(self, model: BaseChatModel, *, name: str | None = None, context_window: int | None = None) -> None:
        if not isinstance(model, BaseChatModel):
            raise ConfigurationError(f"LangChainChat wraps a langchain-core BaseChatModel, not {type(model).__name__}")
        self.model = model
        self.name = name or _model_name(model)
        self.context_window = context_window or _profile(model).get("max_input_tokens")

    def check_tools(self, tools: Sequence[BaseTool]) -> None:
        """Raise `ConfigurationError` now if the model cannot be given `tools` (not on a worker,
        at the first call): binding makes no request, it only formats the schemas."""
        if not tools:
            return
        cls = f"{type(self.model).__module__}.{type(self.model).__qualname__}"
        fix = (
            "use a chat model that supports tool calling (one that implements bind_tools, e.g. "
            "agentflow.llm.OpenAIChat or langchain-openai's ChatOpenAI), or pass tools=[] for an "
            "agent that only answers (react mode)"
        )
        if _profile(self.model).get("tool_calling") is False:
            raise ConfigurationError(f"{cls} does not support tool calling (its profile says so): {fix}")
        try:
            self.model.bind_tools([convert_to_openai_tool(t) for t in tools])
        except NotImplementedError:
            raise ConfigurationError(
                f"{cls} does not support tool calling (bind_tools is not implemented): {fix}"
            ) from None
        except Exception as exc:
            raise ConfigurationError(f"{cls} cannot be given the tools: {type(exc).__name__}: {exc}") from exc

    def __repr__(self) -> str:
        return f"LangChainChat({type(self.model).__name__}, name={self.name!r})"

    async def agenerate(
        self,
        messages: Sequence[BaseMessage],
        tools: Sequence[dict[str, Any]] = (),
        *,
        max_tokens: int | None = None,
        tool_choice: str | None = None,
    ) -> ModelResponse:
        if not model_requests_allowed() and not type(self.model).__module__.startswith(_OFFLINE_MODULES):
            raise ModelRequestsForbidden(
                f"model requests are disabled ({ENV}=0) and {type(self.model).__name__} may call a "
                "provider; tests must use an offline model"
            )
        runnable: Any = self.model
        if tools:
            try:
                runnable = _bound(self.model, list(tools), tool_choice)
            except NotImplementedError:
                raise ConfigurationError(
                    f"{type(self.model).__name__} does not support tool calling (bind_tools): use a chat model "
                    "that does, or call it without tools"
                ) from None
        try:
            out = await runnable.ainvoke(list(messages))
        except Exception as exc:
            status = getattr(exc, "status_code", None)
            raise ModelError(f"model {self.name!r}: {type(exc).__name__}: {exc}", status=status) from exc
        if not isinstance(out, AIMessage):
            out = AIMessage(content=str(getattr(out, "content", out)))
        out = _normalize_calls(out)
        meta = out.usage_metadata
        finish = out.response_metadata.get("finish_reason") or out.response_metadata.get("stop_reason")
        return ModelResponse(
            message=out,
            model=self.name,
            usage=Usage(
                input_tokens=meta["input_tokens"] if meta else 0,
                output_tokens=meta["output_tokens"] if meta else 0,
                source="provider" if meta else "estimated",
            ),
            finish_reason=finish,
            truncated=finish in ("length", "max_tokens"),
        )


def _normalize_calls(message: AIMessage) -> AIMessage:
    """Give every tool call an id and a dict of arguments (some models omit ids)."""
    if not message.tool_calls:
        return message
    calls = [parse_tool_call(c.get("id"), c.get("name"), c.get("args")) for c in message.tool_calls]
    return message.model_copy(
        update={
            "tool_calls": [c for c in calls if c.get("type") == "tool_call"],
            "invalid_tool_calls": [
                *message.invalid_tool_calls,
                *(c for c in calls if c.get("type") == "invalid_tool_call"),
            ],
        }
    )


def _model_name(model: BaseChatModel) -> str:
    for attr in ("model_name", "model", "name"):
        value = getattr(model, attr, None)
        if isinstance(value, str) and value:
            return value
    try:
        return str(model._llm_type)
    except NotImplementedError:
        return type(model).__name__


def _profile(model: BaseChatModel) -> dict[str, Any]:
    profile = getattr(model, "profile", None)
    return dict(profile) if isinstance(profile, dict) else {}


def as_chat_model(model: ChatModel | BaseChatModel, *, tools: Sequence[BaseTool] | None = None) -> ChatModel:
    """The agentflow chat model for `model`, checked before anything runs.

    A langchain-core `BaseChatModel` is wrapped in `LangChainChat`; an agentflow model
    (`OpenAIChat`, `LangChainChat`, your own `ChatModel`) is returned as it is.

    Args:
        model: the model an `Agent` or `chat()` was given.
        tools: the tools it will be offered (None: not checked).

    Raises:
        ConfigurationError: `model` is not a chat model, has no usable name, or cannot be given
            `tools` (no tool calling); the message names the model's class and the fix.
    """
    if isinstance(model, BaseChatModel):
        model = LangChainChat(model)
    elif not isinstance(model, ChatModel):
        raise ConfigurationError(
            f"{type(model).__module__}.{type(model).__qualname__} is not a chat model: pass a langchain-core "
            "BaseChatModel, agentflow.llm.OpenAIChat(model=...), or an object with `name` (str), "
            "`context_window` (int or None) and `async agenerate(messages, tools, *, max_tokens)`"
        )
    if not isinstance(model.name, str) or not model.name:
        raise ConfigurationError(
            f"{type(model).__qualname__}.name is {model.name!r}: a chat model needs a non-empty name "
            "(it is recorded with each call and picks the price and the tokenizer)"
        )
    if tools is not None and isinstance(model, LangChainChat):
        model.check_tools(tools)
    return model


def _bound(model: BaseChatModel, tools: list[dict[str, Any]], tool_choice: str | None) -> Any:
    """`model.bind_tools(tools)`, with `tool_choice` when asked and the model takes it (a model
    whose bind_tools has no such parameter is bound without it: the choice is a hint)."""
    if tool_choice is not None:
        try:
            return model.bind_tools(tools, tool_choice=tool_choice)
        except TypeError:
            pass
    return model.bind_tools(tools)
