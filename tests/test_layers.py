"""The package's layers point down, and the light modules stay light.

Read from the source (every import statement, at any depth, TYPE_CHECKING ones excepted), so a
new import that breaks a rule fails here, not in a user's start-up time or an import cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "onnxfix"

# Lower layers never import upper ones: cli -> commands -> training -> kernels -> modelio ->
# helpers (training plans over kernels' conv layers; kernels never reach into training).
RANK = {"cli": 5, "commands": 4, "training": 3, "kernels": 2, "modelio": 1}
HELPERS = 0  # errors, dtypes, provenance, _proto, _version: anything not listed above
ENTRY_POINTS = ("onnxfix", "onnxfix.__main__")  # the lazy public API and `python -m`


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _rank(module: str) -> int:
    parts = module.split(".")
    return RANK.get(parts[1], HELPERS) if len(parts) > 1 else HELPERS


def _imports(path: Path) -> set[str]:
    """onnxfix modules ``path`` imports, leaving out ``if TYPE_CHECKING:`` blocks."""
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.startswith("onnxfix"):
                found.add(node.module)
                found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("onnxfix"))
    known = {_module_name(p) for p in PACKAGE.rglob("*.py")}
    return {m for m in found if m in known}


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def test_no_module_imports_a_higher_layer():
    wrong = []
    for name, path in MODULES.items():
        for target in _imports(path):
            if _rank(target) > _rank(name) and name not in ENTRY_POINTS:
                wrong.append(f"{name} imports {target}")
    assert wrong == []


def test_no_command_imports_another_command():
    wrong = [
        f"{name} imports {target}"
        for name, path in MODULES.items()
        if name.startswith("onnxfix.commands.")
        for target in _imports(path)
        if target.startswith("onnxfix.commands.") and target != name
    ]
    assert wrong == []


def _top_level_imports(path: Path) -> set[str]:
    """onnxfix modules imported by ``path``'s own top-level statements (what runs on import)."""
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("onnxfix"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return {m for m in found if m in MODULES}


def test_no_import_cycle_at_module_level():
    """Imports inside functions may point anywhere down; those run on import must not loop."""
    graph = {name: _top_level_imports(path) - {name} for name, path in MODULES.items()}
    cycles = []
    for start in graph:
        stack, seen = [(start, (start,))], set()
        while stack:
            node, trail = stack.pop()
            for nxt in graph.get(node, ()):
                if nxt == start:
                    cycles.append(" -> ".join((*trail, nxt)))
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, (*trail, nxt)))
    assert cycles == []


LIGHT = {
    # The CLI imports these at start-up, before numpy or onnx.
    "onnxfix.training.options": set(),
    "onnxfix.training.jobs": set(),
    "onnxfix.training.layout": {"onnxfix.errors", "onnxfix.training.options"},
    "onnxfix.errors": set(),
    "onnxfix._version": set(),
}


def test_light_modules_import_only_light_modules():
    for name, allowed in LIGHT.items():
        tree = ast.parse(MODULES[name].read_text())
        top = set()
        for node in tree.body:
            if isinstance(node, ast.Import):
                top.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                top.add(
                    node.module if node.module.startswith("onnxfix") else node.module.split(".")[0]
                )
        heavy = {m for m in top if m in {"numpy", "onnx", "onnxruntime", "google", "ml_dtypes"}}
        assert heavy == set(), f"{name} imports {heavy} at its top"
        inner = {m for m in top if m.startswith("onnxfix")}
        assert inner <= allowed, f"{name} imports {inner - allowed}"
