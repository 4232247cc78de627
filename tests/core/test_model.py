"""The field type tables of sceau.core.model say what the classes' annotations say.

The store's columns and the documented metadata model are derived from ``KEY_TYPES`` and
``AUTHORIZATION_TYPES`` rather than from the annotations (mypyc, when the module is
compiled, erases ``frozenset[Right]`` to ``frozenset``). The annotations are read from the
source, so the check holds compiled and pure.
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path
from typing import Any

import pytest

from sceau.core import model

SOURCE = Path(__file__).resolve().parents[2] / "src" / "sceau" / "core" / "model.py"


def declared(class_name: str) -> dict[str, Any]:
    """Each field of ``class_name`` as its annotation in model.py, evaluated there."""
    tree = ast.parse(SOURCE.read_text(encoding="utf-8"))
    body = next(node for node in tree.body
                if isinstance(node, ast.ClassDef) and node.name == class_name).body  # fmt: skip
    return {stmt.target.id: eval(ast.unparse(stmt.annotation), vars(model))  # noqa: S307
            for stmt in body
            if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)}  # fmt: skip


@pytest.mark.parametrize(("cls", "table"), [
    (model.KeyRecord, model.KEY_TYPES),
    (model.Authorization, model.AUTHORIZATION_TYPES),
])  # fmt: skip
def test_type_table_matches_the_annotations(cls: type, table: dict[str, Any]) -> None:
    assert table == declared(cls.__name__)
    assert list(table) == [f.name for f in dataclasses.fields(cls)]
