"""`OpenAIChat`: the official `openai` client (async), for OpenAI and any compatible endpoint
(vLLM, Ollama, llama.cpp server) via `base_url` / `OPENAI_BASE_URL`.

OpenAI's API needs a key (`OPENAI_API_KEY`): without one the model is refused when it is made,
not at its first request. Other endpoints (local servers) need none: they get a placeholder.

The client's own retries are off (`max_retries=0`): the engine retries 429/5xx/timeouts with
backoff, honouring `Retry-After`, and records every attempt in the run's history.
"""

from __future__ import annotations

import asyncio
import email.utils
import os
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any, Literal
from urllib.parse import urlparse

import openai
from langchain_core.messages import AIMessage, BaseMessage, convert_to_openai_messages

from agentflow.errors import (
    ConfigurationError,
    ModelAuthError,
    ModelBadRequest,
    ModelBadResponse,
    ModelConnectionError,
    ModelError,
    ModelRateLimited,
    ModelRequestsForbidden,
    ModelServerError,
    ModelTimeout,
)
from agentflow.llm._guard import check_endpoint
from agentflow.llm._parse import parse_tool_call
from agentflow.llm._types import ModelResponse, Usage

OPENAI_URL = "https://api.openai.com/v1"
KEY_ENV = "OPENAI_API_KEY"


def _is_openai(url: str) -> bool:
    """Whether `url` is OpenAI's own API, which refuses every request without a key."""
    host = (urlparse(url).hostname or "").lower()
    return host == "openai.com" or host.endswith(".openai.com")


def retry_after_seconds(response: Any) -> float | None:
    """Seconds from `retry-after-ms` / `Retry-After` (seconds or an HTTP date)."""
    if response is None:
        return None
    ms = response.headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


def map_openai_error(exc: Exception, model: str, *, keyed: bool = True) -> ModelError:
    """An `openai` exception -> agentflow's typed, retry-aware model error (`keyed`: whether
    a key was sent, so a 401 from a server that wants one says none was set)."""
    where = f"model {model!r}"
    if isinstance(exc, openai.APITimeoutError):
        return ModelTimeout(f"{where}: the request timed out")
    if isinstance(exc, openai.APIConnectionError):
        return ModelConnectionError(f"{where}: cannot reach the endpoint: {exc}")
    if isinstance(exc, openai.APIResponseValidationError):
        return ModelBadResponse(f"{where}: the response is not a chat completion: {exc}")
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        detail = _detail(exc)
        if status == 429:
            return ModelRateLimited(
                f"{where}: rate limited (429): {detail}", status=429, retry_after=retry_after_seconds(exc.response)
            )
        if status in (401, 403):
            return ModelAuthError(
                f"{where}: the provider refused the credentials ({status}): {detail}; check {KEY_ENV}"
                + ("" if keyed else f" (no key was sent: {KEY_ENV} is not set)"),
                status=status,
            )
        if status >= 500:
            return ModelServerError(
                f"{where}: server error ({status}): {detail}",
                status=status,
                retry_after=retry_after_seconds(exc.response),
            )
        return ModelBadRequest(f"{where}: the provider refused the request ({status}): {detail}", status=status)
    if isinstance(exc, ValueError):  # a body that is not JSON
        return ModelBadResponse(f"{where}: the response body does not decode: {exc}")
    return ModelError(f"{where}: {type(exc).__name__}: {exc}")


async def _close_with_loop(client: openai.AsyncOpenAI) -> AsyncIterator[None]:
    try:
        yield
    finally:
        await client.close()


def _detail(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])[:300]
    return str(exc.message)[:300]


class OpenAIChat:
    """A chat model behind the OpenAI chat-completions API.

    Args:
        model: the model name the endpoint serves.
        base_url: the API root (default `OPENAI_BASE_URL`, else OpenAI's).
        api_key: the key (default `OPENAI_API_KEY`). Required for OpenAI's own API; another
            endpoint (a local llama.cpp, vLLM or Ollama server) is sent the placeholder `no-key`
            when neither is set; a 401 from it then says that no key was set.
        timeout: seconds per request.
        context_window: the model's context window in tokens, for the pre-flight check and the
            agent's context management. "auto" (default): read from the server when it is not
            OpenAI's (llama.cpp's `/props` `n_ctx`, vLLM's `/v1/models` `max_model_len`), once,
            on first use; unknown (None) when the server does not say.
        temperature: sampling temperature, if set.

    Raises:
        ConfigurationError: no key for OpenAI's API (the message names `OPENAI_API_KEY`).
    """

    def __init__(
        self,
        *,
        model: str,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 60.0,
        context_window: int | Literal["auto"] | None = "auto",
        temperature: float | None = None,
    ) -> None:
        self.name = model
        self.base_url = base_url or os.environ.get("OPENAI_BASE_URL") or OPENAI_URL
        key = api_key or os.environ.get(KEY_ENV)
        if not key and _is_openai(self.base_url):
            raise ConfigurationError(
                f"no API key for {self.base_url} (model {model!r}): set {KEY_ENV} (or pass api_key=...); "
                f"for a local OpenAI-compatible server, set OPENAI_BASE_URL (or base_url=...) instead"
            )
        #: Whether a real key is sent (the client needs some value: a local server gets a placeholder).
        self.keyed = bool(key)
        self.api_key = key or "no-key"
        self.timeout = timeout
        self._context_window = context_window
        self.temperature = temperature
        self._client: openai.AsyncOpenAI | None = None
        self._client_loop: asyncio.AbstractEventLoop | None = None
        self._closer: AsyncIterator[None] | None = None

    def __repr__(self) -> str:
        return f"OpenAIChat(model={self.name!r}, base_url={self.base_url!r})"

    @property
    def context_window(self) -> int | None:
        """Tokens the model accepts (None: unknown). "auto" asks the server (2 s at most per
        question) and keeps its answer; a server that could not be reached is asked again next
        time. Async code awaits `aresolve_context_window` instead (no blocking)."""
        if self._context_window == "auto":
            if _is_openai(self.base_url):
                self._context_window = None
            else:
                found, definite = _served_window(self.base_url, self.name)
                if not definite:
                    return None
                self._context_window = found
        return self._context_window

    @context_window.setter
    def context_window(self, value: int | None) -> None:
        self._context_window = value

    async def aresolve_context_window(self) -> int | None:
        """`context_window`, asked of the server in a thread (the event loop never waits on it)."""
        if self._context_window == "auto":
            return await asyncio.to_thread(lambda: self.context_window)
        return self._context_window

    @property
    def client(self) -> openai.AsyncOpenAI:
        """The client of the event loop the last request ran on (made on first use)."""
        if self._client is None:
            self._client = self._new_client()
        return self._client

    def _new_client(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(api_key=self.api_key, base_url=self.base_url, timeout=self.timeout, max_retries=0)

    async def _loop_client(self) -> openai.AsyncOpenAI:
        """A client per event loop, closed when its loop shuts down.

        Pooled keep-alive connections belong to the loop that opened them: reused by a later
        `asyncio.run` (each `app.run()` is one) the first request would fail on a dead connection,
        and their finalizers would raise on the closed loop. The client is tied to its loop by an
        async generator, which `asyncio.run` closes (`shutdown_asyncgens`) before the loop ends."""
        loop = asyncio.get_running_loop()
        if self._client is None or loop is not self._client_loop:
            client = self._new_client()
            closer = _close_with_loop(client)
            await closer.__anext__()
            self._client, self._client_loop, self._closer = client, loop, closer
        return self._client

    async def agenerate(
        self,
        messages: Sequence[BaseMessage],
        tools: Sequence[dict[str, Any]] = (),
        *,
        max_tokens: int | None = None,
        tool_choice: str | None = None,
    ) -> ModelResponse:
        check_endpoint(self.base_url, self.name)
        kwargs: dict[str, Any] = {"model": self.name, "messages": convert_to_openai_messages(list(messages))}
        if tools:
            kwargs["tools"] = list(tools)
            kwargs["parallel_tool_calls"] = True
            if tool_choice is not None:
                kwargs["tool_choice"] = tool_choice
        if max_tokens is not None:
            kwargs["max_tokens"] = max_tokens
        if self.temperature is not None:
            kwargs["temperature"] = self.temperature
        try:
            client = await self._loop_client()
            completion = await client.chat.completions.create(**kwargs)
        except Exception as exc:
            raise map_openai_error(exc, self.name, keyed=self.keyed) from exc
        try:
            return self._response(completion)
        except (AttributeError, TypeError, ValueError) as exc:  # e.g. a choice without a message
            raise ModelBadResponse(
                f"model {self.name!r}: the response is not a chat completion: {type(exc).__name__}: {exc}"
            ) from exc

    def _response(self, completion: Any) -> ModelResponse:
        choices = getattr(completion, "choices", None)
        if not choices:
            raise ModelBadResponse(f"model {self.name!r}: the response has no choices: {str(completion)[:200]}")
        choice = choices[0]
        msg = choice.message
        calls = [parse_tool_call(tc.id, tc.function.name, tc.function.arguments) for tc in (msg.tool_calls or [])]
        refusal = getattr(msg, "refusal", None)
        message = AIMessage(
            content=msg.content or (refusal or ""),
            tool_calls=[c for c in calls if c.get("type") == "tool_call"],
            invalid_tool_calls=[c for c in calls if c.get("type") == "invalid_tool_call"],
            response_metadata={
                "finish_reason": choice.finish_reason,
                "model_name": getattr(completion, "model", self.name),
            },
            id=getattr(completion, "id", None),
        )
        usage = getattr(completion, "usage", None)
        return ModelResponse(
            message=message,
            model=self.name,
            usage=Usage(
                input_tokens=getattr(usage, "prompt_tokens", 0) or 0,
                output_tokens=getattr(usage, "completion_tokens", 0) or 0,
                source="provider" if usage is not None else "estimated",
            ),
            finish_reason=choice.finish_reason,
            truncated=choice.finish_reason == "length",
            refusal=refusal,
        )


def served_context_window(base_url: str, model: str, timeout: float = 2.0) -> int | None:
    """The context size an OpenAI-compatible server runs `model` with, if it says: llama.cpp's
    `GET /props` (`default_generation_settings.n_ctx`, the runtime size, not the training one)
    or vLLM's `GET /v1/models` (`max_model_len`). None when it does not answer or say."""
    return _served_window(base_url, model, timeout)[0]


def _served_window(base_url: str, model: str, timeout: float = 2.0) -> tuple[int | None, bool]:
    """(window, definite): definite is False when the server could not be asked (down, slow)."""
    import httpx

    try:
        check_endpoint(base_url, model)
    except ModelRequestsForbidden:
        return None, False
    root = base_url.rstrip("/")
    api_root = root[: -len("/v1")] if root.endswith("/v1") else root
    try:
        with httpx.Client(timeout=timeout) as client:
            props = client.get(f"{api_root}/props")
            if props.status_code == 200:
                n_ctx = (props.json().get("default_generation_settings") or {}).get("n_ctx")
                if isinstance(n_ctx, int) and n_ctx > 0:
                    return n_ctx, True
            models = client.get(f"{root}/models")
            if models.status_code == 200:
                for entry in models.json().get("data") or []:
                    size = entry.get("max_model_len") if isinstance(entry, dict) else None
                    if isinstance(size, int) and size > 0 and entry.get("id") in (model, None):
                        return size, True
    except httpx.HTTPError:
        return None, False
    except (ValueError, AttributeError):
        return None, True  # it answered, with something else
    return None, True
