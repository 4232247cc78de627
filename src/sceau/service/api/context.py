"""The verified caller of one API call, as the handlers see it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sceau.service.runtime import CallerApp

if TYPE_CHECKING:
    from sceau.service.runtime import Runtime


@dataclass(frozen=True)
class Call:
    """Who calls (application, user, address) and with which request id."""

    rt: Runtime
    app: CallerApp
    user: str
    ip: str | None
    jti: str
    # The console's ``admin`` role manages every key (SPEC §6: never decryption); API callers
    # never set it.
    manage_any: bool = False
