"""Sceau's objects in a PKCS#11 token: labels, attribute templates, creation, inventory.

Token objects (all ``CKA_TOKEN``, ``CKA_PRIVATE``; secret and private keys
``CKA_SENSITIVE`` true and ``CKA_EXTRACTABLE`` false, each usable for its one job only)::

    sceau-master-vN     CKK_GENERIC_SECRET, 32 bytes; data keys = C_Sign(CKM_SHA256_HMAC)
    sceau-seal-v1       CKK_GENERIC_SECRET, 32 bytes; seals = C_Sign(CKM_SHA256_HMAC)
    sceau-response-vN   Ed25519 (CKM_EDDSA) or P-256 (CKM_ECDSA) key pair
    sceau-audit-vN      same rule
    sceau-master-vN-retired   CKO_DATA tombstone of a destroyed master version
    sceau-dke-<label>   RSA-2048 key pair of a DKE key version (decryption only)
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass

from sceau.core.b64 import b64u_encode
from sceau.core.jwk import jwk_thumbprint
from sceau.errors import ConfigError, KeystoreUnavailable
from sceau.keystore.base import (
    ALG_EDDSA,
    ALG_ES256,
    MASTER_KEY_LEN,
    KeyPurpose,
    KeystoreSettings,
    SigningKeyInfo,
)
from sceau.keystore.file import JWE_FILE, ensure_private_dir
from sceau.keystore.pkcs11.pool import Slot, TokenPool

_LABEL = re.compile(r"sceau-(master|seal|response|audit)-v([1-9][0-9]{0,8})(-retired)?")
# DER of the curve OIDs for CKA_EC_PARAMS: id-Ed25519 (1.3.101.112), prime256v1.
ED25519_PARAMS = bytes.fromhex("06032b6570")
P256_PARAMS = bytes.fromhex("06082a8648ce3d030107")
# Some tokens name Edwards curves by PrintableString (PKCS#11 3.0 allows both forms).
_ED25519_PARAMS_NAMED = bytes.fromhex("130c") + b"edwards25519"

SECRET_TEMPLATE: dict[Attribute, Any] = {
    Attribute.TOKEN: True,
    Attribute.PRIVATE: True,
    Attribute.SENSITIVE: True,
    Attribute.EXTRACTABLE: False,
    Attribute.SIGN: True,
    Attribute.VERIFY: False,
    Attribute.ENCRYPT: False,
    Attribute.DECRYPT: False,
    Attribute.WRAP: False,
    Attribute.UNWRAP: False,
    Attribute.DERIVE: False,
    Attribute.MODIFIABLE: False,
}
# What a signing private key may do, whether generated in the token or imported into it:
# sign, nothing else, and never leave the token.
SIGNING_PRIVATE_POLICY = {
    Attribute.PRIVATE: True,
    Attribute.SENSITIVE: True,
    Attribute.EXTRACTABLE: False,
    Attribute.SIGN: True,
    Attribute.DECRYPT: False,
    Attribute.UNWRAP: False,
    Attribute.DERIVE: False,
}
# A DKE private key decrypts (RSA-OAEP) and does nothing else, and never leaves the token.
DKE_PRIVATE_POLICY = {
    Attribute.PRIVATE: True,
    Attribute.SENSITIVE: True,
    Attribute.EXTRACTABLE: False,
    Attribute.DECRYPT: True,
    Attribute.SIGN: False,
    Attribute.UNWRAP: False,
    Attribute.DERIVE: False,
}


def master_label(version: int) -> str:
    return f"sceau-master-v{version}"


def dke_label(label: str) -> str:
    return f"sceau-dke-{label}"


# --- inventory ---------------------------------------------------------------------------


def _unwrap_octet_string(value: bytes) -> bytes:
    """CKA_EC_POINT is a DER OCTET STRING on most tokens, the bare point on some."""
    if len(value) >= 2 and value[0] == 0x04 and value[1] == len(value) - 2 and value[1] < 0x80:
        return value[2:]
    return value


def _public_jwk(key_type: Any, params: bytes, point: bytes) -> tuple[str, dict[str, Any]]:
    raw = _unwrap_octet_string(point)
    jwk: dict[str, Any]
    if key_type == KeyType.EC_EDWARDS:
        if params not in (ED25519_PARAMS, _ED25519_PARAMS_NAMED) or len(raw) != 32:
            raise KeystoreUnavailable("token signing key is not Ed25519")
        alg, jwk = ALG_EDDSA, {"kty": "OKP", "crv": "Ed25519", "x": b64u_encode(raw)}
    elif key_type == KeyType.EC:
        if params != P256_PARAMS:
            raise KeystoreUnavailable("token signing key is not on P-256")
        if len(raw) == 66 and raw[0] == 0x04 and raw[1] == 65:  # doubly wrapped by some tokens
            raw = raw[2:]
        if len(raw) != 65 or raw[0] != 0x04:
            raise KeystoreUnavailable("token P-256 public key is not an uncompressed point")
        alg = ALG_ES256
        jwk = {"kty": "EC", "crv": "P-256", "x": b64u_encode(raw[1:33]),
               "y": b64u_encode(raw[33:])}
    else:
        raise KeystoreUnavailable("token signing key has an unsupported type")
    jwk["kid"] = jwk_thumbprint(jwk)
    jwk["use"] = "sig"
    jwk["alg"] = alg
    return alg, jwk


@dataclass(frozen=True)
class Inventory:
    """What the token holds, by label. Public data only; refreshed on a miss and on a timer."""

    masters: frozenset[int]
    retired: frozenset[int]
    seals: frozenset[int]
    signers: Mapping[KeyPurpose, tuple[SigningKeyInfo, ...]]
    loaded_at: float


def scan(slot: Slot) -> Inventory:
    """Read the token's Sceau objects through ``slot``."""
    session = slot.session
    masters: set[int] = set()
    retired: set[int] = set()
    seals: set[int] = set()
    for obj in list(session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY})):
        match = _LABEL.fullmatch(str(obj[Attribute.LABEL]))
        if match is None or match.group(3):
            continue
        (masters if match.group(1) == "master" else seals).add(int(match.group(2)))
    for obj in list(session.get_objects({Attribute.CLASS: ObjectClass.DATA})):
        match = _LABEL.fullmatch(str(obj[Attribute.LABEL]))
        if match is not None and match.group(1) == "master" and match.group(3):
            retired.add(int(match.group(2)))
    signers: dict[KeyPurpose, list[SigningKeyInfo]] = {p: [] for p in KeyPurpose}
    for obj in list(session.get_objects({Attribute.CLASS: ObjectClass.PUBLIC_KEY})):
        label = str(obj[Attribute.LABEL])
        match = _LABEL.fullmatch(label)
        if match is None or match.group(1) not in ("response", "audit") or match.group(3):
            continue
        alg, jwk = _public_jwk(obj[Attribute.KEY_TYPE], obj[Attribute.EC_PARAMS],
                               obj[Attribute.EC_POINT])
        purpose = KeyPurpose(match.group(1))
        signers[purpose].append(SigningKeyInfo(
            kid=jwk["kid"], alg=alg, purpose=purpose, version=int(match.group(2)), public_jwk=jwk
        ))
    return Inventory(
        masters=frozenset(masters - retired),
        retired=frozenset(retired),
        seals=frozenset(seals),
        signers={p: tuple(sorted(v, key=lambda i: i.version)) for p, v in signers.items()},
        loaded_at=time.monotonic(),
    )


@contextmanager
def empty_token(settings: KeystoreSettings) -> Iterator[TokenPool]:
    """The pool of a token about to receive a new keystore (initialization, migration).

    Refused when the keystore directory is initialized already or the token holds any
    Sceau object.
    """
    ensure_private_dir(settings.path)
    if (settings.path / JWE_FILE).exists():
        raise ConfigError(f"keystore at {settings.path} is already initialized")
    pool = TokenPool(settings)
    try:
        inv = pool.run(scan)
        if inv.masters or inv.retired or inv.seals or any(inv.signers.values()):
            raise ConfigError(
                f"token {settings.pkcs11_token!r} already holds Sceau keys; refusing")
        yield pool
    finally:
        pool.close()


# --- creation ------------------------------------------------------------------------------


def best_alg(mechanisms: set[Any]) -> str:
    """Ed25519 when the token can make and use it; ECDSA P-256 otherwise."""
    if Mechanism.EDDSA in mechanisms and Mechanism.EC_EDWARDS_KEY_PAIR_GEN in mechanisms:
        return ALG_EDDSA
    if Mechanism.ECDSA in mechanisms and Mechanism.EC_KEY_PAIR_GEN in mechanisms:
        return ALG_ES256
    raise KeystoreUnavailable("the token supports neither EdDSA nor ECDSA signing")


def generate_secret(session: Any, label: str) -> None:
    session.generate_key(
        KeyType.GENERIC_SECRET,
        8 * MASTER_KEY_LEN,
        label=label,
        id=label.encode("ascii"),
        store=True,
        capabilities=MechanismFlag.SIGN,
        template=dict(SECRET_TEMPLATE),
    )


def import_secret(session: Any, label: str, raw: bytes) -> None:
    session.create_object({
        Attribute.CLASS: ObjectClass.SECRET_KEY,
        Attribute.KEY_TYPE: KeyType.GENERIC_SECRET,
        Attribute.VALUE: raw,
        Attribute.LABEL: label,
        Attribute.ID: label.encode("ascii"),
        **SECRET_TEMPLATE,
    })


def generate_pair(session: Any, label: str, alg: str) -> None:
    key_type = KeyType.EC_EDWARDS if alg == ALG_EDDSA else KeyType.EC
    params = ED25519_PARAMS if alg == ALG_EDDSA else P256_PARAMS
    session.generate_keypair(
        key_type,
        label=label,
        id=label.encode("ascii"),
        store=True,
        capabilities=MechanismFlag.SIGN | MechanismFlag.VERIFY,
        public_template={
            Attribute.EC_PARAMS: params,
            Attribute.TOKEN: True,
            Attribute.PRIVATE: False,
            Attribute.VERIFY: True,
            Attribute.ENCRYPT: False,
            Attribute.WRAP: False,
            Attribute.DERIVE: False,
        },
        private_template={Attribute.TOKEN: True, **SIGNING_PRIVATE_POLICY},
    )


def create_tombstone(session: Any, version: int) -> None:
    """Mark master ``version`` retired for good: the number is never used again."""
    session.create_object({
        Attribute.CLASS: ObjectClass.DATA,
        Attribute.TOKEN: True,
        Attribute.PRIVATE: True,
        Attribute.LABEL: f"{master_label(version)}-retired",
        Attribute.APPLICATION: "sceau",
        Attribute.VALUE: b"retired",
    })
