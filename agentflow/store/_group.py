"""Group commit: the writes of many runs share one transaction and one durable flush.

At `synchronous=FULL` every commit waits for the disk (an fsync on SQLite, a WAL flush on
PostgreSQL): one commit per step caps a worker at one step per flush, whatever its concurrency
(measured: ~245 steps/s for 1,000 concurrent agent runs, i.e. 66-81 s to drain them). A
`GroupCommit` owns one writer thread. Executors hand it their writes (`await group.write(ops)`)
and go on serving other runs; the thread takes every write queued so far, runs them in one
transaction (each still fenced on its run's lease epoch) and commits once. A write's future
resolves only after its batch is durable, so a step's result reaches its workflow exactly when it
did before: once it is recorded. The event loop does not wait on the disk for a run's writes
(steps, timers, signals, parks, ends); it still does for the few writes made outside runs
(claims, starting runs, policy and approval transactions).

What can go wrong in a batch, and what each write then gets:
- a fenced statement changes no row (a lease taken over), or a statement fails on its own data:
  the batch is rolled back and its writes are retried one transaction each, so only the write at
  fault fails (with `LeaseLostError` / its `StoreError`) and the others commit;
- the database is busy or unreachable (`StoreBusyError`: a lock wait past the busy timeout, a
  PostgreSQL deadlock between two workers' batches, a lost connection): the writes are retried one
  by one once, and after the first one that is still busy the rest get that error (every run
  stops and is handed back: nothing recorded is lost);
- the disk is full or failing: every write gets that `StoreError` (the worker stops, saying why).

Writes of one run (one execution) form a `Chain`: they become durable in the order they were
handed over, and once one of them fails, every later one fails too (with the same error), even if
it was already queued: a run's history never holds a later record without an earlier one (its
outcomes are handed over in a recorded order, and a gap would stop every replay).

A write whose awaiting task is cancelled may still commit (it was handed over, and so were the
writes before it): the same as a crash just after a commit. `close()` commits what is queued and
joins the thread; the store calls it before it closes its connections.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from agentflow.errors import StoreBusyError, StoreError
from agentflow.store._backend import Backend, Op

__all__ = ["Chain", "GroupCommit"]

#: Most writes one transaction takes (a batch of this many 1-step writes commits in a few ms).
MAX_BATCH = 1024

Outcome = list[int] | None | StoreError


class Chain:
    """The writes of one execution of a run (see the module doc): after a failure, the rest fail."""

    __slots__ = ("failed",)

    def __init__(self) -> None:
        self.failed: StoreError | None = None


@dataclass(slots=True)
class _Write:
    ops: list[Op]
    run_id: str | None
    unless: tuple[str, Sequence[Any]] | None
    fut: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop
    chain: Chain | None


class GroupCommit:
    """A writer thread that commits queued writes of many runs together (see the module doc)."""

    def __init__(self, backend: Backend, *, max_batch: int = MAX_BATCH) -> None:
        self.backend = backend
        self.max_batch = max_batch
        self._cond = threading.Condition()
        self._queue: list[_Write] = []
        self._thread: threading.Thread | None = None
        self._closing = False
        self._committing = False
        #: Transactions committed and writes they carried (what `bench/agents.py` reports).
        self.batches = 0
        self.writes = 0

    async def write(
        self, ops: list[Op], *, run_id: str | None = None, unless: tuple[str, Sequence[Any]] | None = None,
        chain: Chain | None = None,
    ) -> list[int] | None:  # fmt: skip
        """Commit `ops` as one atomic unit (with other runs' writes); return their rowcounts.
        With `unless`: nothing is written and None is returned when that query returns a row in
        the same transaction (see `Backend.write_unless`)."""
        outcome = await self.submit(ops, run_id=run_id, unless=unless, chain=chain)
        if isinstance(outcome, StoreError):
            raise outcome
        return outcome  # type: ignore[no-any-return]

    def submit(
        self, ops: list[Op], *, run_id: str | None = None, unless: tuple[str, Sequence[Any]] | None = None,
        chain: Chain | None = None, loop: asyncio.AbstractEventLoop | None = None,
    ) -> asyncio.Future[Any]:  # fmt: skip
        """`write`, queued now (its place in the order is taken here); await the future (of
        `loop`, default the running one) for its outcome (rowcounts, None, or the StoreError)."""
        loop = loop if loop is not None else asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        with self._cond:
            self._queue.append(_Write(ops, run_id, unless, fut, loop, chain))
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name="agentflow-commit", daemon=True)
                self._thread.start()
            self._cond.notify()
        return fut

    @property
    def idle(self) -> bool:
        """Nothing queued and no batch being committed (a write made inline now would not wait
        for the writer thread's lock)."""
        return not self._queue and not self._committing

    def close(self) -> None:
        """Commit what is queued, then stop the writer thread (joined). A later write starts a
        new one (a closed store reconnects when used again)."""
        with self._cond:
            self._closing = True
            self._cond.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        with self._cond:
            self._closing = False

    # -- the writer thread -------------------------------------------------------------------
    def _serve(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    self._thread = None
                    return
                self._committing = True  # before the queue empties: `idle` is read without the lock
                batch = self._queue[: self.max_batch]
                del self._queue[: self.max_batch]
            try:
                outcomes = self._commit(batch)
            except BaseException as exc:  # noqa: BLE001 - the thread must live on: writes would hang
                failed = StoreError(f"writing {len(batch)} runs' steps: internal error: {exc!r}")
                outcomes = [failed] * len(batch)
            finally:
                self._committing = False
            for w, outcome in zip(batch, outcomes, strict=True):
                if isinstance(outcome, StoreError) and w.chain is not None and w.chain.failed is None:
                    w.chain.failed = outcome
            self.batches += 1
            self.writes += len(batch)
            by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Outcome]]] = {}
            for w, outcome in zip(batch, outcomes, strict=True):
                by_loop.setdefault(w.loop, []).append((w.fut, outcome))
            for loop, settled in by_loop.items():
                try:
                    loop.call_soon_threadsafe(_settle_all, settled)  # one wake-up per loop and batch
                except RuntimeError:
                    pass  # that loop is closed: nobody waits for these any more

    def _commit(self, batch: list[_Write]) -> list[Outcome]:
        if any(w.chain is not None and w.chain.failed is not None for w in batch):
            return self._one_by_one(batch)  # a chain already broken: its writes fail, the rest go
        if len(batch) == 1:
            return [self._alone(batch[0])]
        try:
            return list(self.backend.write_batch([(w.ops, w.run_id, w.unless) for w in batch]))
        except StoreBusyError:
            return self._one_by_one(batch)
        except StoreError as exc:
            if _refused_write(exc):
                return self._one_by_one(batch)
            return [exc] * len(batch)  # disk full or failing: nothing can be written

    def _one_by_one(self, batch: list[_Write]) -> list[Outcome]:
        """Each write in its own transaction: only the one at fault fails; once the database is
        still busy on its own, the rest fail with that (each waiting its busy timeout would take
        the worker down for minutes)."""
        out: list[Outcome] = []
        busy: StoreBusyError | None = None
        for w in batch:
            if w.chain is not None and w.chain.failed is not None:
                out.append(w.chain.failed)  # an earlier write of its run failed
                continue
            outcome: Outcome = busy if busy is not None else self._alone(w)
            if isinstance(outcome, StoreBusyError):
                busy = outcome
            if isinstance(outcome, StoreError) and w.chain is not None:
                w.chain.failed = outcome
            out.append(outcome)
        return out

    def _alone(self, w: _Write) -> Outcome:
        try:
            if w.unless is not None:
                return [] if self.backend.write_unless(w.unless, w.ops, run_id=w.run_id or "") else None
            return self.backend.write(w.ops, run_id=w.run_id)
        except StoreError as exc:
            return exc


def _refused_write(exc: StoreError) -> bool:
    """A failure of one write's own statements (a lost lease, a constraint), not of the disk."""
    text = str(exc)
    return not ("disk is full" in text or "disk I/O error" in text or "read-only" in text or "readonly" in text)


def _settle_all(settled: list[tuple[asyncio.Future[Any], Outcome]]) -> None:
    for fut, outcome in settled:
        if not fut.done():  # its task was cancelled meanwhile
            fut.set_result(outcome)
