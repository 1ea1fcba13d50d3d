"""A real Prometheus for the KPI tests: the pack's lab Prometheus
(`agentflow_noc.prometheus_lab.LabPrometheus`: Debian's `prometheus` on 127.0.0.1 and a free
port, a private config and data directory), started by the test and stopped after.

A missing binary skips the test with the reason, except in CI (`CI=true`), where it fails it:
`scripts/test.sh` installs the package, so a CI run without it is a broken machine, not a test
to skip (the rule of tests/conftest.py for PostgreSQL).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pytest

from agentflow_noc.prometheus_lab import INSTALL, LabPrometheus, binary

__all__ = ["Prometheus", "require_binary"]


def require_binary() -> str:
    """The path of the prometheus binary; skips the test (fails it in CI) when there is none."""
    found = binary()
    if found is not None:
        return found
    reason = f"Debian's prometheus is not installed ({INSTALL})"
    if os.environ.get("CI") == "true":
        pytest.fail(f"Prometheus tests cannot run in CI: {reason}", pytrace=False)
    pytest.skip(f"Prometheus tests skipped: {reason}")


class Prometheus(LabPrometheus):
    """A `LabPrometheus` in `root` (the test's directory), skipping the test when the binary is missing."""

    def __init__(self, root: Path, *, targets: Sequence[str], interval: int = 1) -> None:
        require_binary()
        super().__init__(root, targets=targets, interval=interval)
