"""Which code ran: the mypyc-compiled modules or their Python sources (sceau._native).

`make test` builds the modules of pyproject.toml's [tool.sceau.compiled] when a C compiler
exists and runs the suite on them, then runs tests/core again with SCEAU_PURE_PYTHON=1:
each run asserts here that every listed module was loaded from what it claims.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

import sceau._native as native

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "src"
EXT_SUFFIX = sysconfig.get_config_var("EXT_SUFFIX")
LISTED = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["sceau"]["compiled"][
    "modules"
]
PURE_ENV = os.environ.get("SCEAU_PURE_PYTHON", "") not in ("", "0")
BUILT = (SRC / "sceau" / "_compiled.json").exists()


def loaded_from(module: str, env: dict[str, str], pythonpath: Path = SRC) -> dict[str, str]:
    """`python -c` in a fresh process: sceau._native.MODE and each module's __file__."""
    code = (
        "import importlib, json, sys, warnings\n"
        "warnings.simplefilter('ignore')\n"
        "import sceau._native as n\n"
        "m = importlib.import_module(sys.argv[1])\n"
        "print(json.dumps({'mode': n.MODE, 'file': m.__file__}))\n"
    )
    child_env = {k: v for k, v in os.environ.items() if k != "SCEAU_PURE_PYTHON"}
    child_env.update(env, PYTHONPATH=str(pythonpath))
    out = subprocess.run([sys.executable, "-c", code, module], env=child_env, check=True,
                         capture_output=True, text=True).stdout  # fmt: skip
    result: dict[str, str] = json.loads(out)
    return result


def test_the_list_names_modules_of_sceau() -> None:
    assert LISTED, "pyproject.toml [tool.sceau.compiled] modules is empty"
    for name in LISTED:
        assert (SRC.joinpath(*name.split(".")).with_suffix(".py")).is_file(), name


@pytest.mark.parametrize("name", LISTED)
def test_this_run_loaded_what_it_claims(name: str) -> None:
    """The proof of which code this very run tests: .so compiled, .py pure."""
    module = importlib.import_module(name)
    assert module.__file__ is not None
    if PURE_ENV:
        assert native.MODE == "pure"
        assert module.__file__.endswith(".py"), module.__file__
    elif native.MODE == "compiled":
        assert name in native.compiled_modules()
        assert module.__file__.endswith(EXT_SUFFIX), module.__file__
    else:
        assert module.__file__.endswith(".py"), module.__file__


def test_a_build_is_used_unless_pure_python_is_asked() -> None:
    """make test runs the suite on the build: a fresh build must be what runs."""
    if PURE_ENV or not BUILT:
        pytest.skip("pure run, or no compiled modules here (no C compiler?)")
    assert native.MODE == "compiled", native.REASON


@pytest.mark.parametrize("name", LISTED[:1])
def test_pure_python_switch(name: str) -> None:
    child = loaded_from(name, {"SCEAU_PURE_PYTHON": "1"})
    assert child["mode"] == "pure"
    assert child["file"].endswith(".py")
    if BUILT:
        child = loaded_from(name, {})
        assert child["mode"] == "compiled"
        assert child["file"].endswith(EXT_SUFFIX)


def test_an_edited_source_runs_pure_until_rebuilt(tmp_path: Path) -> None:
    """A compiled module older than its source is never run: all sources run instead."""
    if not BUILT:
        pytest.skip("no compiled modules here (no C compiler?)")
    shutil.copytree(SRC / "sceau", tmp_path / "sceau",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    name = LISTED[0]
    source = tmp_path.joinpath(*name.split(".")).with_suffix(".py")
    assert loaded_from(name, {}, tmp_path)["mode"] == "compiled"
    source.write_text(source.read_text() + "\n# edited after the build\n")
    child = loaded_from(name, {}, tmp_path)
    assert child["mode"] == "pure"
    assert child["file"] == str(source)
    for other in LISTED:  # all or none: compiled modules call each other inside one library
        assert loaded_from(other, {}, tmp_path)["file"].endswith(".py")



def annotation_readers() -> set[str]:
    """Names of the classes whose annotations Sceau reads: ``get_type_hints(X)`` and the
    models of ``Rows(table, X)`` without ``types=`` (store/rows.py derives each column's
    codec from them)."""
    names: set[str] = set()
    for path in (SRC / "sceau").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        names |= set(re.findall(r"get_type_hints\((\w+)\)", text))
        # a Rows given ``types=`` reads that table, not the model's annotations
        names |= set(re.findall(r"\bRows\(\s*\w+,\s*(\w+)(?![^\n]*\btypes=)", text))
    return names


def test_no_compiled_class_has_its_annotations_read() -> None:
    """mypyc erases generic annotations (``frozenset[Right]`` becomes ``frozenset``, ``int |
    None`` becomes ``type``), so a class whose annotations are read must stay pure."""
    readers = annotation_readers()
    assert {"AppRow", "AuditNodeRow"} <= readers  # the scan itself finds them
    assert not {"KeyRecord", "Authorization"} & readers  # given as KEY_TYPES & co
    for name in LISTED:
        module = importlib.import_module(name)
        defined = {n for n, v in vars(module).items()
                   if isinstance(v, type) and v.__module__ == name}  # fmt: skip
        assert not defined & readers, f"{name} defines {sorted(defined & readers)}"
