"""Service-signed JWS objects: the generic signer and the destruction receipt (SPEC §10).

A destruction receipt is a compact JWS by the current audit key, header ``{alg, kid, typ:
"sceau-receipt+jwt"}``, claims ``{iss, key_id, destroyed_at, seq, hash}`` where ``seq`` and
``hash`` are those of the committed ``DESTROY_KEY`` audit record. Anyone holding the
service's JWKS can check it offline, and can then find the record in an audit export.
The API (``destroy-key``) and the CLI (``sceau key purge-expired``) build it the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sceau.jose.response import compact_jws
from sceau.keystore.base import KeyPurpose, Keystore
from sceau.service.params import rfc3339
from sceau.store.writer import JobOutcome

__all__ = [
    "RECEIPT_TYP",
    "DestroyedKey",
    "destruction_receipt",
    "receipt_result",
    "sign_service_jws",
]

RECEIPT_TYP = "sceau-receipt+jwt"


@dataclass(frozen=True)
class DestroyedKey:
    """What a destruction job returns; the receipt needs the committed audit record too."""

    key_id: str
    destroyed_at: int


def sign_service_jws(
    keystore: Keystore, purpose: KeyPurpose, typ: str, claims: dict[str, Any]
) -> str:
    """A compact JWS over ``claims`` by the keystore's current key for ``purpose``."""
    info = keystore.signing_key(purpose)
    header = {"alg": info.alg, "kid": info.kid, "typ": typ}

    def sign(data: bytes) -> bytes:
        _used, sig = keystore.sign(purpose, data)
        return sig

    return compact_jws(header, claims, sign)


def destruction_receipt(
    keystore: Keystore,
    service_id: str,
    *,
    key_id: str,
    destroyed_at: int,
    seq: int,
    record_hash: str,
) -> str:
    """The receipt JWS for one destroyed key, bound to its ``DESTROY_KEY`` record."""
    claims = {
        "iss": service_id,
        "key_id": key_id,
        "destroyed_at": destroyed_at,
        "seq": seq,
        "hash": record_hash,
    }
    return sign_service_jws(keystore, KeyPurpose.AUDIT, RECEIPT_TYP, claims)


def receipt_result(
    keystore: Keystore, service_id: str, destroyed: DestroyedKey, outcome: JobOutcome
) -> dict[str, Any]:
    """``{key_id, destroyed_at, receipt}``: the result of an immediate destruction.

    ``outcome`` is the committed job; its single audit record is the ``DESTROY_KEY`` one.
    """
    if len(outcome.records) != 1:
        # A destruction job writes exactly one record; anything else is a bug upstream and
        # a receipt pointing at the wrong record would be worse than none.
        raise ValueError("a destruction job must have exactly one audit record")
    seq, record_hash = outcome.records[0]
    token = destruction_receipt(
        keystore,
        service_id,
        key_id=destroyed.key_id,
        destroyed_at=destroyed.destroyed_at,
        seq=seq,
        record_hash=record_hash,
    )
    return {
        "key_id": destroyed.key_id,
        "destroyed_at": rfc3339(destroyed.destroyed_at),
        "receipt": token,
    }
