"""What the two distributions install: `agentflow` ships the framework only, `agentflow-noc`
(tools/noc/) ships the NOC pack with its policy pack and the demo's entry point.

The wheels are built from copies of the sources: an in-tree build would leave `build/` and
`*.egg-info` in the checkout, and a stale `build/lib` from an older layout would end up in the
wheel. The NOC wheel is built from `tools/noc/` alone, so nothing it needs lives outside it.
"""

from __future__ import annotations

import configparser
import os
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import agentflow_noc

ROOT = Path(__file__).resolve().parents[1]
NOC = ROOT / "tools" / "noc"
# Build outputs, caches and local databases: never part of a distribution's sources.
NOT_SOURCES = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "test-artifacts", "*.db", "*.db-*"
)


def _wheel(source: Path, work: Path) -> zipfile.ZipFile:
    copy = work / "src"
    shutil.copytree(source, copy, symlinks=True, ignore=NOT_SOURCES)
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(work), str(copy)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    (wheel,) = work.glob("*.whl")
    return zipfile.ZipFile(wheel)


@pytest.fixture(scope="module")
def agentflow_wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    return _wheel(ROOT, tmp_path_factory.mktemp("agentflow-wheel"))


@pytest.fixture(scope="module")
def noc_wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    return _wheel(NOC, tmp_path_factory.mktemp("noc-wheel"))


def _packages(wheel: zipfile.ZipFile) -> set[str]:
    """The wheel's top-level entries, less its one `.dist-info` directory."""
    top = {name.split("/", 1)[0] for name in wheel.namelist()}
    (info,) = [t for t in top if t.endswith(".dist-info")]
    return top - {info}


def _entry_points(wheel: zipfile.ZipFile) -> configparser.ConfigParser:
    (name,) = [n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")]
    parser = configparser.ConfigParser()
    parser.read_string(wheel.read(name).decode())
    return parser


@pytest.mark.slow
def test_the_agentflow_wheel_installs_agentflow_only(agentflow_wheel: zipfile.ZipFile) -> None:
    """`pip install agentflow` installs the `agentflow` package and nothing beside it: no
    top-level `tools` or `policies` a project's own could shadow, or another distribution
    overwrite. The demo's entry point is the NOC pack's, not agentflow's."""
    assert _packages(agentflow_wheel) == {"agentflow"}
    assert "agentflow/py.typed" in agentflow_wheel.namelist()
    points = _entry_points(agentflow_wheel)
    assert points["console_scripts"]["agentflow"] == "agentflow.cli:main"
    assert not points.has_section("agentflow.demos")


@pytest.mark.slow
def test_the_noc_wheel_ships_the_pack_its_policy_and_the_demo(noc_wheel: zipfile.ZipFile) -> None:
    """`agentflow-noc` installs `agentflow_noc` only, with `noc.yaml` as a real file (the same
    bytes as the repository's `policies/noc.yaml`) and the `agentflow.demos` entry point that
    `agentflow demo` looks up; it depends on agentflow."""
    assert _packages(noc_wheel) == {"agentflow_noc"}
    names = noc_wheel.namelist()
    assert {"agentflow_noc/__init__.py", "agentflow_noc/demo.py", "agentflow_noc/py.typed"} <= set(names)
    info = noc_wheel.getinfo("agentflow_noc/noc.yaml")
    assert not stat.S_ISLNK(info.external_attr >> 16), "noc.yaml must ship as a file, not a link"
    assert noc_wheel.read(info) == (ROOT / "policies" / "noc.yaml").read_bytes()
    assert _entry_points(noc_wheel)["agentflow.demos"]["noc"] == "agentflow_noc.demo:main"
    (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
    assert "Requires-Dist: agentflow<0.3,>=0.2\n" in noc_wheel.read(metadata).decode()


def test_policies_noc_yaml_links_to_the_package_data() -> None:
    """`policies/noc.yaml` is a relative link to the file the NOC distribution ships (one copy
    of the pack, so the two cannot drift; relative, so a clone anywhere keeps it), and the
    installed package finds that file."""
    link = ROOT / "policies" / "noc.yaml"
    assert link.is_symlink() and not os.path.isabs(os.readlink(link))
    assert link.resolve() == (NOC / "agentflow_noc" / "noc.yaml").resolve()
    assert agentflow_noc.policy_path().resolve() == link.resolve()


def _readme_setup_commands() -> list[str]:
    block = (ROOT / "README.md").read_text().split("## Set up", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_the_readme_installs_both_distributions_and_ci_runs_its_test_command() -> None:
    """The README's two set-up commands: the first installs agentflow and the NOC pack and runs
    the demo; the second is `scripts/test.sh`, which installs both and runs the suite, and is
    what `.ci/run` runs (CI checks what a newcomer types)."""
    demo, tests = _readme_setup_commands()
    assert demo.startswith("python3 -m venv") and '-e ".[dev]" -e ./tools/noc' in demo
    assert demo.endswith("&& agentflow demo")
    assert tests == "scripts/test.sh"
    script = (ROOT / "scripts" / "test.sh").read_text()
    assert 'pip install -q -e ".[dev]" -e ./tools/noc' in script
    assert 'exec python -m pytest -q "${extra[@]}" "${args[@]}"' in script
    assert os.access(ROOT / "scripts" / "test.sh", os.X_OK)
    assert "exec bash scripts/test.sh" in (ROOT / ".ci" / "run").read_text().splitlines()[-1]
