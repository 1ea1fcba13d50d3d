"""Issue 13 hole 6: one client cannot take the server down. A body over the limit is refused
before it is read; failed sign-ins are throttled per client (429) before any lookup; and failures
can write at most a bounded number of audit rows, the rest summed up in one."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

import agentflow_noc as noc
from agentflow import App
from agentflow.approvals import Approvals
from agentflow.server import create_app
from agentflow.server._limits import AuthThrottle
from agentflow_noc.demo import copilot, make_model


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[App, TestClient, FakeClock]]:
    app = App(f"sqlite:///{tmp_path / 'wf.db'}")
    noc.configure(tmp_path / "noc.db")
    copilot(make_model("runbook")).register(app)
    clock = FakeClock()
    api = create_app(app, run_worker=False, max_body_bytes=64 * 1024,
                     throttle=AuthThrottle(per_client=5, audit_cap=3, window=60.0, clock=clock))  # fmt: skip
    with TestClient(api) as client:
        yield app, client, clock
    app.close()


def refusals(app: App) -> list[str]:
    return [a.reason for a in Approvals.of(app).audit() if a.action == "authenticate"]


def test_a_body_over_the_limit_is_refused_before_it_is_read(served: tuple[App, TestClient, FakeClock]) -> None:
    """A declared 2 MiB body and a chunked one (no Content-Length) both get 413 `too_large`;
    neither is parsed (no audit row: the token inside was never looked at)."""
    app, client, _ = served
    big = b'{"token": "' + b"x" * (2 << 20) + b'"}'
    started = time.monotonic()
    declared = client.post("/api/session", content=big, headers={"Content-Type": "application/json"})
    assert declared.status_code == 413 and declared.json()["error"]["code"] == "too_large"

    def chunks() -> Iterator[bytes]:
        yield b'{"token": "'
        for _ in range(40):
            yield b"y" * 4096
        yield b'"}'

    chunked = client.post("/api/session", content=chunks(), headers={"Content-Type": "application/json"})
    assert chunked.status_code == 413 and chunked.json()["error"]["code"] == "too_large"
    assert time.monotonic() - started < 5 and refusals(app) == []
    small = client.post("/api/session", json={"token": "aft_wrong"})
    assert small.status_code == 401  # a body under the limit is read as before


def test_failed_sign_ins_are_throttled_per_client(served: tuple[App, TestClient, FakeClock]) -> None:
    """Five bad tokens are refused (401) and audited; the sixth attempt, even with a valid token,
    gets 429 with Retry-After and is neither looked up nor audited; after the window, sign-in
    works again."""
    app, client, clock = served
    _, token = Approvals.of(app).add_operator("alice", tenant="noc-east", roles=["noc-engineer"])
    statuses = [client.post("/api/session", json={"token": f"aft_guess{i}"}).status_code for i in range(5)]
    assert statuses == [401] * 5
    blocked = client.post("/api/session", json={"token": token})
    assert blocked.status_code == 429 and blocked.json()["error"]["code"] == "too_many_attempts"
    assert 1 <= int(blocked.headers["Retry-After"]) <= 60
    bearer = client.get("/api/runs", headers={"Authorization": "Bearer aft_more"})
    assert bearer.status_code == 429  # bearer tokens share the budget
    assert len(refusals(app)) == 3  # the audit budget (3 a minute) held; the rest are counted
    clock.now += 61
    assert client.post("/api/session", json={"token": token}).status_code == 200


def test_failures_past_the_audit_budget_are_summed_up_in_one_row(served: tuple[App, TestClient, FakeClock]) -> None:
    """Three failures are audited one by one; the next ones only counted; the first failure
    audited after the window brings one summary row with their count."""
    app, client, clock = served
    for i in range(5):
        client.post("/api/session", json={"token": f"aft_g{i}"})
    assert len(refusals(app)) == 3
    clock.now += 61
    client.post("/api/session", json={"token": "aft_later"})
    rows = refusals(app)
    assert len(rows) == 5 and rows[3].startswith("2 refused: failed sign-ins over the audit budget")
    assert "(from testclient)" in rows[4]


def test_the_throttle_forgets_quiet_addresses() -> None:
    """Scanning from many addresses cannot grow the throttle's memory without bound."""
    clock = FakeClock()
    throttle = AuthThrottle(per_client=2, audit_cap=1_000_000, window=10.0, clock=clock)
    for i in range(10_500):
        throttle.failed(f"10.0.{i // 256}.{i % 256}")
    clock.now += 11
    throttle.failed("192.0.2.1")
    throttle.retry_after("192.0.2.1")
    assert len(throttle._failures) < 10_500


def test_every_answer_carries_the_security_headers(served: tuple[App, TestClient, FakeClock]) -> None:
    """Not only the page: JSON answers, errors, static files and the OpenAPI schema are not
    sniffed, framed or sent a referrer, and load nothing."""
    _, client, _ = served
    for path in ("/api/session", "/openapi.json", "/static/app.js", "/api/nope"):
        got = client.get(path)
        assert got.headers["x-content-type-options"] == "nosniff", path
        assert got.headers["x-frame-options"] == "DENY" and got.headers["referrer-policy"] == "no-referrer", path
        assert "frame-ancestors 'none'" in got.headers["content-security-policy"], path
    assert "default-src 'self'" in client.get("/").headers["content-security-policy"]  # the page keeps its own


def test_the_api_docs_load_nothing_from_a_cdn(served: tuple[App, TestClient, FakeClock]) -> None:
    """/docs is served with its Swagger UI from local files (an air-gapped NOC reaches no CDN)."""
    _, client, _ = served
    page = client.get("/docs")
    assert page.status_code == 200 and "/static/docs/swagger-ui-bundle.js" in page.text
    assert "cdn." not in page.text and "https://" not in page.text.split("<body>", 1)[-1]
    assert client.get("/static/docs/swagger-ui-bundle.js").status_code == 200
    assert client.get("/static/docs/swagger-ui.css").status_code == 200


def test_the_origin_check_compares_the_scheme_too(served: tuple[App, TestClient, FakeClock]) -> None:
    """A state change from https://host to a server reached at http://host is another origin."""
    app, client, _ = served
    _, token = Approvals.of(app).add_operator("alice", tenant="noc-east", roles=["noc-engineer"])
    csrf = client.post("/api/session", json={"token": token}).json()["csrf"]
    for origin, status in (("https://testserver", 403), ("http://evil.example", 403), ("http://testserver", 200)):
        got = client.put("/api/session/tenant", json={"tenant": "noc-east"},
                         headers={"X-CSRF-Token": csrf, "Origin": origin})  # fmt: skip
        assert got.status_code == status, (origin, got.text)
