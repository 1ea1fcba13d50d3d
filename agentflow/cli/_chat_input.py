"""What `agentflow chat` reads: prompts and lines from a terminal or a pipe, slash commands,
and answers at an approval prompt."""

from __future__ import annotations

import io
import sys
from typing import Any, Literal

from rich.console import Console
from rich.text import Text

from agentflow.chat import safe_text

Answer = Literal["y", "n", "s"]


def parse_answer(line: str) -> tuple[Answer | None, str]:
    """`y [comment]` / `n [reason]` / `s` (or nothing) at an approval prompt; None if neither."""
    word, _, rest = line.strip().partition(" ")
    word = word.lower()
    if word in ("y", "yes", "approve"):
        return "y", rest.strip()
    if word in ("n", "no", "reject"):
        return "n", rest.strip()
    if word in ("", "s", "skip"):
        return "s", ""
    return None, ""


def parse_command(line: str) -> tuple[str, list[str]] | None:
    """`/name arg...` → (name, args); None for a task (anything not starting with /)."""
    text = line.strip()
    if not text.startswith("/"):
        return None
    name, *args = text[1:].split() or [""]
    return name.lower(), args


class Quit(Exception):
    """The operator left (/quit or end of input)."""


class LineReader:
    """Lines from stdin, a pipe or a terminal; each prompt flushed before reading."""

    def __init__(self, console: Console, stream: Any = None) -> None:
        self.console = console
        self.stream = stream if stream is not None else sys.stdin
        self.eof = False

    def __call__(self, prompt: Text) -> str | None:
        if self.eof:
            return None
        self.console.print(prompt, end="")
        self.console.file.flush()
        if self.stream is sys.stdin and self.stream.isatty():
            try:
                import readline  # noqa: F401 - line editing and history for input()
            except ImportError:
                pass
            try:
                return input()
            except EOFError:
                self.console.print()
                self.eof = True
                return None
        line = self.stream.readline()
        if not line:
            self.console.print()
            self.eof = True
            return None
        text = str(line).rstrip("\r\n")
        self.console.print(Text(safe_text(text)))  # not a terminal: nothing echoed it; keep the transcript readable
        return text


def as_utf8(stream: Any) -> Any:
    """stdin (a pipe) read as UTF-8 whatever the locale; a terminal is left to `input()`."""
    buffer = getattr(stream, "buffer", None)
    if buffer is None or stream.isatty():
        return stream
    return io.TextIOWrapper(buffer, encoding="utf-8", errors="replace")
