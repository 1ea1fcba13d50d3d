"""Test helpers shipped with agentflow: fakes at the I/O seams (offline chat models, a
time-skipping clock, named crash points) and polling with a deadline.

    from agentflow.testing import ScriptedChatModel, TestClock, assert_eventually
"""

from agentflow.engine import TestClock, configure_crash_point, crash_point
from agentflow.testing._helpers import assert_eventually
from agentflow.testing._models import RunbookChatModel, ScriptedChatModel

__all__ = [
    "RunbookChatModel",
    "ScriptedChatModel",
    "TestClock",
    "assert_eventually",
    "configure_crash_point",
    "crash_point",
]
