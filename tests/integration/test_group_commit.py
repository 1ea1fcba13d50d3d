"""Group commit (issue 14): the step writes of concurrent runs share transactions and flushes,
on a real SQLite file and a real PostgreSQL database. What must hold: a step's result reaches
its workflow only once it is durable; a write refused by its fence fails alone; a busy or full
store fails the batch quickly with its error; the event loop is never blocked by a commit."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from typing import Any

import pytest

from agentflow import App, WorkflowContext, current_activity
from agentflow.errors import LeaseLostError, StoreBusyError
from agentflow.store import EventStore, GroupCommit, StepRecord
from agentflow.store._sqlite import sqlite_path

pytestmark = pytest.mark.backends("sqlite", "postgresql")


def _step(seq: int, epoch: int) -> StepRecord:
    return StepRecord(
        seq=seq, kind="activity", name="a", digest="d", status="completed", attempt=1, args="[]",
        result=f"{seq}", error=None, started_at=1.0, finished_at=2.0, wake_at=None, epoch=epoch, delivery=seq,
    )  # fmt: skip


def _claimed(store: EventStore, n: int) -> dict[str, int]:
    for i in range(n):
        store.create_run(run_id=f"r{i}", workflow="w", tenant="default", input="[[], {}]", now=1.0)
    store.register_worker("w1", workflows={"w": "x"}, lease_ttl=60)
    return {run_id: epoch for run_id, epoch, _ in store.claim("w1", now=2.0, lease_ttl=60, limit=n, workflows=["w"])}


def test_concurrent_runs_share_commits_and_see_only_durable_results(make_app: Any, db_url: str) -> None:
    """200 runs of 5 steps at once: far fewer transactions than writes, and every step an
    activity sees as done is already committed (read on a connection of its own)."""
    app = make_app()
    assert app.store.group is not None  # on by default at FULL (and always on PostgreSQL)
    missing: list[tuple[str, int]] = []
    checker = EventStore(db_url, migrate=False)

    @app.activity(side_effect=False)
    async def step(i: int) -> int:
        info = current_activity()
        if i > 0:  # the previous step's result was handed over: it must be in the database
            seen = checker.backend.query(
                "SELECT status FROM af_steps WHERE run_id = ? AND seq = ?", (info.run_id, info.seq - 1)
            )
            if seen != [("completed",)]:
                missing.append((info.run_id, info.seq - 1))
        await asyncio.sleep(0.01)
        return i

    @app.workflow(name="five")
    async def five(ctx: WorkflowContext) -> int:
        return sum([await ctx.run(step, i) for i in range(5)])

    for i in range(200):
        app.start(five, run_id=f"r{i}")

    async def drain() -> None:
        stop = asyncio.Event()
        worker = asyncio.create_task(app.worker().run_forever(stop))
        while app.store.backend.query("SELECT count(*) FROM af_runs WHERE status = 'completed'")[0][0] < 200:
            await asyncio.sleep(0.05)
        stop.set()
        await worker

    asyncio.run(asyncio.wait_for(drain(), 120))
    try:
        assert {app.get_run(f"r{i}").status for i in range(200)} == {"completed"}
        assert missing == []
        group = app.store.group
        assert group.writes >= 200 * 6  # 5 steps and the end of each run
        assert group.batches < group.writes / 5, (group.batches, group.writes)
    finally:
        checker.close()


def test_a_batch_of_step_writes_commits_in_one_transaction(db_url: str) -> None:
    """`write_batch` takes several runs' writes (step rows, more statements, a park check) and
    commits them at once; one step row refused by its fence rolls the whole batch back."""
    store = EventStore(db_url)
    epochs = _claimed(store, 300)
    ids = list(epochs)
    try:
        writes: list[Any] = [([store.upsert_step_op(r, epochs[r], _step(1, epochs[r]))], r, None) for r in ids]
        writes.append(([store.upsert_step_op("r0", epochs["r0"], _step(2, epochs["r0"])),
                        store.attempt_op("r0", 2, 1, "{}", 1.0, 2.0, None)], "r0", None))  # fmt: skip
        blocked = ("SELECT 1 FROM af_runs WHERE id = ?", ("r1",))  # as a park finding a signal in
        writes.append(([store.upsert_step_op("r1", epochs["r1"], _step(9, epochs["r1"]))], "r1", blocked))
        assert store.backend.write_batch(writes) == [[1]] * 300 + [[1, 1], None]
        assert store.backend.query("SELECT count(*) FROM af_steps WHERE seq = 9") == [(0,)]
        rows = store.backend.query("SELECT run_id, seq, result, epoch FROM af_steps ORDER BY run_id, seq")
        assert len(rows) == 301 and ("r5", 1, "1", epochs["r5"]) in rows
        stale = [([store.upsert_step_op(r, epochs[r] + (r == "r299"), _step(3, epochs[r]))], r, None) for r in ids]
        with pytest.raises(LeaseLostError):
            store.backend.write_batch(stale)
        assert store.backend.query("SELECT count(*) FROM af_steps WHERE seq = 3") == [(0,)]
    finally:
        store.close()


def test_a_write_refused_by_its_fence_fails_alone(db_url: str) -> None:
    """In one batch, the write of a run whose lease moved on gets LeaseLostError; the others
    commit (the batch is rolled back and each write retried alone)."""
    store = EventStore(db_url)
    epochs = _claimed(store, 20)
    group = GroupCommit(store.backend)

    async def scenario() -> list[Any]:
        writes = [
            group.write([store.upsert_step_op(run_id, epoch + (run_id == "r7"), _step(1, epoch))], run_id=run_id)
            for run_id, epoch in epochs.items()
        ]
        return await asyncio.gather(*writes, return_exceptions=True)

    try:
        outcomes = dict(zip(epochs, asyncio.run(scenario()), strict=True))
        assert isinstance(outcomes.pop("r7"), LeaseLostError)
        assert all(o == [1] for o in outcomes.values()), outcomes
        assert group.batches < 20  # they were queued together
        written = {r for (r,) in store.backend.query("SELECT run_id FROM af_steps WHERE seq = 1")}
        assert written == set(epochs) - {"r7"}
        # A step already final is not overwritten either (same fence, same answer).
        run_id, epoch = "r1", epochs["r1"]
        again = _step(1, epoch)
        again.result = "changed"

        async def rewrite() -> Any:
            return await asyncio.gather(
                group.write([store.upsert_step_op(run_id, epoch, again)], run_id=run_id),
                group.write([store.upsert_step_op("r2", epochs["r2"], _step(2, epochs["r2"]))], run_id="r2"),
                return_exceptions=True,
            )

        refused, ok = asyncio.run(rewrite())
        assert isinstance(refused, LeaseLostError) and ok == [1]
        assert store.backend.query("SELECT result FROM af_steps WHERE run_id = 'r1' AND seq = 1") == [("1",)]
    finally:
        group.close()
        store.close()


class _LockHolder:
    """Another client holding what a step write needs: SQLite's write lock, or (PostgreSQL)
    every run's row, which a step write's fence locks FOR SHARE."""

    def __init__(self, db_url: str, backend: str) -> None:
        if backend == "sqlite":
            self.conn: Any = sqlite3.connect(sqlite_path(db_url), isolation_level=None)
            self.conn.execute("BEGIN IMMEDIATE")
        else:
            import psycopg

            self.conn = psycopg.connect(db_url.replace("+psycopg", ""))
            self.conn.execute("SELECT id FROM af_runs FOR UPDATE").fetchall()

    def release(self) -> None:
        if self.conn is not None:
            self.conn.rollback() if not isinstance(self.conn, sqlite3.Connection) else self.conn.execute("ROLLBACK")
            self.conn.close()
            self.conn = None


def test_the_event_loop_runs_while_a_batch_waits_for_a_lock(db_url: str, backend: str) -> None:
    """While another client holds what the writes need, queued writes wait in the writer
    thread, not on the event loop: a ticker keeps ticking. Past the busy timeout every write of
    the batch gets StoreBusyError soon (not one busy timeout per write)."""
    store = EventStore(db_url, busy_timeout=1.0)
    epochs = _claimed(store, 50)
    group = GroupCommit(store.backend)
    holder = _LockHolder(db_url, backend)
    ticks = 0

    async def scenario() -> list[Any]:
        nonlocal ticks
        writes = asyncio.gather(
            *[group.write([store.upsert_step_op(r, e, _step(1, e))], run_id=r) for r, e in epochs.items()],
            return_exceptions=True,
        )
        while not writes.done():
            ticks += 1
            await asyncio.sleep(0.01)
        return writes.result()

    try:
        started = time.monotonic()
        outcomes = asyncio.run(scenario())
        took = time.monotonic() - started
        assert all(isinstance(o, StoreBusyError) for o in outcomes), outcomes
        assert took < 10, took  # 50 writes x a 1 s busy timeout would be 50 s
        assert ticks > 50  # the loop ran all along (100 ticks a second)
        holder.release()
        asyncio.run(scenario())  # the lock is gone: they commit
        assert store.backend.query("SELECT count(*) FROM af_steps")[0][0] == 50
    finally:
        holder.release()
        group.close()
        store.close()


def test_close_commits_what_is_queued_and_a_closed_store_writes_again(db_url: str) -> None:
    """`close()` joins the writer after committing the queue; a later write starts a new writer."""
    store = EventStore(db_url)
    epochs = _claimed(store, 3)
    group = GroupCommit(store.backend)

    async def write(seq: int) -> None:
        await asyncio.gather(
            *[group.write([store.upsert_step_op(r, e, _step(seq, e))], run_id=r) for r, e in epochs.items()]
        )

    try:
        before = set(threading.enumerate())
        asyncio.run(write(1))
        writer = [t for t in threading.enumerate() if t.name == "agentflow-commit" and t not in before]
        assert len(writer) == 1
        group.close()
        assert not writer[0].is_alive()  # joined
        asyncio.run(write(2))
        assert store.backend.query("SELECT count(*) FROM af_steps")[0][0] == 6
    finally:
        group.close()
        store.close()


def test_sqlite_at_normal_writes_a_lone_run_inline_and_many_runs_together(tmp_path: Any) -> None:
    """SQLite at NORMAL commits in microseconds: a lone run (`app.run`) writes inline, a hand-off
    to the writer thread would cost more; many runs at once still share transactions."""
    app = App(f"sqlite:///{tmp_path / 'n.db'}", synchronous="NORMAL")

    @app.activity(side_effect=False)
    async def step(i: int) -> int:
        await asyncio.sleep(0.01)
        return i

    @app.workflow(name="three")
    async def three(ctx: WorkflowContext) -> int:
        return sum([await ctx.run(step, i) for i in range(3)])

    try:
        group = app.store.group
        assert group is not None
        for i in range(5):
            assert app.run(three, run_id=f"lone{i}") == 3
        assert group.writes == 0  # all inline
        for i in range(100):
            app.start(three, run_id=f"many{i}")

        async def drain() -> None:
            stop = asyncio.Event()
            worker = asyncio.create_task(app.worker().run_forever(stop))
            while len(app.list_runs(status="completed", limit=200)) < 105:
                await asyncio.sleep(0.05)
            stop.set()
            await worker

        asyncio.run(asyncio.wait_for(drain(), 60))
        assert group.writes > 100 and group.batches < group.writes / 3, (group.batches, group.writes)
    finally:
        app.close()


def test_a_runs_writes_are_durable_and_handed_over_in_their_recorded_order(tmp_path: Any) -> None:
    """Found in review: a timer's outcome was written inline (at once) while an earlier activity
    result of the same run still waited in the group commit, so the workflow saw the timer first
    although its recorded turn (`delivery`) came second: a replay would hand them over the other
    way, and a crash in between left a gap that stopped every replay. Here the store's lock is
    held while both are due; the order the workflow saw must be the recorded one."""
    app = App(f"sqlite:///{tmp_path / 'o.db'}", inline_wait=2.0)
    holder = sqlite3.connect(str(tmp_path / "o.db"), isolation_level=None, check_same_thread=False)

    @app.activity(side_effect=False)
    async def work() -> str:
        await asyncio.sleep(0.25)
        holder.execute("BEGIN IMMEDIATE")  # the store is busy when the result is written ...
        threading.Timer(0.5, lambda: holder.execute("ROLLBACK")).start()  # ... for 0.5 s
        return "X"

    @app.workflow(name="race")
    async def race(ctx: WorkflowContext) -> list[str]:
        seen: list[str] = []

        async def first() -> None:
            await ctx.sleep(0.05)
            seen.append(await ctx.run(work))

        async def second() -> None:
            await ctx.sleep(0.4)  # due while the activity's result waits for the lock
            seen.append("T")

        await asyncio.gather(first(), second())
        return seen

    try:
        live = app.run(race, run_id="r")
        recorded = sorted((s for s in app.history("r") if s.delivery is not None), key=lambda s: s.delivery or 0)
        turns = ["X" if s.kind == "activity" else "T" for s in recorded if s.kind == "activity" or s.wake_at]
        assert turns[-2:] == live, (live, [(s.seq, s.kind, s.delivery) for s in recorded])
        assert [s.delivery for s in recorded] == list(range(1, len(recorded) + 1))
    finally:
        holder.close()
        app.close()


def test_once_a_write_of_a_run_fails_its_later_queued_writes_fail_too(db_url: str) -> None:
    """A run's writes form a chain: a write refused by its fence fails the writes of that run
    queued after it (a later record without the earlier one would leave a gap in its history);
    other runs' writes in the same batches commit."""
    from agentflow.store import Chain

    store = EventStore(db_url)
    epochs = _claimed(store, 3)
    group = GroupCommit(store.backend)
    broken, fine = Chain(), Chain()

    async def scenario() -> list[Any]:
        writes = [
            group.submit(
                [store.upsert_step_op("r0", epochs["r0"] + 1, _step(1, epochs["r0"]))], run_id="r0", chain=broken
            ),
            group.submit([store.upsert_step_op("r0", epochs["r0"], _step(2, epochs["r0"]))], run_id="r0", chain=broken),
            group.submit([store.upsert_step_op("r1", epochs["r1"], _step(1, epochs["r1"]))], run_id="r1", chain=fine),
        ]
        first = await asyncio.gather(*writes)
        later = await group.submit(
            [store.upsert_step_op("r0", epochs["r0"], _step(3, epochs["r0"]))], run_id="r0", chain=broken
        )
        return [*first, later]

    try:
        stale, after, other, later = asyncio.run(scenario())
        assert isinstance(stale, LeaseLostError) and after is stale and later is stale
        assert other == [1]
        assert store.backend.query("SELECT run_id, seq FROM af_steps ORDER BY run_id, seq") == [("r1", 1)]
    finally:
        group.close()
        store.close()
