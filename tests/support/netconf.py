"""A real NETCONF device for the NOC pack's tests: the pack's lab device
(`agentflow_noc.netconf_lab.LabDevice`: Debian's netconfd serving `agentflow-ran` behind a
private sshd on a free loopback port, its cells loaded over NETCONF with CS-101's handover
offset mis-set to 8 dB), started per test and stopped after.

Each lab device has its own socket, directory and ports, so tests need not be serialized. Its
audit log (`commits()`, `cell_transactions()`) is the device's own record of every commit, so a
test counts what the device did, not what the client believes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from agentflow_noc.netconf_lab import INCIDENT_SITE, Commit, LabDevice, initial_cells, missing

NetconfServer = LabDevice
__all__ = ["INCIDENT_SITE", "Commit", "NetconfServer", "initial_cells", "netconf_device", "netconf_server", "require"]


def require() -> None:
    """Skip when netconfd/sshd are missing, except in CI (`CI=true`), where that is a failure."""
    reason = missing()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"NETCONF tests cannot run in CI: {reason}", pytrace=False)
    pytest.skip(f"NETCONF tests skipped: {reason}")


@contextmanager
def netconf_server(**kwargs: Any) -> Iterator[LabDevice]:
    """A started lab device (skipped, or failed in CI, when netconfd/sshd are missing), stopped
    and its directory removed after."""
    require()
    server = LabDevice(**kwargs)
    try:
        yield server.start()
    finally:
        server.close()


@contextmanager
def netconf_device(monkeypatch: pytest.MonkeyPatch, **kwargs: Any) -> Iterator[LabDevice]:
    """`netconf_server`, with the `NOC_NETCONF_*` environment naming it for the test (the tools
    and the loop's activities find their device there)."""
    with netconf_server(**kwargs) as server:
        for name, value in server.settings.environ().items():
            monkeypatch.setenv(name, value)
        yield server
