"""Rows of a table as frozen dataclasses, and the queries every such table needs.

A model's fields are its table's columns, by name. A few kinds of value are stored in
another form: an enum as its text, a dict as JSON text (members sorted), a tuple of
strings as a JSON list, :class:`~sceau.core.model.Rules` as JSON text, a set of rights as
a comma-separated list; ``bytes`` come back as ``bytes`` whatever the driver hands out;
``None`` is NULL. :class:`Rows` pairs a table with its model: loading and writing rows,
reading one by its primary key, and the optimistic save of sealed rows (the row is
written only if it is still at the revision that was read).
"""

from __future__ import annotations

import dataclasses
import json
import types
from collections.abc import Callable, Collection, Mapping, Sequence
from enum import Enum
from typing import TYPE_CHECKING, Any, Generic, TypeVar, get_args, get_origin, get_type_hints

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from sceau.core.model import Rules
from sceau.errors import ConcurrentChange

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

M = TypeVar("M", bound="DataclassInstance")
Codec = tuple[Callable[[Any], Any] | None, Callable[[Any], Any] | None]


def _json_text(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _tuple_from_text(text: str) -> tuple[Any, ...]:
    return tuple(json.loads(text))


def _list_text(value: tuple[Any, ...]) -> str:
    return json.dumps(list(value))


def _rules_text(rules: Rules) -> str:
    return _json_text(rules.to_json())


def _rules_from_text(text: str) -> Rules:
    return Rules.from_json(json.loads(text))


def _comma_list(values: Collection[Enum]) -> str:
    return ",".join(sorted(str(v) for v in values))


def _codec(hint: Any) -> Codec:
    """(encode, decode) of a value of type ``hint``; None where it is stored as it is."""
    if isinstance(hint, types.UnionType):  # X | None: NULL stays None, X as below
        hint = next(arg for arg in get_args(hint) if arg is not type(None))
    origin = get_origin(hint)
    if hint is bytes:
        return None, bytes
    if hint is Rules:
        return _rules_text, _rules_from_text
    if isinstance(hint, type) and issubclass(hint, Enum):
        return str, hint
    if origin is dict:
        return _json_text, json.loads
    if origin is tuple:
        return _list_text, _tuple_from_text
    if origin is frozenset:
        member = get_args(hint)[0]
        return _comma_list, lambda text: frozenset(member(v) for v in text.split(",") if v)
    return None, None


class Rows(Generic[M]):
    """The rows of ``table`` as ``model`` instances (every field but ``skip`` a column).

    ``what`` names a row in messages ("application app-1 changed meanwhile"); ``types`` gives
    each field's type instead of the model's annotations (``sceau.core.model.KEY_TYPES``).
    """

    def __init__(self, table: sa.Table, model: type[M], *, skip: Collection[str] = (),
                 what: str = "", types: Mapping[str, Any] | None = None) -> None:
        # ``types``: the type of each field, for a model whose annotations cannot be read
        # (a class compiled with mypyc: generic annotations are erased).
        hints = get_type_hints(model) if types is None else types
        names = [f.name for f in dataclasses.fields(model) if f.name not in skip]
        codecs = {name: _codec(hints[name]) for name in names}
        self.table = table
        self.model = model
        self.what = what or table.name
        self.columns: tuple[str, ...] = tuple(names)
        self._encoders = tuple((name, codecs[name][0]) for name in names)
        self._decoders = tuple((name, codecs[name][1]) for name in names)
        self._key = tuple(table.primary_key.columns)
        unsaved = {c.name for c in self._key} | set(getattr(model, "UNSEALED", ()))
        self._saved = tuple(name for name in names if name not in unsaved)

    def values(self, obj: M) -> dict[str, Any]:
        """The column values of ``obj``."""
        out: dict[str, Any] = {}
        for name, encode in self._encoders:
            value = getattr(obj, name)
            out[name] = value if encode is None or value is None else encode(value)
        return out

    def load(self, row: Any, prefix: str = "", **given: Any) -> M:
        """The model of one row (attribute access: SQLAlchemy rows or driver named tuples).

        ``prefix`` starts the row's column names (a join's aliases); ``given`` are fields
        the row does not carry (or that replace the row's).
        """
        values = dict(given)
        for name, decode in self._decoders:
            if name in values:
                continue
            value = getattr(row, prefix + name)
            values[name] = value if decode is None or value is None else decode(value)
        return self.model(**values)

    def _where(self, key: Sequence[Any]) -> list[sa.ColumnElement[bool]]:
        return [column == value for column, value in zip(self._key, key, strict=True)]

    def get(self, conn: sa.Connection, *key: Any, for_update: bool = False) -> M | None:
        """The row whose primary key is ``key``, or None; ``for_update`` locks it until the
        transaction ends (PostgreSQL; SQLite has one writer)."""
        query = sa.select(self.table).where(*self._where(key))
        if for_update:
            query = query.with_for_update()
        row = conn.execute(query).first()
        return self.load(row) if row is not None else None

    def where(self, conn: sa.Connection, *conditions: Any, order_by: Sequence[Any] = (),
              limit: int | None = None) -> list[M]:
        """The rows matching ``conditions`` (all rows when none), in ``order_by`` order."""
        query = sa.select(self.table).where(*conditions).order_by(*order_by).limit(limit)
        return [self.load(row) for row in conn.execute(query)]

    def insert(self, conn: sa.Connection, obj: M, **extra: Any) -> None:
        """Insert ``obj``; ``extra`` are the values of columns the model does not carry."""
        conn.execute(self.table.insert().values(**self.values(obj), **extra))

    def save(self, conn: sa.Connection, before: M, after: M) -> None:
        """Write ``after`` over ``before`` if the row is still at ``before``'s revision.

        Bookkeeping fields (the model's ``UNSEALED``) are left as they are in the store.
        :class:`ConcurrentChange` when another writer moved the row since it was read.
        """
        read, values = self.values(before), self.values(after)
        key = [read[column.name] for column in self._key]
        result = conn.execute(
            self.table.update()
            .where(*self._where(key), self.table.c.revision == read["revision"])
            .values({name: values[name] for name in self._saved})
        )
        if result.rowcount != 1:
            what = "/".join(str(part) for part in key)
            raise ConcurrentChange(f"{self.what} {what} changed meanwhile; try again")


def insert_or_ignore(conn: sa.Connection, table: sa.Table) -> Any:
    """An INSERT into ``table`` that does nothing when the row exists (both engines)."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    return sqlite.insert(table).on_conflict_do_nothing()
