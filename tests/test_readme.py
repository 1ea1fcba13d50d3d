"""The README's code runs as written, from any directory: every ```python block, and the ```bash
blocks marked `<!-- run: ... -->` (cheap and offline: the demo's crash and resume), each in a
subprocess of its own in a fresh temporary directory (not the repository), with AGENTFLOW_DB in
that directory and model requests forbidden.

A ```python block preceded by `<!-- not-run: why -->` is a fragment and is skipped; none is today.
"""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
FENCE = re.compile(r"^```(\w+)\n(.*?)^```\n", re.S | re.M)
MARK = re.compile(r"<!--\s*(run|not-run)\b[^>]*-->\s*\Z")
TIMEOUT = 90.0


@dataclass(frozen=True)
class Block:
    lang: str
    line: int
    code: str
    mark: str | None  # "run", "not-run" or None


def blocks() -> list[Block]:
    text = README.read_text()
    found = []
    for m in FENCE.finditer(text):
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        mark = MARK.search(before)
        found.append(Block(m.group(1), text.count("\n", 0, m.start()) + 1, m.group(2), mark and mark.group(1)))
    return found


def runnable() -> list[Block]:
    return [
        b for b in blocks() if (b.lang == "python" and b.mark != "not-run") or (b.lang == "bash" and b.mark == "run")
    ]


def env_for(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AGENTFLOW_", "OPENAI_", "NOC_"))}
    bin_dir = str(Path(sys.executable).parent)  # the venv's `agentflow` command
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        AGENTFLOW_DB=f"sqlite:///{tmp_path / 'agentflow.db'}",
        AGENTFLOW_ALLOW_MODEL_REQUESTS="0",
        COLUMNS="200",
    )
    env.pop("PYTHONPATH", None)  # the installed packages, as a reader has them
    return env


def test_the_readme_has_the_blocks_this_test_runs() -> None:
    """Negative control for the extraction: the samples the issue named are found and run."""
    found = runnable()
    assert sum(b.lang == "python" for b in found) >= 4
    codes = "\n".join(b.code for b in found)
    assert "fix_site" in codes and "noc-copilot" in codes and "--crash-at" in codes and "--resume" in codes
    assert not [b for b in blocks() if b.mark == "not-run"], "a fragment: say why in its marker and here"


@pytest.mark.slow
@pytest.mark.parametrize("block", runnable(), ids=lambda b: f"{b.lang}-line-{b.line}")
def test_readme_block_runs_as_written(block: Block, tmp_path: Path) -> None:
    """The block exits 0 within the time limit from a directory that is not the repository."""
    if block.lang == "python":
        script = tmp_path / "sample.py"
        script.write_text(block.code)
        cmd = [sys.executable, str(script)]
    else:
        cmd = ["bash", "-c", block.code]
    out = subprocess.run(cmd, cwd=tmp_path, env=env_for(tmp_path), capture_output=True, text=True, timeout=TIMEOUT)
    assert out.returncode == 0, f"README.md line {block.line}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    if "--resume" in block.code:  # the resumed demo run finished, with one push and nothing re-called
        assert re.search(r"status\s*│\s*completed", out.stdout), out.stdout[-3000:]
        assert re.search(r"config_pushes\s*│\s*1\s", out.stdout), out.stdout[-3000:]
        assert re.search(r"recalled_model_steps\s*│\s*0\s", out.stdout), out.stdout[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize(
    "block", [b for b in runnable() if "__main__" in b.code], ids=lambda b: f"{b.lang}-line-{b.line}"
)
def test_a_worker_importing_a_readme_module_starts_no_run(block: Block, tmp_path: Path) -> None:
    """`agentflow worker --app mymodule:app` imports the module: that starts nothing."""
    (tmp_path / "mymodule.py").write_text(block.code)
    out = subprocess.run(
        [sys.executable, "-c", "import mymodule; print(mymodule.app)"],
        cwd=tmp_path, env=env_for(tmp_path), capture_output=True, text=True, timeout=TIMEOUT,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    db = tmp_path / "agentflow.db"
    if db.exists():
        with sqlite3.connect(db) as conn:
            assert conn.execute("SELECT count(*) FROM af_runs").fetchone()[0] == 0
