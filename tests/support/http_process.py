"""A server subprocess on 127.0.0.1 for a test: started, polled until its URL answers, stopped."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from agentflow.testing import assert_eventually
from support.served import ROOT, terminate


@contextmanager
def http_process(
    cmd: list[str], *, env: dict[str, str], log: Path, url: str,
    ready: Callable[[], httpx.Response] | None = None, timeout: float = 45,
) -> Iterator[subprocess.Popen[bytes]]:  # fmt: skip
    """Run `cmd` (output appended to `log`) until the block ends (then a clean stop). The block
    starts once `ready()` (default: GET `url`) gets any HTTP answer; a server that exits first
    fails the test with its log."""
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)

    def answers() -> bool:
        assert proc.poll() is None, f"{cmd} exited ({proc.returncode}):\n{log.read_text(errors='replace')[-3000:]}"
        try:
            (ready or (lambda: httpx.get(url, timeout=2)))()
            return True
        except httpx.TransportError:
            return False

    try:
        assert_eventually(answers, timeout=timeout, interval=0.05, message=f"{url} did not answer")
        yield proc
    finally:
        terminate(proc)
