"""Test helpers shipped with agentflow: fakes at the I/O seams (offline chat models, a
time-skipping clock, named crash points) and polling with a deadline.

    from agentflow.testing import ScriptedChatModel, TestClock, assert_eventually
"""

from typing import TYPE_CHECKING, Any

from agentflow.engine import TestClock, configure_crash_point, crash_point
from agentflow.testing._helpers import assert_eventually

if TYPE_CHECKING:
    from agentflow.testing._models import RunbookChatModel, ScriptedChatModel

# The fake chat models are langchain-core models: loaded on first use, so a test or a worker that
# only needs the clock or the crash points starts without langchain.
_MODELS = ("RunbookChatModel", "ScriptedChatModel")


def __getattr__(name: str) -> Any:
    if name in _MODELS:
        from agentflow.testing import _models

        return getattr(_models, name)
    raise AttributeError(f"module 'agentflow.testing' has no attribute {name!r}")


__all__ = [
    "RunbookChatModel",
    "ScriptedChatModel",
    "TestClock",
    "assert_eventually",
    "configure_crash_point",
    "crash_point",
]
