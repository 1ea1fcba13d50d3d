"""Issue 14: a plain workflow process starts cold in well under a second because it imports only
what it uses. Opening a store whose schema is current runs no migration (no Alembic, SQLAlchemy
or SQLModel), and `import agentflow` + an `app.run` load nothing of the model layer, the policy
engine, encryption, `agentflow doctor` or the governance records (approvals, sessions). Checked
in a fresh interpreter: the test session has imported all of them already."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agentflow.store import EventStore

ROOT = Path(__file__).resolve().parents[2]

# What a worker of a plain workflow app must not pay for at start-up, and what it costs when it
# does (CPU on a 2-core CI machine): openai ~0.8 s, langchain-core with its tracers ~0.5 s,
# Alembic + SQLAlchemy + SQLModel ~0.5 s, CEL ~0.15 s.
NOT_LOADED = (
    "alembic",
    "sqlalchemy",
    "sqlmodel",
    "openai",
    "langchain_core",
    "langsmith",
    "tiktoken",
    "celpy",
    "cryptography",
    "httpx",
    "fastapi",
    "yaml",
    "agentflow.llm",
    "agentflow.agent",
    "agentflow.policy",
    "agentflow.approvals",
    "agentflow.testing",
    "agentflow.engine._doctor",
    "agentflow.store._health",
    "agentflow.store._governance",
    "agentflow.store._models",
)

_CHILD = r"""
import json, sys

from agentflow import App, WorkflowContext

app = App(sys.argv[1])


@app.activity(name="double", side_effect=False)
async def double(x: int) -> int:
    return 2 * x


@app.workflow(name="doubler")
async def doubler(ctx: WorkflowContext, x: int) -> int:
    return await ctx.run(double, x)


assert app.run(doubler, 21) == 42
app.close()
print(json.dumps(sorted(sys.modules)))
"""


def _modules_after_a_run(db_url: str) -> set[str]:
    """Run a one-step workflow on `db_url` in a fresh interpreter; the modules it imported."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTFLOW_")}  # no sealing key, no crash point
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-c", _CHILD, db_url], capture_output=True, text=True, timeout=60,
                          cwd=ROOT, env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


def _loaded(modules: set[str], names: tuple[str, ...]) -> list[str]:
    return [n for n in names if n in modules]


@pytest.mark.slow
def test_a_run_on_a_current_store_imports_no_migration_and_no_model_layer(tmp_path: Path) -> None:
    """`import agentflow` + opening a migrated store + `app.run` of a one-step workflow loads
    none of `NOT_LOADED`: the schema check is one read of the version row, and the heavy
    layers are imported on first use."""
    db_url = f"sqlite:///{tmp_path / 'current.db'}"
    EventStore(db_url).close()  # migrated here, so the child finds the schema current
    assert _loaded(_modules_after_a_run(db_url), NOT_LOADED) == []


@pytest.mark.slow
def test_a_new_store_still_migrates_with_alembic(tmp_path: Path) -> None:
    """The negative control: on a new database the same child must migrate, so Alembic and
    SQLAlchemy do show up in its modules (the check above can see a lazy import)."""
    modules = _modules_after_a_run(f"sqlite:///{tmp_path / 'new.db'}")
    assert _loaded(modules, ("alembic", "sqlalchemy")) == ["alembic", "sqlalchemy"]
    assert _loaded(modules, ("openai", "langchain_core", "agentflow.llm")) == []


@pytest.mark.slow
def test_the_offline_demo_does_not_import_the_openai_sdk() -> None:
    """`agentflow demo` runs the offline runbook model by default: building it imports no
    openai SDK (~0.8 s of CPU), which is loaded only for `--model openai:<name>`."""
    child = (
        "import sys; from agentflow_noc.demo import make_model; make_model('runbook'); print('openai' in sys.modules)"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTFLOW_")}
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["False"]
