"""The package's shape: no import circles between its own modules, and no module over 400 lines.

The import graph is read from the source with `ast`, without importing anything, so the test is
cheap and sees every module. Every import counts: one inside a function runs whenever the function
does, and one under `if TYPE_CHECKING:` still ties the two modules' designs together, so a circle
through either is a circle. Importing `a.b.c` counts as an edge to
`a.b.c` only, not to the packages `a` and `a.b` that Python also runs on the way, and
`from a.b import c` is an edge to the submodule `a.b.c` when there is one, else to `a.b`.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {"steerpatch": ROOT / "steerpatch", "mlflow_steerpatch": ROOT / "plugins" / "mlflow_steerpatch"}
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package and the plugin."""
    found = {}
    for package, folder in SOURCES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = [package, *path.relative_to(folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _imports(tree: ast.AST, module: str, is_package: bool) -> list[tuple[str, list[str]]]:
    """(imported module, names imported from it) for every import statement, relative ones resolved."""
    found: list[tuple[str, list[str]]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            found.extend((alias.name, []) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([base] if base else []))
            found.append((base, [alias.name for alias in node.names]))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's own modules it imports (module-level and inside functions)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        edges = set()
        for target, names in _imports(tree, name, path.name == "__init__.py"):
            submodules = {f"{target}.{n}" for n in names} & modules.keys()
            edges |= submodules
            if target in modules and (not names or len(submodules) < len(names)):
                edges.add(target)  # a name defined by the module itself, not one of its submodules
        edges.discard(name)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One concrete circle per strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return [_circle(graph, component) for component in components]


def _circle(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """A shortest path from the component's first module back to itself, inside the component."""
    start, members = component[0], set(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(graph[node] & members):
                if nxt == start:
                    return [*paths[node], start]
                if nxt not in paths:
                    paths[nxt] = [*paths[node], nxt]
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"no circle through {start} in {component}")  # pragma: no cover


def test_no_import_circles():
    found = cycles(import_graph())
    assert not found, "import circles: " + "; ".join(" -> ".join(c) for c in found)


def test_no_module_over_400_lines():
    long = {
        str(path.relative_to(ROOT)): n
        for path in _modules().values()
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines (split them by concept): {long}"


def test_the_graph_sees_every_kind_of_import():
    code = (
        "from __future__ import annotations\n"
        "from typing import TYPE_CHECKING\n"
        "import steerpatch.errors\n"
        "from . import io\n"
        "from .patch import format as fmt\n"
        "if TYPE_CHECKING:\n"
        "    from steerpatch.validate import report\n"
        "def later():\n"
        "    from steerpatch.validate.report import load_report\n"
    )
    found = _imports(ast.parse(code), "steerpatch.cli", is_package=True)
    assert found == [
        ("__future__", ["annotations"]), ("typing", ["TYPE_CHECKING"]), ("steerpatch.errors", []),
        ("steerpatch.cli", ["io"]), ("steerpatch.cli.patch", ["format"]), ("steerpatch.validate", ["report"]),
        ("steerpatch.validate.report", ["load_report"]),
    ]
    assert _imports(ast.parse("from .. import io"), "steerpatch.cli.main", is_package=False) == [("steerpatch", ["io"])]


def test_a_circle_is_found_and_named():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
    assert cycles(graph) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
