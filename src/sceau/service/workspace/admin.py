"""Host-operator administration of the workspace key services (CLI; audited like any change).

``cse_admin`` opens data: a holder may unwrap any resource through the privileged
endpoints. Granting it is therefore a host-operator action here (``sceau cse admins
add``), audited as ``CSE_ADMIN_ADD``; the console path waits for a second admin's approval
(separation of duties) and is wired where that mechanism lives.
"""

from __future__ import annotations

import time
from typing import Any

from sceau.admin import AdminSession, ChangeRunner
from sceau.core.policy import validate_principal
from sceau.errors import IntegrityFailure, InvalidRequest, NotFound
from sceau.store import workspace as ws
from sceau.store.writer import Tx
from sceau.vocab import Action

__all__ = ["add_cse_admin", "cse_admin_email", "list_cse_admins", "remove_cse_admin"]


def cse_admin_email(email: str) -> str:
    """One person's address, lower-cased as CSE compares emails; never a pattern."""
    if email.startswith("*"):
        raise InvalidRequest("email: cse_admin is granted to one address, not a pattern")
    if "@" not in email:
        raise InvalidRequest("email: an email address is expected")
    return validate_principal(email).lower()


def add_cse_admin(session: ChangeRunner, email: str, actor: str) -> None:
    """Grant ``cse_admin`` to ``email`` (audited ``CSE_ADMIN_ADD``)."""
    address = cse_admin_email(email)
    keystore = session.keystore

    def add(tx: Tx) -> None:
        tx.ctx.details = {"email": address}
        if ws.get_cse_admin(tx.conn, address) is not None:
            raise InvalidRequest(f"{address} already holds cse_admin")
        ws.insert_cse_admin(tx.conn, keystore.seal_row(
            ws.CseAdminRow(address, actor, int(time.time()))))

    session.run(Action.CSE_ADMIN_ADD, add)


def remove_cse_admin(session: ChangeRunner, email: str) -> None:
    """Withdraw ``cse_admin`` (audited ``CSE_ADMIN_REMOVE``); effective at the next call."""
    address = cse_admin_email(email)

    def remove(tx: Tx) -> None:
        tx.ctx.details = {"email": address}
        if not ws.delete_cse_admin(tx.conn, address):
            raise NotFound(f"{address} does not hold cse_admin")

    session.run(Action.CSE_ADMIN_REMOVE, remove)


def list_cse_admins(session: AdminSession) -> list[dict[str, Any]]:
    """Every holder, with whether its row still matches its seal (a forged row grants
    nothing and is shown as such)."""
    out = []
    with session.engines.read.connect() as conn:
        rows = ws.list_cse_admins(conn)
    for row in rows:
        try:
            session.keystore.verify_row(row)
            sealed = True
        except IntegrityFailure:
            sealed = False
        out.append({"email": row.email, "added_by": row.added_by,
                    "added_at": row.added_at, "sealed": sealed})
    return out
