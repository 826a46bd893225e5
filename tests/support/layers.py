"""The project's floor plan as data, and an AST walk that checks code against it.

Every `import` counts, wherever it stands (module level, inside a function,
under `if TYPE_CHECKING`), so a layer cannot reach upwards by importing late.
docs/architecture.md draws the same rule.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

PACKAGES = ("protocol", "chain", "node", "validator")
LEAVES = ("node.errors", "node.status")  # import nothing of ours; any node layer may use them

# layer -> what it may import (besides itself); "*" is anything of ours
RULES: dict[str, tuple[str, ...]] = {
    "protocol": (),
    "chain": (),
    "node.errors": (),
    "node.status": (),
    "node.outer": ("protocol", "node.errors"),
    "node.engine": ("node.outer", "protocol", "node.errors"),
    "node.mesh": ("protocol", "node.errors"),
    "node.dashboard": ("node.status",),
    "node.runtime": ("node.engine", "node.outer", "node.mesh", "chain", "protocol", *LEAVES),
    "validator": ("node.runtime", "node.engine", "node.outer", "node.mesh", "chain", "protocol",
                  *LEAVES),
    "node.sim": ("*",),
    "node.cli": ("*",),
    "node": (),  # node/__init__.py
}


@dataclass(frozen=True)
class Violation:
    path: Path
    line: int
    importer: str
    imported: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.importer} imports {self.imported}"


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> str | None:
    """The most specific layer in RULES that `module` belongs to."""
    best = None
    for layer in RULES:
        if (module == layer or module.startswith(layer + ".")) and (
                best is None or len(layer) > len(best)):
            best = layer
    return best


def imports_of(tree: ast.AST, module: str, is_package: bool
               ) -> Iterator[tuple[int, str, list[str]]]:
    """(line, module, names) of every import in `tree`, relative ones resolved. `names`
    are `module.name` for `from module import name` (a name may be a submodule)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, []
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            yield node.lineno, target, [f"{target}.{a.name}" for a in node.names]


def ours(name: str) -> bool:
    return name.split(".")[0] in PACKAGES


def allowed(importer_layer: str, imported: str) -> bool:
    target = layer_of(imported)
    if target is None or target == importer_layer:
        return True
    if target == "node" and imported == "node":
        return True  # the namespace package itself carries nothing
    rule = RULES[importer_layer]
    return "*" in rule or target in rule or any(target.startswith(r + ".") for r in rule)


def source_files(root: Path, packages: Iterable[str] = PACKAGES) -> list[Path]:
    files: list[Path] = []
    for package in packages:
        files += [p for p in (root / package).rglob("*.py") if "node_modules" not in p.parts]
    return sorted(files)


def violations(root: Path, files: Iterable[Path]) -> list[Violation]:
    found: list[Violation] = []
    for path in files:
        module = module_name(root, path)
        layer = layer_of(module)
        if layer is None:
            found.append(Violation(path, 0, module, "(no layer: add it to RULES)"))
            continue
        tree = ast.parse(path.read_text(), str(path))
        for line, target, names in imports_of(tree, module, path.name == "__init__.py"):
            if not ours(target) or target == module:
                continue
            if not allowed(layer, target):
                found.append(Violation(path, line, module, target))
                continue
            # `from node import runtime`: the package is fine, the submodule may not be
            found += [Violation(path, line, module, n) for n in names if not allowed(layer, n)]
    return found


def module_graph(root: Path, files: Iterable[Path]) -> dict[str, set[str]]:
    """Module -> our modules it imports at import time (module level, not TYPE_CHECKING)."""
    files = list(files)
    known = {module_name(root, p) for p in files}
    graph: dict[str, set[str]] = {}
    for path in files:
        module = module_name(root, path)
        tree = ast.parse(path.read_text(), str(path))
        edges: set[str] = set()
        for stmt in _import_time_statements(tree.body):
            for _, target, names in imports_of(stmt, module, path.name == "__init__.py"):
                submodules = [n for n in names if n in known]
                edges.update(submodules or ([target] if target in known else []))
        # a module's own enclosing packages are initialised before it: not a dependency
        graph[module] = {e for e in edges if e != module and not module.startswith(e + ".")}
    return graph


def _import_time_statements(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    for stmt in body:
        if isinstance(stmt, (ast.Import, ast.ImportFrom)):
            yield stmt
        elif isinstance(stmt, ast.If) and "TYPE_CHECKING" not in ast.unparse(stmt.test):
            yield from _import_time_statements(stmt.body + stmt.orelse)
        elif isinstance(stmt, ast.Try):
            yield from _import_time_statements(stmt.body + stmt.orelse + stmt.finalbody)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return groups
