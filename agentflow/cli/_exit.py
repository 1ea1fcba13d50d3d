"""Exit codes: one table for every command, so a script or a pipeline can act on the outcome.

    code  meaning
    0     completed (for an agent: it answered)
    1     the run failed (an error ended it)
    2     bad usage or configuration: a flag, an unknown run, no such database, bad credentials
    3     the run was cancelled
    4     the agent stopped unfinished: max_turns, budget_exceeded, time_limit
    5     waiting for people: an approval or a signal (`agentflow approvals ...` decides it)
    6     still running or queued (e.g. `--wait` ran out of time, or a worker holds it)
    75    the store is busy or unreachable: retry later (EX_TEMPFAIL)

`exit_code_for` maps a run's status (and an agent's outcome, when the run recorded one) to the
table; the README and `agentflow --help` print the same table.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "EXIT_BUSY",
    "EXIT_CANCELLED",
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_RUNNING",
    "EXIT_UNFINISHED",
    "EXIT_USAGE",
    "EXIT_WAITING",
    "exit_code_for",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_CANCELLED = 3
EXIT_UNFINISHED = 4
EXIT_WAITING = 5
EXIT_RUNNING = 6
EXIT_BUSY = 75

_BY_STATUS = {
    "completed": EXIT_OK,
    "failed": EXIT_FAILED,
    "cancelled": EXIT_CANCELLED,
    "waiting": EXIT_WAITING,
    "pending": EXIT_RUNNING,
    "running": EXIT_RUNNING,
}
_UNFINISHED_OUTCOMES = frozenset({"max_turns", "budget_exceeded", "time_limit"})


def exit_code_for(status: str, outcome: Mapping[str, Any] | None = None) -> int:
    """The exit code of a run in `status`; `outcome` is an agent run's recorded output (a dict
    with a `status` of its own), which turns a completed run that did not answer into 4 (or 1
    when the agent reports `failed`)."""
    code = _BY_STATUS.get(status, EXIT_FAILED)
    if code == EXIT_OK and isinstance(outcome, Mapping):
        agent_status = outcome.get("status")
        if agent_status in _UNFINISHED_OUTCOMES:
            return EXIT_UNFINISHED
        if agent_status == "failed":
            return EXIT_FAILED
    return code
