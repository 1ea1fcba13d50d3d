"""PostgreSQL LISTEN/NOTIFY (issue 14): an idle worker waits for the database to say a run became
runnable instead of polling the runs table 20 times a second. Real server, real trigger
(migration 0008), real worker loop; the fallback poll is pushed out to 30 s, so only a
notification can explain a quick pick-up."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

import agentflow.engine._worker as worker_module
from agentflow import App, WorkflowContext

pytestmark = pytest.mark.backends("postgresql")


def _app(db_url: str) -> App:
    app = App(db_url)

    @app.workflow(name="hello")
    async def hello(ctx: WorkflowContext, who: str) -> str:
        return f"hello {who}"

    @app.workflow(name="await_go")
    async def await_go(ctx: WorkflowContext) -> str:
        return str(await ctx.wait_signal("go"))

    return app


def test_an_idle_worker_is_woken_by_new_runs_and_signals_not_by_polling(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker_module, "LISTEN_POLL", 30.0)
    app = _app(db_url)
    client = _app(db_url)  # another process's view: starts runs, sends signals
    claims = 0
    claim = app.store.claim

    def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal claims
        claims += 1
        return claim(*args, **kwargs)

    app.store.claim = counted  # type: ignore[method-assign]
    stop = asyncio.Event()
    ready = threading.Event()
    loop_holder: list[asyncio.AbstractEventLoop] = []

    async def serve() -> None:
        loop_holder.append(asyncio.get_running_loop())
        ready.set()
        await app.worker(poll_interval=0.05).run_forever(stop)

    thread = threading.Thread(target=lambda: asyncio.run(serve()))
    thread.start()
    try:
        ready.wait(5)
        time.sleep(2.0)  # idle: a 50 ms poll would claim ~40 times
        idle_claims = claims
        assert idle_claims <= 4, idle_claims

        latencies = []
        for i in range(5):
            started = time.monotonic()
            handle = client.start(client.workflow_named("hello"), f"n{i}", run_id=f"h{i}")
            while client.get_run(handle.run_id).status != "completed":
                assert time.monotonic() - started < 10, "the worker was not woken"
                time.sleep(0.01)
            latencies.append(time.monotonic() - started)
            time.sleep(0.3)
        assert max(latencies) < 2.0, latencies  # the fallback poll is 30 s

        client.start(client.workflow_named("await_go"), run_id="s")
        while client.get_run("s").status != "waiting":
            time.sleep(0.01)
        started = time.monotonic()
        client.signal("s", "go", "now")
        while client.get_run("s").status != "completed":
            assert time.monotonic() - started < 10, "a signal did not wake the worker"
            time.sleep(0.01)
        assert client.result_of(client.store.get_run("s")) == "now"
    finally:
        if loop_holder:
            loop_holder[0].call_soon_threadsafe(stop.set)
        thread.join(30)
        app.close()
        client.close()
    assert not thread.is_alive()
    assert [t for t in threading.enumerate() if t.name == "agentflow-listen"] == []  # joined
