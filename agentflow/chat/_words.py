"""The words of the chat that need nothing loaded: the help texts, and which messages are
commands rather than tasks (the terminal chat asks before it loads anything else)."""

from __future__ import annotations

import re

HELP = (
    "In a run's conversation you can type: `approve [comment]` or `reject <reason>` (the run's open "
    "approval; name it, e.g. `approve apr_1234 looks right`, when there are several), `status`, `why?`."
)
#: A message that is only a command word (`help`, `?`, `/help`, `quit`, `status`, `why?`): a
#: command wherever it is typed, never a task; `help me fix CS-101` is a task.
_BARE = re.compile(r"^\s*/?(help|h|\?|quit|exit|q|status|why|approve|reject|approvals|runs)\s*[?!.]?\s*$", re.I)
_ALIASES = {"h": "help", "?": "help", "exit": "quit", "q": "quit"}
START_HELP = "Type a task for the copilot to start a run, e.g. `CS-101 drop rate is high, investigate`. " + HELP


def bare_command(text: str) -> str | None:
    """The command `text` is when it is only a command word, else None (a task).

    `help`, `h`, `?` are "help"; `quit`, `exit`, `q` are "quit"; `status`, `why`, `approve`,
    `reject`, `approvals`, `runs` are themselves; a leading `/` and a trailing `?`, `!` or `.` are
    allowed. Every surface asks this before starting a run on what the operator typed."""
    found = _BARE.match(text)
    if found is None:
        return None
    word = found.group(1).lower()
    return _ALIASES.get(word, word)
