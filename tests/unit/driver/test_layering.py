"""The driver package reads top-down: SheepdogDriver -> helper modules ->
DriverCore -> client; no helper imports the SheepdogDriver class (not even for
type checking), none reaches into another object's private members, and opts
depends on nothing in driver/.  Checked on the source (ast), so a new import
cycle or private reach fails here even when it happens to import fine."""

from __future__ import annotations

import ast
import pathlib

import sheepdog_backend

PACKAGE = pathlib.Path(sheepdog_backend.__file__).parent
DRIVER = PACKAGE / "driver"
HELPERS = ("core", "clones", "data", "manage", "revert", "backing", "stats", "attach", "sizing",
           "takeover")


def imported_modules(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{alias.name}" for alias in node.names)
    return out


def private_reaches(path: pathlib.Path) -> list[str]:
    """``x._name`` where ``x`` is not ``self``/``cls`` (dunders allowed)."""
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") \
                and not node.attr.startswith("__"):
            base = node.value
            if isinstance(base, ast.Name) and base.id in ("self", "cls"):
                continue
            found.append(f"{path.name}:{node.lineno}: .{node.attr}")
    return found


def test_helpers_do_not_import_the_driver_class() -> None:
    for name in HELPERS:
        mods = imported_modules(DRIVER / f"{name}.py")
        assert "sheepdog_backend.driver.sheepdog" not in mods, name
        assert not any(m.startswith("sheepdog_backend.driver.sheepdog.") for m in mods), name


def test_core_depends_on_no_helper() -> None:
    mods = imported_modules(DRIVER / "core.py")
    for name in (*HELPERS, "sheepdog"):
        assert f"sheepdog_backend.driver.{name}" not in mods, name
        assert f"sheepdog_backend.driver.core.{name}" not in mods


def test_no_private_reaching_in_the_driver_modules() -> None:
    reaches = [r for name in (*HELPERS, "sheepdog")
               for r in private_reaches(DRIVER / f"{name}.py")]
    assert reaches == []


def test_opts_does_not_import_the_driver_package() -> None:
    mods = imported_modules(PACKAGE / "opts.py")
    assert not any(m == "sheepdog_backend.driver" or m.startswith("sheepdog_backend.driver.")
                   for m in mods), sorted(mods)


def test_driver_modules_stay_under_500_lines() -> None:
    for name in (*HELPERS, "sheepdog"):
        lines = len((DRIVER / f"{name}.py").read_text().splitlines())
        assert lines < 500, (name, lines)
