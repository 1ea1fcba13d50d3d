"""The architecture, held by CI (ARCHITECTURE.md draws it): every import of agentflow points down
the layers, nothing imports another package's private modules, there are no import cycles, all SQL
lives in the store, no module grows past ~600 lines, and content uses only the public API.

Imports are read from the source with `ast` (tests/support/layers.py): lazy imports inside
functions and `if TYPE_CHECKING:` imports count like any other.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support.layers import (
    MAX_LINES,
    Import,
    Module,
    cycles,
    edges,
    module_graph,
    package_of,
    private_cross_imports,
    read_modules,
    sql_sites,
)

ROOT = Path(__file__).resolve().parents[1]

# Lower layers first. A package may import its own modules and any package of a lower rank; the
# root facade (`agentflow/__init__.py`) re-exports and is exempt.
RANKS = {
    "agentflow.errors": 0,
    "agentflow.store": 1,
    "agentflow.engine": 2,
    "agentflow.llm": 3,
    "agentflow.policy": 3,
    "agentflow.approvals": 4,
    "agentflow.testing": 4,
    "agentflow.webhooks": 4,
    "agentflow.mcp": 4,
    "agentflow.agent": 5,
    "agentflow.chat": 6,
    "agentflow.trace": 6,
    "agentflow.server": 7,
    "agentflow.bridges": 7,
    "agentflow.cli": 8,
}
# Upward edges kept on purpose, each with its reason.
ALLOWED_UP = {
    # `agentflow.llm.ScriptedChatModel` / `RunbookChatModel`: aliases of the fakes that moved to
    # agentflow.testing, kept for code written against 0.1; resolved lazily on first use.
    ("agentflow.llm", "agentflow.testing"),
}


@pytest.fixture(scope="module")
def modules() -> dict[str, Module]:
    return read_modules(ROOT, "agentflow")


def _where(imp: Import) -> str:
    how = " (type-only)" if imp.type_only else " (lazy)" if imp.lazy else ""
    return f"{imp.source}:{imp.line} imports {imp.target}{how}"


def test_every_package_has_a_rank(modules: dict[str, Module]) -> None:
    """A new package takes a deliberate place in the layers (add it to RANKS and ARCHITECTURE.md)."""
    packages = {package_of(name) for name in modules} - {"agentflow"}
    assert sorted(packages - set(RANKS)) == []


def test_imports_point_down_the_layers(modules: dict[str, Module]) -> None:
    """faces (cli, server, chat, trace) -> agent -> approvals/policy/llm -> engine -> store -> errors."""
    wrong = []
    for imp, target in edges(modules):
        a, b = package_of(imp.source), package_of(target)
        if a == b or a == "agentflow" or (a, b) in ALLOWED_UP:
            continue
        if b == "agentflow" or RANKS.get(b, 99) >= RANKS.get(a, -1):
            wrong.append(_where(imp))
    assert wrong == []


@pytest.mark.parametrize("package", ["agentflow.store", "agentflow.engine"])
def test_engine_and_store_import_nothing_above_them(modules: dict[str, Module], package: str) -> None:
    """Not even lazily or for types: the durable core can be read, tested and replaced alone."""
    below = {p for p, rank in RANKS.items() if rank < RANKS[package]} | {package}
    found = [_where(i) for i, t in edges(modules) if package_of(i.source) == package and package_of(t) not in below]
    assert found == []


def test_no_package_imports_another_packages_private_modules(modules: dict[str, Module]) -> None:
    """`agentflow.x._y` is x's business: other packages use what `agentflow.x` exports."""
    assert private_cross_imports(modules) == []


def test_no_import_cycles(modules: dict[str, Module]) -> None:
    """No module imports itself back through others (the one kept alias edge aside)."""
    graph = module_graph(modules)
    graph["agentflow.llm"].discard("agentflow.testing")  # ALLOWED_UP: the 0.1 aliases
    assert cycles(graph) == []


def test_all_sql_lives_in_the_store(modules: dict[str, Module]) -> None:
    """A new backend or a per-key lock touches `agentflow/store/` only."""
    assert sql_sites(modules) == []


def test_no_module_is_over_the_size_limit(modules: dict[str, Module]) -> None:
    """Small modules (STYLE.md): the anchors' sore spots are their 4,000-line files."""
    big = {name: m.lines for name, m in modules.items() if m.lines > MAX_LINES}
    assert big == {}


def test_content_uses_only_the_public_api() -> None:
    """The NOC pack is built like a user's code: no private module or name of agentflow."""
    pack = read_modules(ROOT / "tools" / "noc", "agentflow_noc")
    assert len(pack) > 5, "the NOC pack was not found at tools/noc/agentflow_noc"
    found = []
    for module in pack.values():
        for imp in module.imports:
            parts = imp.target.split(".")
            if parts[0] == "agentflow" and any(p.startswith("_") and not p.startswith("__") for p in parts[1:]):
                found.append(_where(imp))
    assert found == []


def test_the_checker_sees_what_it_must_refuse(tmp_path: Path) -> None:
    """Negative control: a planted upward import, private import, cycle and SQL string are found."""
    pkg = tmp_path / "agentflow"
    for sub in ("store", "engine", "server"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "store" / "_a.py").write_text(
        "def f():\n    from agentflow.engine import _b\n    return _b\n"  # lazy, upward, private
    )
    (pkg / "engine" / "_b.py").write_text("from agentflow.store import _a\n")  # private, closes a cycle
    (pkg / "server" / "_c.py").write_text('Q = "SELECT id FROM af_runs WHERE tenant = ?"\n')
    mods = read_modules(tmp_path, "agentflow")
    assert len(private_cross_imports(mods)) == 2
    assert cycles(module_graph(mods)) == [["agentflow.engine._b", "agentflow.store._a"]]
    assert sql_sites(mods) == ["agentflow.server._c:1"]
    up = [i for i, t in edges(mods) if RANKS[package_of(t)] > RANKS[package_of(i.source)]]
    assert [(i.source, i.lazy) for i in up] == [("agentflow.store._a", True)]
