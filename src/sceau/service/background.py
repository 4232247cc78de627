"""Background tasks of a node (pending-destruction sweep, replay-cache purge, ...)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sceau.service.runtime import Runtime


def start_background(rt: Runtime) -> None:
    """Start this node's background tasks (called once the writer runs)."""


def stop_background(rt: Runtime) -> None:
    """Stop them before the writer is flushed."""
