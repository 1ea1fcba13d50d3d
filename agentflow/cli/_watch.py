"""Following a run from the CLI: `agentflow runs watch RUN`, `agentflow runs show RUN --wait`, and
how a run's outcome is printed and turned into an exit code (`_exit`), shared with `agentflow run`.

A worker in another process drives the run; this process only reads the store, every
`POLL_SECONDS`, until the run has settled: it ended, or it waits for people (an approval or a
signal). A run parked on a timer or a child run has not settled: a worker wakes it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from agentflow.cli._common import DbOption, console, fail, store
from agentflow.cli._exit import EXIT_RUNNING, exit_code_for
from agentflow.cli._json import decoded, iso, record
from agentflow.errors import AgentflowError

if TYPE_CHECKING:
    from agentflow.store import EventStore, RunRecord, StepRecord

__all__ = ["POLL_SECONDS", "follow", "print_outcome", "run_exit_code", "run_json", "runs_watch", "step_detail"]

#: How often a follower reads the store.
POLL_SECONDS = 0.25
#: A run's `id` is `run_id` in every JSON document (`_json`).
RUN_ID = {"id": "run_id"}


def run_json(run: RunRecord, **extra: Any) -> dict[str, Any]:
    """A run as `--json` prints it (the one schema of `_json`; the wake-up times it is parked on
    are ISO-8601 too)."""
    out = record(run.to_dict(), rename=RUN_ID)
    parked = out.get("waiting_on")
    if isinstance(parked, dict) and isinstance(parked.get("timers"), list):
        out["waiting_on"] = parked | {"timers": [iso(t) if isinstance(t, int | float) else t for t in parked["timers"]]}
    return out | extra


def waiting_for_people(run: RunRecord) -> bool:
    """Whether a waiting run waits for a signal (an approval's, or one a person sends)."""
    parked = decoded(run.waiting_on) if run.status == "waiting" else None
    return isinstance(parked, dict) and bool(parked.get("signals"))


def settled(run: RunRecord) -> bool:
    """Whether a follower stops: the run ended, or nothing but people can move it on."""
    return run.terminal or waiting_for_people(run)


def run_exit_code(run: RunRecord) -> int:
    """The exit code of the table (`_exit`) for a run as recorded now: a run that has not
    settled (queued, running, parked on a timer) is 6, whatever its status says."""
    if not settled(run):
        return EXIT_RUNNING
    outcome = decoded(run.output)
    return exit_code_for(run.status, outcome if isinstance(outcome, dict) else None)


def follow(
    the_store: EventStore, run_id: str, *, timeout: float | None = None,
    on_poll: Callable[[RunRecord], None] | None = None,
) -> RunRecord:  # fmt: skip
    """Read the run every `POLL_SECONDS` (calling `on_poll` each time) until it settles or
    `timeout` seconds pass; return it as last read.

    Raises:
        UnknownRunError: there is no such run.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        run = the_store.get_run(run_id)
        if on_poll is not None:
            on_poll(run)
        if settled(run) or (deadline is not None and time.monotonic() >= deadline):
            return run
        time.sleep(POLL_SECONDS if deadline is None else max(0.0, min(POLL_SECONDS, deadline - time.monotonic())))


def step_detail(step: StepRecord) -> str:
    """One short line about a step's outcome: an error's type and message, a model call's usage,
    or the result."""
    if step.error and step.status != "completed":
        err = decoded(step.error)
        if isinstance(err, dict):
            return _short(f"{err.get('type')}: {err.get('message', '')}")
        return _short(str(err))
    body = decoded(step.result)
    if step.kind == "llm" and isinstance(body, dict):
        u = body.get("usage") or {}
        return (
            f"tokens {u.get('input_tokens')}+{u.get('output_tokens')} ({u.get('source')}), "
            f"${u.get('cost_usd') or 0:.6f}, finish {body.get('finish_reason')}"
        )
    return _short(step.result or "")


def _short(text: str, limit: int = 100) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def print_outcome(run: RunRecord) -> None:
    """A run's status on one line, then what a person needs: the agent's outcome and answer,
    the error of a failed run (type and message), or what a waiting run waits for and the
    command that gives it."""
    console.print(
        f"run [cyan]{escape(run.id)}[/] ({escape(run.workflow)}, tenant {escape(run.tenant)}): [bold]{run.status}[/]",
        soft_wrap=True,
    )
    outcome = decoded(run.output)
    if isinstance(outcome, dict) and outcome.get("status"):
        console.print(f"outcome: {outcome.get('status')}", highlight=False)
        if outcome.get("detail"):
            console.print(str(outcome["detail"]), markup=False, highlight=False)
        if outcome.get("answer"):
            console.print(str(outcome["answer"]), markup=False, highlight=False)
    error = decoded(run.error)
    if run.status in ("failed", "cancelled") and error:
        kind, message = (error.get("type"), error.get("message")) if isinstance(error, dict) else (None, error)
        console.print(
            f"[bold red]error:[/] {escape(str(kind or 'Error'))}: {escape(str(message or ''))}", soft_wrap=True
        )
    parked = decoded(run.waiting_on) if run.status == "waiting" else None
    for name in parked.get("signals", []) if isinstance(parked, dict) else []:
        if name.startswith("approval:"):
            rid = name.split(":", 1)[1]
            console.print(f"waiting for approval [yellow]{rid}[/]: agentflow approvals show {rid}; "
                          f"agentflow approvals approve {rid} --token <operator token>", highlight=False, soft_wrap=True)  # fmt: skip
        else:
            console.print(f"waiting for signal [yellow]{escape(name)}[/]: agentflow runs signal {escape(run.id)} "
                          f"{escape(name)} --payload <JSON>", highlight=False, soft_wrap=True)  # fmt: skip


def runs_watch(
    run_id: str,
    db: DbOption = None,
    timeout: Annotated[
        float | None, typer.Option(help="Stop after this many seconds (exit 6 if the run has not settled).")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON document per line: each step as recorded, then the run.")
    ] = False,
) -> None:
    """Follow a run live: print each step as it is recorded (seq, kind, name, status, result or
    error), until the run ends or waits for people; exit with the run's code (0 completed, 1
    failed, 3 cancelled, 4 agent unfinished, 5 waiting for people, 6 --timeout passed).

    A worker elsewhere drives the run; this only reads the store (every 0.25 s)."""
    the_store = store(db)
    seen: dict[int, tuple[str, int]] = {}

    def show_new(run: RunRecord) -> None:
        for step in the_store.load_steps(run.id):
            if seen.get(step.seq) == (step.status, step.attempt):
                continue
            seen[step.seq] = (step.status, step.attempt)
            if as_json:
                _line({"event": "step", "run_id": run.id, **record(step.to_dict())})
            else:
                _print_step(step)

    try:
        run = follow(the_store, run_id, timeout=timeout, on_poll=show_new)
    except AgentflowError as exc:
        fail(exc)
    if as_json:
        _line({"event": "run", **run_json(run)})
    else:
        print_outcome(run)
    raise typer.Exit(code=run_exit_code(run))


def _line(value: dict[str, Any]) -> None:
    print(json.dumps(value, ensure_ascii=False, default=str), flush=True)


def _print_step(step: StepRecord) -> None:
    attempt = f" (attempt {step.attempt})" if step.attempt > 1 else ""
    console.print(
        f"[dim]{step.seq:>4}[/] {step.kind:<9} {escape(step.name)} [bold]{step.status}[/]{attempt}"
        f"  {escape(step_detail(step))}",
        highlight=False,
        soft_wrap=True,
    )
