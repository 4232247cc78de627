"""Key changes made from the console, as audited writer jobs.

The rules are the API's (service/api/keys.py): seal checked before anything, management
refused on destroyed keys and, except destruction, on keys pending destruction, every change
re-sealed with its revision bumped, the same ``details`` in the audit record. Two things
differ: who may act, and who is named. The gate is :func:`may_manage` (an ``admin`` account
manages every key, a ``user`` account what the API would let that identity manage, an
``auditor`` nothing), and ``added_by`` is the console account.

Why not call the API handlers: their gate (``keys.managed``) is ``can_manage`` on the calling
identity, which an ``admin`` account is not. When ``Call`` grows a ``manage_any`` flag, these
functions reduce to calls of the handlers (docs/console.md, "Open points").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sceau.core.model import Authorization, KeyRecord, normalize_identity
from sceau.core.policy import (
    can_manage,
    management_refusal,
    matching_authorizations,
    validate_principal,
)
from sceau.errors import AccessDenied, InvalidRequest, NotFound, SceauError
from sceau.keystore.base import Keystore
from sceau.service import keyops
from sceau.service.api import keys as key_api
from sceau.service.params import rfc3339
from sceau.store import repo
from sceau.store.writer import Tx, savepoint
from sceau.vocab import Action, AuthorizationStatus, KeyStatus, Outcome, Right, Role


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


def managed(keystore: Keystore, actor: Actor, tx: Tx, key_id: bytes, *,
            allow_pending: bool = False) -> KeyRecord:
    """Load, verify, authorize a key for a change: the console's ``keys.managed``."""
    tx.ctx.key = keyops.key_id_text(key_id)
    record = keyops.load_checked(tx.conn, keystore, key_id, for_update=True)
    if not may_manage(actor, record, tx.now):
        raise NotFound("no such key")
    reason = management_refusal(record, allow_pending=allow_pending)
    if reason is not None:
        raise AccessDenied(reason)
    return record


def _save(keystore: Keystore, tx: Tx, before: KeyRecord, **changes: Any) -> KeyRecord:
    after = keyops.reseal(keystore, before, **changes)
    repo.save_key(tx.conn, before, after)
    tx.ctx.details = {"revision": after.revision, **tx.ctx.details}
    return after


def set_key_status(keystore: Keystore, actor: Actor, tx: Tx, key_id: bytes,
                   status: KeyStatus) -> KeyRecord:
    """enable-key / disable-key."""
    record = managed(keystore, actor, tx, key_id)
    if record.status is status:
        tx.ctx.details = {"changed": {}}
        return record
    tx.ctx.details = {"changed": {"status": str(status)}}
    return _save(keystore, tx, record, status=status)


def bulk_set_status(keystore: Keystore, actor: Actor, tx: Tx, key_ids: Sequence[bytes],
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
                set_key_status(keystore, actor, tx, key_id, status)
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


def destroy(keystore: Keystore, actor: Actor, tx: Tx, key_id: bytes) -> key_api.DestroyedKey:
    """Immediate destruction (crypto-shredding), as ``destroy-key`` with ``pending_days`` 0."""
    record = managed(keystore, actor, tx, key_id, allow_pending=True)
    after = key_api.shred(keystore, tx, record)
    tx.ctx.details = {"revision": after.revision, "pending_days": 0}
    return key_api.DestroyedKey(keyops.key_id_text(after.key_id), tx.now)


def _principal(record: KeyRecord, raw: str) -> str:
    principal = validate_principal(raw)
    if principal == record.owner:
        raise InvalidRequest("principal: is the key's owner")
    return principal


def add_authorization(keystore: Keystore, actor: Actor, tx: Tx, key_id: bytes, principal: str,
                      rights: frozenset[Right], not_before: int | None,
                      not_after: int | None) -> KeyRecord:
    record = managed(keystore, actor, tx, key_id)
    principal = _principal(record, principal)
    if not rights:
        raise InvalidRequest("rights: choose decrypt, manage or both")
    if not_before is not None and not_after is not None and not_after <= not_before:
        raise InvalidRequest("not_after: must be later than not_before")
    if record.authorization_for(principal) is not None:
        raise InvalidRequest("principal: already has an authorization on this key")
    entry = Authorization(principal=principal, rights=rights, status=AuthorizationStatus.ACTIVE,
                          not_before=not_before, not_after=not_after, added_by=actor.username,
                          added_at=tx.now)
    tx.ctx.details = {"principal": principal, "rights": sorted(str(r) for r in rights),
                      "not_before": rfc3339(not_before), "not_after": rfc3339(not_after)}
    auths = tuple(sorted((*record.authorizations, entry), key=lambda a: a.principal))
    return _save(keystore, tx, record, authorizations=auths)


def change_authorization(keystore: Keystore, actor: Actor, tx: Tx, key_id: bytes,
                         principal: str, action: Action) -> KeyRecord:
    """remove / enable / disable one authorization entry."""
    record = managed(keystore, actor, tx, key_id)
    principal = _principal(record, principal)
    if record.authorization_for(principal) is None:
        raise InvalidRequest("principal: has no authorization on this key")
    if action is Action.REMOVE_AUTHORIZATION:
        tx.ctx.details = {"principal": principal}
        auths = tuple(a for a in record.authorizations if a.principal != principal)
        return _save(keystore, tx, record, authorizations=auths)
    status = (AuthorizationStatus.ACTIVE if action is Action.ENABLE_AUTHORIZATION
              else AuthorizationStatus.DISABLED)
    tx.ctx.details = {"principal": principal, "status": str(status)}
    auths = tuple(
        Authorization(a.principal, a.rights, status, a.not_before, a.not_after, a.added_by,
                      a.added_at) if a.principal == principal else a
        for a in record.authorizations
    )
    if auths == record.authorizations:
        return record
    return _save(keystore, tx, record, authorizations=auths)


AUTHORIZATION_ACTIONS = {
    "remove": Action.REMOVE_AUTHORIZATION,
    "enable": Action.ENABLE_AUTHORIZATION,
    "disable": Action.DISABLE_AUTHORIZATION,
}
