"""`agentflow policy check`: validate a policy pack and show its rules and version hash."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from agentflow.cli._common import JsonOption, console, fail_decision
from agentflow.cli._json import emit
from agentflow.errors import AgentflowError

policy_app = typer.Typer(help="Policy packs.", no_args_is_help=True)


@policy_app.command("check")
def policy_check(path: Path, as_json: JsonOption = False) -> None:
    """Validate a policy pack and print its rules and version hash (a broken pack: exit 2, with
    `file:line: reason`)."""
    from agentflow.policy import load_pack

    try:
        pack = load_pack(path)
    except AgentflowError as exc:
        fail_decision(exc)
    if as_json:
        # The pack as loaded (defaults filled in, durations in seconds) and the hash decisions name.
        emit({"path": str(path), "version_hash": pack.version_hash} | pack.model_dump(mode="json"))
        return
    console.print(f"{path}: pack {pack.name!r}, version {pack.version_hash}, {len(pack.rules)} rules", highlight=False)
    table = Table("#", "rule", "effect", "matches", "when")
    for i, rule in enumerate(pack.rules, 1):
        what = ", ".join([*rule.match.tools, *(f"#{t}" for t in rule.match.tags)]) or "every call"
        table.add_row(str(i), rule.id, rule.effect, what, rule.when or "-")
    console.print(table, highlight=False, markup=False)
