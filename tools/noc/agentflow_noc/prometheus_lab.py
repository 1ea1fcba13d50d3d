"""A lab Prometheus on this machine: Debian's `prometheus` on 127.0.0.1 and a free port, with a
private config (the exporters given as static targets, a short scrape interval) and a data
directory of its own, for the demo (`agentflow demo --network netconf` with no Prometheus
configured) and the tests.

    lab = LabPrometheus(targets=["127.0.0.1:9105"], interval=2).start()
    promql.configure(lab.url)
    ...
    lab.close()

`start()` writes the config, starts the binary and waits until every target is up (scraped
with success); `stop()` ends it (SIGTERM, so the TSDB's head is kept: a `start()` after it
serves the same data again, on the same port); `close()` also removes a directory it made.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from agentflow_noc.netconf_lab import free_port

BINARY = "prometheus"
INSTALL = "apt-get install -y --no-install-recommends prometheus"


def binary() -> str | None:
    """The prometheus binary's path (on PATH, else /usr/bin or /usr/sbin), or None."""
    return shutil.which(BINARY) or shutil.which(BINARY, path="/usr/bin:/usr/sbin")


class LabPrometheus:
    """A Prometheus in `root` (default: a new directory under /tmp, removed by `close()`)
    scraping `targets` ("127.0.0.1:<port>") every `interval` seconds (each scrape may take that
    long); nothing runs until `start()`. A missing binary is a `RuntimeError` naming the package."""

    def __init__(self, root: Path | None = None, *, targets: Sequence[str], interval: int = 1) -> None:
        found = binary()
        if found is None:
            raise RuntimeError(f"Debian's prometheus is not installed ({INSTALL})")
        self.binary = found
        self._own_root = root is None
        self.root = root or Path(tempfile.mkdtemp(prefix="prom-"))
        self.targets, self.interval = list(targets), interval
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

    def start(self, *, timeout: float = 40) -> LabPrometheus:
        """Start Prometheus (again, on the same port and data, after `stop()`) and wait until
        every target has been scraped with success; a `RuntimeError` (and nothing left
        running) when that does not happen in `timeout` seconds."""
        self.root.mkdir(parents=True, exist_ok=True)
        cmd = [self.binary, f"--config.file={self._write_config()}", f"--storage.tsdb.path={self.root / 'data'}",
               f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"]  # fmt: skip
        with (self.root / "prometheus.log").open("ab") as out:
            self.proc = subprocess.Popen(cmd, cwd=self.root, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        try:
            while not self.targets_up():
                if time.monotonic() > deadline:
                    raise RuntimeError(f"prometheus: targets not up in {timeout:g} s: {self.tail(800)}")
                time.sleep(0.2)
        except BaseException:
            self.stop()  # a Prometheus that never got ready is not left running
            raise
        return self

    def targets_up(self) -> bool:
        """Whether Prometheus answers and has scraped every target with success (a
        `RuntimeError` when it exited)."""
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"prometheus exited: {self.tail()}")
        try:
            answer = httpx.get(f"{self.url}/api/v1/targets", timeout=2)
        except httpx.TransportError:
            return False
        if answer.status_code != 200:
            return False
        active: list[dict[str, Any]] = answer.json()["data"]["activeTargets"]
        return len(active) == len(self.targets) and all(t["health"] == "up" for t in active)

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query's result vector (for checks outside the tools)."""
        answer = httpx.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=5)
        answer.raise_for_status()
        result: list[dict[str, Any]] = answer.json()["data"]["result"]
        return result

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
        self.proc = None

    def close(self) -> None:
        """`stop()`, then remove the directory (config, data, log) if this lab Prometheus made it."""
        self.stop()
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def tail(self, chars: int = 3000) -> str:
        log = self.root / "prometheus.log"
        return log.read_text(errors="replace")[-chars:] if log.exists() else "(no log)"
