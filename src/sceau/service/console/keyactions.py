"""Keys from the console: who may see and change what, and as which actor.

The changes are the key-lifecycle service's (service/lifecycle.py), called with the
:class:`~sceau.core.policy.Actor` of the console account, so the rules are the API's: seal
checked before anything, management refused on destroyed keys and, except destruction, on
keys pending destruction, every change re-sealed with its revision bumped, the same
``details`` in the audit record. Two things differ: who may act, and who is named. An
``admin`` account manages every key (``manage_any``, never decryption), a ``user`` account
what the API would let that identity manage, an ``auditor`` nothing (refused with the
``not_found`` a stranger gets); ``added_by`` is the console account.

Form values become the API's parameter models here (:func:`key_ref` ...), inside the
change's job, so a malformed value is refused and audited as the API would.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sceau.core.model import KeyRecord, normalize_identity
from sceau.core.policy import Actor, can_manage, matching_authorizations
from sceau.errors import NotFound, SceauError
from sceau.service import keyops
from sceau.service.console.web import CONSOLE_APP, Account, Session
from sceau.service.lifecycle import KeyLifecycle
from sceau.service.params import AddAuthorizationParams, KeyRef, PrincipalRef, parse_model
from sceau.store.writer import Tx, savepoint
from sceau.vocab import Action, KeyStatus, Outcome, Right, Role


def console_actor(username: str, role: Role, *, ip: str | None = None,
                  own_rights: bool = False) -> Actor:
    """The actor of a console account changing keys; ``not_found`` for an ``auditor``.

    ``own_rights`` drops the admin's manage-any: the API's rule for that identity then
    decides, inside the change's transaction.
    """
    if role is Role.AUDITOR:
        raise NotFound("no such key")
    return Actor(app_id=CONSOLE_APP, user=normalize_identity(username), ip=ip,
                 manage_any=role is Role.ADMIN and not own_rights)


def session_actor(session: Session, *, own_rights: bool = False) -> Actor:
    """:func:`console_actor` for the signed-in account."""
    return console_actor(session.account.username, session.account.role, ip=session.ip,
                         own_rights=own_rights)


def may_see(account: Account, record: KeyRecord) -> bool:
    """admin and auditor see every key; a user the keys they own or hold an entry on."""
    if account.sees_all:
        return True
    owner = normalize_identity(record.owner) == normalize_identity(account.username)
    return owner or bool(matching_authorizations(record, account.username))


def may_manage(account: Account, record: KeyRecord, now: int) -> bool:
    """admin: every key (never decryption); user: as the API; auditor: never."""
    if account.role is Role.ADMIN:
        return True
    if account.role is Role.USER:
        return can_manage(record, account.username, now)
    return False


def needs_approval(account: Account, record: KeyRecord, now: int) -> bool:
    """True when only the admin's manage-any could add or enable an authorization here.

    Such a change opens the key's data to the principal it names, which the admin could
    point at an identity they control: it waits for a second admin (service/approvals.py,
    SECURITY-CASES 46). An admin who is the owner or holds ``manage`` acts on their own right.
    """
    return account.role is Role.ADMIN and not can_manage(record, account.username, now)


# --- parameters --------------------------------------------------------------------------


def _ref(key_id: bytes, **extra: Any) -> dict[str, Any]:
    return {"key_id": keyops.key_id_text(key_id), **extra}


def key_ref(key_id: bytes) -> KeyRef:
    return parse_model(KeyRef, _ref(key_id))


def principal_ref(key_id: bytes, principal: str) -> PrincipalRef:
    return parse_model(PrincipalRef, _ref(key_id, principal=principal))


def authorization_params(key_id: bytes, principal: str, rights: frozenset[Right],
                         not_before: int | None,
                         not_after: int | None) -> AddAuthorizationParams:
    return parse_model(AddAuthorizationParams, _ref(
        key_id, principal=principal, rights=sorted(str(r) for r in rights),
        not_before=not_before, not_after=not_after,
    ))


def change_authorization(lifecycle: KeyLifecycle, actor: Actor, action: Action,
                         params: PrincipalRef, tx: Tx) -> KeyRecord:
    """remove / enable / disable one authorization entry (``action`` says which)."""
    change = {
        Action.REMOVE_AUTHORIZATION: lifecycle.remove_authorization,
        Action.ENABLE_AUTHORIZATION: lifecycle.enable_authorization,
        Action.DISABLE_AUTHORIZATION: lifecycle.disable_authorization,
    }[action]
    return change(actor, params, tx)


def bulk_set_status(lifecycle: KeyLifecycle, session: Session, tx: Tx,
                    key_ids: Sequence[bytes], status: KeyStatus) -> tuple[int, int]:
    """Enable or disable many keys: one audit record per key, each in its own savepoint.

    Returns (changed or already so, refused).
    """
    done = refused = 0
    for key_id in key_ids:
        text = keyops.key_id_text(key_id)
        tx.ctx.details = {}
        try:
            with savepoint(tx.conn, "sceau_item"):
                lifecycle.set_status(session_actor(session), key_ref(key_id), tx, status)
        except SceauError as error:
            refused += 1
            reason = str(error.reason) if error.reason else error.code
            tx.item_record(outcome=Outcome.DENIED, key=text, reason=reason,
                           details={"bulk": True})
            continue
        done += 1
        tx.item_record(outcome=Outcome.GRANTED, key=text,
                       details={"bulk": True, **tx.ctx.details})
    tx.ctx.key = None
    return done, refused


# Authorization changes that open data to a principal: gated on an admin's manage-any.
OPENING_ACTIONS = frozenset({Action.ADD_AUTHORIZATION, Action.ENABLE_AUTHORIZATION})

AUTHORIZATION_ACTIONS = {
    "remove": Action.REMOVE_AUTHORIZATION,
    "enable": Action.ENABLE_AUTHORIZATION,
    "disable": Action.DISABLE_AUTHORIZATION,
}
