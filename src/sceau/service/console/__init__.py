"""The admin console under ``/console/`` (server-rendered, Jinja2 + htmx served locally)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastapi import FastAPI

    from sceau.service.runtime import Runtime


def mount(app: FastAPI, rt: Runtime) -> None:
    """Attach the console's routes to ``app``."""
