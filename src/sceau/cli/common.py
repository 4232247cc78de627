"""Shared CLI plumbing: the data dir option, error reporting, JSON output."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from sceau.config import Config, default_data_dir, load_config
from sceau.errors import SceauError

DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir", help="installation directory (default $SCEAU_DATA_DIR or ./sceau-data)"
    ),
]


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
