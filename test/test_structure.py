"""The package's structure: no import cycle (function-level imports included), no private name taken
from another module, the core's floors one-way (model <- families <- engine), and every module importable
in a fresh interpreter whatever the order."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mdgm_ros"
FLOORS = ("mdgm_ros.core.model", "mdgm_ros.core.families", "mdgm_ros.core.engine")   # bottom to top


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _base(module: str, path: Path, level: int) -> str:
    parts = module.split(".")
    if path.name != "__init__.py":
        parts = parts[:-1]
    return ".".join(parts[:len(parts) - (level - 1)] if level > 1 else parts)


def imports(module: str) -> list[tuple[str, str | None, int]]:
    """(imported module, name taken from it or None, line) for every import statement of ``module``,
    at any depth (function-level and ``if TYPE_CHECKING:`` imports included: a cycle for the type
    checker is a cycle for the reader too); only modules of this package."""
    path = MODULES[module]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, None, node.lineno) for a in node.names if a.name in MODULES]
        elif isinstance(node, ast.ImportFrom):
            target = node.module or ""
            if node.level:
                base = _base(module, path, node.level)
                target = f"{base}.{target}" if node.module else base
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if sub in MODULES:                      # a submodule imported by name
                    out.append((sub, None, node.lineno))
                elif target in MODULES:
                    out.append((target, alias.name, node.lineno))
    return out


def graph() -> dict[str, set[str]]:
    return {m: {t for t, _, _ in imports(m) if t != m} for m in MODULES}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_in_the_package():
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_private_name_is_imported_from_another_module():
    taken = [f"{m}:{line} takes {name} from {t}" for m in MODULES for t, name, line in imports(m)
             if name and name.startswith("_") and not name.startswith("__") and t != m]
    assert not taken, "\n".join(taken)


def test_the_core_floors_only_import_downwards():
    def floor(module: str) -> int | None:
        return next((i for i, f in enumerate(FLOORS) if module == f or module.startswith(f + ".")), None)

    upward = []
    for module in MODULES:
        here = floor(module)
        if here is None:
            continue
        for target, _, line in imports(module):
            there = floor(target)
            if there is not None and there > here:
                upward.append(f"{module}:{line} imports {target}")
            if target.startswith("mdgm_ros.") and not target.startswith("mdgm_ros.core") and target != "mdgm_ros":
                upward.append(f"{module}:{line} imports {target} (outside the core)")
    assert not upward, "\n".join(upward)


def test_every_module_imports_in_a_fresh_interpreter_in_either_order():
    """Leaves first and roots first: an import cycle hidden behind a lazy import fails one of them."""
    names = [m for m in MODULES if m != "mdgm_ros.__main__"]
    for order in (sorted(names), sorted(names, reverse=True)):
        code = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"
        done = subprocess.run([sys.executable, "-c", code, *order], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]


def test_every_name_imported_from_the_package_exists_there():
    """Function-level imports run only when called: check every ``from mdgm_ros... import name`` now."""
    import importlib

    missing = []
    for module in MODULES:
        for target, name, line in imports(module):
            if name and name != "*" and not hasattr(importlib.import_module(target), name):
                missing.append(f"{module}:{line} imports {name} from {target}, which has no such name")
    assert not missing, "\n".join(missing)


def test_every_attribute_taken_from_an_imported_package_module_exists():
    """``from ..x import module as m`` at the top of a module, then ``m.name`` anywhere in it: the name must
    be there (a re-export that a clean-up removed fails here, not at the call)."""
    import importlib

    missing = []
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(), str(path))
        aliases = {}                       # module-level imports of package modules: local name -> module
        for node in tree.body:
            if isinstance(node, ast.ImportFrom):
                base = _base(module, path, node.level) if node.level else ""
                target = (f"{base}.{node.module}" if node.module else base) if node.level else node.module
                for alias in node.names:
                    if f"{target}.{alias.name}" in MODULES:
                        aliases[alias.asname or alias.name] = f"{target}.{alias.name}"
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
                target = aliases[node.value.id]
                if not hasattr(importlib.import_module(target), node.attr):
                    missing.append(f"{module}:{node.lineno} uses {node.value.id}.{node.attr}, not in {target}")
    assert not missing, "\n".join(sorted(set(missing)))
