"""Chat bridges: approval cards and decisions in the chat a NOC team already uses (Matrix, Slack).

`Bridge` is the surface-neutral side (which cards to post or edit, their plain text, commands
typed by linked accounts, decided through `agentflow.approvals`); an adapter adds its transport.
See `agentflow/bridges/_core.py` for the loop an adapter runs.
"""

from typing import TYPE_CHECKING, Any

from agentflow.bridges._core import SURFACES, THREAD_HELP, Bridge, CardView
from agentflow.bridges._matrix import MatrixBridge, MatrixConfig

if TYPE_CHECKING:
    from agentflow.bridges._slack import SlackBridge


def __getattr__(name: str) -> Any:
    # The Slack bridge needs the `slack` extra (slack-bolt): imported when first asked for.
    if name == "SlackBridge":
        from agentflow.bridges._slack import SlackBridge

        return SlackBridge
    raise AttributeError(f"module 'agentflow.bridges' has no attribute {name!r}")


__all__ = ["SURFACES", "THREAD_HELP", "Bridge", "CardView", "MatrixBridge", "MatrixConfig", "SlackBridge"]
