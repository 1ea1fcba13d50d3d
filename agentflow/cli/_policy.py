"""`agentflow policy check`: validate a policy pack and show its rules and version hash."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from agentflow.cli._common import console, fail_decision
from agentflow.errors import AgentflowError

policy_app = typer.Typer(help="Policy packs.", no_args_is_help=True)


@policy_app.command("check")
def policy_check(path: Path) -> None:
    """Validate a policy pack and print its rules and version hash."""
    from agentflow.policy import load_pack

    try:
        pack = load_pack(path)
    except AgentflowError as exc:
        fail_decision(exc)
    console.print(f"{path}: pack {pack.name!r}, version {pack.version_hash}, {len(pack.rules)} rules", highlight=False)
    table = Table("#", "rule", "effect", "matches", "when")
    for i, rule in enumerate(pack.rules, 1):
        what = ", ".join([*rule.match.tools, *(f"#{t}" for t in rule.match.tags)]) or "every call"
        table.add_row(str(i), rule.id, rule.effect, what, rule.when or "-")
    console.print(table, highlight=False, markup=False)
