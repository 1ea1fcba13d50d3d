"""The engine's public replay hooks: `Worker(replay_only=True)` executes nothing and reports
what it refused; `App.include` / `App.with_store` share the very same registrations (the engine
checks activities by identity), which is how `agentflow.trace` replays a run on a copy."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from agentflow import App, WorkflowContext
from agentflow.errors import ConfigurationError


def build(db: str, calls: list[str]) -> tuple[App, object]:
    app = App(db, inline_wait=0.0)

    @app.activity(name="push")
    def push(site: str) -> str:
        calls.append(site)
        return f"pushed {site}"

    @app.workflow(name="change")
    async def change(ctx: WorkflowContext, site: str) -> str:
        return await ctx.run(push, site)

    return app, change


def test_a_replay_only_worker_executes_nothing_and_lists_what_it_refused(tmp_path: Path) -> None:
    """A step the history cannot answer is refused (a failed, non-retryable step in that store),
    never executed, and listed in `worker.refused` with its run, seq, kind and name."""
    calls: list[str] = []
    app, change = build(f"sqlite:///{tmp_path / 'a.db'}", calls)
    run_id = app.start(change, "CS-101").run_id  # type: ignore[arg-type]
    worker = app.worker(root_id=run_id, replay_only=True)
    asyncio.run(worker.run_until_done(run_id))
    assert calls == []
    assert [(r.run_id, r.seq, r.kind, r.name) for r in worker.refused] == [(run_id, 1, "activity", "push")]
    run = app.get_run(run_id)
    assert run.status == "failed" and "replay-only worker" in str(run.error)
    app.close()


def test_with_store_shares_the_registrations_and_answers_from_the_copied_history(tmp_path: Path) -> None:
    """A run finished on one store, its history copied to another App made with `with_store`,
    replays there to the same result without executing the activity again."""
    calls: list[str] = []
    app, change = build(f"sqlite:///{tmp_path / 'a.db'}", calls)
    assert app.run(change, "CS-101") == "pushed CS-101"  # type: ignore[arg-type]
    run_id = app.list_runs()[0].run_id
    replica = app.with_store(f"sqlite:///{tmp_path / 'b.db'}", inline_wait=0.0)
    assert replica.workflow_named("change") is app.workflow_named("change")
    replica.store.import_rows(app.store.export_tree(run_id))
    replica.store.rewind_for_replay(run_id, run_id)
    worker = replica.worker(root_id=run_id, replay_only=True)
    asyncio.run(worker.run_until_done(run_id))
    assert worker.refused == [] and calls == ["CS-101"]
    assert replica.get_run(run_id).status == "completed"
    replica.close()
    app.close()


def test_include_refuses_another_definition_under_a_taken_name(tmp_path: Path) -> None:
    """Two different activities may not share a name on one App (the history names steps)."""
    app, _ = build(f"sqlite:///{tmp_path / 'a.db'}", [])
    other, _ = build(f"sqlite:///{tmp_path / 'b.db'}", [])
    with pytest.raises(ConfigurationError, match="already registered"):
        app.include(other.workflow_named("change"))
    app.include(app.workflow_named("change"))  # the same object again is fine
    with pytest.raises(ConfigurationError, match="include\\(\\) takes"):
        app.include("change")  # type: ignore[arg-type]
    app.close()
    other.close()
