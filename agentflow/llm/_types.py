"""The small interface every model adapter implements, and what a call returns."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, Protocol, runtime_checkable

from langchain_core.messages import AIMessage, BaseMessage
from pydantic import BaseModel, ConfigDict, Field


class Usage(BaseModel):
    """Tokens and cost of one model call."""

    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    #: "provider" when the provider reported the counts, "estimated" when tiktoken counted them.
    source: Literal["provider", "estimated"] = "provider"
    #: "price_table" when the price table priced the model, "unknown" when it has no entry for it
    #: (and no default price): the cost is then 0, not a measurement.
    cost_source: Literal["price_table", "unknown"] = "price_table"

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


class ModelResponse(BaseModel):
    """The answer of one model call, as recorded in the history."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    message: AIMessage
    model: str
    usage: Usage = Field(default_factory=Usage)
    finish_reason: str | None = None
    #: The response was cut at the output limit (finish_reason "length").
    truncated: bool = False
    #: Characters of the answer's text cut before it was recorded (the caller's size limit).
    truncated_chars: int = 0
    #: The model declined to answer (OpenAI's `refusal` field).
    refusal: str | None = None
    #: Tool calls recovered from fenced JSON in the text (small local models do that).
    recovered_tool_calls: int = 0
    #: Prompt tokens counted with tiktoken before the call, and whether that count is approximate.
    counted_prompt_tokens: int = 0
    count_approximate: bool = False


@runtime_checkable
class ChatModel(Protocol):
    """What agentflow needs from a chat model. `OpenAIChat`, `LangChainChat` implement it."""

    #: The model's name as recorded (and priced).
    name: str
    #: Tokens the model accepts in one request (prompt + output), when known.
    context_window: int | None

    async def agenerate(
        self,
        messages: Sequence[BaseMessage],
        tools: Sequence[dict[str, Any]] = (),
        *,
        max_tokens: int | None = None,
    ) -> ModelResponse:
        """Send one chat request (tools as OpenAI function schemas); no retries here. A model
        may also take `tool_choice` ("required": answer with a tool call), as `OpenAIChat` and
        `LangChainChat` do; agentflow passes it only to models whose `agenerate` has it."""
        ...
