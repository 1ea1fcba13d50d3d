"""A missing API key is a clear `ConfigurationError` naming `OPENAI_API_KEY` when the model (or
the Agent holding it) is made, never a silent "no-key" that fails at the first request. A local
OpenAI-compatible server needs no key: it gets a placeholder, and a 401 from it says none was set."""

from __future__ import annotations

import httpx
import openai
import pytest

from agentflow.agent import Agent
from agentflow.errors import ConfigurationError, ModelAuthError
from agentflow.llm import OpenAIChat
from agentflow.llm._openai import map_openai_error


@pytest.fixture(autouse=True)
def _no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


def test_openai_without_a_key_is_refused_when_the_model_is_made() -> None:
    with pytest.raises(ConfigurationError) as caught:
        OpenAIChat(model="gpt-4o-mini")
    text = str(caught.value)
    assert "set OPENAI_API_KEY" in text and "https://api.openai.com/v1" in text and "gpt-4o-mini" in text
    assert "OPENAI_BASE_URL" in text  # the other fix: a local server
    with pytest.raises(ConfigurationError, match="OPENAI_API_KEY"):
        Agent(name="copilot", model=OpenAIChat(model="gpt-4o-mini", base_url="https://eu.api.openai.com/v1"), tools=[])


def test_a_key_from_the_environment_or_an_argument_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    assert OpenAIChat(model="gpt-4o", api_key="sk-arg").api_key == "sk-arg"
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    model = OpenAIChat(model="gpt-4o")
    assert (model.api_key, model.keyed) == ("sk-env", True)


def test_a_local_server_needs_no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    local = OpenAIChat(model="llama3", base_url="http://127.0.0.1:8080/v1")
    assert (local.keyed, local.api_key) == (False, "no-key")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://localhost:11434/v1")
    assert OpenAIChat(model="llama3").base_url == "http://localhost:11434/v1"


@pytest.mark.parametrize("keyed", [True, False])
def test_a_401_says_whether_a_key_was_sent(keyed: bool) -> None:
    request = httpx.Request("POST", "http://127.0.0.1:8080/v1/chat/completions")
    response = httpx.Response(401, request=request, json={"error": {"message": "missing bearer token"}})
    exc = openai.AuthenticationError("401", response=response, body={"error": {"message": "missing bearer token"}})
    error = map_openai_error(exc, "llama3", keyed=keyed)
    assert isinstance(error, ModelAuthError) and "check OPENAI_API_KEY" in error.message
    assert ("no key was sent: OPENAI_API_KEY is not set" in error.message) is not keyed
