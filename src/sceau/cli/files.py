"""``sceau file ...``: protect and open files client-side (STREAM format)."""

from __future__ import annotations

import typer

app = typer.Typer(help="Files: protect and open .sceau files.", no_args_is_help=True)
