"""Tool packs: content built on agentflow's public API only (see tools/README.md)."""
