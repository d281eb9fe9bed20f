"""The app, the notebooks' helpers and the benchmarks use only the engine's public surface.

Public means: `engine` itself or a sub-namespace that declares `__all__`, and a name listed in
that `__all__`. Anything else (a private module, a name missing from `__all__`, an underscore
name) couples the caller to the engine's insides and breaks when a module is reorganised.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CALLERS = sorted(p for folder in ("app", "bench", "notebooks/_cells") for p in (ROOT / folder).rglob("*.py"))


def engine_imports(path: Path) -> list[tuple[int, str, str]]:
    """(line, module, name) for every name a file takes from the engine, by any import form."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and \
                (node.module == "engine" or node.module.startswith("engine.")):
            found += [(node.lineno, node.module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, "") for alias in node.names
                      if alias.name.startswith("engine.")]
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and \
                node.value.id == "engine" and node.attr.startswith("_"):
            found.append((node.lineno, "engine", node.attr))
    return found


def private_uses(path: Path) -> list[str]:
    """What in `path` reaches past the engine's public surface, each as 'line: module.name (why)'."""
    problems = []
    for line, module_name, name in engine_imports(path):
        module = importlib.import_module(module_name)
        public = getattr(module, "__all__", None)
        if public is None:
            problems.append(f"{line}: {module_name} (a module without __all__ is not public)")
        elif name and name not in public:
            problems.append(f"{line}: {module_name}.{name} (not in {module_name}.__all__)")
    return problems


@pytest.mark.parametrize("path", CALLERS, ids=lambda p: str(p.relative_to(ROOT)))
def test_callers_use_only_public_engine_names(path):
    assert private_uses(path) == []


def test_the_checker_sees_a_private_import(tmp_path):
    """The check itself: a private module, a private name and an unlisted name are all caught."""
    probe = tmp_path / "probe.py"
    probe.write_text("from engine import _nothing_public\nimport engine\nengine._hidden\n")
    problems = private_uses(probe)
    assert any("_nothing_public" in p for p in problems)
    assert any("_hidden" in p for p in problems)
