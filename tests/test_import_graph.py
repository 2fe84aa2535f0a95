"""No import cycles inside tacitbayes, counting every import the source holds.

The graph is read from the AST of src/tacitbayes: module-level, function-level and
``if TYPE_CHECKING:`` imports alike, ``import tacitbayes.x``, ``from tacitbayes.x import y``
(an edge to tacitbayes.x.y when that is a module, else to tacitbayes.x), ``from tacitbayes
import x`` and relative imports.
"""

from __future__ import annotations

import ast
from pathlib import Path

import tacitbayes

ROOT = Path(tacitbayes.__file__).resolve().parent


def _modules() -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package's __init__)."""
    modules = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return modules


def import_graph() -> dict[str, dict[str, int]]:
    """Module -> {imported tacitbayes module: line of the first such import}."""
    modules = _modules()
    graph: dict[str, dict[str, int]] = {name: {} for name in modules}
    for name, (path, is_package) in modules.items():
        package = name if is_package else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    parts = parts[: len(parts) - node.level + 1]
                    base = ".".join([*parts, base] if base else parts)
                targets = [
                    f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                    for alias in node.names
                ]
            else:
                continue
            for target in targets:
                if target in modules and target != name:
                    graph[name].setdefault(target, node.lineno)
    return graph


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
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

    for v in graph:
        if v not in index:
            visit(v)
    return sorted(found)


def test_the_graph_sees_every_kind_of_import() -> None:
    graph = import_graph()
    assert "tacitbayes.errors" in graph["tacitbayes.linalg.kronecker"]  # module level
    assert "tacitbayes.distributed" in graph["tacitbayes.cli"]  # function level
    assert "tacitbayes.distributed" in graph["tacitbayes.optim.sync"]  # from tacitbayes import x
    assert "tacitbayes.posteriors" in graph["tacitbayes"]  # if TYPE_CHECKING:
    assert cycles({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {"a": 1}}) == [["a", "b", "c"]]


def test_no_import_cycles() -> None:
    graph = import_graph()
    found = cycles(graph)
    detail = [
        f"{a} -> {b} (line {graph[a][b]})" for component in found for a in component
        for b in graph[a] if b in component
    ]  # fmt: skip
    assert found == [], "import cycles:\n" + "\n".join(detail)
