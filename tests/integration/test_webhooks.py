"""Webhook delivery (issue 17) against a real receiver on 127.0.0.1 that verifies every request
with the `standardwebhooks` library and acts on each event once by its id:

- a demo-like run (an approval requested, approved by another operator, the run finishing) is
  delivered to its tenant's receiver, through a 500 and a dropped connection: each event acted on
  once, every request verified, in the documented shape; the other tenant's receiver gets nothing;
- `agentflow webhooks deliver`, a real subprocess, SIGKILLed while the receiver holds a request,
  then restarted: the held event is delivered again under the same id, nothing is lost, nothing
  is acted on twice;
- a dead endpoint's attempts space out (an injected clock, no sleeps) and are given up after the
  limit; `webhooks deliveries` shows the last error; the metrics show the failures;
- a receiver that hangs, redirects or answers a gigabyte; a store that does not answer for a while.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from support.webhook_receiver import WebhookReceiver
from typer.testing import CliRunner

import agentflow.llm as llm
from agentflow import App
from agentflow.agent import Agent
from agentflow.approvals import Approvals
from agentflow.cli import app as cli
from agentflow.engine import Metrics
from agentflow.policy import parse_pack
from agentflow.store import EventStore, StoreGauges
from agentflow.testing import TestClock, assert_eventually
from agentflow.webhooks import Backoff, Deliverer, Webhooks

START = 1_700_000_000
EAST, WEST = "noc-east", "noc-west"
ARGS = {"site": "CS-101", "param": "hoA3Offset", "value": 2}


@pytest.fixture
def receivers() -> Iterator[list[WebhookReceiver]]:
    made: list[WebhookReceiver] = []
    yield made
    for r in made:
        r.close()


def receiver(made: list[WebhookReceiver], store: EventStore, tenant: str, script: list[str] | None = None,
             kinds: tuple[str, ...] = ()) -> WebhookReceiver:  # fmt: skip
    """A receiver subscribed to `tenant`'s events (its secret set from the subscription)."""
    made.append(WebhookReceiver(script))
    _, made[-1].secret = Webhooks(store).add(made[-1].url, tenant=tenant, kinds=kinds)
    return made[-1]


@llm.tool(side_effect="idempotent", target="site")
def apply_change(site: str, param: str, value: int) -> dict[str, Any]:
    """Apply a configuration change to a cell site."""
    return {"applied": True, "site": site, param: value}


def copilot() -> Agent:
    rules = [{"id": "change-approval", "match": {"tools": ["apply_change"]}, "effect": "require_approval",
              "approval": {"roles": ["noc-engineer"], "quorum": 1, "four_eyes": True}}]  # fmt: skip
    pack = parse_pack(json.dumps({"schema_version": 1, "name": "webhooks-test", "rules": rules}))
    model = llm.ScriptedChatModel(responses=[{"tool_calls": [{"name": "apply_change", "args": ARGS}]}, "Applied."])
    return Agent(name="noc", model=llm.LangChainChat(model), tools=[apply_change], policies=pack)


def drive(app: App, run_key: str) -> None:
    asyncio.run(app.worker(root_id=run_key).run_until_blocked(run_key, until_signal_wait=True))


def deliver_all(deliverer: Deliverer, clock: TestClock, *, rounds: int = 20) -> None:
    """Deliver what is due, moving the deliverer's clock past each backoff, until nothing is left
    pending (the clock is injected: no real waiting)."""
    for _ in range(rounds):
        deliverer.drain()
        pending = deliverer.store.read(lambda tx: tx.deliveries.list(status="pending"))
        if not pending:
            return
        clock.advance(max(d.next_at for d in pending) - clock.now() + 0.001)
    raise AssertionError("deliveries still pending")


@pytest.mark.backends("sqlite", "postgresql")
def test_a_runs_events_reach_its_tenants_receiver_once_each_through_failures(
    app: App, receivers: list[WebhookReceiver]
) -> None:
    """The receiver fails the first two requests (a 500, then a dropped connection); in the end
    it acted once on each event of the run (requested, decided, run finished), every request it
    got verified, each retry carried the same id and the same bytes; noc-west's receiver got
    nothing of noc-east's."""
    east = receiver(receivers, app.store, EAST, ["500", "drop"])
    west = receiver(receivers, app.store, WEST)
    tokens = {n: Approvals.of(app).add_operator(n, tenant=EAST, roles=["noc-engineer"])[1] for n in ("req", "bob")}
    copilot().start(app, "fix CS-101", tenant=EAST, requested_by="req", run_id="r")
    drive(app, f"{EAST}:r")
    (request,) = Approvals.of(app).list(run_id=f"{EAST}:r")
    Approvals.of(app).approve(request.id, by=tokens["bob"], comment="go ahead")
    drive(app, f"{EAST}:r")
    assert app.get_run(f"{EAST}:r").status == "completed"

    clock = TestClock(start=START, skip=False)
    deliverer = Deliverer(app.store, clock=clock, timeout=5)
    try:
        deliver_all(deliverer, clock)
    finally:
        deliverer.close()

    kinds = sorted(e["type"] for e in east.events.values())
    assert kinds == ["approval.decided", "approval.requested", "run.finished"]
    assert set(east.acted.values()) == {1}
    assert all(a.verified for a in east.attempts) and len(east.attempts) == 3 + 2
    first, second = east.attempts[0], east.attempts[1]
    retried = [a for a in east.attempts[2:] if a.id in (first.id, second.id)]
    assert {a.body for a in retried if a.id == first.id} == {first.body}  # byte-identical retries
    by_kind = {e["type"]: e for e in east.events.values()}
    assert by_kind["run.finished"]["data"] == {
        "run_id": "r", "workflow": "agent:noc", "status": "completed", "error_type": None,
        "finished_at": by_kind["run.finished"]["data"]["finished_at"],
        "finished_at_epoch": by_kind["run.finished"]["data"]["finished_at_epoch"],
    }  # fmt: skip
    decided = by_kind["approval.decided"]
    assert (decided["tenant"], decided["data"]["status"], decided["data"]["args"]) == (EAST, "approved", ARGS)
    assert [(v["principal"], v["comment"]) for v in decided["data"]["votes"]] == [("bob", "go ahead")]
    assert by_kind["approval.requested"]["data"]["approval_id"] == request.id
    assert west.attempts == []
    rows = app.store.read(lambda tx: tx.deliveries.list())
    assert {d.status for d in rows} == {"delivered"} and sorted(d.attempts for d in rows) == [1, 2, 2]


def test_a_sender_killed_mid_delivery_is_restarted_and_nothing_is_lost_or_doubled(
    db_url: str, receivers: list[WebhookReceiver], tmp_path: Any
) -> None:
    """`agentflow webhooks deliver` is SIGKILLed while the receiver holds its request; restarted,
    it sends that event again (same id) once its lease runs out, and the others too: each event
    acted on once."""
    store = EventStore(db_url)
    hook = receiver(receivers, store, EAST, ["hang"])
    ids = [store.transaction(lambda tx, i=i: tx.events.append(tenant=EAST, kind="run.finished", subject=f"r{i}",
                                                              data={"run_id": f"r{i}"}, now=START))
           for i in range(3)]  # fmt: skip
    command = [sys.executable, "-m", "agentflow.cli", "webhooks", "deliver", "--db", db_url, "--timeout", "2",
               "--concurrency", "1", "--poll-interval", "0.05"]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log = (tmp_path / "deliver.log").open("wb")
    first = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=log)
    try:
        assert hook.hung.wait(60), "the deliverer never sent anything"
        first.send_signal(signal.SIGKILL)  # mid-POST: the receiver holds the request unanswered
        assert first.wait(30) == -signal.SIGKILL
    finally:
        first.kill()
    held = hook.attempts[0].id
    assert hook.events == {}
    assert store.read(lambda tx: tx.deliveries.list(status="delivered")) == []
    hook.release.set()  # the held request is dropped: it was never answered
    again = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=log)
    try:
        assert_eventually(lambda: len(hook.events) == 3, timeout=90, message=f"acted on {list(hook.events)}")
        again.send_signal(signal.SIGINT)  # Ctrl-C: a clean stop
        assert again.wait(30) == 0, (tmp_path / "deliver.log").read_text()
    finally:
        again.kill()
        log.close()
    assert sorted(hook.events) == sorted(ids) and set(hook.acted.values()) == {1}
    assert hook.ids().count(held) == 2 and all(a.verified for a in hook.attempts)
    rows = {d.event_id: d for d in store.read(lambda tx: tx.deliveries.list())}
    assert {d.status for d in rows.values()} == {"delivered"} and rows[held].attempts == 2
    store.close()


def dead_url() -> str:
    """A 127.0.0.1 URL where nothing listens (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/gone"


def test_a_dead_endpoint_backs_off_gives_up_and_shows_in_the_metrics(app: App, db_url: str) -> None:
    """Attempts come 1, 2, 4, 8, 8 s apart (less up to 20 % jitter, never more), on a clock
    the test moves; after the 6th the delivery is `failed`; `webhooks deliveries` shows the last
    error; the counters and the store's gauges show the failures."""
    Webhooks(app.store).add(dead_url(), tenant=EAST)
    app.store.transaction(lambda tx: tx.events.append(tenant=EAST, kind="run.finished", subject="r", data={},
                                                      now=START))  # fmt: skip
    clock, registry = TestClock(start=START, skip=False), CollectorRegistry()
    backoff = Backoff(first=1, factor=2, cap=8, max_attempts=6)
    deliverer = Deliverer(app.store, clock=clock, backoff=backoff, registry=registry)
    times: list[float] = []
    try:
        for _ in range(6):
            assert deliverer.deliver_due() == 1
            times.append(clock.now())
            assert deliverer.deliver_due() == 0  # not due again until its backoff passed
            (row,) = app.store.read(lambda tx: tx.deliveries.list())
            if row.status == "pending":
                clock.advance(row.next_at - clock.now())
        metrics = Metrics.install(app)
        pending_age = StoreGauges(app.store).webhook_backlog()
    finally:
        deliverer.close()
    gaps = [b - a for a, b in itertools.pairwise(times)]
    for gap, full in zip(gaps, [1, 2, 4, 8, 8], strict=True):
        assert full * 0.8 <= gap <= full
    (row,) = app.store.read(lambda tx: tx.deliveries.list())
    assert (row.status, row.attempts) == ("failed", 6) and "ConnectError" in (row.last_error or "")
    assert deliverer.deliver_due() == 0
    assert registry.get_sample_value("agentflow_webhook_attempts_total", {"outcome": "unreachable"}) == 6
    assert registry.get_sample_value("agentflow_webhook_deliveries_failed_total") == 1
    assert [(b.tenant, b.pending, b.failed) for b in pending_age] == [(EAST, 0, 1)]
    scraped = metrics.exposition(tenants=True)[0].decode()
    assert f'agentflow_webhook_deliveries_failed{{tenant="{EAST}"}} 1.0' in scraped
    assert "agentflow_webhook_deliveries_failed 1.0" in metrics.exposition(tenants=False)[0].decode()
    shown = CliRunner().invoke(cli, ["webhooks", "deliveries", "--status", "failed", "--db", db_url, "--json"])
    assert shown.exit_code == 0, shown.output
    (listed,) = json.loads(shown.output)
    assert (listed["status"], listed["attempts"], listed["kind"]) == ("failed", 6, "run.finished")
    assert "ConnectError" in listed["last_error"]


def test_a_pending_delivery_ages_in_the_metrics(app: App) -> None:
    Webhooks(app.store).add(dead_url(), tenant=EAST)
    app.store.transaction(lambda tx: tx.events.append(tenant=EAST, kind="run.finished", subject="r", data={},
                                                      now=START))  # fmt: skip
    app.clock.advance(90)  # type: ignore[attr-defined]
    scraped = Metrics.install(app).exposition(tenants=True)[0].decode()
    assert f'agentflow_webhook_deliveries_pending{{tenant="{EAST}"}} 1.0' in scraped
    assert f'agentflow_webhook_deliveries_oldest_pending_age_seconds{{tenant="{EAST}"}} 90.0' in scraped
    assert EAST not in Metrics.install(app).exposition(tenants=False)[0].decode()


@pytest.mark.parametrize("behaviour", ["hang", "trickle", "redirect", "huge"])
def test_an_unlucky_receiver_costs_one_attempt_and_says_why(
    app: App, receivers: list[WebhookReceiver], behaviour: str
) -> None:
    """A receiver that never answers is given up on after the timeout; one that trickles its
    answer a byte at a time (each read within the timeout) after the attempt's deadline (3 x the
    timeout: less than the lease, so no other deliverer sends it meanwhile); a redirect is not
    followed (the address it points to is never asked); a gigabyte answer is not read (its first
    bytes are the error). Each is one failed attempt, retried later, then delivered."""
    hook = receiver(receivers, app.store, EAST, [behaviour])
    app.store.transaction(lambda tx: tx.events.append(tenant=EAST, kind="run.finished", subject="r", data={},
                                                      now=START))  # fmt: skip
    clock = TestClock(start=START, skip=False)
    deliverer = Deliverer(app.store, clock=clock, timeout=1)
    began = time.monotonic()
    try:
        assert deliverer.deliver_due() == 1
        took = time.monotonic() - began
        (row,) = app.store.read(lambda tx: tx.deliveries.list())
        hook.release.set()
        deliver_all(deliverer, clock)
    finally:
        deliverer.close()
    assert row.status == "pending" and row.attempts == 1
    expected = {"hang": "no answer within 1 s", "trickle": "no complete answer within 3 s", "redirect": "redirect",
                "huge": "HTTP 500"}[behaviour]  # fmt: skip
    assert expected in (row.last_error or "")
    assert len(row.last_error or "") <= 500 and took < min(15, deliverer.lease)
    assert len(hook.events) == 1 and len(hook.attempts) == 2


def test_the_deliverer_outlives_a_store_that_does_not_answer(
    tmp_path: Any, receivers: list[WebhookReceiver], caplog: pytest.LogCaptureFixture
) -> None:
    """While another process holds the SQLite file's write lock, the deliverer's claims fail
    (busy); it logs, waits and tries again, and delivers once the store answers."""
    url = f"sqlite:///{tmp_path / 'agentflow.db'}"
    store = EventStore(url, busy_timeout=0.1)
    hook = receiver(receivers, store, EAST)
    store.transaction(lambda tx: tx.events.append(tenant=EAST, kind="run.finished", subject="r", data={},
                                                  now=START))  # fmt: skip
    blocker = sqlite3.connect(tmp_path / "agentflow.db", isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    caplog.set_level(logging.WARNING, logger="agentflow.webhooks")
    deliverer = Deliverer(store, poll_interval=0.05).start()
    try:
        assert_eventually(lambda: "the store failed claiming deliveries (StoreBusyError" in caplog.text, timeout=30)
        assert_eventually(lambda: caplog.text.count("the store failed") >= 3, timeout=30)  # and tried again
        assert hook.attempts == []
        blocker.execute("ROLLBACK")
        assert_eventually(lambda: len(hook.events) == 1, timeout=60)
    finally:
        blocker.close()
        deliverer.stop(timeout=30)
        store.close()


def test_secrets_stay_out_of_listings_reprs_and_logs(app: App, db_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """The signing secret is printed once, by `add`; `list` (text and JSON), the store's rows'
    reprs and the deliverer's logs never show it, nor a token in the URL's password, query or
    path (Slack's incoming webhooks carry theirs there)."""
    url = (
        dead_url().replace("http://", "http://ops:pw-T0KEN1@")
        + "/services/T0ABC/B0DEF/xT0KEN3abcdef0123456?token=T0KEN2"
    )
    added = CliRunner().invoke(cli, ["webhooks", "add", url, "--tenant", EAST, "--db", db_url, "--json"])
    assert added.exit_code == 0, added.output
    secret = json.loads(added.output)["secret"]
    app.store.transaction(lambda tx: tx.events.append(tenant=EAST, kind="run.finished", subject="r", data={},
                                                      now=START))  # fmt: skip
    caplog.set_level(logging.DEBUG)
    deliverer = Deliverer(app.store, clock=TestClock(start=START, skip=False))
    try:
        assert deliverer.drain() == 1
    finally:
        deliverer.close()
    shown = [CliRunner().invoke(cli, ["webhooks", "list", "--db", db_url, *extra]).output for extra in ([], ["--json"])]
    rows = app.store.read(lambda tx: (tx.webhooks.list(), tx.deliveries.list()))
    subscriptions = repr(Webhooks(app.store).list())
    assert "ops:***@" in subscriptions
    for text in (*shown, repr(rows), subscriptions, caplog.text):
        assert secret not in text and "T0KEN" not in text
    assert "ops:***@" in shown[1] and "/gone/services/T0ABC/B0DEF/***?***" in shown[1]
    assert "webhook delivery failed" in caplog.text


def test_an_attempt_that_breaks_is_logged_and_the_deliverer_goes_on(
    app: App, receivers: list[WebhookReceiver], caplog: pytest.LogCaptureFixture
) -> None:
    """An error no attempt expects (a bug) is logged with its traceback, not lost with its thread's
    future; the deliverer goes on and delivers once the attempt works (here: the second)."""
    hook = receiver(receivers, app.store, EAST)
    app.store.transaction(lambda tx: tx.events.append(tenant=EAST, kind="run.finished", subject="r", data={},
                                                      now=START))  # fmt: skip
    broken = iter([True])

    class Buggy(Deliverer):
        def _post(self, due: Any) -> tuple[str, str]:
            if next(broken, False):
                raise RuntimeError("a bug in an attempt")
            return super()._post(due)

    caplog.set_level(logging.ERROR, logger="agentflow.webhooks")
    deliverer = Buggy(app.store, timeout=0.5, poll_interval=0.05).start()  # lease 6.5 s: then tried again
    try:
        assert_eventually(lambda: "an attempt failed unexpectedly" in caplog.text, timeout=30)
        assert "RuntimeError: a bug in an attempt" in caplog.text
        assert_eventually(lambda: len(hook.events) == 1, timeout=60)
    finally:
        deliverer.stop(timeout=30)


def test_backoff_stays_at_its_cap_however_many_attempts() -> None:
    """`--max-attempts 5000`: the 1025th delay would be 2.0 ** 1024 s, past a float (OverflowError)."""
    rng = random.Random(7)
    assert Backoff().delay(5000, rng) <= 600 and Backoff(factor=10).delay(400, rng) >= 600 * 0.8


@pytest.mark.parametrize("flag", [["--poll-interval", "0"], ["--timeout", "0"], ["--max-attempts", "0"],
                                  ["--timeout", "nan"]])  # fmt: skip
def test_deliver_refuses_values_that_would_spin_or_never_deliver(app: App, db_url: str, flag: list[str]) -> None:
    """`--poll-interval 0` made an idle deliverer spin a core on store reads; `--timeout 0` failed
    every attempt; `--max-attempts 0` gave every delivery up. Each is said at once (exit 2)."""
    app.store.ensure_schema()
    done = CliRunner().invoke(cli, ["webhooks", "deliver", "--once", "--db", db_url, *flag])
    said = " ".join(done.output.split())
    assert done.exit_code == 2 and f"{flag[0]} a larger value" in said, said


def test_a_drain_forgets_deliveries_past_their_retention(app: App, receivers: list[WebhookReceiver]) -> None:
    """`webhooks deliver --once` from cron is a deployment too: its drain prunes delivered (and
    failed) deliveries older than the retention, and their events, like a running deliverer."""
    hook = receiver(receivers, app.store, EAST)
    app.store.transaction(lambda tx: tx.events.append(tenant=EAST, kind="run.finished", subject="old", data={},
                                                      now=START))  # fmt: skip
    clock = TestClock(start=START, skip=False)
    assert Deliverer(app.store, clock=clock).drain() == 1 and len(hook.events) == 1
    clock.advance(8 * 86400)
    app.store.transaction(lambda tx: tx.events.append(tenant=EAST, kind="run.finished", subject="new", data={},
                                                      now=clock.now()))  # fmt: skip
    assert Deliverer(app.store, clock=clock).drain() == 1
    assert [e.subject for e in app.store.read(lambda tx: tx.events.list(tenant=EAST))] == ["new"]
    assert len(app.store.read(lambda tx: tx.deliveries.list())) == 1
