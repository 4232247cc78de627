"""Shared CLI plumbing: the data dir and --json options, error reporting, JSON and table
output, reading the store of a data dir."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer

from sceau.config import Config, default_data_dir, load_config
from sceau.errors import SceauError

if TYPE_CHECKING:
    from sceau.admin import AdminSession
    from sceau.keystore.base import Keystore
    from sceau.store.db import Engines

T = TypeVar("T")

DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir", help="installation directory (default $SCEAU_DATA_DIR or ./sceau-data)"
    ),
]
#: Every command that lists or shows something takes it.
JsonFlag = Annotated[bool, typer.Option("--json", help="print JSON (for scripts)")]


def config_from(data_dir: Path | None, overrides: Mapping[str, Any] | None = None) -> Config:
    """The data dir's configuration; ``overrides`` (``section.name``: value) win over it."""
    return load_config(data_dir or default_data_dir(), overrides=overrides)


def fail(message: str, hint: str | None = None, code: int = 1) -> NoReturn:
    typer.echo(f"sceau: error: {message}", err=True)
    if hint:
        typer.echo(f"hint: {hint}", err=True)
    raise typer.Exit(code)


def fail_with(error: SceauError) -> NoReturn:
    fail(error.diagnostics())


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, sort_keys=True) + "\n")


def print_table(columns: Sequence[str], rows: Iterable[Sequence[object]], *,
                title: str | None = None, header: bool = True) -> None:
    """Rows for people, or for scripts.

    On a terminal: a Rich table whose long values fold onto more lines, never cut short.
    Anywhere else (a pipe, a file): one line per row, its cells separated by tabs, the
    header first (a ``title`` line before it); no value is cut, wrapped or padded, so an id
    can be taken as it is (``cut -f1``). ``header=False``: name/value pairs, no header.
    """
    cells = [[str(cell) for cell in row] for row in rows]
    if not sys.stdout.isatty():
        lines = [[f"{title}:"]] if title else []
        lines += ([list(columns)] if header else []) + cells
        sys.stdout.write("".join(
            "\t".join(cell.replace("\t", " ").replace("\n", " ") for cell in line) + "\n"
            for line in lines))
        return
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title=title, show_header=header, box=box.HEAVY_HEAD if header else None)
    for index, name in enumerate(columns):
        table.add_column(name, overflow="fold", style="bold" if index == 0 and not header else "")
    for row in cells:
        table.add_row(*(Text(cell) for cell in row))  # values are text, never Rich markup
    Console().print(table)


def print_listing(rows: list[dict[str, Any]], as_json: bool, columns: Sequence[str],
                  cells: Callable[[dict[str, Any]], Sequence[object]]) -> None:
    """A ``list`` command's answer: the rows as JSON for ``--json``, else as a table."""
    if as_json:
        print_json(rows)
    else:
        print_table(columns, (cells(row) for row in rows))


def sealed_status(row: dict[str, Any]) -> str:
    """A listed row's status, flagged when its seal fails (the service refuses such a row)."""
    return str(row["status"]) if row["sealed"] else f"{row['status']} (SEAL FAILS: refused)"


def run_admin(data_dir: Path | None, action: Callable[[AdminSession], T]) -> T:
    """``action`` in an audited admin session on the data dir (:mod:`sceau.admin`); a
    refusal ends the command with its diagnostics."""
    from sceau import admin

    try:
        with admin.admin_session(config_from(data_dir)) as session:
            return action(session)
    except SceauError as exc:
        fail_with(exc)


def with_store(data_dir: Path | None, read: Callable[[Engines, Keystore], T]) -> T:
    """``read`` the data dir's store with its keystore, both opened here and closed after."""
    from sceau.keystore import open_keystore
    from sceau.service.runtime import keystore_settings, open_store

    config = config_from(data_dir)
    engines = open_store(config)
    try:
        with open_keystore(keystore_settings(config)) as keystore:
            return read(engines, keystore)
    finally:
        engines.dispose()
