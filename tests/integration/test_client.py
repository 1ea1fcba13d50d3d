"""`Client`: acting on runs (start, signal, cancel, get, list, history, resume) from a process
that registers nothing and runs nothing, on both backends. The App's workers drive the runs."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from agentflow import App, Client, RunFailedError, WorkflowContext
from agentflow.errors import ConfigurationError, RunStateError, UnknownRunError
from agentflow.testing import TestClock

pytestmark = pytest.mark.backends("sqlite", "postgresql")


def workflows(app: App) -> dict[str, Any]:
    @app.workflow(name="greet")
    async def greet(ctx: WorkflowContext, who: str, *, loud: bool = False) -> dict[str, str]:
        answer = await ctx.wait_signal("answer")
        text = f"hello {who}: {answer}"
        return {"text": text.upper() if loud else text}

    @app.workflow(name="idle")
    async def idle(ctx: WorkflowContext) -> str:
        try:
            await ctx.wait_signal("never")
        except asyncio.CancelledError:
            await ctx.sleep(1)  # compensation runs durably after the cancel
            raise
        return "signalled"

    return {"greet": greet, "idle": idle}


@pytest.fixture
def client(db_url: str) -> Iterator[Client]:
    with Client(db_url, clock=TestClock(start=1_700_000_000)) as found:
        yield found


def drive(app: App, run_id: str) -> None:
    asyncio.run(app.worker(root_id=run_id).run_until_blocked(run_id))


def test_a_client_starts_signals_and_reads_a_run_the_app_drives(app: App, client: Client) -> None:
    """The client starts a run by its workflow name (no registration in this process), the App's
    worker drives it to its wait, the client's signal wakes it, and the client reads it back."""
    workflows(app)
    handle = client.start("greet", "bob", loud=True, run_id="g1", tenant="noc-east", meta={"requested_by": "ann"})
    # Run ids are per tenant: the store keys this run by both, and the handle carries that key.
    assert handle.run_id == "noc-east:g1"
    assert handle.created and client.get(handle.run_id).status == "pending"
    drive(app, handle.run_id)
    assert client.get(handle.run_id).waiting_on == {"timers": [], "signals": ["answer"], "children": []}
    client.signal(handle.run_id, "answer", "done")
    drive(app, handle.run_id)
    info = client.get(handle.run_id)
    assert (info.status, info.tenant, info.meta) == ("completed", "noc-east", {"requested_by": "ann"})
    # Without the workflow's type the client decodes plain JSON; the App decodes the declared type.
    assert handle.result(timeout=5) == {"text": "HELLO BOB: DONE"}
    assert [s.kind for s in client.history(handle.run_id)] == ["signal"]
    assert [r.run_id for r in client.list(tenant="noc-east")] == ["noc-east:g1"] == [handle.run_id]
    assert client.list(tenant="noc-west") == []
    again = client.start("greet", "bob", loud=True, run_id="g1", tenant="noc-east")
    assert not again.created  # idempotent start
    other = client.start("greet", "eve", run_id="g1", tenant="noc-west")  # the same id, another tenant
    assert other.created and other.run_id == "noc-west:g1" and client.get("noc-west:g1").tenant == "noc-west"
    with pytest.raises(UnknownRunError, match="did you mean 'noc-east:g1', 'noc-west:g1'"):
        client.get("g1")


def test_a_client_cancel_reaches_the_running_workflow(app: App, client: Client) -> None:
    """Cancel through the client: the worker delivers it, compensation runs, the run ends cancelled."""
    workflows(app)
    client.start("idle", run_id="s1")
    drive(app, "s1")
    assert client.get("s1").status == "waiting"
    assert client.cancel("s1").cancel_requested
    drive(app, "s1")
    assert client.get("s1").status == "cancelled"
    assert [s.kind for s in client.history("s1")] == ["signal", "cancel", "sleep"]
    with pytest.raises(RunFailedError, match="cancelled"):
        client.result_of(client.store.get_run("s1"))


def test_client_errors_are_typed_and_say_what_to_do(app: App, client: Client) -> None:
    """Unknown runs, finished runs, a taken id, and a resume of a run that did not stop on a
    code mismatch are refused with the error types the API documents; nothing is written."""
    workflows(app)
    with pytest.raises(UnknownRunError, match="agentflow runs list"):
        client.get("nope")
    with pytest.raises(UnknownRunError):
        client.signal("nope", "answer")
    client.start("idle", run_id="s2")
    with pytest.raises(ConfigurationError, match="already exists for workflow 'idle'"):
        client.start("greet", "x", run_id="s2")
    for bad in ("a/b", "t:x", "", "x y"):
        with pytest.raises(ConfigurationError, match="is not allowed: use 1-200 letters"):
            client.start("greet", "x", run_id=bad)
    with pytest.raises(ConfigurationError, match="is not a valid tenant name"):
        client.start("greet", "x", tenant="a:b")
    with pytest.raises(RunStateError, match="only runs stopped by a code/record mismatch"):
        client.resume("s2")
    app.cancel("s2")
    with pytest.raises(RunStateError, match="cancelled"):
        client.signal("s2", "answer")
    assert [r.run_id for r in client.list()] == ["s2"]


def test_a_client_resumes_a_run_stopped_by_a_code_change(make_app: Any, client: Client) -> None:
    """A run that stopped on a non-determinism error (code deployed under it) is made pending
    again by the client once fixed code is back; its history is kept and replays."""

    def deploy(waits_for_signal: bool) -> App:
        app = make_app()

        @app.workflow(name="wf")
        async def wf(ctx: WorkflowContext) -> str:
            if waits_for_signal:
                return str(await ctx.wait_signal("go"))
            await ctx.sleep(10)  # step 1 was recorded as a signal wait: non-deterministic
            return "slept"

        return app

    client.start("wf", run_id="r")
    drive(deploy(True), "r")
    assert client.get("r").status == "waiting"
    client.signal("r", "go", "went")  # wakes the run: a worker running changed code claims it
    drive(deploy(False), "r")
    failed = client.get("r")
    assert failed.status == "failed" and failed.error is not None and failed.error["type"] == "NonDeterminismError"
    fixed = deploy(True)
    assert client.resume("r").status == "pending"
    drive(fixed, "r")  # replays step 1, the signal recorded as delivered... or still to consume
    assert client.get("r").status == "completed"
    assert fixed.result_of(fixed.store.get_run("r")) == "went"
    assert [s.kind for s in client.history("r")] == ["signal"]


def test_app_calls_are_the_clients(app: App) -> None:
    """`app.start/get_run/...` act through `app.client`, on the app's one store: a separate
    Client on the same database sees what they did; a closed App reconnects where it is used."""
    wfs = workflows(app)
    handle = app.start(wfs["greet"], "ann", run_id="g")
    assert handle.app is app and app.client.store is app.store
    with Client(app.db) as other:
        assert other.get("g") == app.get_run("g") and other.get("g").tenant == "default"
    held = app.client
    app.close()
    assert app.client is held and app.get_run("g").status == "pending"  # reconnected
    app.close()
    with pytest.raises(ConfigurationError, match="bad arguments for workflow greet"):
        app.start(wfs["greet"], "ann", "too many")
