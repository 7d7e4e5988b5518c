"""Dependencies run one way: ground <- backends <- search_spaces <- planner, and profiler <- planner.

Every import statement of every module is read (module level and inside functions alike), so no
function-level import can hide a cycle.
"""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OURS = ("ground", "backends", "search_spaces", "profiler", "planner")
ALLOWED = {
    "ground": set(),
    "backends": {"ground"},
    "search_spaces": {"ground", "backends"},
    "profiler": {"ground"},
    "planner": set(OURS),
}
MAX_LINES = 400
# Modules allowed past MAX_LINES, each with its reason.
LONG_MODULES = {
    "planner/demo/tiny_pipelines.py": "eight real pipeline families built from configs, one builder each, "
                                      "and the in-memory tokenizers they need; splitting scatters one recipe",
}


def _modules(package: str):
    return sorted((ROOT / package).rglob("*.py"))


def _imported_packages(path: Path) -> set[tuple[str, int]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {(alias.name.split(".")[0], node.lineno) for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add((node.module.split(".")[0], node.lineno))
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            found.add((path.relative_to(ROOT).parts[0], node.lineno))   # relative: same package
    return found


@pytest.mark.parametrize("package", [p for p in OURS if p != "planner"])
def test_imports_run_one_way(package):
    bad = []
    for path in _modules(package):
        for imported, line in _imported_packages(path):
            if imported in OURS and imported != package and imported not in ALLOWED[package]:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {imported}")
    assert not bad, "\n".join(bad)


def test_the_checker_sees_function_level_imports(tmp_path):
    sample = ROOT / "ground" / "__init__.py"
    assert all(imported not in OURS[1:] for imported, _ in _imported_packages(sample))
    nested = tmp_path / "x.py"
    nested.write_text("def f():\n    from planner.models import load_pipeline\n")
    nested_rel = ROOT / "ground" / "_probe_for_test.py"
    try:
        nested_rel.write_text(nested.read_text())
        assert ("planner", 2) in _imported_packages(nested_rel)
    finally:
        nested_rel.unlink()


def _code_words(path: Path) -> list[tuple[int, str]]:
    """Identifiers, imported module names and string literals of a module, docstrings left out."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    words = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            words.append((node.lineno, node.value))
        elif isinstance(node, ast.Name):
            words.append((node.lineno, node.id))
        elif isinstance(node, ast.Attribute):
            words.append((node.lineno, node.attr))
        elif isinstance(node, ast.ImportFrom) and node.module:
            words.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            words += [(node.lineno, alias.name) for alias in node.names]
    return words


def test_generic_code_does_not_name_the_demo():
    """Demo knowledge stays in planner/demo: no other module names it in code, bar the package root
    that lets the built-in models register themselves (examples in docstrings are fine)."""
    bad = []
    for package in OURS:
        for path in _modules(package):
            rel = path.relative_to(ROOT)
            if rel.parts[:2] == ("planner", "demo") or rel == Path("planner/__init__.py"):
                continue
            for line, word in _code_words(path):
                for name in ("planner.demo", "Digits", "digits-unet", "digits-dit"):
                    if name in word:
                        bad.append(f"{rel}:{line} names {name!r}")
    assert not bad, "\n".join(bad)


def test_no_module_is_over_400_lines_without_a_reason():
    long = {str(p.relative_to(ROOT)): len(p.read_text().splitlines())
            for package in OURS for p in _modules(package)}
    over = {p: n for p, n in long.items() if n > MAX_LINES and p not in LONG_MODULES}
    assert not over, over
