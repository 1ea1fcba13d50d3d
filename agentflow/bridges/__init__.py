"""Chat bridges: approval cards and decisions in the chat a NOC team already uses (Matrix, Slack).

`Bridge` is the surface-neutral side (which cards to post or edit, their plain text, commands
typed by linked accounts, decided through `agentflow.approvals`); an adapter adds its transport.
See `agentflow/bridges/_core.py` for the loop an adapter runs.
"""

from agentflow.bridges._core import SURFACES, THREAD_HELP, Bridge, CardView
from agentflow.bridges._matrix import MatrixBridge, MatrixConfig

__all__ = ["SURFACES", "THREAD_HELP", "Bridge", "CardView", "MatrixBridge", "MatrixConfig"]
