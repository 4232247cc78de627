"""Key records in the service: creation, re-sealing after a change, checked loading, metadata.

Every change of a record goes through :func:`reseal`, which bumps ``revision`` (except for
the decryption counter, which is state rather than policy) and recomputes the seal in the
keystore, so a record in the store always carries a seal over exactly what it says.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import sqlalchemy as sa

from sceau.core.b64 import b64u_encode
from sceau.core.envelope import KEY_ID_LEN
from sceau.core.model import AUTHORIZATION_TIMES, KEY_TIMES, Authorization, KeyRecord, Rules
from sceau.core.policy import (
    can_manage,
    display_status,
    matching_authorizations,
    validate_networks,
)
from sceau.errors import IntegrityFailure, NotFound
from sceau.keystore.base import Keystore
from sceau.service.params import RulesParam, rfc3339
from sceau.store.keys import load_key, load_keys, save_key
from sceau.vocab import AuthorizationStatus, KeyStatus, Right

SEED_LEN = 32
_ABSENT_PAYLOAD = b"sceau/absent-key/v1" + bytes(480)


def new_key(
    keystore: Keystore,
    *,
    owner: str,
    application: str,
    now: int,
    expires_at: int,
    name: str | None,
    tag: str | None,
    not_before: int | None,
    not_after: int | None,
    recipients: tuple[str, ...],
    rules: Rules,
) -> KeyRecord:
    """A fresh sealed key record: random 16-byte id and 32-byte seed, newest master version."""
    auths = tuple(
        Authorization(
            principal=p,
            rights=frozenset({Right.DECRYPT}),
            status=AuthorizationStatus.ACTIVE,
            not_before=None,
            not_after=None,
            added_by=owner,
            added_at=now,
        )
        for p in sorted(set(recipients))
        if p != owner
    )
    record = KeyRecord(
        key_id=os.urandom(KEY_ID_LEN), seed=os.urandom(SEED_LEN),
        master_version=keystore.current_master_version(), owner=owner,
        application=application, name=name, tag=tag, created_at=now, expires_at=expires_at,
        not_before=not_before, not_after=not_after, status=KeyStatus.ACTIVE, destroy_at=None,
        destroyed_at=None, authorizations=auths, rules=rules, decryptions=0, revision=1,
    )
    return _sealed(keystore, record)


def _sealed(keystore: Keystore, fresh: KeyRecord) -> KeyRecord:
    """``fresh`` with its seal set. ``fresh`` must be a record this module just built and
    nothing else holds yet: the seal is written into it rather than into a copy (a copy of
    the 19 fields costs as much as the rest of a new key's Python work)."""
    object.__setattr__(fresh, "seal", keystore.seal(fresh.seal_payload()))
    return fresh


def rules_from(param: RulesParam | None) -> Rules:
    """The sealed ``rules`` of a key from the ``rules`` parameter (networks validated)."""
    if param is None:
        return Rules()
    nets = param.allowed_networks
    return Rules(
        allowed_networks=validate_networks(nets) if nets is not None else None,
        max_decryptions=param.max_decryptions,
    )


def reseal(
    keystore: Keystore, record: KeyRecord, *, bump: bool = True, **changes: Any
) -> KeyRecord:
    """``record`` with ``changes`` applied, revision bumped (when ``bump``) and sealed anew."""
    if bump:
        changes["revision"] = record.revision + 1
    return _sealed(keystore, dataclasses.replace(record, **changes))


def load_checked(
    conn: sa.Connection, keystore: Keystore, key_id: bytes, *, for_update: bool = False
) -> KeyRecord:
    """Load a key and verify its seal; ``not_found`` when absent.

    A record whose seal does not verify was changed behind the service's back (a database
    edit granting access or re-enabling a key): ``integrity_failure``, audited by the caller.
    """
    return _verified(keystore, load_key(conn, key_id, for_update=for_update))


def _verified(keystore: Keystore, record: KeyRecord | None) -> KeyRecord:
    """``record`` once its seal verified (``integrity_failure``); ``not_found`` when None."""
    if record is None:
        # Spend the seal check anyway, so "no such key" and "not yours" take the same time
        # (a stranger cannot tell an unknown key from one they may not see).
        keystore.seal(_ABSENT_PAYLOAD)
        raise NotFound("no such key")
    try:
        keystore.verify_seal(record.seal_payload(), record.seal)
    except IntegrityFailure:
        raise IntegrityFailure("the key record does not match its seal") from None
    return record


class CheckedKeys:
    """The key records a batch names, loaded in one go; uses counted in memory.

    :meth:`get` answers like :func:`load_checked` (seal verified, ``not_found``,
    ``integrity_failure``) and returns the record as counted so far in this batch, so
    ``max_decryptions`` holds when several items use one key. :meth:`flush` writes each
    counted key once, at the end.
    """

    def __init__(
        self, conn: sa.Connection, keystore: Keystore, key_ids: list[bytes], *, for_update: bool
    ) -> None:
        self._keystore = keystore
        self._loaded = load_keys(conn, key_ids, for_update=for_update)
        self._counted: dict[bytes, KeyRecord] = {}

    def get(self, key_id: bytes) -> KeyRecord:
        counted = self._counted.get(key_id)
        if counted is not None:  # its seal verified before its first use was counted
            return counted
        return _verified(self._keystore, self._loaded.get(key_id))

    def count_use(self, record: KeyRecord) -> None:
        self._counted[record.key_id] = dataclasses.replace(
            record, decryptions=record.decryptions + 1
        )

    def flush(self, conn: sa.Connection) -> None:
        """Write the counted keys (one update each, sealed anew)."""
        for key_id, counted in self._counted.items():
            after = reseal(self._keystore, counted, bump=False)
            save_key(conn, self._loaded[key_id], after)


def key_id_text(key_id: bytes) -> str:
    return b64u_encode(key_id)


def _recipient_entry(entry: Authorization) -> dict[str, Any]:
    """An authorization entry as a recipient sees it: not who added it, nor when."""
    return {
        "principal": entry.principal,
        "rights": sorted(str(r) for r in entry.rights),
        "status": str(entry.status),
        "not_before": rfc3339(entry.not_before),
        "not_after": rfc3339(entry.not_after),
    }


def metadata(record: KeyRecord, now: int) -> dict[str, Any]:
    """The key's metadata as results carry it (never the seed or the seal)."""
    view = _dates(record.to_json(), KEY_TIMES)
    view["key_id"] = key_id_text(record.key_id)
    view["status"] = str(display_status(record, now))
    view["authorizations"] = [_dates(entry, AUTHORIZATION_TIMES)
                              for entry in view["authorizations"]]
    return view


def _dates(view: dict[str, Any], times: tuple[str, ...]) -> dict[str, Any]:
    """``view`` with its NumericDate members ``times`` as RFC 3339 text."""
    for name in times:
        view[name] = rfc3339(view[name])
    return view


def sees_in_full(record: KeyRecord, user: str, now: int) -> bool:
    """Whether ``user`` gets the whole metadata of ``record``: exactly who may manage it.

    The same test as ``describe-key`` (owner, or a governing ``manage`` entry that is active
    and in its window), so a listing never shows more than ``describe-key`` would answer.
    """
    return can_manage(record, user, now)


def recipient_view(record: KeyRecord, user: str, now: int) -> dict[str, Any]:
    """What a caller who may use ``record`` but not manage it sees (docs/policy.md).

    Id, name, owner, status, and only the authorization entries that govern ``user``: its
    exact entry, or else the ``*@domain`` entries that match it (policy precedence), each
    without ``added_by`` (another principal) or ``added_at``. No other principal, no rules
    or networks, no counters, tag, application, dates or revision.
    """
    return {
        "key_id": key_id_text(record.key_id),
        "name": record.name,
        "owner": record.owner,
        "status": str(display_status(record, now)),
        "authorizations": [_recipient_entry(a) for a in matching_authorizations(record, user)],
    }
