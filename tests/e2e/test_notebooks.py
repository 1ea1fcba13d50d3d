"""The notebooks in notebooks/ run top to bottom on a real Jupyter kernel, offline, recording
their own data (the NOC demo killed mid-run and resumed), and show what they claim."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"


def execute(name: str, tmp_path: Path) -> tuple[Any, str]:
    """Run a notebook on the `python3` kernel (this interpreter's ipykernel) in `tmp_path`;
    return it executed and the text of all its outputs."""
    nb = _read(NOTEBOOKS / name)
    # A fresh machine: no store given, no model reachable, no network left over from a test.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AGENTFLOW_", "NOC_"))}
    env["AGENTFLOW_ALLOW_MODEL_REQUESTS"] = "0"
    client = NotebookClient(nb, kernel_name="python3", timeout=120, resources={"metadata": {"path": str(tmp_path)}})
    client.execute(env=env)
    return nb, "\n".join(_texts(nb))


def _read(path: Path) -> Any:
    return nbformat.read(path, as_version=4)  # type: ignore[no-untyped-call]


def _texts(nb: Any) -> list[str]:
    out = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream":
                out.append(output["text"])
            for kind in ("text/plain", "text/html"):
                if kind in output.get("data", {}):
                    out.append(output["data"][kind])
    return out


def _has(nb: Any, mime: str) -> bool:
    return any(mime in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))


def test_notebooks_are_committed_without_outputs() -> None:
    """Outputs are made by running the notebooks, never stored in git."""
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        nb = _read(path)
        nbformat.validate(nb)
        assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb.cells if c.cell_type == "code")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_replay_noc_incident_notebook(tmp_path: Path) -> None:
    """01: the crashed-and-resumed run is shown (what happened, the timeline with the crash and
    the resume marked, the plot); the ledger has one effect per idempotency key and one config
    push; every model call has a cost; the replay against the current code passes."""
    nb, text = execute("01_replay_noc_incident.ipynb", tmp_path)
    ledger = re.search(r"LEDGER_OK effects=(\d+) applies=(\d+) max_per_key=(\d+) duplicates=(\d+)", text)
    assert ledger is not None, text[-3000:]
    assert ledger.groups() == ("3", "1", "1", "0")
    assert "REPLAY_OK status=completed" in text
    assert re.search(r"lease \d+: steps 1\.\.12 ", text), "the kill after step 12 shows as a change of lease"
    assert re.search(r"TOTAL calls=10 tokens=[1-9]\d* ", text)
    assert "agentflow-trace" in text and _has(nb, "image/png")
    # what happened, and the timeline's crash and resume markers between steps 12 and 13
    assert "CRASH after step 12 (lease 1) -> RESUME at step 13 (lease 2)" in text
    assert "- The worker was lost after step 12 (lease 1)" in text
    assert 'data-marker="crash"' in text and "worker lost after step 12" in text and 'data-marker="resume"' in text
    assert text.count('data-marker="wake"') == 2  # the waits' wakes are not crashes
    # the cost series: one priced cost per model call
    series = re.search(r"COST_SERIES \[([^\]]*)\]", text)
    assert series is not None
    costs = [float(c) for c in series.group(1).split(",")]
    assert len(costs) == 10 and all(c > 0 for c in costs), costs
    assert re.search(r"cost_usd=0\.00[1-9]\d*", text)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_what_if_policy_notebook(tmp_path: Path) -> None:
    """02: what happened is told first; the stricter pack denies exactly the config push's
    decisions, the looser one allows them; every other decision is the same under both."""
    _, text = execute("02_what_if_policy.ipynb", tmp_path)
    assert "- The worker was lost after step 12 (lease 1)" in text  # what happened, first
    assert "STRICTER changes=3 tools=['apply_change'] would=['deny']" in text, text[-3000:]
    assert "LOOSER changes=3 tools=['apply_change'] would=['allow']" in text
    found = re.search(r"DIFF decisions=(\d+) unchanged=(\d+) unchanged_tools=(\[.*\])", text)
    assert found is not None
    assert int(found.group(1)) - int(found.group(2)) == 3 and "apply_change" not in found.group(3)
