"""The package boundaries of ARCHITECTURE.md, enforced on the import statements of every module."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIRST_PARTY = {"headend", "protocols", "prepay_engine", "simulators"}
# what each package may import from the others, and which I/O libraries are off limits to it
ALLOWED = {
    "protocols": set(),
    "prepay_engine": set(),
    "simulators": {"protocols"},
    "headend": {"protocols", "prepay_engine"},
}
# the command-line composition roots that start simulated fleets (`headend simulate`, `headend demo`)
COMPOSITION_ROOTS = {"headend/simulate_command.py": {"simulators"}, "headend/demo.py": {"simulators"}}
FORBIDDEN_LIBRARIES = {
    "protocols": {"sqlalchemy", "psycopg", "alembic", "fastapi", "pydantic_settings"},
    "prepay_engine": {"sqlalchemy", "psycopg", "alembic", "fastapi", "pydantic_settings", "paho", "pymodbus"},
    "simulators": {"sqlalchemy", "psycopg", "alembic"},
    "headend": set(),
}


def imported_top_level(path: Path) -> set[str]:
    """Top-level names of every module `path` imports."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_what_its_boundary_allows(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no modules found in {package}"
    offences = []
    for path in files:
        imported = imported_top_level(path)
        allowed = ALLOWED[package] | COMPOSITION_ROOTS.get(str(path.relative_to(ROOT)), set())
        for name in sorted((imported & FIRST_PARTY) - allowed - {package}):
            offences.append(f"{path.relative_to(ROOT)} imports {name}")
        for name in sorted(imported & FORBIDDEN_LIBRARIES[package]):
            offences.append(f"{path.relative_to(ROOT)} imports the I/O library {name}")
    assert offences == []


def test_the_checker_sees_imports() -> None:
    imported = imported_top_level(ROOT / "headend" / "cli.py")
    assert {"headend", "typer"} <= imported
