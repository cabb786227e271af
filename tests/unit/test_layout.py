"""The package layout keeps its promises (docs/DESIGN.md): no import circle, and a login
never reaches the admin CLI, the daemon or the report.

Static: the import graph is read from the source with `ast`, lazy imports inside functions
included (they run on some login or some command), `if TYPE_CHECKING:` blocks excluded (they
never run). Module names held in strings (enrich's table of sources) count as imports. The
runtime side (what a warm login really loads) is tests/e2e/test_imports.py.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PKG = "dovecot_appauth"

# who may import whom, by unit: "" is the per-login path at the top of the package
MAY_IMPORT = {
    "": {"", "audit"},
    "audit": {"", "audit"},
    "serve": {"", "audit", "serve"},
    "report": {"", "audit", "report", "cli.schema"},  # the report reads the database through schema
    "cli": {"", "audit", "cli", "serve", "report"},
}


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted((SRC / PKG).rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        is_pkg = parts[-1] == "__init__"
        found[".".join(parts[:-1] if is_pkg else parts)] = path
    return found


MODULES = _modules()


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _walk_runtime(node: ast.AST):
    """ast.walk without the bodies of `if TYPE_CHECKING:`."""
    for child in ast.iter_child_nodes(node):
        if _is_type_checking(child):
            for other in child.orelse:
                yield other
                yield from _walk_runtime(other)
            continue
        yield child
        yield from _walk_runtime(child)


def _resolve(module: str | None, level: int, current: str, is_pkg: bool) -> str:
    if not level:
        return module or ""
    parts = current.split(".") if is_pkg else current.split(".")[:-1]
    parts = parts[: len(parts) - (level - 1)]
    return ".".join([*parts, module] if module else parts)


def _imports(name: str, path: Path) -> set[str]:
    """The package modules `name` imports (each `from X import y` counts X.y when it is a module)."""
    tree = ast.parse(path.read_text())
    is_pkg = path.name == "__init__.py"
    out = set()
    for node in _walk_runtime(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(node.module, node.level, name, is_pkg)
            for alias in node.names:
                out.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in MODULES:
            out.add(node.value)
    return {m for m in out if m in MODULES and m != name}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _unit(module: str) -> str:
    """The unit a module belongs to: "" (per-login path), audit, cli, serve or report."""
    parts = module.split(".")[1:]
    return parts[0] if len(parts) > 1 or (parts and parts[0] in MAY_IMPORT) else ""


def _allowed(importer: str, imported: str) -> bool:
    allowed = MAY_IMPORT[_unit(importer)]
    rest = imported.split(".", 1)[1] if "." in imported else ""
    return _unit(imported) in allowed or rest in allowed


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of `graph`, or None (depth-first search, colours)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_layout_units_exist():
    """The four audiences are packages, and the per-login path is at the top."""
    for unit in ("audit", "cli", "serve", "report"):
        assert f"{PKG}.{unit}" in MODULES, unit
    for module in ("core", "login", "config", "store", "hashing", "reply", "values", "policy", "throttle", "entry"):
        assert _unit(f"{PKG}.{module}") == "", module


def test_package_has_no_import_circle():
    assert _cycle(GRAPH) is None, " -> ".join(_cycle(GRAPH) or [])


def test_cycle_finder_sees_a_circle():
    """The guard is not vacuous."""
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_module_imports_only_what_its_unit_may(module):
    """Per-login path and audit engine: nothing from cli/, serve/ or report/ (lazy imports included)."""
    wrong = sorted(m for m in GRAPH[module] if not _allowed(module, m))
    assert wrong == [], f"{module} ({_unit(module) or 'per-login path'}) imports {wrong}; see docs/DESIGN.md"


def test_login_closure_stays_off_admin_units():
    """Everything a login can reach, directly or not, stays on the per-login path and the audit engine."""
    seen, todo = set(), [f"{PKG}.entry", f"{PKG}.login"]
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(GRAPH[module])
    assert sorted(m for m in seen if _unit(m) not in {"", "audit"}) == []


@pytest.mark.parametrize("package", [PKG, f"{PKG}.audit"])
def test_per_login_package_init_is_empty(package):
    """A login imports these packages: their __init__ must cost nothing (no imports, no code)."""
    tree = ast.parse(MODULES[package].read_text())
    body = [n for n in tree.body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
    assert all(isinstance(n, ast.Assign) for n in body), f"{package}/__init__.py does more than name things"
