"""Key management: describe, list, update, enable/disable, destroy, authorizations, accesses.

Management needs the owner or a ``manage`` authorization (SPEC §6); anyone else gets
``not_found``, exactly as for a key that does not exist, so a stranger cannot tell the two
apart. Every change bumps ``revision``, re-seals the record and records what changed in the
audit ``details``.
"""

from __future__ import annotations

import json
import struct
import threading
from typing import Any

from sceau.core.b64 import MalformedBase64, b64u_decode, b64u_encode
from sceau.core.model import Authorization, KeyRecord, Rules
from sceau.core.policy import (
    can_manage,
    management_refusal,
    validate_principal,
)
from sceau.core.workspace import DKE_APPLICATION
from sceau.errors import AccessDenied, InvalidRequest, NotFound
from sceau.keystore.base import Keystore
from sceau.service import keyops
from sceau.service.api.context import Call
from sceau.service.params import (
    AddAuthorizationParams,
    DestroyKeyParams,
    KeyRef,
    ListAccessesParams,
    ListKeysParams,
    PrincipalRef,
    UpdateKeyParams,
    rfc3339,
)
from sceau.service.receipts import DestroyedKey as DestroyedKey
from sceau.store.audit import newest_audit_lines
from sceau.store.keys import KeyFilter, overwrite_seed, save_key
from sceau.store.keys import list_keys as list_stored_keys
from sceau.store.writer import Tx
from sceau.vocab import AuthorizationStatus, KeyStatus, Reason

SYSTEM_USER = "sceau"
# Seal input used only to spend the same keystore work on an unknown key id as on a real one.


def managed(
    call: Call, tx: Tx, key_id: bytes, *, allow_pending: bool = False, change: bool = True
) -> KeyRecord:
    """Load, verify and authorize a key for a management operation (locks it for a change).

    An unknown key and a key the caller may not manage give the same ``not_found`` with the
    same detail; for an unknown id the keystore still computes one seal, so both paths do
    the same kind of work (one row read, one HMAC in the keystore) and take comparable time.
    """
    tx.ctx.key = keyops.key_id_text(key_id)
    # load_checked spends one seal computation on an unknown id as well (equal work).
    record = keyops.load_checked(tx.conn, call.rt.keystore, key_id, for_update=change)
    if not (call.manage_any or can_manage(record, call.user, tx.now)):
        raise NotFound("no such key")
    if change:
        reason = management_refusal(record, allow_pending=allow_pending)
        if reason is not None:
            raise AccessDenied(reason)
    return record


def _save(call: Call, tx: Tx, before: KeyRecord, **changes: Any) -> KeyRecord:
    after = keyops.reseal(call.rt.keystore, before, **changes)
    save_key(tx.conn, before, after)
    tx.ctx.details = {"revision": after.revision, **tx.ctx.details}
    return after


def describe_key(call: Call, params: KeyRef, tx: Tx) -> dict[str, Any]:
    record = managed(call, tx, params.key_id, change=False)
    return keyops.metadata(record, tx.now)


# --- list-keys ------------------------------------------------------------------------------


def _encode_cursor(record: KeyRecord) -> str:
    return b64u_encode(struct.pack(">q", record.created_at) + record.key_id)


def _decode_cursor(text: str) -> tuple[int, bytes]:
    try:
        raw = b64u_decode(text)
    except MalformedBase64:
        raise InvalidRequest("cursor: not a cursor from this service") from None
    if len(raw) != 24:
        raise InvalidRequest("cursor: not a cursor from this service")
    return struct.unpack(">q", raw[:8])[0], raw[8:]


def domain_pattern(user: str) -> str | None:
    """``*@domain`` for an identity with a domain, the pattern entries that may match it."""
    _, at, domain = user.rpartition("@")
    return f"*@{domain.lower()}" if at and domain else None


def list_keys(call: Call, params: ListKeysParams, tx: Tx) -> dict[str, Any]:
    """A page of the caller's keys: in full where it may manage, else the recipient view.

    Filters on members a recipient does not see (``application``, ``tag``) match only keys
    shown in full, so a recipient cannot learn an owner's tag or application by filtering on
    guesses; such a page may take several reads to fill. Creation times are not hidden this
    way: the order of the list and its cursors already follow them (docs/policy.md).
    """
    flt = KeyFilter(
        user=call.user,
        user_domain_pattern=domain_pattern(call.user),
        role=str(params.role),
        status=str(params.status) if params.status is not None else None,
        created_from=params.created_from,
        created_to=params.created_to,
        name=params.name,
        application=params.application,
        tag=params.tag,
        now=tx.now,
    )
    hidden_filter = params.application is not None or params.tag is not None
    after = _decode_cursor(params.cursor) if params.cursor else None
    wanted = params.limit + 1  # one more than the page tells whether there is a next one
    shown: list[tuple[KeyRecord, bool]] = []
    while len(shown) < wanted:
        rows = list_stored_keys(tx.conn, flt, limit=wanted, after=after)
        for record in rows:
            # Verified before anything is decided from it (who sees what).
            call.rt.keystore.verify_seal(record.seal_payload(), record.seal)
            full = call.manage_any or keyops.sees_in_full(record, call.user, tx.now)
            if full or not hidden_filter:
                shown.append((record, full))
        if len(rows) < wanted:
            break
        after = (rows[-1].created_at, rows[-1].key_id)
    page, more = shown[: params.limit], len(shown) > params.limit
    keys = [
        keyops.metadata(record, tx.now) if full
        else keyops.recipient_view(record, call.user, tx.now)
        for record, full in page
    ]
    tx.ctx.details = {"count": len(keys)}
    return {"keys": keys, "next_cursor": _encode_cursor(page[-1][0]) if more and page else None}


# --- key changes --------------------------------------------------------------------------------


def update_key(call: Call, params: UpdateKeyParams, tx: Tx) -> dict[str, Any]:
    record = managed(call, tx, params.key_id)
    given = params.model_fields_set - {"key_id"}
    if not given:
        raise InvalidRequest("params: name at least one field to update")
    changes: dict[str, Any] = {}
    for field in ("name", "tag", "not_before", "not_after", "expires_at"):
        if field in given:
            changes[field] = getattr(params, field)
    if "rules" in given:
        changes["rules"] = keyops.rules_from(params.rules)
    if "expires_at" in given:
        if params.expires_at is None:
            raise InvalidRequest("expires_at: a key always has a lifetime")
        # As at creation: a lifetime ends in the future. To stop a key now, disable it.
        if params.expires_at <= tx.now:
            raise InvalidRequest("expires_at: must be in the future")
    not_before = changes.get("not_before", record.not_before)
    not_after = changes.get("not_after", record.not_after)
    if not_before is not None and not_after is not None and not_after <= not_before:
        raise InvalidRequest("not_after: must be later than not_before")
    shown = {
        k: (v.to_json() if isinstance(v, Rules) else rfc3339(v) if k in _TIMES else v)
        for k, v in changes.items()
    }
    tx.ctx.details = {"changed": shown}
    after = _save(call, tx, record, **changes)
    return keyops.metadata(after, tx.now)


_TIMES = frozenset({"not_before", "not_after", "expires_at"})


def enable_key(call: Call, params: KeyRef, tx: Tx) -> dict[str, Any]:
    record = managed(call, tx, params.key_id)
    if record.status is KeyStatus.ACTIVE:
        tx.ctx.details = {"changed": {}}
        return keyops.metadata(record, tx.now)
    tx.ctx.details = {"changed": {"status": str(KeyStatus.ACTIVE)}}
    return keyops.metadata(_save(call, tx, record, status=KeyStatus.ACTIVE), tx.now)


def disable_key(call: Call, params: KeyRef, tx: Tx) -> dict[str, Any]:
    record = managed(call, tx, params.key_id)
    if record.status is KeyStatus.DISABLED:
        tx.ctx.details = {"changed": {}}
        return keyops.metadata(record, tx.now)
    tx.ctx.details = {"changed": {"status": str(KeyStatus.DISABLED)}}
    return keyops.metadata(_save(call, tx, record, status=KeyStatus.DISABLED), tx.now)


def shred(keystore: Keystore, tx: Tx, record: KeyRecord) -> KeyRecord:
    """Crypto-shred: overwrite the seed in place, then empty the column; keep a tombstone.

    The overwrite comes first so that the page holding the old value is rewritten even
    where the engine would otherwise just mark it free; SQLite's ``secure_delete`` zeroes
    freed cells as well. Backups taken before this moment still hold the seed
    (docs/erasure.md).
    """
    overwrite_seed(tx.conn, record.key_id)
    after = keyops.reseal(
        keystore,
        record,
        seed=None,
        status=KeyStatus.DESTROYED,
        destroyed_at=tx.now,
        destroy_at=None,
    )
    save_key(tx.conn, record, after)
    if record.application == DKE_APPLICATION:
        # A DKE key's documents are opened by its RSA private keys, not by the seed: they
        # go too (docs/workspace.md).
        from sceau.service.workspace.admin import shred_dke_material

        tx.ctx.details["dke_versions_destroyed"] = shred_dke_material(
            keystore, tx, record.key_id)
    return after


def shredded_event(extras: dict[str, Any]) -> threading.Event:
    """Set after a destruction so the background task flushes the SQLite WAL soon after.

    Until a checkpoint, the WAL file may still hold page images with the old seed; the
    sweep thread truncates it (docs/erasure.md). A spurious set (the job rolled back) only
    costs one checkpoint.
    """
    event = extras.get(_SHREDDED)
    if not isinstance(event, threading.Event):
        event = extras.setdefault(_SHREDDED, threading.Event())
    assert isinstance(event, threading.Event)
    return event


_SHREDDED = "shredded"


def destroy_key(call: Call, params: DestroyKeyParams, tx: Tx) -> Any:
    # SPEC §10: on a pending key only destroy-key with 0 (and cancel-destruction) may act;
    # rescheduling would let anyone with `manage` postpone an erasure indefinitely.
    record = managed(call, tx, params.key_id, allow_pending=params.pending_days == 0)
    if params.pending_days == 0:
        after = shred(call.rt.keystore, tx, record)
        tx.ctx.details = {**tx.ctx.details, "revision": after.revision, "pending_days": 0}
        shredded_event(call.rt.extras).set()
        return DestroyedKey(keyops.key_id_text(after.key_id), tx.now)
    # keys.day_seconds: 86400, unless a test shortens the "day" (docs/erasure.md).
    destroy_at = tx.now + params.pending_days * call.rt.config.keys.day_seconds
    tx.ctx.details = {"pending_days": params.pending_days, "destroy_at": rfc3339(destroy_at)}
    after = _save(call, tx, record, status=KeyStatus.PENDING_DESTRUCTION, destroy_at=destroy_at)
    return keyops.metadata(after, tx.now)


def destroy_due(keystore: Keystore, tx: Tx, key_id: bytes) -> DestroyedKey:
    """The sweep's job: destroy a key whose pending destruction is due (re-checked here).

    The candidate list was read outside this transaction; the key may have been cancelled
    or destroyed since, which is refused (and audited) rather than acted on.
    """
    tx.ctx.key = keyops.key_id_text(key_id)
    record = keyops.load_checked(tx.conn, keystore, key_id, for_update=True)
    if record.status is KeyStatus.DESTROYED:
        raise AccessDenied(Reason.KEY_DESTROYED)
    if (
        record.status is not KeyStatus.PENDING_DESTRUCTION
        or record.destroy_at is None
        or record.destroy_at > tx.now
    ):
        raise InvalidRequest("key_id: the key is not due for destruction")
    after = shred(keystore, tx, record)
    tx.ctx.details = {**tx.ctx.details, "revision": after.revision,
                      "destroy_at": rfc3339(record.destroy_at)}
    return DestroyedKey(keyops.key_id_text(after.key_id), tx.now)


def destroy_expired(keystore: Keystore, tx: Tx, key_id: bytes, cutoff: int) -> DestroyedKey:
    """``purge-expired``'s job: destroy a key whose ``expires_at`` is at or before ``cutoff``."""
    tx.ctx.key = keyops.key_id_text(key_id)
    record = keyops.load_checked(tx.conn, keystore, key_id, for_update=True)
    if record.status is KeyStatus.DESTROYED:
        raise AccessDenied(Reason.KEY_DESTROYED)
    if record.expires_at > cutoff:
        raise InvalidRequest("key_id: the key did not expire before the cutoff")
    after = shred(keystore, tx, record)
    tx.ctx.details = {**tx.ctx.details, "revision": after.revision,
                      "expires_at": rfc3339(record.expires_at)}
    return DestroyedKey(keyops.key_id_text(after.key_id), tx.now)


def cancel_destruction(call: Call, params: KeyRef, tx: Tx) -> dict[str, Any]:
    record = managed(call, tx, params.key_id, allow_pending=True)
    if record.status is not KeyStatus.PENDING_DESTRUCTION:
        raise InvalidRequest("key_id: the key is not pending destruction")
    tx.ctx.details = {"changed": {"status": str(KeyStatus.DISABLED)}}
    after = _save(call, tx, record, status=KeyStatus.DISABLED, destroy_at=None)
    return keyops.metadata(after, tx.now)


# --- authorizations ------------------------------------------------------------------------------


def _principal(record: KeyRecord, raw: str) -> str:
    principal = validate_principal(raw)
    if principal == record.owner:
        raise InvalidRequest("principal: is the key's owner")
    return principal


def add_authorization(call: Call, params: AddAuthorizationParams, tx: Tx) -> dict[str, Any]:
    record = managed(call, tx, params.key_id)
    principal = _principal(record, params.principal)
    if record.authorization_for(principal) is not None:
        raise InvalidRequest("principal: already has an authorization on this key")
    entry = Authorization(
        principal=principal,
        rights=frozenset(params.rights),
        status=AuthorizationStatus.ACTIVE,
        not_before=params.not_before,
        not_after=params.not_after,
        added_by=call.user,
        added_at=tx.now,
    )
    tx.ctx.details = {"principal": principal, "rights": sorted(str(r) for r in params.rights),
                      "not_before": rfc3339(params.not_before),
                      "not_after": rfc3339(params.not_after)}
    auths = tuple(sorted((*record.authorizations, entry), key=lambda a: a.principal))
    return keyops.metadata(_save(call, tx, record, authorizations=auths), tx.now)


def _existing(record: KeyRecord, raw: str) -> str:
    principal = _principal(record, raw)
    if record.authorization_for(principal) is None:
        raise InvalidRequest("principal: has no authorization on this key")
    return principal


def remove_authorization(call: Call, params: PrincipalRef, tx: Tx) -> dict[str, Any]:
    record = managed(call, tx, params.key_id)
    principal = _existing(record, params.principal)
    tx.ctx.details = {"principal": principal}
    auths = tuple(a for a in record.authorizations if a.principal != principal)
    return keyops.metadata(_save(call, tx, record, authorizations=auths), tx.now)


def _set_authorization_status(
    call: Call, params: PrincipalRef, tx: Tx, status: AuthorizationStatus
) -> dict[str, Any]:
    record = managed(call, tx, params.key_id)
    principal = _existing(record, params.principal)
    tx.ctx.details = {"principal": principal, "status": str(status)}
    auths = tuple(
        Authorization(a.principal, a.rights, status, a.not_before, a.not_after, a.added_by,
                      a.added_at) if a.principal == principal else a
        for a in record.authorizations
    )
    if auths == record.authorizations:
        return keyops.metadata(record, tx.now)
    return keyops.metadata(_save(call, tx, record, authorizations=auths), tx.now)


def enable_authorization(call: Call, params: PrincipalRef, tx: Tx) -> dict[str, Any]:
    return _set_authorization_status(call, params, tx, AuthorizationStatus.ACTIVE)


def disable_authorization(call: Call, params: PrincipalRef, tx: Tx) -> dict[str, Any]:
    return _set_authorization_status(call, params, tx, AuthorizationStatus.DISABLED)


# --- accesses ------------------------------------------------------------------------------


_MAX_SEQ = 2**63 - 1


def _decode_seq_cursor(text: str) -> int:
    """A ``list-accesses`` cursor: a position in ``seq`` (decimal ASCII, base64url)."""
    try:
        raw = b64u_decode(text)
    except MalformedBase64:
        raise InvalidRequest("cursor: not a cursor from this service") from None
    if not raw.isdigit() or len(raw) > 19 or not 1 <= int(raw) <= _MAX_SEQ:
        raise InvalidRequest("cursor: not a cursor from this service")
    return int(raw)


def list_accesses(call: Call, params: ListAccessesParams, tx: Tx) -> dict[str, Any]:
    record = managed(call, tx, params.key_id, change=False)
    before = _decode_seq_cursor(params.cursor) if params.cursor else None
    rows = newest_audit_lines(
        tx.conn, key=keyops.key_id_text(record.key_id), limit=params.limit + 1, before=before
    )
    page, more = rows[: params.limit], len(rows) > params.limit
    accesses = [json.loads(line) for _seq, line in page]
    cursor = b64u_encode(str(page[-1][0]).encode("ascii")) if more and page else None
    tx.ctx.details = {"count": len(accesses)}
    return {"accesses": accesses, "next_cursor": cursor}
