"""``sceau keystore ...``: init, status, rotate (HSM and file backends)."""

from __future__ import annotations

import typer

app = typer.Typer(help="Keystore: init, status, rotate, retire.", no_args_is_help=True)
