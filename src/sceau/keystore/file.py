"""The ``file`` keystore: key material in files under the keystore dir (SPEC §1).

Layout (dir 0700, files 0600)::

    keystore.json   master keys (versioned), seal key, signing keys (PKCS#8)
    jwe.json        the service's inbound-JWE keys, EC P-256 and RSA-3072 (also used by the
                    pkcs11 backend)

Each file is a small JSON envelope, written atomically (temporary file, fsync, rename, fsync
of the directory). With a passphrase (``passphrase_env`` names an environment variable that
is set) the secret part is encrypted: scrypt derives an AES-256-GCM key, the scrypt
parameters travel in the file and are authenticated as associated data.

The file backend protects keys only as well as the host's file permissions and, when set,
the passphrase do. It is the embedded default; docs/hsm.md explains when to use a token.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import secrets
import stat
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric import padding as asym_padding
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from jwcrypto import jwk as jwcrypto_jwk

from sceau.core.b64 import b64u_decode, b64u_encode
from sceau.core.jwk import jwk_thumbprint, jws_sign, public_jwk
from sceau.errors import ConfigError, IntegrityFailure, KeystoreUnavailable
from sceau.keystore.base import (
    ALG_EDDSA,
    ALG_ES256,
    MASTER_KEY_LEN,
    SEAL_KEY_LEN,
    KeyPurpose,
    Keystore,
    KeystoreSettings,
    SigningKeyInfo,
    derivation_input,
)

__all__ = [
    "FileKeystore",
    "JweFileKeys",
    "JweKeyFile",
    "derive_ec_jwe_jwk",
    "read_secret_file",
    "write_secret_file",
]

log = logging.getLogger("sceau.keystore")

KEYSTORE_FILE = "keystore.json"
JWE_FILE = "jwe.json"
_FORMAT = "sceau-keystore-file"
_FORMAT_VERSION = 1
# How stale the in-memory copy may be before the file is stat()ed again (see _current).
_RECHECK_S = 0.5
# scrypt cost: 2^15 x 8 x 128 bytes = 32 MiB and ~0.1 s per open; recorded in the file so
# that it can be raised later without breaking existing files.
_SCRYPT_N = 2**15
_SCRYPT_R = 8
_SCRYPT_P = 1
# Refuse absurd parameters from a (tampered) file before spending memory on them.
_SCRYPT_MAX_N = 2**20
JWE_ALG = "RSA-OAEP-256"
JWE_EC_ALG = "ECDH-ES+A256KW"
JWE_RSA_BITS = 3072
# Order of P-256 (FIPS 186-4 D.1.2.3), for a private scalar derived from HKDF output.
_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
# Purpose label of the derivation of derive_ec_jwe_jwk: never used for anything else.
_EC_FROM_RSA_INFO = b"sceau/jwe-ec-p256-from-rsa/v1"
DKE_RSA_BITS = 2048  # what Office expects of a DKE key (SPEC §11)


# --- secret files ----------------------------------------------------------------------------


def ensure_private_dir(path: Path) -> None:
    """Create the keystore dir 0700, or check that an existing one is not group/other-open."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise KeystoreUnavailable(
            f"keystore dir {path} has mode {mode:o}; it must be 0700 (chmod 700 it)"
        )


def _check_private_file(path: Path) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise KeystoreUnavailable(
            f"keystore file {path} has mode {mode:o}; it must be 0600 (chmod 600 it)"
        )


def _header_aad(header: Mapping[str, Any]) -> bytes:
    return json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")


def _scrypt_key(passphrase: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(passphrase)


def write_secret_file(path: Path, data: Mapping[str, Any], passphrase: bytes | None) -> None:
    """Write ``data`` as a keystore file: 0600, atomic, encrypted when a passphrase is given."""
    header: dict[str, Any] = {"format": _FORMAT, "v": _FORMAT_VERSION, "enc": None}
    body = json.dumps(data, sort_keys=True, separators=(",", ":")).encode("utf-8")
    doc: dict[str, Any]
    if passphrase is None:
        doc = {**header, "data": data}
    else:
        salt = secrets.token_bytes(16)
        nonce = secrets.token_bytes(12)
        header["enc"] = {
            "kdf": "scrypt",
            "n": _SCRYPT_N,
            "r": _SCRYPT_R,
            "p": _SCRYPT_P,
            "salt": b64u_encode(salt),
            "aead": "A256GCM",
            "nonce": b64u_encode(nonce),
        }
        key = _scrypt_key(passphrase, salt, _SCRYPT_N, _SCRYPT_R, _SCRYPT_P)
        ciphertext = AESGCM(key).encrypt(nonce, body, _header_aad(header))
        doc = {**header, "ciphertext": b64u_encode(ciphertext)}
    text = json.dumps(doc, sort_keys=True, indent=1).encode("utf-8")
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    # The rename is durable only once the directory entry is on disk.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_secret_file(path: Path, passphrase: bytes | None, passphrase_env: str | None) -> Any:
    """Read a keystore file written by :func:`write_secret_file`; return its data.

    Raises :class:`KeystoreUnavailable` for a missing, open-permission, corrupt or
    wrongly-unlocked file, and :class:`ConfigError` when a passphrase is configured for a
    file that has none (silently ignoring it would leave the user believing it protects).
    """
    try:
        _check_private_file(path)
        doc = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise KeystoreUnavailable(
            f"keystore file {path} not found (run `sceau init` first)"
        ) from None
    except (OSError, ValueError) as exc:
        raise KeystoreUnavailable(f"keystore file {path} is unreadable: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != _FORMAT:
        raise KeystoreUnavailable(f"{path} is not a Sceau keystore file")
    if doc.get("v") != _FORMAT_VERSION:
        raise KeystoreUnavailable(f"{path}: unsupported keystore file version {doc.get('v')!r}")
    enc = doc.get("enc")
    if enc is None:
        if passphrase is not None:
            raise ConfigError(
                f"{path} is not passphrase-protected but ${passphrase_env} is set; "
                "unset it, or re-encrypt the keystore (see docs/hsm.md)"
            )
        return doc.get("data")
    if passphrase is None:
        env = passphrase_env or "the passphrase variable"
        raise KeystoreUnavailable(
            f"keystore file {path} is passphrase-protected: set {env} "
            "(and keystore.passphrase_env)"
        )
    try:
        if enc.get("kdf") != "scrypt" or enc.get("aead") != "A256GCM":
            raise ValueError("unknown protection")
        n, r, p = int(enc["n"]), int(enc["r"]), int(enc["p"])
        if not (2 <= n <= _SCRYPT_MAX_N and 1 <= r <= 32 and 1 <= p <= 16):
            raise ValueError("scrypt parameters out of range")
        key = _scrypt_key(passphrase, b64u_decode(enc["salt"]), n, r, p)
        header = {"format": doc["format"], "v": doc["v"], "enc": enc}
        body = AESGCM(key).decrypt(
            b64u_decode(enc["nonce"]), b64u_decode(doc["ciphertext"]), _header_aad(header)
        )
        return json.loads(body)
    except InvalidTag:
        raise KeystoreUnavailable(
            f"cannot unlock keystore file {path}: wrong passphrase or corrupted file"
        ) from None
    except (KeyError, TypeError, ValueError, AttributeError):
        raise KeystoreUnavailable(f"keystore file {path} is corrupted") from None


# --- the inbound-JWE key ------------------------------------------------------------------


def generate_jwe_rsa_key() -> rsa.RSAPrivateKey:
    """A new RSA-3072 key for inbound JWE (a function of its own so tests can reuse one)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=JWE_RSA_BITS)


def _ec_jwe_jwk(key: ec.EllipticCurvePrivateKey) -> dict[str, Any]:
    """The private JWK of a P-256 inbound-JWE key, with kid (thumbprint), use and alg."""
    jwk: dict[str, Any] = public_jwk(key)
    jwk["kid"] = jwk_thumbprint(jwk)
    jwk["d"] = b64u_encode(key.private_numbers().private_value.to_bytes(32, "big"))
    jwk["use"] = "enc"
    jwk["alg"] = JWE_EC_ALG
    return jwk


def derive_ec_jwe_jwk(rsa_private_jwk: Mapping[str, Any]) -> dict[str, Any]:
    """The P-256 JWE key of a keystore made before it had one, derived from its RSA JWE key.

    A data dir from before the EC key is upgraded when it is opened, and every node of a
    cluster holds its own copy of ``jwe.json``: a random key would differ from node to node
    (a request encrypted to one node's key would fail on the others). Derived, the key is
    the same wherever the same RSA key is, with no coordination. The derivation is
    HKDF-SHA256 of the RSA private exponent with a purpose label; 48 bytes reduced into
    ``[1, n-1]`` (FIPS 186-4 B.4.1, bias below 2**-128). It adds no exposure: both keys live
    in the same file and protect the same thing. New keystores get a random EC key.
    """
    secret = b64u_decode(str(rsa_private_jwk["d"]))
    okm = HKDF(algorithm=hashes.SHA256(), length=48, salt=None, info=_EC_FROM_RSA_INFO).derive(
        secret
    )
    scalar = int.from_bytes(okm, "big") % (_P256_ORDER - 1) + 1
    return _ec_jwe_jwk(ec.derive_private_key(scalar, ec.SECP256R1()))


def _rsa_jwe_jwk(key: rsa.RSAPrivateKey) -> dict[str, Any]:
    jwk: dict[str, Any] = jwcrypto_jwk.JWK.from_pyca(key).export_private(as_dict=True)
    jwk.pop("kid", None)
    jwk["kid"] = jwk_thumbprint(jwk)
    jwk["use"] = "enc"
    jwk["alg"] = JWE_ALG
    return jwk


def _checked_ec_jwk(jwk: Any) -> dict[str, Any]:
    """``jwk`` if it is a whole P-256 JWE key whose public half matches its private one."""
    if not isinstance(jwk, dict) or (jwk.get("kty"), jwk.get("crv")) != ("EC", "P-256"):
        raise ValueError("not an EC P-256 key")
    key = ec.derive_private_key(int.from_bytes(b64u_decode(jwk["d"]), "big"), ec.SECP256R1())
    expected = _ec_jwe_jwk(key)
    if any(jwk.get(m) != expected[m] for m in ("x", "y", "kid", "use", "alg")):
        raise ValueError("EC JWE key does not match its own private value")
    return expected


class JweKeyFile:
    """The service's inbound-JWE keys, kept in ``jwe.json`` (0600) for every backend.

    Two keys: EC P-256 (``ECDH-ES+A256KW``), the one discovery names, and RSA-3072
    (``RSA-OAEP-256``), the original one, kept for clients that pinned it. The file holds
    ``{"jwk": <RSA>, "ec_jwk": <EC>}``; a file from before the EC key has only ``jwk`` and
    gets the EC key on its next :meth:`load` (see :func:`derive_ec_jwe_jwk`).

    jwcrypto decrypts inbound JWE in software, so the keys must be usable in process
    memory; see docs/hsm.md for why they, unlike the master keys, are not in the token.
    """

    def __init__(self, private_jwk: Mapping[str, Any], ec_private_jwk: Mapping[str, Any]) -> None:
        self._private = dict(private_jwk)
        self._public = {
            k: self._private[k] for k in ("kty", "n", "e", "kid", "use", "alg")
        }
        self._ec_private = dict(ec_private_jwk)
        self._ec_public = {
            k: self._ec_private[k] for k in ("kty", "crv", "x", "y", "kid", "use", "alg")
        }

    @staticmethod
    def create(path: Path, passphrase: bytes | None) -> JweKeyFile:
        """Generate new RSA-3072 and P-256 keys and write them to ``path``; never overwrite."""
        if path.exists():
            raise ConfigError(f"{path} already exists; refusing to overwrite a JWE key")
        rsa_jwk = _rsa_jwe_jwk(generate_jwe_rsa_key())
        ec_jwk = _ec_jwe_jwk(ec.generate_private_key(ec.SECP256R1()))
        keys = JweKeyFile(rsa_jwk, ec_jwk)
        write_secret_file(path, keys.document(), passphrase)
        return keys

    @staticmethod
    def load(path: Path, passphrase: bytes | None, passphrase_env: str | None) -> JweKeyFile:
        """Read ``path`` (see :func:`read_secret_file` for the errors).

        A file without the EC key gets the derived one, written back in place (atomically;
        if the file cannot be written, the derived key is used anyway and a warning logged:
        the next start derives the same key).
        """
        data = read_secret_file(path, passphrase, passphrase_env)
        try:
            rsa_jwk = dict(data["jwk"])
            stored = data.get("ec_jwk")
            ec_jwk = derive_ec_jwe_jwk(rsa_jwk) if stored is None else _checked_ec_jwk(stored)
        except (KeyError, TypeError, ValueError, AttributeError):
            raise KeystoreUnavailable(f"{path} holds no usable JWE key") from None
        keys = JweKeyFile(rsa_jwk, ec_jwk)
        if stored is None:
            try:
                write_secret_file(path, keys.document(), passphrase)
                log.info("added the EC P-256 JWE key to %s", path.name)
            except OSError as exc:
                log.warning("could not save the derived EC JWE key to %s (%s); using it "
                            "unsaved", path.name, exc.strerror)
        return keys

    def document(self) -> dict[str, Any]:
        """The file's content: both private keys (secret: written only by write_secret_file)."""
        return {"jwk": dict(self._private), "ec_jwk": dict(self._ec_private)}

    @property
    def private_jwk(self) -> Mapping[str, Any]:
        """The RSA private JWK (a copy each time: callers cannot alter the keystore's)."""
        return dict(self._private)

    @property
    def public_jwk(self) -> Mapping[str, Any]:
        """The RSA public JWK with kid, use and alg."""
        return dict(self._public)

    @property
    def private_jwks(self) -> list[Mapping[str, Any]]:
        """Both private JWKs, the preferred (EC) first; copies."""
        return [dict(self._ec_private), dict(self._private)]

    @property
    def public_jwks(self) -> list[Mapping[str, Any]]:
        """Both public JWKs, the preferred (EC) first; copies."""
        return [dict(self._ec_public), dict(self._public)]


# --- software signing keys ----------------------------------------------------------------


_SoftKey = Ed25519PrivateKey | ec.EllipticCurvePrivateKey


def _public_jwk(private: _SoftKey, alg: str) -> dict[str, Any]:
    jwk: dict[str, Any] = public_jwk(private)
    jwk["kid"] = jwk_thumbprint(jwk)
    jwk["use"] = "sig"
    jwk["alg"] = alg
    return jwk


class JweFileKeys:
    """The JWE accessors of a keystore whose inbound-JWE keys live in ``jwe.json`` (the file
    and the pkcs11 backends alike)."""

    _jwe: JweKeyFile

    def jwe_private_jwk(self) -> Mapping[str, Any]:
        return self._jwe.private_jwk

    def jwe_public_jwk(self) -> Mapping[str, Any]:
        return self._jwe.public_jwk

    def jwe_private_jwks(self) -> list[Mapping[str, Any]]:
        return self._jwe.private_jwks

    def jwe_public_jwks(self) -> list[Mapping[str, Any]]:
        return self._jwe.public_jwks


@dataclass(frozen=True, slots=True)
class _SoftSigner:
    info: SigningKeyInfo
    key: _SoftKey

    def sign(self, data: bytes) -> bytes:
        return jws_sign(self.info.alg, self.key, data)


def _new_signing_entry(version: int, alg: str) -> dict[str, Any]:
    key: _SoftKey
    if alg == ALG_EDDSA:
        key = Ed25519PrivateKey.generate()
    else:
        key = ec.generate_private_key(ec.SECP256R1())
    pkcs8 = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return {"version": version, "alg": alg, "pkcs8": b64u_encode(pkcs8)}


def _load_signer(purpose: KeyPurpose, entry: Mapping[str, Any]) -> _SoftSigner:
    key = serialization.load_der_private_key(b64u_decode(entry["pkcs8"]), password=None)
    alg = entry["alg"]
    if alg == ALG_EDDSA and isinstance(key, Ed25519PrivateKey):
        pass
    elif alg == ALG_ES256 and isinstance(key, ec.EllipticCurvePrivateKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise KeystoreUnavailable("ES256 signing key is not on P-256")
    else:
        raise KeystoreUnavailable("signing key does not match its algorithm")
    jwk = _public_jwk(key, alg)
    info = SigningKeyInfo(
        kid=jwk["kid"], alg=alg, purpose=purpose, version=int(entry["version"]), public_jwk=jwk
    )
    return _SoftSigner(info, key)


# --- the keystore -------------------------------------------------------------------------


@dataclass
class _State:
    """Everything loaded from keystore.json; secrets held in bytearrays so close() can wipe."""

    masters: dict[int, bytearray]
    retired: set[int]
    seal: bytearray
    signers: dict[KeyPurpose, list[_SoftSigner]]
    stamp: tuple[int, int, int]

    def wipe(self) -> None:
        for secret in (*self.masters.values(), self.seal):
            secret[:] = bytes(len(secret))


def _new_master_entry(version: int) -> dict[str, Any]:
    key = b64u_encode(secrets.token_bytes(MASTER_KEY_LEN))
    return {"version": version, "key": key, "retired": False}


def _initial_document(alg: str) -> dict[str, Any]:
    return {
        "masters": [_new_master_entry(1)],
        "seal": {"version": 1, "key": b64u_encode(secrets.token_bytes(SEAL_KEY_LEN))},
        "signing": {p.value: [_new_signing_entry(1, alg)] for p in KeyPurpose},
    }


class FileKeystore(JweFileKeys, Keystore):
    """Keys in ``keystore.json`` under the keystore dir (the embedded default)."""

    backend = "file"

    def __init__(self, settings: KeystoreSettings) -> None:
        self._settings = settings
        self._dir = settings.path
        self._file = self._dir / KEYSTORE_FILE
        self._passphrase = settings.passphrase()
        self._lock = threading.RLock()
        ensure_private_dir(self._dir)
        self._jwe = JweKeyFile.load(self._dir / JWE_FILE, self._passphrase, settings.passphrase_env)
        self._state: _State | None = self._load()
        self._checked_at = time.monotonic()

    # --- persistence ------------------------------------------------------------------

    @staticmethod
    def initialize(settings: KeystoreSettings) -> None:
        """Create a new file keystore; refuse if one exists."""
        ensure_private_dir(settings.path)
        target = settings.path / KEYSTORE_FILE
        if target.exists() or (settings.path / JWE_FILE).exists():
            raise ConfigError(f"keystore at {settings.path} is already initialized")
        passphrase = settings.passphrase()
        JweKeyFile.create(settings.path / JWE_FILE, passphrase)
        write_secret_file(target, _initial_document(settings.signing_alg or ALG_EDDSA), passphrase)

    def _stamp(self) -> tuple[int, int, int]:
        st = self._file.stat()
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _read_document(self) -> dict[str, Any]:
        doc = read_secret_file(self._file, self._passphrase, self._settings.passphrase_env)
        if not isinstance(doc, dict):
            raise KeystoreUnavailable(f"{self._file} is corrupted")
        return doc

    def _load(self) -> _State:
        try:
            stamp = self._stamp()
            doc = self._read_document()
            masters: dict[int, bytearray] = {}
            retired: set[int] = set()
            for entry in doc["masters"]:
                version = int(entry["version"])
                if entry.get("retired"):
                    retired.add(version)
                else:
                    masters[version] = bytearray(b64u_decode(entry["key"]))
            signers = {
                p: sorted(
                    (_load_signer(p, e) for e in doc["signing"][p.value]),
                    key=lambda s: s.info.version,
                )
                for p in KeyPurpose
            }
            seal = bytearray(b64u_decode(doc["seal"]["key"]))
        except FileNotFoundError:
            raise KeystoreUnavailable(f"keystore file {self._file} not found") from None
        except (KeyError, TypeError, ValueError):
            raise KeystoreUnavailable(f"keystore file {self._file} is corrupted") from None
        if not masters or any(len(k) != MASTER_KEY_LEN for k in masters.values()):
            raise KeystoreUnavailable(f"keystore file {self._file} has no usable master key")
        if len(seal) != SEAL_KEY_LEN or any(not s for s in signers.values()):
            raise KeystoreUnavailable(f"keystore file {self._file} is incomplete")
        return _State(masters, retired, seal, signers, stamp)

    def _current(self, *, force: bool = False) -> _State:
        """The loaded state, reloaded when another process (the CLI) rewrote the file."""
        with self._lock:
            if self._state is None:
                raise KeystoreUnavailable("keystore is closed")
            now = time.monotonic()
            if not force and now - self._checked_at < _RECHECK_S:
                # Every request calls the keystore several times; a rotation made by the CLI
                # is picked up within _RECHECK_S without a stat() per call.
                return self._state
            try:
                stamp = self._stamp()
            except OSError:
                raise KeystoreUnavailable(f"keystore file {self._file} is gone") from None
            if stamp != self._state.stamp:
                fresh = self._load()
                self._state.wipe()
                self._state = fresh
            self._checked_at = now
            return self._state

    def _mutate(self, change: Any) -> None:
        """Apply ``change(doc)`` to the file under the lock, then reload."""
        with self._lock:
            self._current()
            doc = self._read_document()
            change(doc)
            write_secret_file(self._file, doc, self._passphrase)
            fresh = self._load()
            if self._state is not None:
                self._state.wipe()
            self._state = fresh

    @staticmethod
    def read_material_for_migration(settings: KeystoreSettings) -> dict[str, Any]:
        """The raw keystore document, secrets included: only for the move to a token.

        The file backend keeps its keys in a file anyway; this reads that file so that
        :func:`sceau.keystore.pkcs11.migrate_file_to_pkcs11` can import them into a token.
        """
        doc = read_secret_file(
            settings.path / KEYSTORE_FILE, settings.passphrase(), settings.passphrase_env
        )
        if not isinstance(doc, dict):
            raise KeystoreUnavailable("keystore file is corrupted")
        return doc

    # --- master keys ------------------------------------------------------------------

    def master_versions(self) -> list[int]:
        return sorted(self._current().masters)

    def derive(self, master_version: int, key_id: bytes, seed: bytes) -> bytes:
        message = derivation_input(key_id, seed)
        master = self._current().masters.get(master_version)
        if master is None:  # perhaps created by another process since the last check
            master = self._current(force=True).masters.get(master_version)
        if master is None:
            raise IntegrityFailure("unknown master version")
        return hmac.new(master, message, sha256).digest()

    def rotate_master(self) -> int:
        new_version = 0

        def change(doc: dict[str, Any]) -> None:
            nonlocal new_version
            new_version = max(int(e["version"]) for e in doc["masters"]) + 1
            doc["masters"].append(_new_master_entry(new_version))

        self._mutate(change)
        return new_version

    def retire_master(self, version: int) -> None:
        def change(doc: dict[str, Any]) -> None:
            live = [e for e in doc["masters"] if not e.get("retired")]
            if version not in {int(e["version"]) for e in live}:
                raise ConfigError(f"master version {version} is not a usable version")
            if version == max(int(e["version"]) for e in live):
                raise ConfigError("the current master version cannot be retired; rotate first")
            for entry in doc["masters"]:
                if int(entry["version"]) == version:
                    entry["key"] = None
                    entry["retired"] = True

        self._mutate(change)

    def import_master(self, version: int, raw: bytes) -> None:
        if len(raw) != MASTER_KEY_LEN:
            raise ValueError("a master key is 32 bytes")
        if version < 1:
            raise ValueError("master versions start at 1")

        def change(doc: dict[str, Any]) -> None:
            if version in {int(e["version"]) for e in doc["masters"]}:
                raise ConfigError(f"master version {version} already exists or was retired")
            entry = {"version": version, "key": b64u_encode(bytes(raw)), "retired": False}
            doc["masters"].append(entry)
            doc["masters"].sort(key=lambda e: int(e["version"]))

        self._mutate(change)

    # --- seal -------------------------------------------------------------------------

    def seal(self, payload: bytes) -> bytes:
        return hmac.new(self._current().seal, payload, sha256).digest()

    # --- signing ----------------------------------------------------------------------

    def signing_keys(self, purpose: KeyPurpose) -> list[SigningKeyInfo]:
        return [s.info for s in self._current().signers[KeyPurpose(purpose)]]

    def sign(self, purpose: KeyPurpose, data: bytes) -> tuple[SigningKeyInfo, bytes]:
        signer = self._current().signers[KeyPurpose(purpose)][-1]
        return signer.info, signer.sign(data)

    def rotate_signing(self, purpose: KeyPurpose) -> SigningKeyInfo:
        purpose = KeyPurpose(purpose)

        def change(doc: dict[str, Any]) -> None:
            entries = doc["signing"][purpose.value]
            latest = max(entries, key=lambda e: int(e["version"]))
            alg = self._settings.signing_alg or latest["alg"]
            entries.append(_new_signing_entry(int(latest["version"]) + 1, alg))

        self._mutate(change)
        return self.signing_key(purpose)

    # --- DKE key pairs ------------------------------------------------------------------
    # Kept under "dke" in keystore.json (PKCS#8), beside the other keys: as well protected
    # as they are (file permissions, optional passphrase).

    def create_dke_key(self, label: str) -> tuple[int, int]:
        key = rsa.generate_private_key(public_exponent=65537, key_size=DKE_RSA_BITS)
        pkcs8 = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption())

        def change(doc: dict[str, Any]) -> None:
            keys = doc.setdefault("dke", {})
            if label in keys:
                raise ConfigError(f"DKE key {label} already exists")
            keys[label] = b64u_encode(pkcs8)

        self._mutate(change)
        numbers = key.public_key().public_numbers()
        return numbers.n, numbers.e

    def _dke_key(self, label: str) -> rsa.RSAPrivateKey:
        state = self._current()
        cache: dict[str, rsa.RSAPrivateKey] = getattr(self, "_dke_cache", {})
        if getattr(self, "_dke_stamp", None) != state.stamp:
            cache = {}
        found = cache.get(label)
        if found is None:
            entry = self._read_document().get("dke", {}).get(label)
            if entry is None:
                raise IntegrityFailure("unknown DKE key")
            loaded = serialization.load_der_private_key(b64u_decode(entry), password=None)
            if not isinstance(loaded, rsa.RSAPrivateKey):
                raise KeystoreUnavailable("a DKE key is not an RSA key")
            found = cache[label] = loaded
        self._dke_cache, self._dke_stamp = cache, state.stamp
        return found

    def dke_decrypt(self, label: str, ciphertext: bytes) -> bytes:
        key = self._dke_key(label)
        try:
            return key.decrypt(bytes(ciphertext), asym_padding.OAEP(
                mgf=asym_padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None))
        except ValueError:
            raise IntegrityFailure("decryption failed") from None

    def destroy_dke_key(self, label: str) -> None:
        def change(doc: dict[str, Any]) -> None:
            doc.get("dke", {}).pop(label, None)

        self._mutate(change)

    # --- health -------------------------------------------------------------------------

    def hmac_with_test_key(self, key: bytes, data: bytes) -> bytes:
        return hmac.new(key, data, sha256).digest()

    def check_health(self) -> None:
        self._current()

    def status(self) -> list[dict[str, Any]]:
        state = self._current()
        signers = {purpose: [signer.info for signer in entries]
                   for purpose, entries in state.signers.items()}
        return self.status_rows(masters=state.masters.keys(), retired=state.retired, seals=(1,),
                                signers=signers)

    def close(self) -> None:
        with self._lock:
            if self._state is not None:
                self._state.wipe()
                self._state = None
