"""The NOC policy pack, shipped as this package's data (`noc.yaml`; format: policies/README.md).

from agentflow.policy import load_pack
import agentflow_noc as noc
pack = load_pack(noc.policy_path())
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def policy_path() -> Path:
    """The file of the NOC copilot's policy pack (`noc.yaml`, installed with this package)."""
    pack = files("agentflow_noc") / "noc.yaml"
    # load_pack reads a file and records its path as the pack's source. Regular and editable
    # installs give a real file; a zipped one (not supported) would not.
    if not isinstance(pack, Path):
        raise RuntimeError(f"agentflow_noc is not installed as files on disk: {pack!r} is not a file path")
    return pack
