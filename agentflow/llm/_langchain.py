"""`LangChainChat`: any langchain-core chat model behind agentflow's model interface."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage

from agentflow.errors import ConfigurationError, ModelError, ModelRequestsForbidden
from agentflow.llm._guard import ENV, model_requests_allowed
from agentflow.llm._parse import parse_tool_call
from agentflow.llm._types import ModelResponse, Usage

# Chat models that never leave the process (allowed when model requests are disabled).
_OFFLINE_MODULES = ("langchain_core.language_models.fake_chat_models", "agentflow.")


class LangChainChat:
    """Wrap a langchain-core `BaseChatModel`; tools are bound with its own `bind_tools`.

    Args:
        model: the chat model.
        name: the recorded (and priced) model name; default: the model's `model_name` / `model`.
        context_window: tokens the model accepts, for the pre-flight check.
    """

    def __init__(self, model: BaseChatModel, *, name: str | None = None, context_window: int | None = None) -> None:
        if not isinstance(model, BaseChatModel):
            raise ConfigurationError(f"LangChainChat wraps a langchain-core BaseChatModel, not {type(model).__name__}")
        self.model = model
        self.name = name or str(getattr(model, "model_name", None) or getattr(model, "model", None) or model._llm_type)
        self.context_window = context_window

    def __repr__(self) -> str:
        return f"LangChainChat({type(self.model).__name__}, name={self.name!r})"

    async def agenerate(
        self, messages: Sequence[BaseMessage], tools: Sequence[dict[str, Any]] = (), *, max_tokens: int | None = None
    ) -> ModelResponse:
        if not model_requests_allowed() and not type(self.model).__module__.startswith(_OFFLINE_MODULES):
            raise ModelRequestsForbidden(
                f"model requests are disabled ({ENV}=0) and {type(self.model).__name__} may call a "
                "provider; tests must use an offline model"
            )
        runnable: Any = self.model
        if tools:
            try:
                runnable = self.model.bind_tools(list(tools))
            except NotImplementedError:
                raise ConfigurationError(f"{type(self.model).__name__} does not support tools (bind_tools)") from None
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
