"""Replay a recorded run against the current code, with every kind of I/O forbidden.

How: the run's tree (its run rows, steps, attempts, signals, approvals and the blobs its steps
refer to) is copied from the store, SQLite or PostgreSQL, into a temporary SQLite store; there
the run is made pending again and its unfinished steps (intent recorded, no outcome) are
dropped, so only final outcomes remain. A replay-only `Worker` (the engine's public mode: it
answers every step from the history and executes nothing) of an App holding the caller's very
workflow and activity registrations (`App.with_store` / `App.include`) drives the copy. A step
the history does not hold is refused, not run. Model requests are disabled too.

A finished run replays to the same end and result, or the replay raises `NonDeterminismError`
saying where the code diverges. An unfinished run replays up to its live frontier (the first step
it has not recorded), which is not an error.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentflow.engine import Activity, App, Client, Worker, Workflow
from agentflow.errors import ConfigurationError, CorruptRecordError, NonDeterminismError
from agentflow.trace._records import Recorded

_TERMINAL = ("completed", "failed", "cancelled")
# A run stopped by a code/record mismatch is not a finished story: fixed code goes further.
_STOPPED_BY_CODE = ("NonDeterminismError", "CorruptRecordError", "NotRegisteredError", "InternalError")
_ENV_LOCK = threading.Lock()
# agentflow.llm._guard.ENV (not imported: agentflow.llm loads the model clients).
MODEL_REQUESTS_ENV = "AGENTFLOW_ALLOW_MODEL_REQUESTS"


@dataclass(slots=True)
class _Guard:
    forbidden: list[tuple[int, str, str]] = field(default_factory=list)
    timed_out: bool = False


@dataclass(frozen=True, slots=True)
class ReplayResult:
    """A replay that matched the history.

    Attributes:
        run_id: the run replayed.
        steps: recorded outcomes the replay was answered from.
        status: how the replayed run ended ("completed", "failed", "cancelled"), or "frontier"
            when the run is unfinished and the replay reached its first unrecorded step.
        frontier: that step's seq (None for a finished run).
        output: the replayed run's result (JSON), for a completed run.
    """

    run_id: str
    steps: int
    status: str
    frontier: int | None = None
    output: Any = field(default=None, repr=False)


def copy_tree(source: Client, recorded: Recorded, target: App) -> None:
    """Copy the rows of `recorded`'s run tree from `source`'s store (either backend) into
    `target`'s (a fresh store): what a replay reads, and nothing of other runs."""
    target.store.import_rows(source.store.export_tree(recorded.run.root_id))


def _prepare(replica: App, recorded: Recorded) -> None:
    replica.store.rewind_for_replay(recorded.run.id, recorded.run.root_id)


def _replica(url: str, source: App | Workflow[Any, Any], activities: Sequence[Activity[Any, Any]]) -> App:
    if isinstance(source, App):
        return source.with_store(url, inline_wait=0.0)
    if not isinstance(source, Workflow):
        raise ConfigurationError(f"replay() takes an App or a Workflow, not {type(source).__name__}")
    replica = App(url, inline_wait=0.0)
    replica.include(source, *activities)
    return replica


def _drive(replica: App, run_id: str, root_id: str, timeout: float) -> _Guard:
    """Drive the copy with a replay-only worker, on a thread of its own (works under a running
    loop, e.g. Jupyter)."""
    guard = _Guard()
    failure: list[BaseException] = []
    worker = Worker(replica, root_id=root_id, poll_interval=0.005, replay_only=True)

    def settled() -> bool:
        run = replica.store.get_run(run_id)
        return run.terminal or run.status == "waiting" or bool(worker.refused)

    async def go() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run_forever(stop))
        deadline = time.monotonic() + timeout
        while not settled() and not task.done():
            if time.monotonic() > deadline:
                guard.timed_out = True
                break
            await asyncio.sleep(0.002)
        stop.set()
        await task

    def main() -> None:
        try:
            asyncio.run(go())
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            failure.append(exc)

    thread = threading.Thread(target=main, name="agentflow-replay", daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    guard.forbidden = [(r.seq, r.kind, r.name) for r in worker.refused if r.run_id == run_id]
    return guard


def _finished(recorded: Recorded) -> bool:
    run = recorded.run
    return run.status in _TERMINAL and run.error_dict().get("type") not in _STOPPED_BY_CODE


def replay_run(
    recorded: Recorded, client: Client, source: App | Workflow[Any, Any], *,
    activities: Sequence[Activity[Any, Any]] = (), timeout: float = 60.0,
) -> ReplayResult:  # fmt: skip
    """Replay one recorded run (read through `client`, either backend) on a copy of its tree; see
    the module docstring."""
    with tempfile.TemporaryDirectory(prefix="agentflow-replay-") as tmp:
        replica = _replica(f"sqlite:///{Path(tmp) / 'replay.db'}", source, activities)
        try:
            replica.workflow_named(recorded.run.workflow)  # NotRegisteredError names what is registered
            copy_tree(client, recorded, replica)
            _prepare(replica, recorded)
            with _ENV_LOCK:
                before = os.environ.get(MODEL_REQUESTS_ENV)
                os.environ[MODEL_REQUESTS_ENV] = "0"
            try:
                guard = _drive(replica, recorded.run_id, recorded.run.root_id, timeout)
            finally:
                with _ENV_LOCK:
                    if before is None:
                        os.environ.pop(MODEL_REQUESTS_ENV, None)
                    else:
                        os.environ[MODEL_REQUESTS_ENV] = before
            after = replica.store.get_run(recorded.run_id)
        finally:
            replica.close()
    return _judge(recorded, after.status, after.error_dict(), after.output, guard)


def _judge(recorded: Recorded, status: str, error: dict[str, Any], output: str | None, guard: _Guard) -> ReplayResult:
    run = recorded.run
    final = sum(1 for s in recorded.steps if s.status in ("completed", "failed"))
    kind = error.get("type")
    if kind == "NonDeterminismError":
        raise NonDeterminismError(
            f"replay against the current code: {error.get('message')}", run_id=run.id, seq=error.get("seq"),
            tenant=run.tenant,
        )  # fmt: skip
    if kind == "CorruptRecordError":
        raise CorruptRecordError(str(error.get("message")), run_id=run.id, seq=error.get("seq"))
    if guard.timed_out:
        raise TimeoutError(f"the replay of run {run.id} did not settle in time (status {status})")
    unfinished = {s.seq for s in recorded.steps if s.status not in ("completed", "failed")}
    if not _finished(recorded):
        frontier = min((seq for seq, _, _ in guard.forbidden), default=None)
        return ReplayResult(run.id, final, "frontier", frontier=frontier)
    new = [(seq, k, name) for seq, k, name in guard.forbidden if seq not in unfinished]
    if new:
        seq, k, name = new[0]
        raise _diverged(
            recorded, seq, f"the code now calls {k} `{name}` at step {seq}, which the recorded run never made"
        )
    if status == "waiting":
        raise _diverged(
            recorded, None, "the code now waits (a timer, a signal or a child) where the recorded run went on"
        )
    if status != run.status:
        why = f": {error.get('type')}: {error.get('message')}" if error else ""
        raise _diverged(recorded, None, f"the recorded run ended {run.status} but the replay ends {status}{why}")
    if status == "completed" and _json(output) != _json(run.output):
        raise _diverged(recorded, None, "the workflow now returns a different result from the same recorded steps")
    return ReplayResult(run.id, final, status, output=_json(output))


def _diverged(recorded: Recorded, seq: int | None, what: str) -> NonDeterminismError:
    run = recorded.run
    return NonDeterminismError(
        f"replay of run {run.id} against the current code: {what}. The workflow changed under a recorded "
        "run; guard the change with `ctx.patched('<change-id>')` so recorded runs take the old path.",
        run_id=run.id, seq=seq, tenant=run.tenant,
    )  # fmt: skip


def _json(text: str | None) -> Any:
    return None if text is None else json.loads(text)
