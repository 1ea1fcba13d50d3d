"""A lab NETCONF device on this machine: Debian's `netconfd` (yuma123) serving the pack's
`agentflow-ran` YANG module, behind a private OpenSSH `sshd` on a free loopback port, for the
demo (`agentflow demo --network netconf` with no device configured) and the tests.

`LabDevice().start()` generates a host key and a user key, writes an sshd config of its own
(key login for this account only, from an authorized_keys file in its directory; the `netconf`
subsystem), starts sshd and netconfd, and loads the cells over NETCONF: every site's default
configuration with CS-101's handover offset mis-set to 8 dB (the demo's incident). Each lab
device has its own unix socket (netconfd's `--ncxserver-sockname`, passed on by the subsystem
as `<port>@<path>`), working directory and home, so several can run at once.

netconfd's audit log is the device's own record of every commit to running: `commits()` reads
it. Limits: netconfd looks at a confirmed commit's timer only when no session has spoken for a
second, so a client polling it faster holds the revert off. Needs `apt-get install netconfd
openssh-server` and an account sshd accepts (root here; an unlocked account elsewhere). sshd
wants its privilege separation directory `/run/sshd` only when it runs as root (which may create
it: `start()` does); run as another account, it serves that account alone and needs none (per
OpenSSH's sshd.c; the tests here run as root, so that path is not exercised).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from agentflow_noc import model
from agentflow_noc.netconf import Device, DeviceSettings, account, yang_path
from agentflow_noc.network import DEFAULT_SEED

NETCONFD, SSHD, SUBSYSTEM = "/usr/sbin/netconfd", "/usr/sbin/sshd", "/usr/sbin/netconf-subsystem"
INCIDENT_SITE = "CS-101"
_ENTRY = re.compile(r"edit-transaction (\d+): operation (\w+) on session (\d+) by (\S+)\n.*\n\s+data: (\S+)")


def missing() -> str | None:
    """Why a lab device cannot start here (None: it can)."""
    absent = [path for path in (NETCONFD, SSHD, SUBSYSTEM) if not os.path.exists(path)]
    if shutil.which("ssh-keygen") is None:
        absent.append("ssh-keygen")
    if absent:
        return f"not installed: {', '.join(absent)} (apt-get install netconfd openssh-server)"
    return None


def initial_cells(seed: int = DEFAULT_SEED) -> dict[str, dict[str, Any]]:
    """Every site's default configuration, with the demo's incident: CS-101's hoA3Offset at 8 dB."""
    cells = {site: model.default_config(seed, site) for site in model.all_sites()}
    cells[INCIDENT_SITE]["hoA3Offset"] = 8
    return cells


@dataclass(frozen=True, slots=True)
class Commit:
    """One edit of the running datastore, from netconfd's audit log (session 0: the server's own,
    e.g. the revert of a confirmed commit at its timeout)."""

    transaction: int
    operation: str
    session: int
    user: str
    path: str


class LabDevice:
    """A lab device: netconfd serving `agentflow-ran` behind a private sshd on a free loopback
    port, in `root` (default: a new short directory under /tmp, since a unix socket's path must
    stay under 108 bytes); nothing runs until `start()`, `stop()` ends both."""

    def __init__(self, root: Path | None = None, *, confirm_timeout: int = 3600) -> None:
        self._own_root = root is None  # close() removes a directory it made
        self.root = root or Path(tempfile.mkdtemp(prefix="ncx-"))
        self.port = free_port()
        self.socket = self.root / "ncx.sock"
        self.audit = self.root / "audit.log"
        self.user = account()
        self.settings = DeviceSettings(host="127.0.0.1", port=self.port, user=self.user,
                                       key_file=str(self.root / "user_key"), timeout=15.0,
                                       confirm_timeout=confirm_timeout)  # fmt: skip
        self.device = Device(self.settings)
        self._procs: list[subprocess.Popen[bytes]] = []

    def start(self, cells: Mapping[str, Mapping[str, Any]] | None = None) -> LabDevice:
        """Start sshd and netconfd and load `cells` over NETCONF (default: `initial_cells()`)."""
        self.root.mkdir(parents=True, exist_ok=True)
        for name in ("host_key", "user_key"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.root / name)], check=True)
        (self.root / "authorized_keys").write_text((self.root / "user_key.pub").read_text())
        hostkey = (self.root / "host_key.pub").read_text().split()[1]
        self.settings = replace(self.settings, hostkey=hostkey)
        self.device = Device(self.settings)
        self._write_sshd_config()
        if os.geteuid() == 0:  # only a root sshd needs its privilege separation directory
            Path("/run/sshd").mkdir(exist_ok=True)
        self._spawn([SSHD, "-D", "-e", "-f", str(self.root / "sshd_config")], "sshd.log")
        self.socket.unlink(missing_ok=True)
        self._spawn([NETCONFD, "--no-startup", f"--superuser={self.user}", f"--port={self.port}",
                     f"--ncxserver-sockname={self.socket}", f"--module={yang_path()}",
                     f"--audit-log={self.audit}", f"--log={self.root / 'netconfd.log'}"],
                    "netconfd.out", env={**os.environ, "HOME": str(self.root)}, cwd=self.root)  # fmt: skip
        deadline = time.monotonic() + 20
        while not self._ready():
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"sshd/netconfd did not come up in 20 s; see the logs in {self.root}")
            time.sleep(0.05)
        self.device.load(initial_cells() if cells is None else cells)
        return self

    def _write_sshd_config(self) -> None:
        # StrictModes off: the authorized_keys file lives under /tmp (world-writable), which
        # sshd's strict checks refuse; this sshd serves one generated key on loopback only.
        lines = [
            f"Port {self.port}", "ListenAddress 127.0.0.1", f"HostKey {self.root / 'host_key'}",
            f"PidFile {self.root / 'sshd.pid'}", f"AuthorizedKeysFile {self.root / 'authorized_keys'}",
            "StrictModes no", "PubkeyAuthentication yes", "PasswordAuthentication no",
            "KbdInteractiveAuthentication no", "UsePAM no", "PermitRootLogin prohibit-password",
            f"AllowUsers {self.user}",
            # netconf-subsystem finds netconfd's socket by the port the client came in on.
            f"Subsystem netconf {SUBSYSTEM} --ncxserver-sockname={self.port}@{self.socket}",
        ]  # fmt: skip
        (self.root / "sshd_config").write_text("\n".join(lines) + "\n")

    def _spawn(self, argv: list[str], log: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
        # netconfd keeps the running config it reverts to (backup-cfg.xml) in its working
        # directory and its home: both are this server's directory, never shared.
        with open(self.root / log, "wb") as out:
            self._procs.append(subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd))

    def _ready(self) -> bool:
        dead = [p.args for p in self._procs if p.poll() is not None]
        if dead:
            self.stop()
            raise RuntimeError(f"exited early: {dead}; see the logs in {self.root}")
        if not self.socket.exists():
            return False
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def stop(self) -> None:
        for proc in reversed(self._procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=15)
        self._procs.clear()

    def close(self) -> None:
        """`stop()`, then remove the directory (keys, logs, audit log) if this lab device made it."""
        self.stop()
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def commits(self) -> list[Commit]:
        """Every edit of running in the audit log, oldest first."""
        text = self.audit.read_text() if self.audit.exists() else ""
        return [Commit(int(t), op, int(s), user, path) for t, op, s, user, path in _ENTRY.findall(text)]

    def cell_transactions(self, site: str, *, by_server: bool = False) -> list[int]:
        """The transactions (commits) that changed `site`'s cell: by clients, or (`by_server`)
        by netconfd itself, i.e. the reverts of confirmed commits that timed out."""
        prefix = f"/ran:ran/ran:cell[ran:site='{site}']"
        found = {c.transaction for c in self.commits()
                 if c.path.startswith(prefix) and (c.session == 0) == by_server}  # fmt: skip
        return sorted(found)


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (for a lab server to listen on)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
