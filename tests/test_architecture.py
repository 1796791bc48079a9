"""The import graph of the product packages (an AST walk, nothing imported): no cycle between modules, and
dependencies point one way: `bento`, `streaming` and `orchestration` build on `ml` and on nothing else of
the project; `ml` builds on none of them. `benchmarks/` may import anything."""

from __future__ import annotations

import ast
from collections import defaultdict
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("ml", "bento", "streaming", "orchestration")
PROJECT = (*PACKAGES, "benchmarks")  # edges into benchmarks are checked too
ALLOWED = {"ml": set(), "bento": {"ml"}, "streaming": {"ml"}, "orchestration": {"ml"}}


def _modules() -> dict[str, Path]:
    mods = {}
    for top in PROJECT:
        for path in (ROOT / top).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            mods[name.removesuffix(".__init__")] = path
    return mods


def _imports(name: str, path: Path) -> set[str]:
    """What a module imports, absolute (relative imports resolved), every name of a `from` import."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
    return out


@cache
def import_graph() -> dict[str, set[str]]:
    """Module -> project modules it imports (a name is taken to its longest prefix that is a module)."""
    mods = _modules()
    edges: dict[str, set[str]] = defaultdict(set)
    for name, path in mods.items():
        if name.split(".")[0] not in PACKAGES:
            continue
        for target in _imports(name, path):
            while target and target not in mods:
                target = target.rpartition(".")[0]
            if target and target != name:
                edges[name].add(target)
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges.get(root, ()))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(edges.get(w, ())))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    component = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        component.append(w)
                        if w == v:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def test_no_import_cycle() -> None:
    assert _cycles(import_graph()) == []


def test_dependencies_point_to_ml_only() -> None:
    wrong = sorted(f"{a} -> {b}" for a, targets in import_graph().items() for b in targets
                   if (pa := a.split(".")[0]) != (pb := b.split(".")[0]) and pb not in ALLOWED[pa])
    assert wrong == []


def test_the_walk_sees_cycles_and_upward_edges() -> None:
    """The checks above would catch what they look for."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    graph = import_graph()
    assert "ml.online.store" in graph["ml.online.redis_store"]  # a `from ml.online.store import ...`
    assert any(t.startswith("ml.") for t in graph["bento.service"])
