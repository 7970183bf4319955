"""Imports point down: engine knows no framework, and no layer imports the one above it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "engine": {"flask", "flask_*", "celery", "kombu", "web", "workers", "cli"},
    "web": {"cli"},
    "workers": {"web", "cli"},
}


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, top-level module) of every absolute import in a file, wherever it appears."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name.split(".")[0]) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


def is_forbidden(module: str, rules: set[str]) -> bool:
    return any(
        module.startswith(rule[:-1]) if rule.endswith("*") else module == rule for rule in rules
    )


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_module_imports_a_layer_above_its_own(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no modules found under {package}/"
    offences = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in files
        for line, module in imported_modules(path)
        if is_forbidden(module, FORBIDDEN[package])
    ]
    assert offences == []


def test_the_layering_check_sees_imports_hidden_in_functions(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import os\n"
        "from engine import runs\n"
        "def later():\n"
        "    import flask_jwt_extended\n"
        "    from celery.exceptions import Retry\n"
        "from . import sibling\n"
    )
    modules = [module for _, module in imported_modules(sample)]
    assert modules == ["os", "engine", "flask_jwt_extended", "celery"]
    assert [m for m in modules if is_forbidden(m, FORBIDDEN["engine"])] == [
        "flask_jwt_extended",
        "celery",
    ]
    assert not is_forbidden("flasket", FORBIDDEN["engine"])
    assert not is_forbidden("webcolors", FORBIDDEN["engine"])
