"""Fixtures of the browser tests (tests/e2e/test_web_*.py): real servers and one Chromium."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, expect, sync_playwright
from support.browser import CHROMIUM, CHROMIUM_ARGS, ENGINEERS, UI, People
from support.served import INCIDENTS, NOC_APP, Served


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Served]]:
    """Start servers (with their operators); every one is stopped at the end of the test.
    `db_dir` serves the store already in that directory (e.g. a demo's recorded runs);
    `incidents` are injected into the served network (`NOC_INCIDENTS`)."""
    servers: list[Served] = []

    def make(
        app_ref: str = NOC_APP, operators: dict[str, str] = ENGINEERS, db_dir: Path | None = None,
        incidents: str = INCIDENTS,
    ) -> Served:  # fmt: skip
        server = Served(db_dir or tmp_path / f"server{len(servers)}", app_ref, incidents=incidents)
        servers.append(server)
        server.add_operators(operators)
        server.start()
        server.wait_ready()
        return server

    try:
        yield make
    finally:
        for server in servers:
            server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One Chromium for the module; each person gets a context (own cookies) of their own."""
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def people(browser: Browser, request: pytest.FixtureRequest) -> Iterator[People]:
    expect.set_options(timeout=UI)
    found = People(browser, request.node.name)
    try:
        yield found
    finally:
        found.close()
