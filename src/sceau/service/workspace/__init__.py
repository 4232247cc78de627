"""Workspace key services (SPEC §11): Google Workspace CSE (``/cse``) and Microsoft DKE (``/dke``).

:func:`mount` adds the enabled services to the FastAPI app; their settings are validated
there, so a bad ``[cse]`` or ``[dke]`` section stops ``sceau serve`` at start.
"""

from __future__ import annotations

from fastapi import FastAPI

from sceau.service.runtime import Runtime
from sceau.service.workspace.settings import cse_settings, dke_settings

__all__ = ["mount"]


def mount(app: FastAPI, rt: Runtime) -> None:
    """Add ``/cse/*`` and ``/dke/*`` to ``app`` when enabled in ``sceau.toml``."""
    from sceau.service.workspace.cse import mount_cse
    from sceau.service.workspace.dke import mount_dke

    cse = cse_settings(rt.config)
    dke = dke_settings(rt.config)
    if cse.enabled:
        mount_cse(app, rt, cse)
    if dke.enabled:
        mount_dke(app, rt, dke)
