"""``sceau key ...``: key and authorization lifecycle through the service."""

from __future__ import annotations

import typer

app = typer.Typer(help="Keys: show, list, enable, disable, destroy, update, grants, accesses.",
                  no_args_is_help=True)
