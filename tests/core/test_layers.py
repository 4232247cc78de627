"""The layers of SPEC §1 hold: every module's imports point inwards.

core → jose → keystore → store → service (with ``sceau.admin``, ``sceau.provision`` and
``sceau.auditlog``) → SDK (``sceau.client``) → CLI, connectors on the SDK. The rules are the
ones each package's ``__init__`` docstring states. Imports are read with :mod:`ast` (nothing
is imported or run), anywhere in a module: an import inside a function counts too.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = SRC / "sceau"

#: The units below the service, in order; each may import only those before it (and the
#: shared vocabularies).
_SHARED = {"sceau", "vocab", "errors"}
_BELOW_SERVICE = {
    "core": _SHARED,
    "jose": _SHARED | {"core"},
    "keystore": _SHARED | {"core", "jose"},
    "store": _SHARED | {"core", "jose", "keystore"},
}
_SERVICE_TIER = {"service", "admin", "provision", "auditlog"}
_SERVICE_MAY = (_SHARED | {"config"} | set(_BELOW_SERVICE)) | _SERVICE_TIER

#: unit -> the sceau units it may import (its own unit is always allowed).
ALLOWED: dict[str, set[str] | None] = {
    # The package root imports only _native, which picks compiled or pure modules (stdlib only).
    "sceau": {"_native"},
    "_native": set(),
    "vocab": set(),
    "errors": {"vocab"},
    "config": {"errors"},
    **_BELOW_SERVICE,
    **dict.fromkeys(_SERVICE_TIER - {"provision"}, _SERVICE_MAY - {"provision"}),
    "provision": _SERVICE_MAY,
    "client": _SHARED | {"core", "jose"},
    "connectors": _SHARED | {"core", "jose", "client"},
    # The CLI is the outermost layer: it wires every other one, connectors included.
    "cli": None,
}

#: Libraries that mean I/O, HTTP or SQL: the core never imports them.
CORE_NEVER = {
    "alembic", "fastapi", "http", "httpx", "jinja2", "pkcs11", "requests", "socket",
    "sqlalchemy", "starlette", "typer", "urllib", "uvicorn",
}
#: Besides the standard library and sceau.errors, config imports only pydantic.
CONFIG_THIRD_PARTY = {"pydantic", "pydantic_core", "pydantic_settings"}


def _modules() -> Iterator[tuple[str, Path]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join(parts), path


def unit_of(module: str) -> str:
    """The layer unit of a sceau module: its first name under ``sceau`` (``sceau`` alone for
    the package itself)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "sceau"


def imports_of(module: str, path: Path) -> Iterator[tuple[int, str]]:
    """(line, imported module) for every import statement of the module, at any depth."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                if not is_package:
                    base = base[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            if target == "sceau":
                # ``from sceau import errors`` imports the module sceau.errors.
                for alias in node.names:
                    yield node.lineno, f"sceau.{alias.name}"
            else:
                yield node.lineno, target


MODULES = list(_modules())


def test_every_unit_has_a_rule() -> None:
    units = {unit_of(module) for module, _ in MODULES}
    assert units <= set(ALLOWED), f"no layer rule for {sorted(units - set(ALLOWED))}"


def breaches(module: str, path: Path) -> list[str]:
    """The imports of ``module`` that its layer must never make."""
    unit = unit_of(module)
    allowed = ALLOWED[unit]
    wrong = []
    for line, target in imports_of(module, path):
        top = target.split(".")[0]
        if top == "sceau":
            other = unit_of(target)
            if allowed is not None and other != unit and other not in allowed:
                wrong.append(f"line {line}: {target}")
        elif unit == "core" and top in CORE_NEVER:
            wrong.append(f"line {line}: {target} (the core does no I/O, HTTP or SQL)")
        elif (unit == "config" and top not in CONFIG_THIRD_PARTY
              and top not in sys.stdlib_module_names and top != "__future__"):
            wrong.append(f"line {line}: {target} (config imports only pydantic)")
    return wrong


@pytest.mark.parametrize(("module", "path"), MODULES, ids=[m for m, _ in MODULES])
def test_imports_point_inwards(module: str, path: Path) -> None:
    wrong = breaches(module, path)
    assert not wrong, f"{module} imports outside its layer: " + "; ".join(wrong)


def test_a_breach_is_caught(tmp_path: Path) -> None:
    """The check itself: lazy, relative and ``from sceau import`` forms are all seen."""
    path = tmp_path / "fake.py"
    path.write_text(
        "import sqlalchemy\n"
        "from sceau import store\n"
        "def f():\n"
        "    from ..service.runtime import Runtime\n",
        encoding="utf-8",
    )
    wrong = breaches("sceau.core.fake", path)
    assert [w.split(":")[0] for w in wrong] == ["line 1", "line 2", "line 4"]
    assert "sceau.service.runtime" in wrong[2]
    path.write_text("import httpx\nfrom sceau.errors import SceauError\n", encoding="utf-8")
    assert [w.split(":")[0] for w in breaches("sceau.config.fake", path)] == ["line 1"]
    path.write_text("from sceau.keystore import open_keystore\n", encoding="utf-8")
    assert breaches("sceau.client", path) != []
