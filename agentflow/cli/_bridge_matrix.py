"""`agentflow chat-bridge matrix`: registers its command on `_bridge.bridge_app` (filled by the Matrix bridge work)."""

from __future__ import annotations

from agentflow.cli._bridge import bridge_app

__all__ = ["bridge_app"]
