"""Heartbeats: one thread per store renews the leases of every worker of the process on it.

A worker's lease is renewed from a thread, never from the event loop: a loop held up by a
blocking call must not let another worker take runs it is still executing (and a loop that is
free must not pay for the beats). Workers of a store share the thread, so `app.run` (a worker per
call) does not start and join one per call; it stays a moment after its last worker leaves, for
the next one.

`remove()` returns once no beat of that worker is in flight and none will start: after it, the
store may be closed (closing a connection under a thread writing on it crashes the interpreter:
SIGSEGV in sqlite3). The thread's own connection is then idle, which is safe to close.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass

from agentflow.errors import StoreError
from agentflow.store import EventStore, RedactingFilter

log = logging.getLogger("agentflow.worker")
log.addFilter(RedactingFilter())

#: Seconds the thread waits for a next worker after the last one left, before it ends.
LINGER = 2.0


@dataclass(slots=True)
class _Beat:
    worker_id: str
    interval: float
    due: float
    on_cancels: Callable[[list[str]], None]
    busy: bool = False


class Heartbeats:
    """The heartbeat thread of one store (see the module doc); `heartbeats_for(store)`."""

    def __init__(self, store: EventStore) -> None:
        # Weak: this object is the value of a WeakKeyDictionary keyed by the store.
        self._store = weakref.ref(store)
        self._cond = threading.Condition()
        self._beats: dict[str, _Beat] = {}
        self._thread: threading.Thread | None = None

    def add(self, worker_id: str, interval: float, on_cancels: Callable[[list[str]], None]) -> None:
        """Renew `worker_id`'s lease every `interval` seconds; `on_cancels(run_ids)` (on the
        heartbeat thread) gets its runs that have a cancel request."""
        with self._cond:
            self._beats[worker_id] = _Beat(worker_id, interval, time.monotonic() + interval, on_cancels)
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name="agentflow-heartbeat", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def remove(self, worker_id: str) -> None:
        """Stop renewing `worker_id`'s lease; returns once a beat in flight for it has ended
        (within the store's busy timeout)."""
        with self._cond:
            beat = self._beats.pop(worker_id, None)
            while beat is not None and beat.busy:
                self._cond.wait()
            self._cond.notify_all()

    def _serve(self) -> None:
        idle_since: float | None = None
        with self._cond:
            while True:
                now = time.monotonic()
                if not self._beats:
                    idle_since = idle_since if idle_since is not None else now
                    if now - idle_since >= LINGER:
                        self._thread = None
                        return
                    self._cond.wait(LINGER - (now - idle_since))
                    continue
                idle_since = None
                beat = min(self._beats.values(), key=lambda b: b.due)
                if beat.due > now:
                    self._cond.wait(beat.due - now)
                    continue
                beat.busy = True
                self._cond.release()
                try:
                    self._beat(beat)
                finally:
                    self._cond.acquire()
                    beat.busy = False
                    beat.due = time.monotonic() + beat.interval
                    self._cond.notify_all()

    def _beat(self, beat: _Beat) -> None:
        store = self._store()
        if store is None:
            return
        try:
            cancels = store.heartbeat(beat.worker_id)
        except StoreError as exc:
            log.warning("heartbeat failed: %s", exc)
            return
        if cancels:
            beat.on_cancels(cancels)


_by_store: weakref.WeakKeyDictionary[EventStore, Heartbeats] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def heartbeats_for(store: EventStore) -> Heartbeats:
    """The heartbeat thread of `store` (made on first use)."""
    with _lock:
        beats = _by_store.get(store)
        if beats is None:
            beats = _by_store[store] = Heartbeats(store)
        return beats
