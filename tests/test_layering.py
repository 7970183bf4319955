"""Imports point down: engine knows no framework, and no layer imports the one above it.
README's map of where things live names every module of each layer."""

from __future__ import annotations

import ast
import re
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


def readme_map() -> dict[str, str]:
    """README's "Where things live" block: each top-level folder's entry, by folder."""
    text = (ROOT / "README.md").read_text()
    block = text.split("## Where things live", 1)[1].split("```", 2)[1]
    entries: dict[str, str] = {}
    folder = None
    for line in block.splitlines():
        if line and not line[0].isspace():
            folder, _, line = line.partition("/")
            entries[folder] = ""
        if folder is not None:
            entries[folder] += " " + line.strip()
    return entries


@pytest.mark.parametrize("package", sorted({*FORBIDDEN, "cli"}))
def test_the_readme_map_names_every_module(package: str) -> None:
    """A newcomer finds where a behaviour lives from README's map: every module and
    subpackage of the layer is named in its entry."""
    entry = readme_map()[package]
    modules = sorted(
        path.stem if path.suffix == ".py" else path.name
        for path in (ROOT / package).iterdir()
        if (path.suffix == ".py" and path.stem != "__init__") or (path / "__init__.py").exists()
    )
    assert modules
    missing = [name for name in modules if re.search(rf"\b{re.escape(name)}\b", entry) is None]
    assert not missing, f"README's map of {package}/ does not name: {missing}"
