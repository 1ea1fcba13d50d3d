"""The import graph of agentflow, read from the source with `ast` (nothing is imported).

Used by `tests/test_layers.py` (the rules) and runnable on any checkout for the figures an
architecture review quotes:

    python tests/support/layers.py [ROOT]     # JSON: cycles, private imports, SQL sites, sizes

Every import counts, wherever it is written: at module level, inside a function (a lazy import)
or under `if TYPE_CHECKING:` (a type-only import is still a dependency of the design).
"""

from __future__ import annotations

import ast
import json
import re
import sys
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

# A statement of SQL in a string literal: the verbs agentflow's SQL uses, in upper case as the
# store writes them (prose in messages is lower case).
SQL = re.compile(
    r"\b(SELECT\s+(?:1|\*|DISTINCT|count|min|max|sum|coalesce|[a-z_.]+\s*(?:,|FROM))"
    r"|INSERT\s+INTO|UPDATE\s+af_\w+\s+SET|DELETE\s+FROM|CREATE\s+(?:TABLE|INDEX)|BEGIN\s+IMMEDIATE)"
    # a bare clause with a bound parameter: "r.tenant = ?", "at > ?"
    r"|\b[a-z_]+(?:\.[a-z_]+)?\s*(?:=|!=|<|<=|>|>=)\s*\?"
)
MAX_LINES = 600


@dataclass(frozen=True, slots=True)
class Import:
    """One import statement's target, as written in `source`."""

    source: str  # the importing module, dotted
    target: str  # the imported module (or module.name for `from module import name`)
    line: int
    lazy: bool  # inside a function
    type_only: bool  # under `if TYPE_CHECKING:`


@dataclass
class Module:
    name: str
    path: Path
    lines: int
    imports: list[Import] = field(default_factory=list)
    sql: list[int] = field(default_factory=list)  # lines of string literals holding SQL


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


class _Visitor(ast.NodeVisitor):
    def __init__(self, module: Module, package: str) -> None:
        self.module = module
        self.package = package  # for relative imports
        self.depth = 0
        self.type_only = 0

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._nested(node)

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        self._nested(node)

    def _nested(self, node: ast.AST) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            self.type_only += 1
            for child in node.body:
                self.visit(child)
            self.type_only -= 1
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def _add(self, target: str, line: int) -> None:
        self.module.imports.append(Import(self.module.name, target, line, self.depth > 0, self.type_only > 0))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node.lineno)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        if node.level:
            parts = self.package.split(".")
            parts = parts[: len(parts) - node.level + 1]
            base = ".".join([*parts, base] if base else parts)
        for alias in node.names:
            self._add(f"{base}.{alias.name}", node.lineno)

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, str) and SQL.search(node.value):
            self.module.sql.append(node.lineno)

    def visit_JoinedStr(self, node: ast.JoinedStr) -> None:
        text = "".join(v.value for v in node.values if isinstance(v, ast.Constant) and isinstance(v.value, str))
        if SQL.search(text):
            self.module.sql.append(node.lineno)
        else:
            self.generic_visit(node)


def read_modules(root: Path, top: str) -> dict[str, Module]:
    """Every module of the package `top` under `root` (a directory holding `top/`)."""
    found: dict[str, Module] = {}
    for path in sorted((root / top).rglob("*.py")):
        if "migrations" in path.parts:
            continue  # Alembic's revisions: schema history, not the running design
        name = module_name(path, root)
        text = path.read_text()
        module = Module(name, path, text.count("\n") + (not text.endswith("\n")))
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        _Visitor(module, package).visit(ast.parse(text, filename=str(path)))
        found[name] = module
    return found


def resolve(target: str, modules: dict[str, Module]) -> str | None:
    """The module an import target lands in (`pkg.mod.name` -> `pkg.mod`), if it is one of ours."""
    while target:
        if target in modules:
            return target
        target = target.rpartition(".")[0]
    return None


def package_of(module: str) -> str:
    """`agentflow.engine._app` -> `agentflow.engine`; `agentflow.errors` -> `agentflow.errors`."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else parts[0]


def edges(modules: dict[str, Module]) -> Iterator[tuple[Import, str]]:
    """Each import of one of our modules, with the module it resolves to."""
    for module in modules.values():
        for imp in module.imports:
            target = resolve(imp.target, modules)
            if target is not None and target != module.name:
                yield imp, target


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def module_graph(modules: dict[str, Module]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for imp, target in edges(modules):
        # A package's __init__ re-exports its modules: importing `pkg` is not importing every
        # module of it, so an edge into an `__init__` stops there (the facade is its own node).
        graph[imp.source].add(target)
    return graph


def package_graph(modules: dict[str, Module]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for imp, target in edges(modules):
        a, b = package_of(imp.source), package_of(target)
        if a != b and a != "agentflow" and b != "agentflow":  # the root facade re-exports
            graph[a].add(b)
    return graph


def private_cross_imports(modules: dict[str, Module]) -> list[str]:
    """Imports of another package's private module (`agentflow.x._y` from outside `agentflow.x`)."""
    out = []
    for imp, target in edges(modules):
        private = any(p.startswith("_") and not p.startswith("__") for p in target.split(".")[1:])
        if private and package_of(target) != package_of(imp.source):
            out.append(f"{imp.source}:{imp.line} imports {target}")
    return out


def sql_sites(modules: dict[str, Module], owner: str = "agentflow.store") -> list[str]:
    return [f"{m.name}:{line}" for m in modules.values() if package_of(m.name) != owner for line in m.sql]


def report(root: Path) -> dict[str, object]:
    modules = read_modules(root, "agentflow")
    return {
        "modules": len(modules),
        "lines": sum(m.lines for m in modules.values()),
        "package_cycles": cycles(package_graph(modules)),
        "module_cycles": cycles(module_graph(modules)),
        "private_cross_imports": len(private_cross_imports(modules)),
        "sql_outside_store": len(sql_sites(modules)),
        "sql_outside_store_by_module": _count(m.split(":")[0] for m in sql_sites(modules)),
        f"modules_over_{MAX_LINES}_lines": {m.name: m.lines for m in modules.values() if m.lines > MAX_LINES},
        "largest": sorted(((m.lines, m.name) for m in modules.values()), reverse=True)[:8],
    }


def _count(items: Iterator[str]) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for item in items:
        counts[item] += 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


if __name__ == "__main__":
    print(json.dumps(report(Path(sys.argv[1] if len(sys.argv) > 1 else ".").resolve()), indent=1))
