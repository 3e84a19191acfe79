"""The import graph of central/, dvic_core/, installer/ and tui/ has no cycle and keeps its layers.

Built from the source with `ast`, so every import counts: module level, inside functions (the lazy
imports that keep start-up short) and under `if TYPE_CHECKING:`. A cycle is a strongly connected
component of more than one module. The layers are docs/architecture.md's:

- `dvic_core` imports only the standard library;
- `tui.api` (the client library) imports no textual, rich or argparse, and no `tui.cmds`,
  `tui.console`, `tui.cli` or installer module;
- `tui.console` imports no `tui.cmds` or `tui.cli` module (the console is not built on the CLI);
- the shared leaves (`tui.textsafe`, `tui.fmt`, `tui.terminal`) import no other tui module;
- `installer` and `central` import no `tui.cmds`, `tui.console` or `tui.cli` module.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("central", "dvic_core", "installer", "tui")
# tui/cli.py imports the module of the command given by name, from its MODULES table.
DYNAMIC_IMPORTER = "tui.cli"


def modules(root: Path) -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


class Imports:
    """Every import of every module: edges inside the project, and the top-level names outside it."""

    def __init__(self, root: Path) -> None:
        self.files = modules(root)
        self.edges: dict[str, set[str]] = {name: set() for name in self.files}
        self.external: dict[str, set[str]] = {name: set() for name in self.files}
        self.dynamic: list[str] = []  # "module:line" of import_module calls with a computed name
        for name, path in self.files.items():
            self._read(name, path)

    def _project(self, dotted: str) -> str | None:
        """The project module a dotted name is, or is inside of (`tui.api.errors.ApiError` -> tui.api.errors)."""
        while dotted and dotted not in self.files:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    def _add(self, module: str, target: str) -> None:
        if target.partition(".")[0] in PACKAGES:
            found = self._project(target)
            if found is not None and found != module:
                self.edges[module].add(found)
        else:
            self.external[module].add(target.partition(".")[0])

    def _read(self, module: str, path: Path) -> None:
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    self._add(module, alias.name)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    parts = parts[: len(parts) - node.level + 1]
                    base = ".".join(parts + ([node.module] if node.module else []))
                # `from tui.api import pinning` imports the module tui.api.pinning.
                for alias in node.names:
                    self._add(module, f"{base}.{alias.name}" if f"{base}.{alias.name}" in self.files else base)
            elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "import_module" and node.args:
                arg = node.args[0]
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    self._add(module, arg.value)
                else:
                    self.dynamic.append(f"{module}:{node.lineno}")
                    if module == DYNAMIC_IMPORTER:
                        for target in self._command_modules(tree):
                            self._add(module, target)

    def _command_modules(self, tree: ast.Module) -> list[str]:
        """tui/cli.py's MODULES table as module names (every tui.cmds module when there is none)."""
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "MODULES" for t in node.targets):
                return [f"tui.cmds.{name}" for name in ast.literal_eval(node.value)]
        return [name for name in self.files if name.startswith("tui.cmds.")]


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
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

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def _inside(module: str, *packages: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


# (importers, what they must not import: project packages or external top-level names)
RULES = [
    (("tui.api",), ("tui.cmds", "tui.console", "tui.cli", "installer", "textual", "rich", "argparse")),
    (("tui.console",), ("tui.cmds", "tui.cli")),
    (("tui.textsafe", "tui.fmt", "tui.terminal"), ("tui.api", "tui.cmds", "tui.console", "tui.cli")),
    (("installer",), ("tui.cmds", "tui.console", "tui.cli")),
    (("central",), ("tui.cmds", "tui.console", "tui.cli")),
]


def layer_violations(graph: Imports) -> list[str]:
    bad = []
    for importers, forbidden in RULES:
        for module in graph.files:
            if not _inside(module, *importers):
                continue
            for target in sorted(graph.edges[module]) + sorted(graph.external[module]):
                if _inside(target, *forbidden):
                    bad.append(f"{module} imports {target}")
    for module in graph.files:
        if _inside(module, "dvic_core"):
            bad += [f"{module} imports {t} (dvic_core: standard library only)" for t in sorted(graph.edges[module])
                    if not _inside(t, "dvic_core")]
            bad += [f"{module} imports {t} (dvic_core: standard library only)" for t in sorted(graph.external[module])
                    if t not in sys.stdlib_module_names and t != "__future__"]
    return bad


@pytest.fixture(scope="module")
def graph() -> Imports:
    return Imports(ROOT)


def test_the_graph_sees_the_lazy_and_type_checking_imports(graph: Imports) -> None:
    # Guards the test itself: a function-level import, a TYPE_CHECKING one and the command table.
    assert "tui.console.screens.node" in graph.edges["tui.console.app"]  # inside DvicApp.open_node
    assert "tui.console.host" in graph.edges["tui.console.screens.base"]  # under TYPE_CHECKING
    assert {"tui.cmds.run", "tui.cmds.console", "tui.cmds.shell"} <= graph.edges["tui.cli"]


def test_no_import_cycle(graph: Imports) -> None:
    found = cycles(graph.edges)
    detail = "\n".join(
        f"{' -> '.join(c)}:\n" + "\n".join(f"    {a} -> {b}" for a in c for b in sorted(graph.edges[a]) if b in c)
        for c in found
    )
    assert not found, f"import cycles (break them with a lower module or a Protocol):\n{detail}"


def test_layers(graph: Imports) -> None:
    assert layer_violations(graph) == []


def test_modules_are_imported_by_name_only_from_the_command_table(graph: Imports) -> None:
    """A computed import_module hides an edge from this test: only tui/cli.py's table may use one."""
    assert [d for d in graph.dynamic if not d.startswith(DYNAMIC_IMPORTER + ":")] == []
