"""The key-management operations of the API, as adapters of the key-lifecycle service.

Each handler takes the parsed parameters, calls :class:`~sceau.service.lifecycle.KeyLifecycle`
as the caller's actor, and shapes the result for the wire: key metadata, or the recipient
view of a key the caller may use but not manage (docs/policy.md), opaque cursors for the
pages, the destruction receipt (built by the endpoint after the commit).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sceau.core.b64 import MalformedBase64, b64u_decode, b64u_encode
from sceau.core.envelope import KEY_ID_LEN
from sceau.core.model import KeyRecord
from sceau.core.policy import Actor
from sceau.errors import InvalidRequest
from sceau.service import keyops
from sceau.service.api.context import Handler
from sceau.service.lifecycle import KeyLifecycle
from sceau.service.params import DestroyKeyParams, ListAccessesParams, ListKeysParams
from sceau.store.writer import Tx
from sceau.vocab import Op

if TYPE_CHECKING:
    from sceau.service.runtime import Runtime

_MAX_SEQ = 2**63 - 1
_NOT_A_CURSOR = "cursor: not a cursor from this service"


def _record_handler(change: Callable[[KeyLifecycle, Actor, Any, Tx], KeyRecord]) -> Handler:
    """A handler answering with the metadata of the key ``change`` returns."""

    def handler(rt: Runtime, actor: Actor, params: Any, tx: Tx) -> dict[str, Any]:
        return keyops.metadata(change(rt.lifecycle, actor, params, tx), tx.now)

    return handler


def _cursor_bytes(text: str) -> bytes:
    try:
        return b64u_decode(text)
    except MalformedBase64:
        raise InvalidRequest(_NOT_A_CURSOR) from None


def list_keys(rt: Runtime, actor: Actor, params: ListKeysParams, tx: Tx) -> dict[str, Any]:
    """A ``list-keys`` page; its cursor is the (created_at, key_id) of the last key shown."""
    after = None
    if params.cursor:
        raw = _cursor_bytes(params.cursor)
        if len(raw) != 8 + KEY_ID_LEN:
            raise InvalidRequest(_NOT_A_CURSOR)
        after = (struct.unpack(">q", raw[:8])[0], raw[8:])
    page = rt.lifecycle.list_keys(actor, params, tx, after=after)
    keys = [
        keyops.metadata(record, tx.now) if full
        else keyops.recipient_view(record, actor.user, tx.now)
        for record, full in page.entries
    ]
    cursor = None
    if page.more and page.entries:
        last = page.entries[-1][0]
        cursor = b64u_encode(struct.pack(">q", last.created_at) + last.key_id)
    return {"keys": keys, "next_cursor": cursor}


def list_accesses(rt: Runtime, actor: Actor, params: ListAccessesParams,
                  tx: Tx) -> dict[str, Any]:
    """A ``list-accesses`` page; its cursor is a position in ``seq`` (decimal ASCII)."""
    before = None
    if params.cursor:
        raw = _cursor_bytes(params.cursor)
        if not raw.isdigit() or len(raw) > 19 or not 1 <= int(raw) <= _MAX_SEQ:
            raise InvalidRequest(_NOT_A_CURSOR)
        before = int(raw)
    page, more = rt.lifecycle.list_accesses(actor, params, tx, before=before)
    cursor = b64u_encode(str(page[-1][0]).encode("ascii")) if more and page else None
    return {"accesses": [json.loads(line) for _seq, line in page], "next_cursor": cursor}


def destroy_key(rt: Runtime, actor: Actor, params: DestroyKeyParams, tx: Tx) -> Any:
    """The key's metadata when scheduled; a :class:`DestroyedKey` (the endpoint makes it a
    receipt once the record is committed) when destroyed now."""
    result = rt.lifecycle.destroy(actor, params, tx)
    return keyops.metadata(result, tx.now) if isinstance(result, KeyRecord) else result


HANDLERS: dict[Op, Handler] = {
    Op.DESCRIBE_KEY: _record_handler(KeyLifecycle.describe),
    Op.LIST_KEYS: list_keys,
    Op.UPDATE_KEY: _record_handler(KeyLifecycle.update),
    Op.ENABLE_KEY: _record_handler(KeyLifecycle.enable),
    Op.DISABLE_KEY: _record_handler(KeyLifecycle.disable),
    Op.DESTROY_KEY: destroy_key,
    Op.CANCEL_DESTRUCTION: _record_handler(KeyLifecycle.cancel_destruction),
    Op.ADD_AUTHORIZATION: _record_handler(KeyLifecycle.add_authorization),
    Op.REMOVE_AUTHORIZATION: _record_handler(KeyLifecycle.remove_authorization),
    Op.ENABLE_AUTHORIZATION: _record_handler(KeyLifecycle.enable_authorization),
    Op.DISABLE_AUTHORIZATION: _record_handler(KeyLifecycle.disable_authorization),
    Op.LIST_ACCESSES: list_accesses,
}
