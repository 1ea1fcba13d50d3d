"""The benchmark still runs against the current engine and schema (figures are not asserted:
they belong in bench/ output, not in timed tests)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def bench(script: str, *args: str) -> dict[str, Any]:
    """Run `bench/<script>` with small figures; return the JSON it printed."""
    out = subprocess.run([sys.executable, f"bench/{script}", *args], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    figures: dict[str, Any] = json.loads(out.stdout)
    return figures


@pytest.mark.slow
def test_engine_benchmark_runs_and_prints_json(tmp_path: Path) -> None:
    figures = bench("engine.py", "--reps", "1", "--ratio-reps", "1", "--steps", "50", "--resume-sizes", "100",
                    "--dir", str(tmp_path))  # fmt: skip
    assert set(figures["pass"]) >= {"ratio_step_to_raw_commit_FULL", "cpu_us_per_step_NORMAL", "bytes_per_step_1kb"}
    assert figures["us_per_step"]["NORMAL"]["async_noop"]["cpu_us"] > 0


@pytest.mark.slow
def test_server_benchmark_runs_and_prints_json() -> None:
    figures = bench("server.py", "--reps", "3", "--extra-runs", "0")
    assert figures["steps"] > 20 and figures["watchers_per_core"] > 0


@pytest.mark.slow
def test_backends_benchmark_runs_and_prints_json() -> None:
    figures = bench("backends.py", "--steps", "20", "--reps", "1")
    assert set(figures["us_per_step"]) == {"FULL", "NORMAL"}
    assert figures["ratio_postgresql_to_sqlite"]["NORMAL"] > 0


@pytest.mark.slow
def test_encryption_benchmark_runs_and_prints_json(tmp_path: Path) -> None:
    figures = bench("encryption.py", "--reps", "1", "--steps", "20", "--resume-steps", "20", "--dir", str(tmp_path))
    assert set(figures["pass"]) == {"extra_cpu_us_NORMAL_noop", "wall_ratio_FULL_noop", "resume_ratio"}
    assert figures["us_per_step"]["NORMAL"]["noop"]["on"]["cpu_us"] > 0 and "resume_20" in figures


@pytest.mark.slow
def test_agents_benchmark_runs_and_prints_json(tmp_path: Path) -> None:
    figures = bench("agents.py", "--runs", "20", "--model-ms", "20", "--dir", str(tmp_path))
    for mode in ("NORMAL", "FULL"):
        assert figures[mode]["recorded_steps"] == 20 * 20 and figures[mode]["drain_s"] >= figures[mode]["floor_s"]
        assert figures[mode]["concurrency"] == 10_000  # the Worker's default
        assert figures[mode]["commits"] >= 1 and figures[mode]["writes_per_commit"] >= 1
