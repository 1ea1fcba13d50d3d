"""What every route of a served app works with (kept on `FastAPI.state`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import Request

from agentflow.chat import Chat
from agentflow.engine import Workflow
from agentflow.policy import PolicyPack
from agentflow.server._limits import AuthThrottle
from agentflow.server._sessions import Sessions


@dataclass(frozen=True, slots=True)
class Served:
    """The chat view of the app served, sessions, the agent chat requests start, and settings."""

    chat: Chat
    sessions: Sessions
    throttle: AuthThrottle
    workflow: Workflow[Any, Any]
    #: The served agent's policy pack (its limits and rule descriptions on approval cards).
    pack: PolicyPack | None
    secure_cookies: bool
    session_ttl: float
    poll_interval: float


def served(request: Request) -> Served:
    """The served state of the FastAPI app handling `request` (a route dependency)."""
    state: Served = request.app.state.served
    return state
