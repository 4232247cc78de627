"""What an API handler is: ``fn(rt, actor, params, tx) -> result``.

It runs inside the writer's transaction ``tx`` as ``actor`` (the application and the user
of the verified request, its address), with the parsed ``params``; it fills
``tx.ctx.key`` / ``tx.ctx.details`` for the audit record and raises a ``SceauError`` to
refuse (whatever it wrote is rolled back).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sceau.core.policy import Actor
from sceau.store.writer import Tx

if TYPE_CHECKING:
    from sceau.service.runtime import Runtime

Handler = Callable[["Runtime", Actor, Any, Tx], Any]
