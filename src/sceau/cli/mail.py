"""``sceau mail ...``: protect and open messages, SMTP relay."""

from __future__ import annotations

import typer

app = typer.Typer(help="Mail: protect, open, relay.", no_args_is_help=True)
