"""`Worker`: claims runnable runs and drives them; recovers runs whose owner died.

A run is runnable when it is pending, when it is waiting and its `wake_at` has come (a timer is
due, or a signal / child completion / cancel request set it to 0), or when it is running but its
owner is dead: a worker on the same host whose process is gone (detected at once, by pid and
process start time) or any worker whose heartbeat is older than the lease TTL.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable

from agentflow.engine._beats import heartbeats_for
from agentflow.engine._client import declare_clock
from agentflow.engine._executor import RefusedStep, RunExecutor
from agentflow.engine._host import Host
from agentflow.engine._observe import notify, observers
from agentflow.engine._threads import tool_threads
from agentflow.errors import LeaseLostError, StoreBusyError, StoreError
from agentflow.store import RedactingFilter, RunRecord

log = logging.getLogger("agentflow.worker")
log.addFilter(RedactingFilter())  # a failing step's message may quote a secret

REAP_INTERVAL = 0.5
#: Runs one worker drives at once by default (see `Worker`'s `concurrency`): as many as memory
#: allows (`max_memory`), up to this.
DEFAULT_CONCURRENCY = 10_000
#: Most runs taken by one claim: a worker with room for thousands takes them a slice at a time,
#: so the memory check sees what the last slice cost before it takes more.
CLAIM_SLICE = 500
#: The share of the memory available when the worker starts that it may grow to by default.
MEMORY_SHARE = 0.5
#: The longest wait between claims while the store does not answer (it doubles up to this).
MAX_BACKOFF = 5.0
#: With a store that notifies (PostgreSQL), the longest a worker waits between claims: new runs,
#: signals and approvals wake it at once; this only bounds how late it takes over the runs of a
#: dead worker (timers due are waited for exactly).
LISTEN_POLL = 1.0


class Worker:
    """Drives runs of one App.

    Args:
        app: the App whose workflows this worker runs (runs of other workflows are left alone).
        concurrency: most runs driven at once (more runnable runs wait in the store). An in-flight
            run costs ~12 KB of memory plus its history and payloads (bench/agents.py: 1,000
            agent runs +11.5 MB, 3,000 +33 MB); a parked run (waiting on a timer, signal or
            approval) costs nothing here. Agent runs mostly wait on models, so the default drives
            as many as memory allows, up to 10,000.
        max_memory: the backpressure: bytes of resident memory past which the worker claims no
            more runs until it is back under (the runs it drives go on). Default: half of the
            memory available (the host's, or its container's cgroup limit if lower) when the
            worker first has runs in flight, plus what it holds then (Linux; elsewhere no limit
            but `concurrency`). 0: no memory limit.
        poll_interval: seconds between looks for runnable runs when idle.
        root_id: only drive the run tree with this root (what `app.run` uses).
        replay_only: execute nothing: every step is answered from the recorded history, and a
            step that would execute fails (non-retryable) and is appended to `refused` (what
            `agentflow.trace` replays use, on a copy of the store).
    """

    def __init__(
        self, app: Host, *, concurrency: int = DEFAULT_CONCURRENCY, poll_interval: float = 0.05, root_id: str | None = None,
        replay_only: bool = False, max_memory: int | None = None,
    ) -> None:  # fmt: skip
        self.app = app
        self.store = app.store
        self.concurrency = concurrency
        self.max_memory = max_memory  # None: `default_memory_limit()`, read when first needed
        self._over_memory = False
        self.poll_interval = poll_interval
        self.root_id = root_id
        # Replay-only: every step must be answered from the history; one that would execute
        # (activity, model call, tool, policy or approval step) fails instead and is listed here.
        self.replay_only = replay_only
        self.refused: list[RefusedStep] = []
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.executors: dict[str, RunExecutor] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._last_reap = 0.0
        # Seconds to wait before the next claim while the store does not answer (0: it answers).
        self._backoff = 0.0
        # A store error that stops this worker (see `_drive`), raised from its loop.
        self._broken: StoreError | None = None
        # Runs to hand back (store was busy): retried on every loop until done, so a run is
        # never left `running` under a live worker that no longer drives it.
        self._to_release: dict[str, int] = {}
        # Set when the store notifies that a run became runnable (see `Backend.listen`).
        self._wake: asyncio.Event | None = None
        self._notified = False
        self._listening = False

    # -- entry points ----------------------------------------------------------------------
    async def run_until_done(self, run_id: str) -> None:
        """Drive runs (of this worker's scope) until `run_id` has ended."""
        await self._loop(lambda: self.store.get_run(run_id).terminal)

    async def run_until_blocked(self, run_id: str, *, until_signal_wait: bool = False) -> None:
        """Drive until `run_id` has ended or waits for an event only (a signal, a child, an
        approval) with no timer due: what a test or a script does before sending that event.

        Args:
            run_id: the run.
            until_signal_wait: also stop when the run waits for a signal that has a timeout (an
                approval with an expiry): without it a time-skipping clock jumps to the timeout
                before anyone had a chance to answer.
        """

        def blocked() -> bool:
            run = self.store.get_run(run_id)
            if run.terminal:
                return True
            if self._tasks or run.status != "waiting":
                return False
            if run.wake_at is None:
                return True
            signals = until_signal_wait and bool(json.loads(run.waiting_on or "{}").get("signals"))
            return signals and run.wake_at > self.app.clock.now()  # and not woken already

        await self._loop(blocked)

    async def run_forever(self, stop: asyncio.Event | None = None) -> None:
        """Drive runs until `stop` is set (or the task is cancelled). On a store that notifies
        (PostgreSQL) the worker is woken when a run becomes runnable instead of polling."""

        async def wake_on_stop(stop: asyncio.Event) -> None:
            await stop.wait()
            if self._wake is not None:
                self._wake.set()  # a notified worker may be in a long wait

        relay = asyncio.ensure_future(wake_on_stop(stop)) if stop is not None else None
        log.info("worker started", extra={"worker_id": self.worker_id, "workflows": self.app.workflow_names,
                                          "concurrency": self.concurrency})  # fmt: skip
        try:
            await self._loop(lambda: stop is not None and stop.is_set(), listen=True)
        finally:
            if relay is not None:
                relay.cancel()
            log.info("worker stopped", extra={"worker_id": self.worker_id})

    # -- the loop --------------------------------------------------------------------------
    async def _loop(self, done: Callable[[], bool], *, listen: bool = False) -> None:
        loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        served = {name: self.app.workflow_named(name).fingerprint for name in self.app.workflow_names}
        self.store.register_worker(self.worker_id, workflows=served, lease_ttl=self.app.lease_ttl)
        if not self.replay_only:
            declare_clock(self.store, self.app.clock)
        beats = heartbeats_for(self.store)
        beats.add(self.worker_id, max(self.app.lease_ttl / 3, 0.05), lambda runs: self._cancels(loop, runs))
        listener = self.store.backend.listen(lambda _run: self._notify(loop)) if listen else None
        self._listening = listener is not None
        try:
            while not done():
                if self._broken is not None:
                    raise self._broken
                claimed = self._claim()
                if self._backoff:  # the store did not answer: wait, longer each time, then retry
                    pending = list(self._tasks.values())
                    if pending:
                        await asyncio.wait(pending, timeout=self._backoff, return_when=asyncio.FIRST_COMPLETED)
                    else:
                        await asyncio.sleep(self._backoff)
                    continue
                if self._tasks:
                    await self._pause(self._wait_time())
                    continue
                if claimed:
                    continue
                if self._skip_time():
                    continue
                await self._pause(self._wait_time())
        finally:
            if listener is not None:
                listener.close()
            # Before anything may close the store: the heartbeat writes on its own connection,
            # and closing a connection under a thread that is using it crashes the interpreter
            # (SIGSEGV in sqlite3). This waits for a beat in flight (within the busy timeout).
            beats.remove(self.worker_id)
            for task in self._tasks.values():
                task.cancel()
            if self._tasks:
                await asyncio.gather(*self._tasks.values(), return_exceptions=True)
            self._release_pending()
            try:
                self.store.stop_worker(self.worker_id)
            except StoreError:
                pass  # the lease expires by itself

    # -- waiting for work ---------------------------------------------------------------------
    def _notify(self, loop: asyncio.AbstractEventLoop) -> None:
        """From the listener's thread: wake the loop (once per wait, however many runs came; not
        at all while this worker has no room for another run)."""
        if self._notified or len(self._tasks) >= self.concurrency:
            return
        self._notified = True
        try:
            loop.call_soon_threadsafe(self._woken)
        except RuntimeError:
            pass  # the loop is closed: the worker is gone

    def _woken(self) -> None:
        self._notified = False
        if self._wake is not None:
            self._wake.set()

    def _wait_time(self) -> float:
        """How long to wait before the next claim: the poll interval, or with notifications up
        to `LISTEN_POLL`, but never past the next timer due (a parked run's wake-up)."""
        if not self._listening:
            return self.poll_interval
        try:
            wake = self.store.next_wake_at(self.root_id, self.app.workflow_names)
        except StoreError:
            return self.poll_interval
        if wake is None:
            return LISTEN_POLL
        return min(LISTEN_POLL, max(wake - self.app.clock.now(), self.poll_interval))

    async def _pause(self, timeout: float) -> None:
        """Wait until a run of this worker ends, a run becomes runnable (notified), or `timeout`
        (one waiter, whatever the number of runs in flight: each run's task sets the event)."""
        assert self._wake is not None
        wake = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait([wake], timeout=timeout)
        finally:
            wake.cancel()
        self._wake.clear()

    def _ended(self, _task: asyncio.Task[None]) -> None:
        if self._wake is not None:
            self._wake.set()

    def _release_pending(self) -> None:
        for run_id, epoch in list(self._to_release.items()):
            try:
                self.store.release(run_id, epoch)
            except StoreError:
                continue  # still busy: next loop
            del self._to_release[run_id]

    def _claim(self) -> int:
        self._release_pending()
        now_real = time.monotonic()
        if now_real - self._last_reap > REAP_INTERVAL:
            self._last_reap = now_real
            tool_threads().stuck()  # logs a blocking call that has not returned for a minute
            try:
                self.store.reap_dead_workers(self.worker_id)
            except StoreError as exc:
                log.warning("reaping dead workers failed: %s", exc, extra={"error_type": type(exc).__name__})
                notify(observers(), "store_error", exc)
        free = min(self.concurrency - len(self._tasks), CLAIM_SLICE)
        if free <= 0 or self._memory_full():
            return 0
        try:
            claimed = self.store.claim(
                self.worker_id, now=self.app.clock.now(), lease_ttl=self.app.lease_ttl, limit=free,
                root_id=self.root_id, workflows=self.app.workflow_names,
            )  # fmt: skip
        except StoreBusyError as exc:
            self._backoff = min(max(self._backoff * 2, self.poll_interval, 0.1), MAX_BACKOFF)
            log.warning("claiming runs: %s (next try in %.1f s)", exc, self._backoff,
                        extra={"worker_id": self.worker_id, "error_type": type(exc).__name__})  # fmt: skip
            notify(observers(), "store_error", exc)
            return 0
        if self._backoff:
            log.warning("the store answers again: claiming runs")
            self._backoff = 0.0
        for run_id, epoch, recovering in claimed:
            task = asyncio.get_running_loop().create_task(self._drive(run_id, epoch, recovering))
            task.add_done_callback(self._ended)
            self._tasks[run_id] = task
        return len(claimed)

    def _memory_full(self) -> bool:
        """Past `max_memory`: claim nothing until the runs in flight have given some back."""
        if not self._tasks or self.max_memory == 0:
            return False
        if self.max_memory is None:
            self.max_memory = default_memory_limit()
        limit = self.max_memory
        rss = resident_memory()
        full = bool(limit) and rss is not None and rss > limit
        if full != self._over_memory:
            self._over_memory = full
            if full:
                log.warning(
                    "worker at %d MB resident (limit %d MB) with %d runs in flight: claiming no more "
                    "until it is back under", (rss or 0) // 2**20, limit // 2**20, len(self._tasks),
                )  # fmt: skip
            else:
                log.warning("worker back under its memory limit: claiming runs again")
        return full

    def _skip_time(self) -> bool:
        """With a time-skipping clock, jump to the next timer once nothing else can run."""
        clock = self.app.clock
        if not clock.skips or self.store.any_active(self.root_id, self.app.workflow_names):
            return False
        wake = self.store.next_wake_at(self.root_id, self.app.workflow_names)
        if wake is None or wake <= clock.now():
            return False
        clock.advance_to(wake)
        return True

    async def _drive(self, run_id: str, epoch: int, recovering: bool) -> None:
        try:
            run = self.store.get_run(run_id)
            self._claimed(run, epoch, recovering)
            refused = self.refused if self.replay_only else None
            executor = RunExecutor(self.app, run, epoch, recovering=recovering, refuse=refused)
            self.executors[run_id] = executor
            await executor.execute()
        except LeaseLostError:
            log.warning("run %s: lease lost to another worker; stopped working on it", run_id,
                        extra={"run_id": run_id, "epoch": epoch, "worker_id": self.worker_id})  # fmt: skip
            notify(observers(), "lease_lost", run_id)
            # Still ours after all (a write refused because its step was already final, e.g. a
            # commit that succeeded although its connection failed): hand it back, or it would
            # stay `running` under this live worker, which never claims its own runs.
            self._to_release[run_id] = epoch
        except StoreBusyError as exc:
            # Still our lease: give the run back so it resumes later, here or elsewhere.
            log.warning("run %s: %s", run_id, exc, extra={"run_id": run_id, "error_type": type(exc).__name__})
            notify(observers(), "store_error", exc)
            await asyncio.sleep(self.poll_interval)
            self._to_release[run_id] = epoch
        except StoreError as exc:
            # The store refuses writes (disk full, read-only, I/O error): not the run's fault, and
            # retrying at once would spin. The run is given back untouched and the worker stops,
            # saying why; started again once the store is fixed, it resumes where it stopped.
            log.error("run %s: %s", run_id, exc, extra={"run_id": run_id, "error_type": type(exc).__name__})
            notify(observers(), "store_error", exc)
            self._to_release[run_id] = epoch
            self._broken = self._broken or exc
        except Exception as exc:
            # Re-running would hit the same bug forever: fail the run, visibly, history kept.
            log.exception("run %s: internal error in the executor", run_id)
            try:
                self.store.fail_run(run_id, epoch, f"internal error in the executor: {exc!r}", self.app.clock.now())
            except StoreError:
                self._to_release[run_id] = epoch
        finally:
            self.executors.pop(run_id, None)
            self._tasks.pop(run_id, None)

    def _claimed(self, run: RunRecord, epoch: int, recovering: bool) -> None:
        if log.isEnabledFor(logging.INFO):
            fields = {"run_id": run.id, "tenant": run.tenant, "workflow": run.workflow, "epoch": epoch,
                      "worker_id": self.worker_id, "takeover": recovering}  # fmt: skip
            log.info("run claimed", extra=fields)
            if recovering:
                # The previous owner is gone from the row (the claim made this worker its owner).
                log.info("run taken over from a dead or silent worker", extra=fields)
        notify(observers(), "run_claimed", run, epoch, recovering=recovering)

    # -- the lease -------------------------------------------------------------------------
    def _cancels(self, loop: asyncio.AbstractEventLoop, run_ids: list[str]) -> None:
        """From the heartbeat thread: runs of this worker that have a cancel request."""
        for run_id in run_ids:
            try:
                loop.call_soon_threadsafe(self._flag_cancel, run_id)
            except RuntimeError:
                return  # the loop is closed: the worker is gone

    def _flag_cancel(self, run_id: str) -> None:
        executor = self.executors.get(run_id)
        if executor is not None:
            executor.cancel_requested = True


def resident_memory() -> int | None:
    """This process's resident memory in bytes (Linux), or None where it cannot be read cheaply."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def default_memory_limit() -> int:
    """`MEMORY_SHARE` of the memory available now, plus what the process already holds; 0 (no
    limit) where it cannot be read. Available: the host's MemAvailable (Linux; it counts
    reclaimable cache), or less in a container: its cgroup's limit minus its usage."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            fields = dict(line.split(":", 1) for line in f)
        available = int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return 0
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),  # cgroup v2
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),  # v1
    ):
        try:
            with open(limit_file, encoding="ascii") as f, open(usage_file, encoding="ascii") as g:
                limit, usage = f.read().strip(), int(g.read().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit():  # "max": no limit
            available = min(available, max(int(limit) - usage, 0))
        break
    return int(available * MEMORY_SHARE) + (resident_memory() or 0)
