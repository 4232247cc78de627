"""encrypt, decrypt, generate-data-key, get-data-key (SPEC §4, §6, §7).

Handlers run inside the writer's transaction (see :mod:`sceau.store.writer`): the decision,
the decryption counter and the audit record commit together, so ``max_decryptions`` grants
exactly N even under concurrency, and nothing is answered before its record is durable.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sceau.core.b64 import b64u_encode
from sceau.core.envelope import (
    NONCE_LEN,
    TOKEN_LEN,
    EnvelopeFormatError,
    EnvelopeHeader,
    Suite,
    open_gcm,
    parse_unverified_header,
    seal_gcm,
    token_for,
)
from sceau.core.model import KeyRecord
from sceau.core.policy import Actor, can_manage, require_use
from sceau.errors import (
    AccessDenied,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    SceauError,
)
from sceau.service import keyops
from sceau.service.params import (
    DecryptItem,
    DecryptParams,
    EncryptItem,
    EncryptParams,
    GenerateDataKeyParams,
    GetDataKeyParams,
    parse_model,
)
from sceau.store.keys import insert_keys, save_key
from sceau.store.writer import Tx
from sceau.vocab import KeyStatus, Outcome, Reason

if TYPE_CHECKING:
    from sceau.service.runtime import Runtime


def _usable_for_encrypt(record: KeyRecord, now: int) -> None:
    """A key named by ``encrypt`` must be managed by the caller and usable right now."""
    if record.status is KeyStatus.DESTROYED:
        raise AccessDenied(Reason.KEY_DESTROYED)
    if record.status is KeyStatus.PENDING_DESTRUCTION:
        raise AccessDenied(Reason.KEY_PENDING_DESTRUCTION)
    if record.status is KeyStatus.DISABLED:
        raise AccessDenied(Reason.KEY_DISABLED)
    if now >= record.expires_at:
        raise AccessDenied(Reason.KEY_EXPIRED)


def _check_plaintext(rt: Runtime, plaintext: bytes) -> None:
    if len(plaintext) > rt.max_plaintext:
        raise PayloadTooLarge(
            f"plaintext: over {rt.max_plaintext} bytes; use a data key and the STREAM format"
        )


def _error_item(exc: SceauError) -> dict[str, Any]:
    error: dict[str, Any] = {"code": exc.code, "detail": exc.public_detail}
    if exc.reason is not None:
        error["reason"] = str(exc.reason)
    return {"error": error}


def _check_batch(rt: Runtime, items: list[dict[str, Any]]) -> None:
    if len(items) > rt.max_batch:
        raise InvalidRequest(f"items: at most {rt.max_batch} items")
    if not items:
        raise InvalidRequest("items: must not be empty")


def _run_items(
    tx: Tx, items: list[dict[str, Any]], one: Callable[[int, dict[str, Any]], dict[str, Any]]
) -> list[dict[str, Any]]:
    """Run ``one`` per item; each item gets its own audit record.

    No savepoint per item: ``one`` must write at most once, as its very last step (nothing
    that can fail follows the write), so a refused item has changed nothing. Batch encrypt
    defers its inserts to one statement after the loop; decrypt's counter update is the
    last thing an item does. A database error fails the whole job.
    """
    out: list[dict[str, Any]] = []
    for index, raw in enumerate(items):
        tx.ctx.key = None
        try:
            result = one(index, raw)
        except SceauError as exc:
            out.append(_error_item(exc))
            reason = str(exc.reason) if exc.reason is not None else exc.code
            tx.item_record(outcome=Outcome.DENIED if exc.status < 500 else Outcome.ERROR,
                           key=tx.ctx.key, reason=reason, details={"item": index})
        else:
            out.append(result)
            tx.item_record(outcome=Outcome.GRANTED, key=tx.ctx.key, details={"item": index})
    return out


# --- encrypt ------------------------------------------------------------------------------


def encrypt(rt: Runtime, actor: Actor, params: EncryptParams, tx: Tx) -> dict[str, Any]:
    now = tx.now
    shared: KeyRecord | None = None
    if params.key_id is not None:
        tx.ctx.key = b64u_encode(params.key_id)
        # Locked like a decrypt, so a disable committed on another node orders before it.
        shared = keyops.load_checked(tx.conn, rt.keystore, params.key_id, for_update=True)
        if not can_manage(shared, actor.user, now):
            raise NotFound("no such key")
        _usable_for_encrypt(shared, now)

    created: list[KeyRecord] = []

    def seal_one(plaintext: bytes, aad: bytes | None) -> dict[str, Any]:
        _check_plaintext(rt, plaintext)
        record = shared if shared is not None else rt.lifecycle.create(actor, params, now)
        tx.ctx.key = keyops.key_id_text(record.key_id)
        data_key = rt.keystore.derive(record.master_version, record.key_id, record.live_seed())
        envelope = seal_gcm(data_key, record.key_id, plaintext, aad)
        if shared is None:
            created.append(record)  # written last, once everything that can fail is done
        return {"key_id": tx.ctx.key, "ciphertext": b64u_encode(envelope)}

    if params.items is None:
        if params.plaintext is None:
            raise InvalidRequest("give either plaintext or items")
        result = seal_one(params.plaintext, params.aad)
    else:
        _check_batch(rt, params.items)

        def one(index: int, raw: dict[str, Any]) -> dict[str, Any]:
            item = parse_model(EncryptItem, raw, where=f"items.{index}")
            return seal_one(item.plaintext, item.aad)

        result = {"items": _run_items(tx, params.items, one)}
    insert_keys(tx.conn, created)
    return result


# --- decrypt and data keys --------------------------------------------------------------------


def _use_key(
    rt: Runtime, actor: Actor, tx: Tx, key_id: bytes, batch: keyops.CheckedKeys | None = None
) -> tuple[KeyRecord, bytes]:
    """SPEC §6 for decrypt / get-data-key; returns the record and the data key."""
    tx.ctx.key = keyops.key_id_text(key_id)
    if batch is not None:
        record = batch.get(key_id)
    else:
        record = keyops.load_checked(tx.conn, rt.keystore, key_id, for_update=True)
    require_use(record, actor, tx.now)
    data_key = rt.keystore.derive(record.master_version, record.key_id, record.live_seed())
    return record, data_key


def _count_use(rt: Runtime, tx: Tx, record: KeyRecord) -> None:
    """Increment ``decryptions`` with the grant (state, not policy: revision unchanged)."""
    after = keyops.reseal(rt.keystore, record, bump=False,
                          decryptions=record.decryptions + 1)
    save_key(tx.conn, record, after)


def _header(ciphertext: bytes) -> EnvelopeHeader:
    """The envelope's header; a refusal names the member at fault, as every API error does."""
    try:
        header = parse_unverified_header(ciphertext)
    except EnvelopeFormatError as exc:
        raise EnvelopeFormatError(f"ciphertext: {exc.detail}") from None
    if header.suite is not Suite.GCM:
        raise InvalidRequest("ciphertext: suite 2 (STREAM) is opened client-side with get-data-key")
    return header


def _open(
    rt: Runtime, actor: Actor, tx: Tx, header: EnvelopeHeader, ciphertext: bytes,
    aad: bytes | None, batch: keyops.CheckedKeys | None = None,
) -> dict[str, Any]:
    record, data_key = _use_key(rt, actor, tx, header.key_id, batch)
    plaintext = open_gcm(data_key, ciphertext, aad)
    if batch is None:
        _count_use(rt, tx, record)
    else:
        batch.count_use(record)  # written by batch.flush() after the last item
    return {"key_id": keyops.key_id_text(record.key_id), "plaintext": b64u_encode(plaintext)}


def decrypt(rt: Runtime, actor: Actor, params: DecryptParams, tx: Tx) -> dict[str, Any]:
    if params.items is None:
        if params.ciphertext is None:
            raise InvalidRequest("give either ciphertext or items")
        return _open(rt, actor, tx, _header(params.ciphertext), params.ciphertext, params.aad)
    _check_batch(rt, params.items)
    # Parse every item first, so that the keys they name load in one query; a malformed
    # item keeps its error for its own turn.
    parsed: list[tuple[DecryptItem, EnvelopeHeader] | SceauError] = []
    for index, raw in enumerate(params.items):
        try:
            item = parse_model(DecryptItem, raw, where=f"items.{index}")
            parsed.append((item, _header(item.ciphertext)))
        except SceauError as exc:
            parsed.append(exc)
    batch = keyops.CheckedKeys(
        tx.conn, rt.keystore,
        [p[1].key_id for p in parsed if not isinstance(p, SceauError)],
        for_update=True,
    )

    def one(index: int, _raw: dict[str, Any]) -> dict[str, Any]:
        entry = parsed[index]
        if isinstance(entry, SceauError):
            raise entry
        item, header = entry
        return _open(rt, actor, tx, header, item.ciphertext, item.aad, batch)

    result = {"items": _run_items(tx, params.items, one)}
    batch.flush(tx.conn)
    return result


def generate_data_key(rt: Runtime, actor: Actor, params: GenerateDataKeyParams,
                      tx: Tx) -> dict[str, Any]:
    record = rt.lifecycle.create(actor, params, tx.now)
    tx.ctx.key = keyops.key_id_text(record.key_id)
    insert_keys(tx.conn, [record])
    data_key = rt.keystore.derive(record.master_version, record.key_id, record.live_seed())
    return {
        "key_id": tx.ctx.key,
        "key": b64u_encode(data_key),
        "iv": b64u_encode(os.urandom(NONCE_LEN)),
        "token": b64u_encode(token_for(record.key_id)),
    }


def get_data_key(rt: Runtime, actor: Actor, params: GetDataKeyParams,
                 tx: Tx) -> dict[str, Any]:
    if params.token is not None:
        key_id = key_id_of_token(params.token)
    else:
        if params.key_id is None:
            raise InvalidRequest("give either key_id or token")
        key_id = params.key_id
    record, data_key = _use_key(rt, actor, tx, key_id)
    _count_use(rt, tx, record)
    return {"key_id": keyops.key_id_text(record.key_id), "key": b64u_encode(data_key)}


def key_id_of_token(token: bytes) -> bytes:
    """The key id in a ``generate-data-key`` token: bytes 0..20 of a suite-1 header."""
    if len(token) != TOKEN_LEN:
        raise InvalidRequest(f"token: must be {TOKEN_LEN} bytes")
    if token != token_for(token[5:TOKEN_LEN]):
        raise InvalidRequest("token: not a suite-1 envelope header")
    return bytes(token[5:TOKEN_LEN])
