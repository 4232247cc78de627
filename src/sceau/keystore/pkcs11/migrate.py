"""Moving a file keystore into an empty PKCS#11 token (docs/hsm.md, "Migration")."""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pkcs11 import Attribute, KeyType, ObjectClass

from sceau.core.b64 import b64u_decode
from sceau.errors import ConfigError
from sceau.keystore.base import ALG_EDDSA, ALG_ES256, KeyPurpose, KeystoreSettings
from sceau.keystore.file import JWE_FILE, FileKeystore, JweKeyFile, write_secret_file
from sceau.keystore.pkcs11.objects import (
    ED25519_PARAMS,
    P256_PARAMS,
    SIGNING_PRIVATE_POLICY,
    create_tombstone,
    empty_token,
    import_secret,
    master_label,
)

__all__ = ["migrate_file_to_pkcs11"]


def _import_pair(session: Any, label: str, alg: str, pkcs8: bytes) -> None:
    """Import a software signing key into the token, non-extractable from then on."""
    key = serialization.load_der_private_key(pkcs8, password=None)
    common = {Attribute.LABEL: label, Attribute.ID: label.encode("ascii"), Attribute.TOKEN: True}
    if alg == ALG_EDDSA and isinstance(key, Ed25519PrivateKey):
        key_type, params = KeyType.EC_EDWARDS, ED25519_PARAMS
        value = key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        point = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
    elif alg == ALG_ES256 and isinstance(key, ec.EllipticCurvePrivateKey):
        key_type, params = KeyType.EC, P256_PARAMS
        value = key.private_numbers().private_value.to_bytes(32, "big")
        point = key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
    else:
        raise ConfigError(f"signing key {label} does not match its algorithm")
    session.create_object({
        **common,
        Attribute.CLASS: ObjectClass.PUBLIC_KEY,
        Attribute.KEY_TYPE: key_type,
        Attribute.EC_PARAMS: params,
        # DER OCTET STRING around the point, as CKA_EC_POINT is specified.
        Attribute.EC_POINT: bytes([0x04, len(point)]) + point,
        Attribute.PRIVATE: False,
        Attribute.VERIFY: True,
    })
    session.create_object({
        **common,
        Attribute.CLASS: ObjectClass.PRIVATE_KEY,
        Attribute.KEY_TYPE: key_type,
        Attribute.EC_PARAMS: params,
        Attribute.VALUE: value,
        **SIGNING_PRIVATE_POLICY,
    })


def migrate_file_to_pkcs11(source: KeystoreSettings, target: KeystoreSettings) -> None:
    """Move a file keystore into an empty PKCS#11 token.

    Imports every usable master version (same version numbers, so stored keys still derive),
    tombstones for retired versions, the seal key (stored seals still verify), and every
    signing key version (old audit records still verify, the service keeps its kids); copies
    both JWE keys. The token objects are sensitive and non-extractable. The source files
    are left in place: the operator destroys them once the new keystore is verified.
    """
    if source.backend != "file" or target.backend != "pkcs11":
        raise ConfigError("migration goes from a file keystore to a pkcs11 keystore")
    doc = FileKeystore.read_material_for_migration(source)
    jwe = JweKeyFile.load(source.path / JWE_FILE, source.passphrase(), source.passphrase_env)

    def create(session: Any) -> None:
        for entry in doc["masters"]:
            version = int(entry["version"])
            if entry.get("retired"):
                create_tombstone(session, version)
            else:
                import_secret(session, master_label(version), b64u_decode(entry["key"]))
        import_secret(
            session, f"sceau-seal-v{int(doc['seal']['version'])}",
            b64u_decode(doc["seal"]["key"]),
        )
        for purpose in KeyPurpose:
            for entry in doc["signing"][purpose.value]:
                _import_pair(
                    session, f"sceau-{purpose.value}-v{int(entry['version'])}",
                    entry["alg"], b64u_decode(entry["pkcs8"]),
                )

    with empty_token(target) as pool:
        pool.run_rw(create)
    write_secret_file(target.path / JWE_FILE, jwe.document(), target.passphrase())
