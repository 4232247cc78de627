"""``sceau audit ...``: verify, export, archive (issue: opposable audit trail)."""

from __future__ import annotations

import typer

app = typer.Typer(help="Audit trail: verify, export, archive.", no_args_is_help=True)
