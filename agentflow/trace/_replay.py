"""Replay a recorded run against the current code, with every kind of I/O forbidden.

How: the store is copied with SQLite's online backup API into a temporary file; on the copy the
run is made pending again and its unfinished steps (intent recorded, no outcome) are dropped, so
only final outcomes remain. A worker of an App that shares the caller's workflow and activity
registrations drives the copy. Every recorded step is answered from the history; a step the
history does not hold would have to execute, and the one function through which the engine
executes anything (`call_activity`: activities, model calls, tools, policy and approval steps)
refuses while a replay runs in that context. Model requests are disabled too.

A finished run replays to the same end and result, or the replay raises `NonDeterminismError`
saying where the code diverges. An unfinished run replays up to its live frontier (the first step
it has not recorded), which is not an error.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import os
import sqlite3
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentflow.engine import Activity, ActivityInfo, App, Worker, Workflow
from agentflow.errors import ConfigurationError, CorruptRecordError, NonDeterminismError, WorkflowError
from agentflow.trace._records import Recorded

_TERMINAL = ("completed", "failed", "cancelled")
# A run stopped by a code/record mismatch is not a finished story: fixed code goes further.
_STOPPED_BY_CODE = ("NonDeterminismError", "CorruptRecordError", "NotRegisteredError", "InternalError")
_ENV_LOCK = threading.Lock()
# agentflow.llm._guard.ENV (not imported: agentflow.llm loads the model clients).
MODEL_REQUESTS_ENV = "AGENTFLOW_ALLOW_MODEL_REQUESTS"
# The engine function every execution goes through (activities, model calls, tools, policy and
# approval steps): the one seam a replay must close. Not a public hook of the engine (yet).
_SEAM = "call_activity"


class _ReplayForbidden(WorkflowError):
    """A step that would execute during a replay (never recorded in a real store)."""

    retryable = False


@dataclass(slots=True)
class _Guard:
    forbidden: list[tuple[int, str, str]] = field(default_factory=list)
    timed_out: bool = False


_REPLAYING: contextvars.ContextVar[_Guard | None] = contextvars.ContextVar("agentflow_trace_replay", default=None)


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


def _install_guard() -> None:
    """Wrap the engine's `call_activity` once: it refuses in a replay context, else delegates."""
    from agentflow.engine import _executor

    current = getattr(_executor, _SEAM)
    if getattr(current, "agentflow_replay_guard", False):
        return
    original: Callable[..., Awaitable[Any]] = current

    async def guarded(
        activity: Activity[Any, Any], info: ActivityInfo, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        guard = _REPLAYING.get()
        if guard is None:
            return await original(activity, info, args, kwargs)
        guard.forbidden.append((info.seq, activity.kind, activity.name))
        raise _ReplayForbidden(
            f"replay: {activity.kind} {activity.name} (step {info.seq}) would execute", run_id=info.run_id, seq=info.seq
        )

    guarded.agentflow_replay_guard = True  # type: ignore[attr-defined]
    setattr(_executor, _SEAM, guarded)


def copy_store(path: str, directory: str) -> str:
    """A consistent copy of a live SQLite store (WAL included), via the online backup API."""
    target = str(Path(directory) / "replay.db")
    src, dst = sqlite3.connect(path), sqlite3.connect(target)
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()
    return target


def _prepare(path: str, recorded: Recorded) -> None:
    run = recorded.run
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            "UPDATE af_runs SET status = 'pending', owner = NULL, output = NULL, error = NULL, completed_at = NULL, "
            "wake_at = NULL, waiting_on = NULL WHERE id = ?",
            (run.id,),
        )
        conn.execute("DELETE FROM af_steps WHERE run_id = ? AND status NOT IN ('completed', 'failed')", (run.id,))
        # Other live runs of the tree stay put: the replay drives this run only.
        conn.execute(
            "UPDATE af_runs SET status = 'cancelled' WHERE root_id = ? AND id != ? AND status NOT IN "
            "('completed', 'failed', 'cancelled')",
            (run.root_id, run.id),
        )
        conn.execute("COMMIT")
    finally:
        conn.close()


def _replica(url: str, source: App | Workflow[Any, Any], activities: Sequence[Activity[Any, Any]]) -> App:
    replica = App(url, inline_wait=0.0)
    # The workflow code refers to its Activity objects, and the engine checks them by identity:
    # the replica must hold the very same registrations (App has no public way to share them).
    if isinstance(source, App):
        replica._workflows = dict(source._workflows)
        replica._activities = dict(source._activities)
    elif isinstance(source, Workflow):
        replica._workflows = {source.name: source}
        replica._activities = {a.name: a for a in activities}
    else:
        raise ConfigurationError(f"replay() takes an App or a Workflow, not {type(source).__name__}")
    return replica


def _settled(replica: App, run_id: str, guard: _Guard) -> bool:
    run = replica.store.get_run(run_id)
    return run.terminal or run.status == "waiting" or bool(guard.forbidden)


def _drive(replica: App, run_id: str, root_id: str, timeout: float) -> _Guard:
    """Drive the copy on a thread of its own (works under a running loop, e.g. Jupyter)."""
    guard = _Guard()
    failure: list[BaseException] = []

    async def go() -> None:
        _REPLAYING.set(guard)  # inherited by the worker's tasks: only they are guarded
        stop = asyncio.Event()
        task = asyncio.create_task(Worker(replica, root_id=root_id, poll_interval=0.005).run_forever(stop))
        deadline = time.monotonic() + timeout
        while not _settled(replica, run_id, guard) and not task.done():
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
    return guard


def _finished(recorded: Recorded) -> bool:
    run = recorded.run
    return run.status in _TERMINAL and run.error_dict().get("type") not in _STOPPED_BY_CODE


def replay_run(
    recorded: Recorded, source_path: str, source: App | Workflow[Any, Any], *,
    activities: Sequence[Activity[Any, Any]] = (), timeout: float = 60.0,
) -> ReplayResult:  # fmt: skip
    """Replay one recorded run on a copy of its store; see the module docstring."""
    _install_guard()
    with tempfile.TemporaryDirectory(prefix="agentflow-replay-") as tmp:
        path = copy_store(source_path, tmp)
        _prepare(path, recorded)
        replica = _replica(f"sqlite:///{path}", source, activities)
        try:
            replica.workflow_named(recorded.run.workflow)  # NotRegisteredError names what is registered
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
