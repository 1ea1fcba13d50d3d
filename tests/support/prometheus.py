"""A real Prometheus for the KPI tests: Debian's `prometheus` (2.42) on 127.0.0.1 and a free port,
with a private config (a 1 s scrape interval by default, the exporters under test as static targets) and a
data directory of its own.

`Prometheus(dir, targets=[...]).start()` writes the config, starts the binary and waits until
every target is up (scraped with success); `stop()` ends it (SIGTERM, so the TSDB's head is
kept: a `start()` after it serves the same data again, on the same port). A missing binary
skips the test with the reason, except in CI (`CI=true`), where it fails it: `scripts/test.sh`
installs the package, so a CI run without it is a broken machine, not a test to skip (the rule
of tests/conftest.py for PostgreSQL).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from agentflow.testing import assert_eventually
from support.served import free_port, terminate

BINARY = "prometheus"


def require_binary() -> str:
    """The path of the prometheus binary; skips the test (fails it in CI) when there is none."""
    found = shutil.which(BINARY) or shutil.which(BINARY, path="/usr/bin:/usr/sbin")
    if found is not None:
        return found
    reason = "Debian's prometheus is not installed (apt-get install -y --no-install-recommends prometheus)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"Prometheus tests cannot run in CI: {reason}", pytrace=False)
    pytest.skip(f"Prometheus tests skipped: {reason}")


class Prometheus:
    """A Prometheus in `root` scraping `targets` ("127.0.0.1:<port>") every `interval` seconds
    (each scrape may take that long); nothing runs until `start()`."""

    def __init__(self, root: Path, *, targets: Sequence[str], interval: int = 1) -> None:
        self.binary = require_binary()
        self.root, self.targets, self.interval = root, list(targets), interval
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def _write_config(self) -> Path:
        config = self.root / "prometheus.yml"
        config.write_text(
            f"global:\n  scrape_interval: {self.interval}s\n  scrape_timeout: {self.interval}s\n"
            "scrape_configs:\n  - job_name: ransim\n    static_configs:\n"
            f"      - targets: [{', '.join(repr(t) for t in self.targets)}]\n"
        )
        return config

    def start(self, *, timeout: float = 40) -> None:
        """Start Prometheus (again, on the same port and data, after `stop()`) and wait until
        every target has been scraped with success."""
        self.root.mkdir(parents=True, exist_ok=True)
        cmd = [self.binary, f"--config.file={self._write_config()}", f"--storage.tsdb.path={self.root / 'data'}",
               f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"]  # fmt: skip
        with (self.root / "prometheus.log").open("ab") as out:
            self.proc = subprocess.Popen(cmd, cwd=self.root, stdout=out, stderr=subprocess.STDOUT)
        try:
            assert_eventually(self.targets_up, timeout=timeout, interval=0.2, message="prometheus: targets not up")
        except BaseException:
            self.stop()  # a Prometheus that never got ready is not left running (no fixture owns it yet)
            raise

    def targets_up(self) -> bool:
        """Whether Prometheus answers and has scraped every target with success."""
        assert self.proc is not None and self.proc.poll() is None, f"prometheus exited: {self.tail()}"
        try:
            answer = httpx.get(f"{self.url}/api/v1/targets", timeout=2)
        except httpx.TransportError:
            return False
        if answer.status_code != 200:
            return False
        active: list[dict[str, Any]] = answer.json()["data"]["activeTargets"]
        return len(active) == len(self.targets) and all(t["health"] == "up" for t in active)

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query's result vector (for the tests' own checks)."""
        answer = httpx.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=5)
        answer.raise_for_status()
        result: list[dict[str, Any]] = answer.json()["data"]["result"]
        return result

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            terminate(self.proc)
        self.proc = None

    def tail(self, chars: int = 3000) -> str:
        log = self.root / "prometheus.log"
        return log.read_text(errors="replace")[-chars:] if log.exists() else "(no log)"
