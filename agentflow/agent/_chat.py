"""`chat()`: one model call as a recorded, budgeted step of a workflow.

The request is recorded as references to content-addressed messages (a long conversation stores
each message once), the response as a reference to its message plus usage and cost. A replay
returns the recorded response without sending anything, and usage is never counted twice.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, InvalidToolCall, ToolCall
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool

from agentflow.engine import Activity, RetryPolicy, WorkflowContext
from agentflow.errors import (
    ActivityError,
    BudgetExceeded,
    ContextWindowExceeded,
    CorruptRecordError,
    ModelAuthError,
    ModelBadRequest,
    ModelBadResponse,
    ModelRequestsForbidden,
)
from agentflow.llm import (
    ChatModel,
    ModelResponse,
    PriceTable,
    Usage,
    as_chat_model,
    blob_hash,
    canonical_json,
    coerce_tool_args,
    count_messages,
    count_text,
    message_blob,
    message_from_blob,
    recover_tool_calls,
)

#: Model calls: 429/5xx/timeouts/bad bodies are retried with backoff (Retry-After honoured);
#: refused requests and credentials are not.
MODEL_RETRY = RetryPolicy(
    max_attempts=5,
    initial_interval=1.0,
    backoff=2.0,
    max_interval=30.0,
    non_retryable=(ModelBadRequest, ModelAuthError, ModelRequestsForbidden),
)
#: Characters of one model answer kept (a 10 MB answer would be stored and re-sent whole).
MAX_RESPONSE_CHARS = 100_000
#: Tool calls run from one model answer (a runaway model asked for 2,000 at once).
MAX_TOOL_CALLS = 20
_USAGE_KEY = "agentflow.usage"
_LAST_REQUEST_KEY = "agentflow.last_request"


@dataclass(frozen=True, slots=True)
class Budget:
    """Limits of one run's model use, enforced before each call is sent.

    Args:
        max_tokens: prompt + output tokens over all calls of the run.
        max_usd: cost over all calls of the run.
        max_output_tokens: the output limit sent with each call (and reserved in the checks).
    """

    max_tokens: int | None = None
    max_usd: float | None = None
    max_output_tokens: int | None = None


def spent(ctx: WorkflowContext) -> Usage:
    """What the run's model calls used so far (rebuilt from the history on replay)."""
    usage: Usage = ctx.locals.setdefault(_USAGE_KEY, Usage())
    return usage


async def chat(
    ctx: WorkflowContext,
    model: ChatModel | BaseChatModel,
    messages: Sequence[BaseMessage],
    tools: Sequence[BaseTool] = (),
    *,
    budget: Budget | None = None,
    prices: PriceTable | None = None,
    retry: RetryPolicy = MODEL_RETRY,
    recover: Literal["strict", "lenient", "off"] = "strict",
    max_response_chars: int | None = MAX_RESPONSE_CHARS,
    max_tool_calls: int | None = MAX_TOOL_CALLS,
    tool_choice: Literal["required"] | None = None,
    facts: dict[str, Any] | None = None,
) -> ModelResponse:
    """Call `model` once as a recorded step of the workflow `ctx` belongs to.

    `tool_choice="required"` asks the model to answer with a tool call (sent to models whose
    `agenerate` takes it; recorded with the request). `facts`: what the caller decided this
    request from (the agent's version and context window), recorded with the request under
    `agent` so a replay decides the same (`recorded_facts`).

    `model` is an agentflow `ChatModel` or any langchain-core `BaseChatModel` (wrapped in
    `LangChainChat`, see `agentflow.llm.as_chat_model`).

    `recover` says when tool calls written as fenced JSON in the text become tool calls:
    "strict" (default) only when the text is nothing but such blocks (a model quoting a block
    while explaining it is not calling it), "lenient" whenever a block names an offered tool.

    A runaway answer is bounded before it is recorded: text past `max_response_chars` is cut
    (`truncated_chars` says how much), and tool calls past `max_tool_calls` in one answer become
    invalid calls (not run; the model is told why). None lifts a limit.

    Raises:
        ContextWindowExceeded / BudgetExceeded: before anything is sent.
        ActivityError: the call failed for good (its cause type says why: 400, 401, ...).
    """
    model = as_chat_model(model)  # a langchain-core BaseChatModel is wrapped
    prices = prices or PriceTable()
    schemas = [convert_to_openai_tool(t) for t in tools]
    counted = count_messages(messages, model.name, schemas)
    reserve = budget.max_output_tokens or 0 if budget else 0
    seq = ctx.next_seq  # the seq this call's step takes (run_step numbers it synchronously)
    recorded = ctx.recorded(seq)
    # An outcome already recorded is replayed as it was: today's budget or prices do not apply.
    replaying = recorded is not None and recorded.kind == "llm" and recorded.status in ("completed", "failed")
    if not replaying and model.context_window is not None and counted.tokens + reserve > model.context_window:
        raise ContextWindowExceeded(
            f"the request to {model.name} counts {counted.tokens} prompt tokens (+{reserve} reserved for "
            f"output), over its context window of {model.context_window}: shorten the conversation",
            run_id=ctx.run_id,
            tenant=ctx.tenant,
        )
    used = spent(ctx)
    if not replaying:
        usd = prices.cost(model.name, counted.tokens, reserve)
        _check_budget(ctx, budget, used, counted.tokens + reserve, usd, model.name)
    choice = tool_choice if schemas and _takes_tool_choice(model) else None
    request, blobs, refs = _request(
        model, messages, schemas, budget, ctx.locals.get(_LAST_REQUEST_KEY), choice, facts=facts
    )

    async def invoke() -> ModelResponse:
        extra = {"tool_choice": choice} if choice else {}
        response = await model.agenerate(
            messages, schemas, max_tokens=budget.max_output_tokens if budget else None, **extra
        )
        bounded = _bounded(response, max_response_chars)
        finished = _finish(bounded, tools, counted.tokens, counted.approximate, prices, model.name, recover, seq)
        return _at_most(finished, max_tool_calls)

    def encode(response: ModelResponse) -> tuple[str, dict[str, str]]:
        digest, data = message_blob(response.message)
        body = response.model_dump(mode="json", exclude={"message"})
        return json.dumps({**body, "message": digest}), {digest: data}

    def decode(text: str) -> ModelResponse:
        try:
            body = json.loads(text)
            digest = body.pop("message")
            data = ctx.blobs([digest])[digest]
        except (ValueError, KeyError, AttributeError, TypeError) as exc:
            raise CorruptRecordError(
                f"a recorded model response of run {ctx.run_id} does not decode: {exc!r}"
            ) from None
        message = message_from_blob(data)
        if not isinstance(message, AIMessage):
            raise CorruptRecordError(f"a recorded model response of run {ctx.run_id} is not an AI message")
        return ModelResponse(message=message, **body)

    step: Activity[[], ModelResponse] = Activity(
        invoke, name=model.name, retry=retry, timeout=None, side_effect=False, reconcile=None,
        kind="llm", encode_result=encode, decode_result=decode,
    )  # fmt: skip
    try:
        response = await ctx.run_step(step, request=request, blobs=blobs)
    except ActivityError:
        ctx.locals[_LAST_REQUEST_KEY] = (seq, refs)  # recorded (failed) with the request's blobs
        raise
    # Only a recorded step may be referred to: the next request records what it adds to this one.
    ctx.locals[_LAST_REQUEST_KEY] = (seq, refs)
    ctx.locals[_USAGE_KEY] = Usage(
        input_tokens=used.input_tokens + response.usage.input_tokens,
        output_tokens=used.output_tokens + response.usage.output_tokens,
        cost_usd=round(used.cost_usd + response.usage.cost_usd, 8),
        source=used.source,
    )
    return response


def _check_budget(
    ctx: WorkflowContext, budget: Budget | None, used: Usage, tokens: int, usd: float, model: str
) -> None:
    if budget is None:
        return
    if budget.max_tokens is not None and used.total_tokens + tokens > budget.max_tokens:
        raise BudgetExceeded(
            f"the call to {model} needs at least {tokens} tokens; the run has used {used.total_tokens} of "
            f"its {budget.max_tokens}: not sent",
            limit="tokens", spent=used.total_tokens, needed=tokens, budget=budget.max_tokens,
            run_id=ctx.run_id, tenant=ctx.tenant,
        )  # fmt: skip
    if budget.max_usd is not None and used.cost_usd + usd > budget.max_usd:
        raise BudgetExceeded(
            f"the call to {model} would cost at least ${usd:.6f}; the run has spent ${used.cost_usd:.6f} of "
            f"its ${budget.max_usd}: not sent",
            limit="usd", spent=used.cost_usd, needed=usd, budget=budget.max_usd,
            run_id=ctx.run_id, tenant=ctx.tenant,
        )  # fmt: skip


def _request(
    model: ChatModel,
    messages: Sequence[BaseMessage],
    schemas: list[dict[str, Any]],
    budget: Budget | None,
    last: tuple[int, list[str]] | None = None,
    tool_choice: str | None = None,
    *,
    facts: dict[str, Any] | None = None,
) -> tuple[str, dict[str, str], list[str]]:
    """The recorded request, the blobs it refers to, and its message references.

    When the messages extend the run's previous model call's (`last`: its seq and references),
    the request records only the added references and `after`: that step's seq (its messages
    are this one's first ones). An n-turn conversation then stores O(n) references, not O(n²)."""
    blobs: dict[str, str] = {}
    refs = []
    for m in messages:
        digest, data = message_blob(m)
        blobs[digest] = data
        refs.append(digest)
    tools_ref = None
    if schemas:
        data = canonical_json(schemas)
        tools_ref = blob_hash(data)
        blobs[tools_ref] = data
    body: dict[str, Any] = {"model": model.name, "messages": refs, "tools": tools_ref}
    if tool_choice:
        body["tool_choice"] = tool_choice  # only when set: requests recorded before it match as they were
    if facts:
        body["agent"] = facts
    if last is not None and 0 < len(last[1]) <= len(refs) and refs[: len(last[1])] == last[1]:
        body["after"] = last[0]
        body["messages"] = refs[len(last[1]) :]
        # The earlier messages' blobs were written with that step: only the new ones go now
        # (otherwise an n-turn conversation issues O(n²) no-op inserts).
        keep = {*body["messages"], tools_ref}
        blobs = {h: d for h, d in blobs.items() if h in keep}
    if budget is not None and budget.max_output_tokens is not None:
        body["max_tokens"] = budget.max_output_tokens
    return canonical_json(body), blobs, refs


def recorded_facts(ctx: WorkflowContext) -> dict[str, Any] | None:
    """The `facts` recorded with the model call the run takes next, when it is already recorded
    (a replay): {} for a call recorded without any (by code older than them); None when the
    call is new."""
    rec = ctx.recorded(ctx.next_seq)
    if rec is None or rec.kind != "llm":
        return None
    try:
        found = json.loads(rec.args or "{}").get("agent")
    except (ValueError, AttributeError):
        return {}
    return found if isinstance(found, dict) else {}


def _takes_tool_choice(model: ChatModel) -> bool:
    try:
        return "tool_choice" in inspect.signature(model.agenerate).parameters
    except (TypeError, ValueError):
        return False


def screen_tool_calls(message: AIMessage, tools: Sequence[BaseTool]) -> AIMessage:
    """Move every tool call naming an unknown tool or failing its tool's schema to
    `invalid_tool_calls`, with the reason: a call left in `tool_calls` is safe to execute, and
    its arguments are the schema's reading of them (`coerce_tool_args`: `"46"` for an int is
    46), so the policy gate, the approval card and the tool see the same values."""
    by_name = {t.name: t for t in tools}
    valid: list[ToolCall] = []
    invalid = list(message.invalid_tool_calls)
    changed = False
    for call in message.tool_calls:
        tool = by_name.get(call["name"])
        error: str | None
        if tool is None:
            error = f"unknown tool {call['name']!r}; available: {sorted(by_name) or 'none'}"
        else:
            args, error = coerce_tool_args(tool, call["args"])
            if error is None and args != call["args"]:
                call = call.copy()
                call["args"], changed = args or {}, True
        if error is None:
            valid.append(call)
        else:
            invalid.append(
                InvalidToolCall(
                    name=call["name"],
                    args=json.dumps(call["args"]),
                    id=call.get("id"),
                    error=error,
                    type="invalid_tool_call",
                )
            )
    if len(valid) == len(message.tool_calls) and not changed:
        return message
    return message.model_copy(update={"tool_calls": valid, "invalid_tool_calls": invalid})


_SURROGATES = re.compile("[\ud800-\udfff]")


def _clean(value: Any) -> Any:
    """Lone surrogates (a provider's broken `\\ud83d` escape, decoded by json.loads) cannot be
    encoded as UTF-8, so they could not be stored or hashed: each becomes U+FFFD."""
    if isinstance(value, str):
        return _SURROGATES.sub("\ufffd", value)
    if isinstance(value, dict):
        return {_clean(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def _without_surrogates(message: AIMessage) -> AIMessage:
    fields = {
        "content": _clean(message.content),
        "tool_calls": [
            {**c, **_clean({"name": c["name"], "args": c["args"], "id": c["id"]})} for c in message.tool_calls
        ],
        "invalid_tool_calls": [_clean(dict(c)) for c in message.invalid_tool_calls],
    }
    if fields == {"content": message.content, "tool_calls": message.tool_calls,
                  "invalid_tool_calls": message.invalid_tool_calls}:  # fmt: skip
        return message
    return message.model_copy(update=fields)


def _finish(
    response: ModelResponse,
    tools: Sequence[BaseTool],
    counted: int,
    approximate: bool,
    prices: PriceTable,
    model: str,
    recover: str = "strict",
    seq: int = 0,
) -> ModelResponse:
    message, recovered = _without_surrogates(response.message), 0
    if recover != "off":
        message, recovered = recover_tool_calls(
            message, tools, strict=recover == "strict", id_prefix=f"recovered-{seq}"
        )
    message = screen_tool_calls(message, tools)
    if not (message.content or message.tool_calls or message.invalid_tool_calls or response.refusal):
        raise ModelBadResponse(f"model {model!r} returned an empty response (no text, no tool call)")
    usage = response.usage
    if usage.source == "estimated" or not (usage.input_tokens or usage.output_tokens):
        text = message.content if isinstance(message.content, str) else json.dumps(message.content)
        out = count_text(text + json.dumps([c["args"] for c in message.tool_calls]), model).tokens
        usage = Usage(input_tokens=counted, output_tokens=out, source="estimated")
    usage = usage.model_copy(
        update={
            "cost_usd": prices.cost(model, usage.input_tokens, usage.output_tokens),
            "cost_source": "price_table" if prices.priced(model) else "unknown",
        }
    )
    return response.model_copy(
        update={
            "message": message,
            "usage": usage,
            "recovered_tool_calls": recovered,
            "counted_prompt_tokens": counted,
            "count_approximate": approximate,
        }
    )


def _bounded(response: ModelResponse, limit: int | None) -> ModelResponse:
    """The answer with its text cut at `limit` characters (said in the text and recorded)."""
    content = response.message.content
    if limit is None or not isinstance(content, str) or len(content) <= limit:
        return response
    cut = f"{content[:limit]}\n[agentflow: the answer was cut at {limit} of {len(content)} characters]"
    message = response.message.model_copy(update={"content": cut})
    return response.model_copy(update={"message": message, "truncated_chars": len(content) - limit})


def _at_most(response: ModelResponse, limit: int | None) -> ModelResponse:
    """At most `limit` tool calls run from one answer; the others become invalid calls."""
    calls = response.message.tool_calls
    if limit is None or len(calls) <= limit:
        return response
    why = f"not run: at most {limit} tool calls are run from one answer; call again for what is left"
    refused = [
        InvalidToolCall(name=c["name"], args=json.dumps(c["args"]), id=c.get("id"), type="invalid_tool_call", error=why)
        for c in calls[limit:]
    ]
    message = response.message.model_copy(
        update={"tool_calls": calls[:limit], "invalid_tool_calls": [*response.message.invalid_tool_calls, *refused]}
    )
    return response.model_copy(update={"message": message})
