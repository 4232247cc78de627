"""The ``pkcs11`` keystore: master, seal, signing and DKE keys inside a PKCS#11 token.

The objects are listed in :mod:`sceau.keystore.pkcs11.objects`; every call goes through the
session pool of :mod:`sceau.keystore.pkcs11.pool`. The inbound-JWE keys (EC P-256 and RSA)
stay software keys in ``<keystore dir>/jwe.json`` (docs/hsm.md).
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from typing import Any, NoReturn

import pkcs11
from pkcs11 import MGF, Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass

from sceau.errors import ConfigError, IntegrityFailure, KeystoreUnavailable
from sceau.keystore.base import (
    ALG_EDDSA,
    MASTER_KEY_LEN,
    KeyPurpose,
    Keystore,
    KeystoreSettings,
    SigningKeyInfo,
    derivation_input,
)
from sceau.keystore.file import JWE_FILE, JweFileKeys, JweKeyFile, ensure_private_dir
from sceau.keystore.pkcs11.objects import (
    DKE_PRIVATE_POLICY,
    SECRET_TEMPLATE,
    Inventory,
    best_alg,
    create_tombstone,
    dke_label,
    empty_token,
    generate_pair,
    generate_secret,
    import_secret,
    master_label,
    scan,
)
from sceau.keystore.pkcs11.pool import Slot, TokenPool

__all__ = ["Pkcs11Keystore", "oaep_sha256_decode"]


class _ObjectMissing(Exception):
    """An object the inventory lists is not in the token (retired elsewhere, or token lost)."""


class Pkcs11Keystore(JweFileKeys, Keystore):
    """Keys in a PKCS#11 token (SoftHSM2 in tests, a network HSM in production)."""

    backend = "pkcs11"
    # How long another node's rotation may go unseen here (the inventory is re-read after it).
    inventory_ttl = 10.0

    def __init__(self, settings: KeystoreSettings) -> None:
        self._settings = settings
        ensure_private_dir(settings.path)
        self._jwe = JweKeyFile.load(
            settings.path / JWE_FILE, settings.passphrase(), settings.passphrase_env
        )
        self._pool = TokenPool(settings)
        self._inventory_lock = threading.Lock()
        self._inv: Inventory | None = None
        try:
            inv = self._pool.run(scan)
            if not inv.masters or not inv.seals or not all(inv.signers.values()):
                raise KeystoreUnavailable(
                    f"token {settings.pkcs11_token!r} holds no complete Sceau keystore "
                    "(run `sceau init`)"
                )
            self._inv = inv
        except BaseException:
            self._pool.close()
            raise

    # --- set-up -----------------------------------------------------------------------

    @staticmethod
    def initialize(settings: KeystoreSettings) -> None:
        """Create the token objects and jwe.json; refuse if either exists."""
        with empty_token(settings) as pool:
            alg = settings.signing_alg or best_alg(pool.mechanisms())

            def create(session: Any) -> None:
                generate_secret(session, master_label(1))
                generate_secret(session, "sceau-seal-v1")
                for purpose in KeyPurpose:
                    generate_pair(session, f"sceau-{purpose.value}-v1", alg)

            pool.run_rw(create)
        JweKeyFile.create(settings.path / JWE_FILE, settings.passphrase())

    # --- inventory ----------------------------------------------------------------------

    def _inventory(self, refresh: bool = False) -> Inventory:
        inv = self._inv
        if refresh or inv is None or time.monotonic() - inv.loaded_at > self.inventory_ttl:
            with self._inventory_lock:
                inv = self._pool.run(scan)
                if not inv.seals:
                    self._token_lost("the Sceau keystore")
                self._inv = inv
        return inv

    def _token_lost(self, what: str) -> NoReturn:
        # Our objects vanished while the token still answers (SoftHSM2 with its store gone,
        # an HSM partition reset): fail closed now, rebuild from scratch on the next call.
        self._pool.invalidate()
        self._inv = None
        raise KeystoreUnavailable(f"{what} missing from the PKCS#11 token")

    def _secret_sign(self, label: str, data: bytes) -> bytes:
        def action(slot: Slot) -> bytes:
            key = slot.key(ObjectClass.SECRET_KEY, label)
            if key is None:
                raise _ObjectMissing(label)
            return bytes(key.sign(data, mechanism=Mechanism.SHA256_HMAC))

        return self._pool.run(action)

    # --- master keys ------------------------------------------------------------------

    def master_versions(self) -> list[int]:
        return sorted(self._inventory().masters)

    def derive(self, master_version: int, key_id: bytes, seed: bytes) -> bytes:
        message = derivation_input(key_id, seed)
        if master_version not in self._inventory().masters:
            # Maybe another node rotated a moment ago: look again before refusing.
            if master_version not in self._inventory(refresh=True).masters:
                raise IntegrityFailure("unknown master version")
        try:
            return self._secret_sign(master_label(master_version), message)
        except _ObjectMissing:
            # Retired by another node since our last look, or the token lost its objects.
            if master_version not in self._inventory(refresh=True).masters:
                raise IntegrityFailure("unknown master version") from None
            self._token_lost("a master key")

    def rotate_master(self) -> int:
        def create(session: Any) -> int:
            inv = scan(Slot(session, 0))
            version = max(inv.masters | inv.retired) + 1
            generate_secret(session, master_label(version))
            return version

        version = self._pool.run_rw(create)
        self._inventory(refresh=True)
        return version

    def retire_master(self, version: int) -> None:
        def destroy(session: Any) -> None:
            inv = scan(Slot(session, 0))
            if version not in inv.masters:
                raise ConfigError(f"master version {version} is not a usable version")
            if version == max(inv.masters):
                raise ConfigError("the current master version cannot be retired; rotate first")
            # Tombstone first: if the destroy below fails, the version is still never reused.
            create_tombstone(session, version)
            for obj in list(session.get_objects({
                Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.LABEL: master_label(version)
            })):
                obj.destroy()

        self._pool.run_rw(destroy)
        self._inventory(refresh=True)

    def import_master(self, version: int, raw: bytes) -> None:
        if len(raw) != MASTER_KEY_LEN:
            raise ValueError("a master key is 32 bytes")
        if version < 1:
            raise ValueError("master versions start at 1")

        def create(session: Any) -> None:
            inv = scan(Slot(session, 0))
            if version in inv.masters or version in inv.retired:
                raise ConfigError(f"master version {version} already exists or was retired")
            import_secret(session, master_label(version), bytes(raw))

        self._pool.run_rw(create)
        self._inventory(refresh=True)

    # --- seal -------------------------------------------------------------------------

    def seal(self, payload: bytes) -> bytes:
        version = max(self._inventory().seals)
        try:
            return self._secret_sign(f"sceau-seal-v{version}", bytes(payload))
        except _ObjectMissing:
            self._token_lost("the seal key")

    # --- signing ----------------------------------------------------------------------

    def signing_keys(self, purpose: KeyPurpose) -> list[SigningKeyInfo]:
        return list(self._inventory().signers[KeyPurpose(purpose)])

    def sign(self, purpose: KeyPurpose, data: bytes) -> tuple[SigningKeyInfo, bytes]:
        info = self.signing_key(purpose)
        label = f"sceau-{info.purpose.value}-v{info.version}"

        def action(slot: Slot) -> bytes:
            key = slot.key(ObjectClass.PRIVATE_KEY, label)
            if key is None:
                raise _ObjectMissing(label)
            if info.alg == ALG_EDDSA:
                return bytes(key.sign(bytes(data), mechanism=Mechanism.EDDSA))
            # CKM_ECDSA signs a digest we compute; it returns r || s, the JOSE form already.
            digest = hashlib.sha256(data).digest()
            return bytes(key.sign(digest, mechanism=Mechanism.ECDSA))

        try:
            signature = self._pool.run(action)
        except _ObjectMissing:
            self._token_lost("a signing key")
        if len(signature) != 64:
            raise KeystoreUnavailable("token returned a signature of unexpected length")
        return info, signature

    def rotate_signing(self, purpose: KeyPurpose) -> SigningKeyInfo:
        purpose = KeyPurpose(purpose)
        current = self.signing_key(purpose)
        alg = self._settings.signing_alg or current.alg

        def create(session: Any) -> None:
            inv = scan(Slot(session, 0))
            version = max(i.version for i in inv.signers[purpose]) + 1
            generate_pair(session, f"sceau-{purpose.value}-v{version}", alg)

        self._pool.run_rw(create)
        self._inventory(refresh=True)
        return self.signing_key(purpose)

    # --- DKE key pairs (RSA-2048, decrypt only, sensitive and non-extractable) ----------

    def create_dke_key(self, label: str) -> tuple[int, int]:
        object_label = dke_label(label)

        def create(session: Any) -> tuple[int, int]:
            if list(session.get_objects({Attribute.LABEL: object_label})):
                raise ConfigError(f"DKE key {label} already exists")
            public, _private = session.generate_keypair(
                KeyType.RSA, 2048, label=object_label, id=object_label.encode("ascii"),
                store=True,
                capabilities=MechanismFlag.ENCRYPT | MechanismFlag.DECRYPT,
                public_template={Attribute.TOKEN: True, Attribute.PRIVATE: False,
                                 Attribute.ENCRYPT: True, Attribute.VERIFY: False,
                                 Attribute.WRAP: False, Attribute.DERIVE: False},
                private_template={Attribute.TOKEN: True, **DKE_PRIVATE_POLICY},
            )
            n = int.from_bytes(bytes(public[Attribute.MODULUS]), "big")
            e = int.from_bytes(bytes(public[Attribute.PUBLIC_EXPONENT]), "big")
            return n, e

        return self._pool.run_rw(create)

    def dke_decrypt(self, label: str, ciphertext: bytes) -> bytes:
        object_label = dke_label(label)

        def action(slot: Slot) -> bytes | None:
            key = slot.key(ObjectClass.PRIVATE_KEY, object_label)
            if key is None:
                return None
            try:
                try:
                    return bytes(key.decrypt(
                        bytes(ciphertext), mechanism=Mechanism.RSA_PKCS_OAEP,
                        mechanism_param=(Mechanism.SHA256, MGF.SHA256, None)))
                except (pkcs11.exceptions.ArgumentsBad,
                        pkcs11.exceptions.MechanismParamInvalid):
                    # Tokens that do OAEP with SHA-1 only (SoftHSM2): the RSA operation
                    # stays in the token (CKM_RSA_X_509), the OAEP decoding is done here.
                    raw = bytes(key.decrypt(bytes(ciphertext), mechanism=Mechanism.RSA_X_509))
                    return oaep_sha256_decode(raw, (key.key_length + 7) // 8)
            except (pkcs11.exceptions.EncryptedDataInvalid,
                    pkcs11.exceptions.EncryptedDataLenRange,
                    pkcs11.exceptions.DataInvalid, pkcs11.exceptions.DataLenRange):
                raise IntegrityFailure("decryption failed") from None

        found = self._pool.run(action)
        if found is None:
            # Made a moment ago by another process (the CLI): look again once.
            self._pool.run(lambda slot: slot.keys.clear())
            found = self._pool.run(action)
        if found is None:
            raise IntegrityFailure("unknown DKE key")
        return found

    def destroy_dke_key(self, label: str) -> None:
        object_label = dke_label(label)

        def destroy(session: Any) -> None:
            for obj in list(session.get_objects({Attribute.LABEL: object_label})):
                obj.destroy()

        self._pool.run_rw(destroy)
        self._pool.run(lambda slot: slot.keys.clear())

    # --- health -------------------------------------------------------------------------

    def hmac_with_test_key(self, key: bytes, data: bytes) -> bytes:
        def action(slot: Slot) -> bytes:
            # A session object (CKA_TOKEN false): gone when the session closes, and destroyed
            # right away anyway. Created non-extractable like the real keys.
            test_key = slot.session.create_object({
                Attribute.CLASS: ObjectClass.SECRET_KEY,
                Attribute.KEY_TYPE: KeyType.GENERIC_SECRET,
                Attribute.VALUE: bytes(key),
                Attribute.LABEL: "sceau-selftest",
                **SECRET_TEMPLATE,
                Attribute.TOKEN: False,
                Attribute.MODIFIABLE: True,
            })
            try:
                return bytes(test_key.sign(bytes(data), mechanism=Mechanism.SHA256_HMAC))
            finally:
                test_key.destroy()

        return self._pool.run(action)

    def check_health(self) -> None:
        self.seal(b"sceau/health")

    def status(self) -> list[dict[str, Any]]:
        inv = self._inventory(refresh=True)
        return self.status_rows(masters=inv.masters, retired=inv.retired, seals=inv.seals,
                                signers=inv.signers)

    def close(self) -> None:
        self._pool.close()


# --- RSA-OAEP decoding for tokens without OAEP-SHA-256 ---------------------------------


def _mgf1_sha256(seed: bytes, length: int) -> bytes:
    out = b""
    counter = 0
    while len(out) < length:
        out += hashlib.sha256(seed + counter.to_bytes(4, "big")).digest()
        counter += 1
    return out[:length]


def oaep_sha256_decode(raw: bytes, k: int) -> bytes:
    """EME-OAEP decoding (RFC 8017 §7.1.2, SHA-256, MGF1-SHA-256, empty label).

    Every failure is the same :class:`IntegrityFailure`, decided after all checks are
    computed, so the answer tells nothing about which part was wrong.
    """
    h = 32
    em = bytes(raw).rjust(k, b"\0")
    if len(em) != k or k < 2 * h + 2:
        raise IntegrityFailure("decryption failed")
    y, masked_seed, masked_db = em[0], em[1:1 + h], em[1 + h:]
    seed = bytes(a ^ b for a, b in zip(masked_seed, _mgf1_sha256(masked_db, h), strict=True))
    db = bytes(a ^ b for a, b in zip(masked_db, _mgf1_sha256(seed, k - h - 1), strict=True))
    good = hmac.compare_digest(db[:h], hashlib.sha256(b"").digest()) and y == 0
    rest = db[h:]
    index = -1
    for position, byte in enumerate(rest):
        if index < 0 and byte == 1:
            index = position
        elif index < 0 and byte != 0:
            good = False
    if not good or index < 0:
        raise IntegrityFailure("decryption failed")
    return rest[index + 1:]

