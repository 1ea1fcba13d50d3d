"""`agentflow chat-bridge slack`: registers its command on `_bridge.bridge_app` (filled by the Slack bridge work)."""

from __future__ import annotations

from agentflow.cli._bridge import bridge_app

__all__ = ["bridge_app"]
