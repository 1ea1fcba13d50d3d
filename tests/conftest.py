"""Shared fixtures: a fresh database per test, Apps on a time-skipping clock, and a worker
driving an App on a thread of its own (so the test thread can poll with `assert_eventually`).

Backends: `db_url` is a SQLite file, unless the test (or its module) is marked
`@pytest.mark.backends("sqlite", "postgresql")`: then it runs once per backend named, on a
PostgreSQL database of its own cloned from a migrated template (see `support.pg`). The
PostgreSQL runs are skipped only when no server answers, and never in CI (`CI=true`), where a skip
would hide a missing feature.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support.pg import PgDatabases, unavailable

from agentflow import App, Worker
from agentflow.testing import TestClock

START = 1_700_000_000

# No test may reach a real model: requests to anything but loopback raise ModelRequestsForbidden
# (subprocesses inherit it). Local test servers on 127.0.0.1 stay reachable.
os.environ["AGENTFLOW_ALLOW_MODEL_REQUESTS"] = "0"


BACKENDS = ("sqlite", "postgresql")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        'backends(*names): run the test once per storage backend named ("sqlite", "postgresql"); '
        "unmarked tests run on SQLite only",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marker = metafunc.definition.get_closest_marker("backends")
    if marker is not None and "backend" in metafunc.fixturenames:
        unknown = set(marker.args) - set(BACKENDS)
        assert marker.args and not unknown, f"backends({marker.args}): pick from {BACKENDS}"
        metafunc.parametrize("backend", marker.args, indirect=True)


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    """The storage backend of this test: "sqlite" unless parametrized by `backends(...)`."""
    return str(getattr(request, "param", "sqlite"))


@pytest.fixture(scope="session")
def pg_databases() -> Iterator[PgDatabases]:
    """The session's PostgreSQL databases, all dropped when the session ends."""
    reason = unavailable()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL tests cannot run in CI: {reason}", pytrace=False)
        pytest.skip(f"PostgreSQL tests skipped: {reason}")
    databases = PgDatabases()
    yield databases
    databases.close()


@pytest.fixture
def pg_url(pg_databases: PgDatabases) -> Iterator[str]:
    """A PostgreSQL database of this test with the current schema, dropped after it."""
    url = pg_databases.clone()
    yield url
    pg_databases.drop(url)


@pytest.fixture
def db_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """A SQLAlchemy URL of a database that exists only for this test: a SQLite file, or a
    PostgreSQL database (with the schema already migrated) when `backend` is "postgresql"."""
    if backend == "postgresql":
        return str(request.getfixturevalue("pg_url"))
    return f"sqlite:///{tmp_path / 'agentflow.db'}"


@pytest.fixture
def empty_db_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """Like `db_url`, but a database with no table at all (for the migrations to build)."""
    if backend != "postgresql":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    databases: PgDatabases = request.getfixturevalue("pg_databases")
    url = databases.empty()
    yield url
    databases.drop(url)


@pytest.fixture
def make_app(db_url: str) -> Iterator[Callable[..., App]]:
    """Make Apps on `db_url` (a second App on the same file stands for a redeployed process)."""
    apps: list[App] = []

    def make(**kwargs: Any) -> App:
        kwargs.setdefault("clock", TestClock(start=START))
        application = App(db_url, **kwargs)
        apps.append(application)
        return application

    yield make
    for application in apps:
        application.close()


@pytest.fixture
def app(make_app: Callable[..., App]) -> App:
    """An App on `db_url` whose clock skips time (timers and backoff take no real time)."""
    return make_app()


class WorkerThread:
    """A `Worker` of `app` running on its own thread and event loop until `stop()`."""

    def __init__(self, app: App, **kwargs: Any) -> None:
        self.worker: Worker = app.worker(**kwargs)
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, name="test-worker", daemon=True)
        self._thread.start()
        assert self._ready.wait(10), "the worker thread did not start"

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:  # re-raised in the test thread by stop()
            self._error = exc
            self._ready.set()

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._ready.set()
        await self.worker.run_forever(self._stop)

    def stop(self) -> None:
        if self._thread.is_alive() and self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
        assert not self._thread.is_alive(), "the worker thread did not stop"
        if self._error is not None:
            raise self._error


@pytest.fixture
def worker_thread(make_app: Callable[..., App]) -> Iterator[Callable[..., WorkerThread]]:
    """Start `WorkerThread`s; each is stopped (before the Apps close) when the test ends."""
    started: list[WorkerThread] = []

    def start(application: App, **kwargs: Any) -> WorkerThread:
        started.append(WorkerThread(application, **kwargs))
        return started[-1]

    yield start
    for w in started:
        w.stop()
