"""Policy packs shipped with agentflow's content (YAML files; format in README.md).

from agentflow.policy import load_pack
pack = load_pack(policies.path("noc"))
"""

from pathlib import Path

HERE = Path(__file__).resolve().parent


def path(name: str) -> Path:
    """The file of the pack `name` (e.g. "noc" -> policies/noc.yaml)."""
    return HERE / f"{name}.yaml"
