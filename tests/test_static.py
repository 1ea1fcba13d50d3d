"""Static checks run with the suite, so CI enforces them: ruff (lint + format) and mypy strict."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_ruff_lint_and_determinism_bans() -> None:
    """ruff passes, including the banned clock/random/uuid APIs outside the engine."""
    out = _run("ruff", "check", "agentflow", "tools", "tests", "bench")
    assert out.returncode == 0, out.stdout + out.stderr


def test_ruff_format() -> None:
    """The code is formatted by ruff."""
    out = _run("ruff", "format", "--check", "agentflow", "tools", "tests", "bench")
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.slow
def test_mypy_strict() -> None:
    """agentflow type-checks under mypy --strict (py.typed is shipped)."""
    out = _run("mypy")
    assert out.returncode == 0, out.stdout + out.stderr
    assert (ROOT / "agentflow" / "py.typed").exists()
