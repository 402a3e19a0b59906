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
COMPOSITION_ROOTS = {
    "headend/cli/simulate.py": {"simulators"},
    "headend/cli/simulate_polled.py": {"simulators"},
    "headend/demo/run.py": {"simulators"},
}
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
    imported = imported_top_level(ROOT / "headend" / "cli" / "app.py")
    assert {"headend", "typer"} <= imported


# inside `headend`, the tree reads as the data flow: a foundation (settings, database, broker, process plumbing),
# the capabilities on it, and the doors users come through. Each layer imports only what is below it; the
# capabilities may use each other (the engine posts to the ledger, intake goes through the engine).
HEADEND_LAYERS = {
    "foundation": {"settings", "db", "migrations", "mqtt", "runtime"},
    "capability": {
        "registry",
        "ingest",
        "poll",
        "reread",
        "money",
        "engine",
        "dispatch",
        "commissioning",
        "reports",
        "broker",
    },
    "door": {"api", "console", "cli", "demo"},
}
HEADEND_MAY_IMPORT = {
    "foundation": HEADEND_LAYERS["foundation"],
    "capability": HEADEND_LAYERS["foundation"] | HEADEND_LAYERS["capability"],
    "door": HEADEND_LAYERS["foundation"] | HEADEND_LAYERS["capability"],
}
# the doors compose what is below them; only the command line starts the others' servers (and manages the console's
# users), and the API's app serves the console beside itself
DOOR_MAY_IMPORT = {"api": {"console"}, "console": set(), "demo": set(), "cli": {"api", "console", "demo"}}
# frameworks of one door only (the console is served by the API's web framework)
LIBRARY_HOMES = {
    "typer": {"cli"},
    "fastapi": {"api", "console"},
    "starlette": {"api", "console"},
    "uvicorn": {"api", "cli"},
    "jinja2": {"console"},
    "pwdlib": {"console"},
}


def headend_imports(path: Path) -> tuple[set[str], set[str]]:
    """The `headend` sub-packages (or top-level modules) a module imports, and the top-level libraries."""
    inner: set[str] = set()
    libraries: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] if node.module != "headend" else [f"headend.{a.name}" for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "headend" and len(parts) > 1:
                inner.add(parts[1])
            else:
                libraries.add(parts[0])
    return inner, libraries


def _headend_package(path: Path) -> str:
    relative = path.relative_to(ROOT / "headend")
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def test_every_headend_package_is_in_a_layer_and_documented() -> None:
    known = set().union(*HEADEND_LAYERS.values())
    packages = {p.name for p in (ROOT / "headend").iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert packages - known == set(), "a new package needs its layer in HEADEND_LAYERS"
    loose = {p.stem for p in (ROOT / "headend").glob("*.py")} - {"__init__", "__main__", "settings"}
    assert loose == set(), "modules belong in a package named for their capability"
    for package in packages:
        docstring = ast.get_docstring(ast.parse((ROOT / "headend" / package / "__init__.py").read_text()))
        assert docstring, f"headend/{package}/__init__.py has no docstring saying what the package holds"


def test_headend_layers_import_only_downwards() -> None:
    layer_of = {package: layer for layer, packages in HEADEND_LAYERS.items() for package in packages}
    offences = []
    for path in sorted((ROOT / "headend").rglob("*.py")):
        package = _headend_package(path)
        if package in {"__init__", "__main__"}:
            continue
        layer = layer_of[package]
        inner, libraries = headend_imports(path)
        allowed = HEADEND_MAY_IMPORT[layer] | DOOR_MAY_IMPORT.get(package, set()) | {package}
        offences += [f"{path.relative_to(ROOT)} ({layer}) imports headend.{name}" for name in sorted(inner - allowed)]
        for library, homes in LIBRARY_HOMES.items():
            if library in libraries and package not in homes:
                offences.append(f"{path.relative_to(ROOT)} imports {library}, which belongs to {sorted(homes)}")
    assert offences == []


def test_the_layer_checker_sees_imports() -> None:
    inner, libraries = headend_imports(ROOT / "headend" / "cli" / "app.py")
    assert "typer" in libraries
    assert "cli" in inner
