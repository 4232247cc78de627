"""The keystore interface: the HSM boundary (SPEC §1, §5).

Master keys and the seal key never leave a keystore: callers hand in the derivation input
and get the 32-byte data key back, or hand in a payload and get its seal. Signing keys sign
inside the keystore too; only their public halves come out (JWKS). The one exception is the
service's inbound-JWE keys (EC P-256 and RSA), software keys for every backend (see
docs/hsm.md).
"""

from __future__ import annotations

import hmac
import os
from abc import ABC, abstractmethod
from collections.abc import Collection, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from cryptography.exceptions import InvalidSignature

from sceau.core import jwk
from sceau.core.envelope import KEY_ID_LEN
from sceau.core.rowseal import SealedRow, payload_of
from sceau.errors import ConfigError, IntegrityFailure, InvalidRequest
from sceau.vocab import SigAlg

__all__ = [
    "ALG_ES256",
    "ALG_EDDSA",
    "DK_LABEL",
    "SEED_LEN",
    "Keystore",
    "KeyPurpose",
    "KeystoreSettings",
    "SigningKeyInfo",
    "derivation_input",
    "verify_signature",
]

ALG_EDDSA = SigAlg.EDDSA
ALG_ES256 = SigAlg.ES256
SIGNING_ALGS = jwk.SERVICE_SIGNING_ALGS

# Domain-separation prefix of the data-key derivation (SPEC §5).
DK_LABEL = b"sceau/dk/v1"
SEED_LEN = 32
MASTER_KEY_LEN = 32
SEAL_KEY_LEN = 32

Row = TypeVar("Row", bound=SealedRow)


class KeyPurpose(StrEnum):
    """What a signing key is for; each purpose has its own versioned key."""

    RESPONSE = "response"
    AUDIT = "audit"


@dataclass(frozen=True, slots=True)
class SigningKeyInfo:
    """Public description of one signing key version."""

    kid: str
    alg: str  # "EdDSA" (Ed25519) or "ES256" (P-256) when the token lacks EdDSA
    purpose: KeyPurpose
    version: int
    public_jwk: Mapping[str, Any]  # includes kid, alg and use "sig"


@dataclass(frozen=True)
class KeystoreSettings:
    """Where the keystore lives and how to reach it.

    ``path`` may be given positionally; every other setting is keyword-only so that
    ``KeystoreSettings("pkcs11", path)`` is a loud error rather than a path named "pkcs11".
    Secrets (passphrase, PIN) are never settings themselves: only the name of the environment
    variable or file that holds them.
    """

    path: Path  # the keystore dir (data_dir / "keystore")
    _: KW_ONLY
    backend: str = "file"  # "file" | "pkcs11"
    passphrase_env: str | None = None  # env var holding a passphrase for the files (optional)
    pkcs11_module: str | None = None
    pkcs11_token: str | None = None
    pin_env: str | None = "SCEAU_PKCS11_PIN"
    pin_file: Path | None = None
    pool_size: int = 4
    # None: Ed25519 where the backend can, else ES256. Set "ES256" to force P-256 signing keys
    # (a token policy that forbids EdDSA, or to exercise that path in tests).
    signing_alg: str | None = None

    def __post_init__(self) -> None:
        # Frozen dataclass: normalise str paths once, here, instead of at every use.
        object.__setattr__(self, "path", Path(self.path))
        # Configuration layers spell "unset" as an empty string; Path("") would be ".".
        raw_pin_file: object = self.pin_file
        pin_file = None if raw_pin_file in (None, "") else Path(str(raw_pin_file))
        object.__setattr__(self, "pin_file", pin_file)
        if self.backend not in ("file", "pkcs11"):
            raise ConfigError(f"keystore backend must be 'file' or 'pkcs11', not {self.backend!r}")
        if self.backend == "pkcs11" and not (self.pkcs11_module and self.pkcs11_token):
            raise ConfigError("the pkcs11 keystore needs keystore.pkcs11_module and pkcs11_token")
        if self.signing_alg is not None and self.signing_alg not in SIGNING_ALGS:
            raise ConfigError(
                f"keystore signing_alg must be one of {', '.join(SIGNING_ALGS)}"
            )
        if self.pool_size < 1:
            raise ConfigError("keystore pool_size must be at least 1")

    def passphrase(self) -> bytes | None:
        """The file passphrase from the environment, or None when not configured."""
        if not self.passphrase_env:
            return None
        value = os.environ.get(self.passphrase_env)
        if value is None or value == "":
            return None
        return value.encode("utf-8")


def derivation_input(key_id: bytes, seed: bytes) -> bytes:
    """The HMAC message of SPEC §5: ``"sceau/dk/v1" || key_id || seed``.

    Lengths are fixed (16 and 32 bytes) so that the concatenation is unambiguous.
    """
    if len(key_id) != KEY_ID_LEN:
        raise ValueError("key_id must be 16 bytes")
    if len(seed) != SEED_LEN:
        raise ValueError("seed must be 32 bytes")
    return DK_LABEL + bytes(key_id) + bytes(seed)


def verify_signature(public_jwk: Mapping[str, Any], data: bytes, signature: bytes) -> None:
    """Verify a raw keystore signature against a public signing JWK; raise on failure.

    ``EdDSA``: Ed25519 over ``data``. ``ES256``: ECDSA P-256 over SHA-256(``data``), raw
    ``r || s``. Raises :class:`IntegrityFailure` for any mismatch; returns None otherwise.
    """
    alg = public_jwk.get("alg")
    if alg not in SIGNING_ALGS:
        raise IntegrityFailure("unsupported signing key")
    try:
        jwk.jws_verify(alg, jwk.public_key_from_jwk(public_jwk), data, signature)
    except (InvalidSignature, InvalidRequest):
        raise IntegrityFailure("signature does not verify") from None


def constant_time_check(expected: bytes, given: bytes) -> None:
    """Raise :class:`IntegrityFailure` unless the two MACs are equal (constant time)."""
    if not hmac.compare_digest(expected, given):
        raise IntegrityFailure("seal does not verify")


class Keystore(ABC):
    """One keystore backend. Thread-safe: one instance serves every request of a process.

    Versions: master keys and signing keys are numbered from 1; the current one is the
    highest usable version. Retired master versions are gone for good (crypto-shredding of
    every key that used them); their version numbers are never reused.
    """

    backend: ClassVar[str]

    # --- master keys and derivation -----------------------------------------------------

    def current_master_version(self) -> int:
        """The master version new keys use: the highest usable one."""
        return self.master_versions()[-1]

    @abstractmethod
    def master_versions(self) -> list[int]:
        """All usable (not retired) master versions, ascending."""

    @abstractmethod
    def derive(self, master_version: int, key_id: bytes, seed: bytes) -> bytes:
        """The 32-byte data key ``HMAC-SHA256(master[v], "sceau/dk/v1" || key_id || seed)``.

        Computed inside the keystore. An unknown or retired version raises
        :class:`IntegrityFailure` ("unknown master version").
        """

    @abstractmethod
    def rotate_master(self) -> int:
        """Create master version N+1 and make it current; return it."""

    @abstractmethod
    def retire_master(self, version: int) -> None:
        """Destroy a master version. The caller has checked that no live key uses it.

        The current version cannot be retired (:class:`ConfigError`).
        """

    @abstractmethod
    def import_master(self, version: int, raw: bytes) -> None:
        """Install given master key bytes as ``version`` (migration and tests only).

        Refuses a version that exists or was retired. On PKCS#11 the object is created
        sensitive and non-extractable; it never comes out again.
        """

    # --- seals ------------------------------------------------------------------------

    @abstractmethod
    def seal(self, payload: bytes) -> bytes:
        """HMAC-SHA256 of ``payload`` with the seal key (distinct from the master keys)."""

    def verify_seal(self, payload: bytes, mac: bytes) -> None:
        """Check a seal in constant time; raise :class:`IntegrityFailure` if it is wrong."""
        constant_time_check(self.seal(payload), bytes(mac))

    def seal_row(self, row: Row) -> Row:
        """``row`` (a frozen dataclass, ``sceau.core.rowseal``) with its seal computed."""
        sealed: Row = replace(row, seal=self.seal(payload_of(row)))  # type: ignore[type-var]
        return sealed

    def verify_row(self, row: Row) -> Row:
        """``row`` once its seal verified; :class:`IntegrityFailure` names the row otherwise.

        A row without a seal (written by SQL alone, or not yet sealed after an upgrade)
        never verifies.
        """
        expected = self.seal(payload_of(row))
        if row.seal is None or not hmac.compare_digest(expected, bytes(row.seal)):
            raise IntegrityFailure(
                f"the {row.seal_kind()} row {row.seal_id()!r} does not match its seal"
            )
        return row

    # --- signing ----------------------------------------------------------------------

    @abstractmethod
    def signing_keys(self, purpose: KeyPurpose) -> list[SigningKeyInfo]:
        """Every version of the signing key for ``purpose``, oldest first."""

    def signing_key(self, purpose: KeyPurpose) -> SigningKeyInfo:
        """The current signing key for ``purpose``."""
        return self.signing_keys(purpose)[-1]

    @abstractmethod
    def sign(self, purpose: KeyPurpose, data: bytes) -> tuple[SigningKeyInfo, bytes]:
        """Sign ``data`` with the current key for ``purpose``: raw 64-byte signature.

        Ed25519 signs ``data``; ECDSA P-256 signs SHA-256(``data``) and returns ``r || s``.
        """

    @abstractmethod
    def rotate_signing(self, purpose: KeyPurpose) -> SigningKeyInfo:
        """Make a new current signing key; older versions stay in the JWKS."""

    def audit_kids(self) -> list[str]:
        """Every audit key id, newest first."""
        return [info.kid for info in reversed(self.signing_keys(KeyPurpose.AUDIT))]

    # --- inbound JWE keys (software for every backend) ----------------------------------

    @abstractmethod
    def jwe_private_jwk(self) -> Mapping[str, Any]:
        """The private RSA JWK that decrypts inbound ``RSA-OAEP-256`` JWE (docs/hsm.md)."""

    @abstractmethod
    def jwe_public_jwk(self) -> Mapping[str, Any]:
        """The public half of :meth:`jwe_private_jwk`, with kid, use "enc" and alg."""

    def jwe_kid(self) -> str:
        """The RSA encryption key id (clients that pinned it keep working)."""
        return str(self.jwe_public_jwk()["kid"])

    @abstractmethod
    def jwe_private_jwks(self) -> list[Mapping[str, Any]]:
        """Every private key that opens inbound JWE, the preferred one first.

        The preferred key is EC P-256 (``ECDH-ES+A256KW``): its private-key operation costs
        about a quarter of RSA-3072's, and it runs before the caller is identified.
        """

    @abstractmethod
    def jwe_public_jwks(self) -> list[Mapping[str, Any]]:
        """The public halves of :meth:`jwe_private_jwks`, in the same order."""

    def encryption_kid(self) -> str:
        """The key id discovery names for inbound JWE (``encryption_kid``): the preferred."""
        return str(self.jwe_public_jwks()[0]["kid"])

    def public_jwks(self) -> dict[str, Any]:
        """The service JWKS: every signing key version (retired ones too), the JWE keys.

        The RSA JWE key stays where it always was, first of the ``enc`` keys, for clients
        that take the first one; the others follow. Clients should use ``encryption_kid``.
        """
        keys: list[dict[str, Any]] = []
        for purpose in KeyPurpose:
            keys.extend(dict(info.public_jwk) for info in self.signing_keys(purpose))
        rsa_kid = self.jwe_kid()
        keys.append(dict(self.jwe_public_jwk()))
        keys.extend(dict(k) for k in self.jwe_public_jwks() if k["kid"] != rsa_kid)
        return {"keys": keys}

    def status_rows(
        self,
        *,
        masters: Collection[int],
        retired: Collection[int],
        seals: Collection[int],
        signers: Mapping[KeyPurpose, Sequence[SigningKeyInfo]],
    ) -> list[dict[str, Any]]:
        """The :meth:`status` rows of these key versions and of the JWE keys.

        ``masters`` are the usable master versions (the newest is current), ``retired`` the
        destroyed ones; each purpose's signers oldest first (the last is current).
        """
        current = max(masters)
        rows: list[dict[str, Any]] = [
            {"label": f"sceau-master-v{version}", "kind": "master", "version": version,
             "kid": None, "current": version == current, "retired": version in retired}
            for version in sorted(set(masters) | set(retired))
        ]
        rows.extend(
            {"label": f"sceau-seal-v{version}", "kind": "seal", "version": version,
             "kid": None, "current": version == max(seals), "retired": False}
            for version in sorted(seals)
        )
        for purpose, infos in signers.items():
            rows.extend(
                {"label": f"sceau-{purpose.value}-v{info.version}", "kind": purpose.value,
                 "version": info.version, "kid": info.kid, "alg": info.alg,
                 "current": info is infos[-1], "retired": False}
                for info in infos
            )
        rows.extend(self.jwe_status_rows())
        return rows

    def jwe_status_rows(self) -> list[dict[str, Any]]:
        """The JWE keys as :meth:`status` rows (public facts only)."""
        rsa_kid = self.jwe_kid()
        return [
            {"label": "jwe" if k["kid"] == rsa_kid else f"jwe-{str(k['kty']).lower()}",
             "kind": "jwe", "version": 1, "kid": k["kid"], "alg": k["alg"], "current": True,
             "retired": False}
            for k in sorted(self.jwe_public_jwks(), key=lambda k: k["kid"] != rsa_kid)
        ]

    # --- DKE key pairs (SPEC §11): RSA-2048, decrypt-only, private half never leaves --------

    def create_dke_key(self, label: str) -> tuple[int, int]:
        """Make an RSA-2048 key pair named ``label``; return its public ``(n, e)``.

        The private half is for RSA-OAEP-256 decryption only; on PKCS#11 it is created
        sensitive and non-extractable in the token.
        """
        raise NotImplementedError(f"the {self.backend} keystore has no DKE keys")

    def dke_decrypt(self, label: str, ciphertext: bytes) -> bytes:
        """RSA-OAEP (SHA-256, MGF1-SHA-256, no label) with the DKE key ``label``.

        :class:`IntegrityFailure` when the ciphertext does not decrypt; the same error for
        every cause (no padding oracle through the message).
        """
        raise NotImplementedError(f"the {self.backend} keystore has no DKE keys")

    def destroy_dke_key(self, label: str) -> None:
        """Destroy the DKE key pair ``label`` for good (retirement crypto-shreds)."""
        raise NotImplementedError(f"the {self.backend} keystore has no DKE keys")

    # --- health ---------------------------------------------------------------------------

    def self_test(self, *, forced: str = "") -> None:
        """Known-answer tests at start-up; :class:`KeystoreUnavailable` names the failure.

        ``forced`` names a test to fail on purpose (``keystore.selftest_fail``, tests only).
        """
        from sceau.keystore.selftest import run_self_tests

        run_self_tests(self, forced=forced)

    @abstractmethod
    def hmac_with_test_key(self, key: bytes, data: bytes) -> bytes:
        """HMAC-SHA256 with a throw-away *test* key, computed where the backend computes.

        Only for the self-test: PKCS#11 imports ``key`` as a session object and signs in the
        token, so the token's HMAC is checked against a known answer.
        """

    @abstractmethod
    def check_health(self) -> None:
        """Cheap liveness probe; :class:`KeystoreUnavailable` when the backend is gone."""

    @abstractmethod
    def status(self) -> list[dict[str, Any]]:
        """One entry per object: label, kind, version, kid, current, retired. No secrets."""

    @abstractmethod
    def close(self) -> None:
        """Release sessions and wipe in-memory secrets where the backend holds any."""

    def __enter__(self) -> Keystore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
