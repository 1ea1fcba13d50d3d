"""Where the NOC tools find the network: `configure(path)` in this process, or `NOC_DB`.

Tools are called by the engine with the model's arguments only, so the network they act on is
process configuration, like a client's base URL. `configure` also exports `NOC_DB`, so worker
subprocesses started afterwards find the same file.
"""

from __future__ import annotations

import os
from pathlib import Path

from agentflow_noc.network import DEFAULT_SEED, Network

ENV = "NOC_DB"
_networks: dict[str, Network] = {}


def configure(path: str | Path, *, seed: int = DEFAULT_SEED) -> Network:
    """Point the NOC tools of this process (and of subprocesses it starts) at `path`."""
    os.environ[ENV] = str(Path(path).resolve())  # absolute: a worker may run in another directory
    return network(seed=seed)


def beside(store_path: str) -> str:
    """The network file that goes with a store: next to a SQLite store's file (`<file>.noc.db`),
    else (a store that is not a file, like PostgreSQL) `noc.db` in the current directory."""
    return f"{store_path}.noc.db" if store_path else "noc.db"


def network(*, seed: int = DEFAULT_SEED) -> Network:
    """The configured network (one `Network` object per file per process)."""
    path = os.environ.get(ENV)
    if not path:
        raise RuntimeError(f"the NOC tools have no network: call agentflow_noc.configure(path) or set {ENV}")
    found = _networks.get(path)
    if found is None:
        found = _networks[path] = Network(path, seed=seed)
    return found
