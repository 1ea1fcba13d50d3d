"""`agentflow doctor`: what is wrong with a store, and the command that fixes each problem.

Exit 0 when nothing is wrong, 1 when something is, 2 when the store cannot be looked at (a
missing SQLite file, no such database), 75 when it does not answer (retry later): the same error
line as every other command.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated

import typer
from rich.text import Text

from agentflow.cli._common import DbOption, JsonOption, console, fail
from agentflow.errors import AgentflowError

if TYPE_CHECKING:
    from agentflow.engine import Diagnosis, Finding

_STYLE = {"error": "bold red", "warning": "yellow"}


def doctor(
    db: DbOption = None,
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's runs and approvals.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Find runs stuck without a live worker, approvals past expiry, runs no worker can replay, an old schema.

    Each problem comes with the command that fixes it. Nothing is changed (an old schema is not
    upgraded by the look). Exit 0 when healthy, 1 when problems were found, 2 when the store
    cannot be read (75 when it does not answer: retry later).
    """
    from agentflow.engine import diagnose
    from agentflow.store import EventStore, redact_url, resolve_url

    url = resolve_url(db)
    try:
        # migrate=False: a look must not change what it looks at (nor create a file a typo named).
        store = EventStore(url, migrate=False)
        try:
            found = diagnose(store, tenant=tenant)
        finally:
            store.close()
    except AgentflowError as exc:
        fail(exc)
    # The fixes name the database when the command line did (with its password masked).
    suffix = f" --db {redact_url(url)}" if db else ""
    if as_json:
        data = found.to_dict()
        for finding in data["findings"]:
            finding["fix"] = _with_db(finding["fix"], suffix)
        print(json.dumps({"database": redact_url(url), **data}, indent=1))
    else:
        _show(found, redact_url(url), suffix)
    raise typer.Exit(code=0 if found.healthy else 1)


def _with_db(fix: str, suffix: str) -> str:
    return fix + suffix if fix.startswith("agentflow ") else fix


def _show(found: Diagnosis, where: str, suffix: str) -> None:
    schema = found.schema
    head = f"{where}: schema {schema.found or 'none'} ({schema.status}), {found.workers_live} live worker(s)"
    head += f", {found.workers_seen} seen in the last {found.recent / 3600:g} h; app clock {_iso(found.now)}"
    # soft_wrap: ids and commands are never broken or cut (they are meant to be copied).
    console.print(head, highlight=False, soft_wrap=True)
    for f in found.findings:
        _finding(f, suffix)
    if found.healthy:
        console.print(Text("healthy: nothing stuck, nothing expired, every unfinished run is served", style="green"))
        return
    errors, warnings = found.count("error"), found.count("warning")
    more = "" if found.complete else " (not every check ran in full: see the first lines)"
    console.print(f"{errors} error(s), {warnings} warning(s){more}", highlight=False)


def _finding(f: Finding, suffix: str) -> None:
    labels = {"run": f.run_id, "approval": f.approval_id, "tenant": f.tenant, "workflow": f.workflow}
    about = " ".join(f"{label} {value}" for label, value in labels.items() if value)
    line = Text.assemble((f"{f.severity.upper():8}", _STYLE[f.severity]), (f"{f.kind}  ", "bold"), about)
    console.print(line, soft_wrap=True, highlight=False)
    console.print(Text(f"        {f.message}"), soft_wrap=True, highlight=False)
    if f.run_ids:
        console.print(Text(f"        runs: {' '.join(f.run_ids)}"), soft_wrap=True, highlight=False)
    console.print(Text.assemble("        fix: ", (_with_db(f.fix, suffix), "bold")), soft_wrap=True, highlight=False)


def _iso(when: float) -> str:
    return datetime.fromtimestamp(when, tz=UTC).isoformat(timespec="seconds")
