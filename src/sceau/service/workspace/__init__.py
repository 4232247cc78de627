"""Workspace key services (SPEC §11): Google Workspace CSE (``/cse``) and Microsoft DKE (``/dke``).

:func:`mount` adds the enabled services to the FastAPI app. Their settings are the
``[cse]`` and ``[dke]`` sections of the configuration (:mod:`sceau.config.workspace`),
validated when it is loaded.

May import: the service (its API handlers included), :mod:`sceau.admin`, core, jose,
keystore, store, config, errors, vocab. Never the SDK, the CLI or the connectors.
"""

from __future__ import annotations

from fastapi import FastAPI

from sceau.service.runtime import Runtime

__all__ = ["mount"]


def mount(app: FastAPI, rt: Runtime) -> None:
    """Add ``/cse/*`` and ``/dke/*`` to ``app`` when enabled in ``sceau.toml``."""
    from sceau.service.workspace.cse import mount_cse
    from sceau.service.workspace.dke import mount_dke

    if rt.config.cse.enabled:
        mount_cse(app, rt, rt.config.cse)
    if rt.config.dke.enabled:
        mount_dke(app, rt, rt.config.dke)
