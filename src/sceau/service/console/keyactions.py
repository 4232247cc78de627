"""Key changes made from the console, as audited writer jobs.

The rules are the API's (service/api/keys.py): seal checked before anything, management
refused on destroyed keys and, except destruction, on keys pending destruction, every change
re-sealed with its revision bumped, the same ``details`` in the audit record. Two things
differ: who may act, and who is named. The gate is :func:`may_manage` (an ``admin`` account
manages every key, a ``user`` account what the API would let that identity manage, an
``auditor`` nothing), and ``added_by`` is the console account.

The changes are the API handlers themselves, called with a :class:`Call` whose
``manage_any`` flag carries the admin gate, so the rules cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sceau.core.model import KeyRecord, normalize_identity
from sceau.core.policy import can_manage, matching_authorizations
from sceau.errors import InternalError, NotFound, SceauError
from sceau.service import keyops
from sceau.service.api import keys as key_api
from sceau.service.api.context import Call
from sceau.service.params import (
    AddAuthorizationParams,
    DestroyKeyParams,
    KeyRef,
    PrincipalRef,
    parse_model,
)
from sceau.service.runtime import CallerApp
from sceau.store.writer import Tx, savepoint
from sceau.vocab import Action, KeyStatus, Outcome, Right, Role

if TYPE_CHECKING:
    from sceau.service.runtime import Runtime

CONSOLE_CALLER = CallerApp(app_id="console", name="console", enc_key=None)


@dataclass(frozen=True)
class Actor:
    """The console account acting on keys."""

    username: str
    role: Role


def may_see(actor: Actor, record: KeyRecord) -> bool:
    """admin and auditor see every key; a user the keys they own or hold an entry on."""
    if actor.role in (Role.ADMIN, Role.AUDITOR):
        return True
    owner = normalize_identity(record.owner) == normalize_identity(actor.username)
    return owner or bool(matching_authorizations(record, actor.username))


def may_manage(actor: Actor, record: KeyRecord, now: int) -> bool:
    """admin: every key (never decryption); user: as the API; auditor: never."""
    if actor.role is Role.ADMIN:
        return True
    if actor.role is Role.USER:
        return can_manage(record, actor.username, now)
    return False


def needs_approval(actor: Actor, record: KeyRecord, now: int) -> bool:
    """True when only the admin's manage-any could add or enable an authorization here.

    Such a change opens the key's data to the principal it names, which the admin could
    point at an identity they control: it waits for a second admin (service/approvals.py,
    SECURITY-CASES 46). An admin who is the owner or holds ``manage`` acts on their own right.
    """
    return actor.role is Role.ADMIN and not can_manage(record, actor.username, now)


def actor_call(rt: Runtime, actor: Actor, *, own_rights: bool = False) -> Call:
    """The API's view of a console account acting on keys.

    The API handlers then apply every rule themselves; only the gate differs: an ``admin``
    account manages every key (``manage_any``, never decryption), a ``user`` account what
    the API lets that identity manage, and an ``auditor`` nothing (refused here, as the
    ``not_found`` a stranger gets). ``own_rights`` drops the admin's manage-any: the API's
    rule for that identity then decides, inside the change's transaction.
    """
    if actor.role is Role.AUDITOR:
        raise NotFound("no such key")
    return Call(rt=rt, app=CONSOLE_CALLER, user=normalize_identity(actor.username), ip=None,
                jti="", manage_any=actor.role is Role.ADMIN and not own_rights)


def _ref(key_id: bytes, **extra: Any) -> dict[str, Any]:
    return {"key_id": keyops.key_id_text(key_id), **extra}


def set_key_status(rt: Runtime, actor: Actor, tx: Tx, key_id: bytes,
                   status: KeyStatus) -> dict[str, Any]:
    """enable-key / disable-key, through the API's handlers."""
    call = actor_call(rt, actor)
    params = parse_model(KeyRef, _ref(key_id))
    if status is KeyStatus.ACTIVE:
        return key_api.enable_key(call, params, tx)
    return key_api.disable_key(call, params, tx)


def bulk_set_status(rt: Runtime, actor: Actor, tx: Tx, key_ids: Sequence[bytes],
                    status: KeyStatus) -> tuple[int, int]:
    """Enable or disable many keys: one audit record per key, each in its own savepoint.

    Returns (changed or already so, refused).
    """
    done = refused = 0
    for key_id in key_ids:
        text = keyops.key_id_text(key_id)
        tx.ctx.details = {}
        try:
            with savepoint(tx.conn, "sceau_item"):
                set_key_status(rt, actor, tx, key_id, status)
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


def destroy(rt: Runtime, actor: Actor, tx: Tx, key_id: bytes) -> key_api.DestroyedKey:
    """Immediate destruction (crypto-shredding): ``destroy-key`` with ``pending_days`` 0."""
    result = key_api.destroy_key(
        actor_call(rt, actor), parse_model(DestroyKeyParams, _ref(key_id)), tx
    )
    if not isinstance(result, key_api.DestroyedKey):
        raise InternalError("destroy-key with no pending days did not destroy")
    return result


def add_authorization(rt: Runtime, actor: Actor, tx: Tx, key_id: bytes, principal: str,
                      rights: frozenset[Right], not_before: int | None,
                      not_after: int | None, *, own_rights: bool = False) -> dict[str, Any]:
    """add-authorization, through the API's handler (``added_by`` is the account)."""
    params = parse_model(AddAuthorizationParams, _ref(
        key_id, principal=principal, rights=sorted(str(r) for r in rights),
        not_before=not_before, not_after=not_after,
    ))
    return key_api.add_authorization(actor_call(rt, actor, own_rights=own_rights), params, tx)


def change_authorization(rt: Runtime, actor: Actor, tx: Tx, key_id: bytes,
                         principal: str, action: Action, *,
                         own_rights: bool = False) -> dict[str, Any]:
    """remove / enable / disable one authorization entry, through the API's handlers."""
    params = parse_model(PrincipalRef, _ref(key_id, principal=principal))
    handler = {
        Action.REMOVE_AUTHORIZATION: key_api.remove_authorization,
        Action.ENABLE_AUTHORIZATION: key_api.enable_authorization,
        Action.DISABLE_AUTHORIZATION: key_api.disable_authorization,
    }[action]
    return handler(actor_call(rt, actor, own_rights=own_rights), params, tx)


# Authorization changes that open data to a principal: gated on an admin's manage-any.
OPENING_ACTIONS = frozenset({Action.ADD_AUTHORIZATION, Action.ENABLE_AUTHORIZATION})

AUTHORIZATION_ACTIONS = {
    "remove": Action.REMOVE_AUTHORIZATION,
    "enable": Action.ENABLE_AUTHORIZATION,
    "disable": Action.DISABLE_AUTHORIZATION,
}
