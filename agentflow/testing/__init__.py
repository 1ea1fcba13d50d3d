"""Test helpers shipped with agentflow: a time-skipping clock, named crash points, polling."""

from agentflow._crash import configure as configure_crash_point
from agentflow._crash import crash_point
from agentflow.engine._clock import TestClock
from agentflow.testing._helpers import assert_eventually

__all__ = ["TestClock", "assert_eventually", "configure_crash_point", "crash_point"]
