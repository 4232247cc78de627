"""The ``pkcs11`` keystore: master, seal and signing keys inside a PKCS#11 token.

Token objects (all ``CKA_TOKEN``, ``CKA_PRIVATE``; secret and private keys
``CKA_SENSITIVE`` true and ``CKA_EXTRACTABLE`` false, usable for signing only)::

    sceau-master-vN     CKK_GENERIC_SECRET, 32 bytes; data keys = C_Sign(CKM_SHA256_HMAC)
    sceau-seal-v1       CKK_GENERIC_SECRET, 32 bytes; seals = C_Sign(CKM_SHA256_HMAC)
    sceau-response-vN   Ed25519 (CKM_EDDSA) or P-256 (CKM_ECDSA) key pair
    sceau-audit-vN      same rule
    sceau-master-vN-retired   CKO_DATA tombstone of a destroyed master version

The inbound-JWE keys (EC P-256 and RSA) stay software keys in ``<keystore dir>/jwe.json``
(docs/hsm.md).

Sessions come from a fixed pool (a queue): a PKCS#11 session must not be used by two
threads at once, and opening one per call is slow on network HSMs. Any token error makes the
pool rebuild itself (re-open, re-login, re-initialize the module if needed) and the call is
retried once; if that fails the caller gets :class:`KeystoreUnavailable` (SECURITY-CASES 31:
never a fallback to another keystore). The next call after a short pause tries again, so the
service recovers by itself when the token returns.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeVar

import pkcs11
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pkcs11 import MGF, Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass
from pkcs11.exceptions import (
    NoSuchKey,
    NoSuchToken,
    PinExpired,
    PinIncorrect,
    PinInvalid,
    PinLenRange,
    PinLocked,
    PKCS11Error,
    UserAlreadyLoggedIn,
)

from sceau.core.b64 import b64u_decode, b64u_encode
from sceau.core.jwk import jwk_thumbprint
from sceau.errors import ConfigError, IntegrityFailure, KeystoreUnavailable
from sceau.keystore.base import (
    ALG_EDDSA,
    ALG_ES256,
    MASTER_KEY_LEN,
    KeyPurpose,
    Keystore,
    KeystoreSettings,
    SigningKeyInfo,
    derivation_input,
)
from sceau.keystore.file import JWE_FILE, JweKeyFile, ensure_private_dir, write_secret_file

__all__ = ["Pkcs11Keystore", "migrate_file_to_pkcs11"]

T = TypeVar("T")

_LABEL = re.compile(r"sceau-(master|seal|response|audit)-v([1-9][0-9]{0,8})(-retired)?")
# DER of the curve OIDs for CKA_EC_PARAMS: id-Ed25519 (1.3.101.112), prime256v1.
_ED25519_PARAMS = bytes.fromhex("06032b6570")
_P256_PARAMS = bytes.fromhex("06082a8648ce3d030107")
# Some tokens name Edwards curves by PrintableString (PKCS#11 3.0 allows both forms).
_ED25519_PARAMS_NAMED = bytes.fromhex("130c") + b"edwards25519"
_PIN_ERRORS = (PinIncorrect, PinInvalid, PinLenRange, PinLocked, PinExpired)

_SECRET_TEMPLATE: dict[Attribute, Any] = {
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


def _read_pin(settings: KeystoreSettings) -> str:
    """The user PIN from ``pin_file`` or the ``pin_env`` variable (never from config text)."""
    if settings.pin_file is not None:
        try:
            pin = settings.pin_file.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise KeystoreUnavailable(f"cannot read the PKCS#11 PIN file: {exc.strerror}") from None
        if pin:
            return pin
    if settings.pin_env:
        pin = os.environ.get(settings.pin_env, "")
        if pin:
            return pin
    raise KeystoreUnavailable(
        f"no PKCS#11 PIN: set ${settings.pin_env or 'SCEAU_PKCS11_PIN'} or keystore.pin_file"
    )


def _unwrap_octet_string(value: bytes) -> bytes:
    """CKA_EC_POINT is a DER OCTET STRING on most tokens, the bare point on some."""
    if len(value) >= 2 and value[0] == 0x04 and value[1] == len(value) - 2 and value[1] < 0x80:
        return value[2:]
    return value


def _public_jwk(key_type: Any, params: bytes, point: bytes) -> tuple[str, dict[str, Any]]:
    raw = _unwrap_octet_string(point)
    jwk: dict[str, Any]
    if key_type == KeyType.EC_EDWARDS:
        if params not in (_ED25519_PARAMS, _ED25519_PARAMS_NAMED) or len(raw) != 32:
            raise KeystoreUnavailable("token signing key is not Ed25519")
        alg, jwk = ALG_EDDSA, {"kty": "OKP", "crv": "Ed25519", "x": b64u_encode(raw)}
    elif key_type == KeyType.EC:
        if params != _P256_PARAMS:
            raise KeystoreUnavailable("token signing key is not on P-256")
        if len(raw) == 66 and raw[0] == 0x04 and raw[1] == 65:  # doubly wrapped by some tokens
            raw = raw[2:]
        if len(raw) != 65 or raw[0] != 0x04:
            raise KeystoreUnavailable("token P-256 public key is not an uncompressed point")
        alg = ALG_ES256
        jwk = {"kty": "EC", "crv": "P-256", "x": b64u_encode(raw[1:33]), "y": b64u_encode(raw[33:])}
    else:
        raise KeystoreUnavailable("token signing key has an unsupported type")
    jwk["kid"] = jwk_thumbprint(jwk)
    jwk["use"] = "sig"
    jwk["alg"] = alg
    return alg, jwk


# --- session pool --------------------------------------------------------------------------

# python-pkcs11 calls C_Initialize(NULL), which tells the module that the application will not
# call it from several threads at once; SoftHSM2 then runs without its own locks (and aborts
# the process under concurrent calls). So every call into a module is serialized here. The
# lock is per loaded module, process-wide, because the loaded module itself is.
_MODULE_LOCKS: dict[str, threading.RLock] = {}
_MODULE_LOCKS_GUARD = threading.Lock()


def _module_lock(module: str) -> threading.RLock:
    with _MODULE_LOCKS_GUARD:
        return _MODULE_LOCKS.setdefault(os.path.realpath(module), threading.RLock())



class _ObjectMissing(Exception):
    """An object the inventory lists is not in the token (retired elsewhere, or token lost)."""


class _Gate:
    """Many operations at once, or one pool rebuild alone (a readers-writer lock)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._active = 0
        self._exclusive = False

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._exclusive:
                self._cond.wait()
            self._active += 1
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1
                self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            while self._exclusive:
                self._cond.wait()
            self._exclusive = True
            while self._active:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


@dataclass
class _Slot:
    """One pooled session and the key handles found through it (handles are per session)."""

    session: Any
    generation: int
    keys: dict[tuple[ObjectClass, str], Any] = field(default_factory=dict)

    def key(self, cls: ObjectClass, label: str) -> Any | None:
        cached = self.keys.get((cls, label))
        if cached is None:
            try:
                cached = self.session.get_key(object_class=cls, label=label)
            except NoSuchKey:
                return None
            self.keys[(cls, label)] = cached
        return cached


class _TokenPool:
    """Open, logged-in sessions on one token, rebuilt after token errors."""

    # After a failed rebuild, calls fail fast for this long before the next attempt, so that
    # a dead HSM is not hammered with C_Initialize by every request.
    retry_interval = 0.5
    # Longest wait for a free session before the call fails (503) instead of piling up.
    wait_timeout = 30.0

    def __init__(self, settings: KeystoreSettings) -> None:
        if not settings.pkcs11_module or not settings.pkcs11_token:
            raise ConfigError("the pkcs11 keystore needs keystore.pkcs11_module and pkcs11_token")
        self._module = settings.pkcs11_module
        self._label = settings.pkcs11_token
        self._size = settings.pool_size
        self._pin = _read_pin(settings)
        self._gate = _Gate()
        self._idle: queue.Queue[_Slot] = queue.Queue()
        self._slots: list[_Slot] = []
        self._login: Any | None = None
        self._token: Any | None = None
        self._generation = 0
        self._closed = False
        self._retry_after = 0.0
        # Set when the token answered but our objects were gone: plain re-opening is not
        # enough then, the module must re-read its token store.
        self._force_reinit = False
        self._call_lock = _module_lock(self._module)
        with self._call_lock:
            try:
                self._lib = pkcs11.lib(self._module)
            except (PKCS11Error, OSError) as exc:
                raise KeystoreUnavailable(f"cannot load the PKCS#11 module: {exc}") from None
        with self._gate.exclusive(), self._call_lock:
            self._rebuild()

    # -- building ------------------------------------------------------------------------

    def _discard(self) -> None:
        # Pool sessions were opened without a PIN, so closing them never logs the others out;
        # the login session is closed last.
        for slot in self._slots:
            with suppress(PKCS11Error):
                slot.session.close()
        self._slots = []
        self._idle = queue.Queue()
        if self._login is not None:
            with suppress(PKCS11Error):
                self._login.close()
        self._login = None
        self._token = None

    def _open(self) -> None:
        token = self._lib.get_token(token_label=self._label)
        try:
            login = token.open(user_pin=self._pin)
        except UserAlreadyLoggedIn:
            # PKCS#11 login state belongs to the process, not the session: another keystore
            # object of this process is logged in to the same token already.
            login = token.open()
        self._token, self._login = token, login
        self._generation += 1
        for _ in range(self._size):
            slot = _Slot(token.open(), self._generation)
            self._slots.append(slot)
            self._idle.put(slot)

    def _rebuild(self) -> None:
        """Re-open everything; C_Finalize/C_Initialize the module if plain re-opening fails."""
        self._discard()
        try:
            try:
                if not self._force_reinit:
                    self._open()
                    return
            except _PIN_ERRORS:
                raise
            except PKCS11Error:
                self._discard()
            # A token that came back, or one created after this process loaded the module,
            # is only visible after re-initialization (SoftHSM2 behaves so; network HSM
            # clients commonly need it after a lost connection too).
            with suppress(PKCS11Error):
                self._lib.reinitialize()
            self._open()
            self._force_reinit = False
        except _PIN_ERRORS:
            self._discard()
            # No retry: every attempt with a wrong PIN brings the token closer to locking.
            raise KeystoreUnavailable("PKCS#11 login refused: wrong or locked PIN") from None
        except NoSuchToken:
            self._discard()
            self._retry_after = time.monotonic() + self.retry_interval
            raise KeystoreUnavailable(f"PKCS#11 token {self._label!r} not found") from None
        except PKCS11Error as exc:
            self._discard()
            self._retry_after = time.monotonic() + self.retry_interval
            raise KeystoreUnavailable(
                f"PKCS#11 token unavailable ({type(exc).__name__})"
            ) from None

    def _recover(self, generation: int) -> None:
        with self._gate.exclusive(), self._call_lock:
            if self._closed:
                raise KeystoreUnavailable("keystore is closed")
            if generation != self._generation and self._slots:
                return  # another thread rebuilt the pool already
            if time.monotonic() < self._retry_after:
                raise KeystoreUnavailable("PKCS#11 token unavailable")
            self._rebuild()

    def invalidate(self) -> None:
        """Drop every session: the token lost our objects. The next call rebuilds."""
        with self._gate.exclusive(), self._call_lock:
            self._discard()
            self._force_reinit = True
            self._retry_after = time.monotonic() + self.retry_interval

    # -- using -------------------------------------------------------------------------------

    def run(self, action: Callable[[_Slot], T]) -> T:
        """Run ``action`` with a pooled session; rebuild and retry once after a token error."""
        for attempt in range(2):
            with self._gate.shared():
                if self._closed:
                    raise KeystoreUnavailable("keystore is closed")
                generation = self._generation
                if self._slots:
                    try:
                        slot = self._idle.get(timeout=self.wait_timeout)
                    except queue.Empty:
                        raise KeystoreUnavailable("no PKCS#11 session free in time") from None
                    generation = slot.generation
                    try:
                        with self._call_lock:
                            return action(slot)
                    except PKCS11Error:
                        pass  # rebuild below, then retry once
                    finally:
                        # Always given back, even broken: a thread waiting for a session must
                        # not wait forever; it fails on the stale one and joins the rebuild.
                        self._idle.put(slot)
            if attempt == 0:
                self._recover(generation)
        raise KeystoreUnavailable("PKCS#11 token unavailable")

    def run_rw(self, action: Callable[[Any], T]) -> T:
        """Run an administrative ``action`` in a fresh read/write session (not pooled)."""

        def in_rw_session(slot: _Slot) -> T:
            # Same login state as the pool: the rw session needs no PIN of its own.
            with slot.session.token.open(rw=True) as session:
                return action(session)

        return self.run(in_rw_session)

    def mechanisms(self) -> set[Any]:
        """The token's mechanism list."""
        return self.run(lambda slot: set(slot.session.token.slot.get_mechanisms()))

    def close(self) -> None:
        with self._gate.exclusive(), self._call_lock:
            self._closed = True
            self._discard()


# --- the keystore --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Inventory:
    """What the token holds, by label. Public data only; refreshed on a miss and on a timer."""

    masters: frozenset[int]
    retired: frozenset[int]
    seals: frozenset[int]
    signers: Mapping[KeyPurpose, tuple[SigningKeyInfo, ...]]
    loaded_at: float


def _refuse_used_token(pool: _TokenPool, settings: KeystoreSettings) -> None:
    """Initialization and migration start from a token without any Sceau object."""
    inv = pool.run(_scan)
    if inv.masters or inv.retired or inv.seals or any(inv.signers.values()):
        raise ConfigError(f"token {settings.pkcs11_token!r} already holds Sceau keys; refusing")


def _scan(slot: _Slot) -> _Inventory:
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
    return _Inventory(
        masters=frozenset(masters - retired),
        retired=frozenset(retired),
        seals=frozenset(seals),
        signers={p: tuple(sorted(v, key=lambda i: i.version)) for p, v in signers.items()},
        loaded_at=time.monotonic(),
    )


def _master_label(version: int) -> str:
    return f"sceau-master-v{version}"


class Pkcs11Keystore(Keystore):
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
        self._pool = _TokenPool(settings)
        self._inventory_lock = threading.Lock()
        self._inv: _Inventory | None = None
        try:
            inv = self._pool.run(_scan)
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
        ensure_private_dir(settings.path)
        if (settings.path / JWE_FILE).exists():
            raise ConfigError(f"keystore at {settings.path} is already initialized")
        pool = _TokenPool(settings)
        try:
            _refuse_used_token(pool, settings)
            alg = settings.signing_alg or _best_alg(pool.mechanisms())

            def create(session: Any) -> None:
                _generate_secret(session, _master_label(1))
                _generate_secret(session, "sceau-seal-v1")
                for purpose in KeyPurpose:
                    _generate_pair(session, f"sceau-{purpose.value}-v1", alg)

            pool.run_rw(create)
        finally:
            pool.close()
        JweKeyFile.create(settings.path / JWE_FILE, settings.passphrase())

    # --- inventory ----------------------------------------------------------------------

    def _inventory(self, refresh: bool = False) -> _Inventory:
        inv = self._inv
        if refresh or inv is None or time.monotonic() - inv.loaded_at > self.inventory_ttl:
            with self._inventory_lock:
                inv = self._pool.run(_scan)
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
        def action(slot: _Slot) -> bytes:
            key = slot.key(ObjectClass.SECRET_KEY, label)
            if key is None:
                raise _ObjectMissing(label)
            return bytes(key.sign(data, mechanism=Mechanism.SHA256_HMAC))

        return self._pool.run(action)

    # --- master keys ------------------------------------------------------------------

    def current_master_version(self) -> int:
        return max(self._inventory().masters)

    def master_versions(self) -> list[int]:
        return sorted(self._inventory().masters)

    def derive(self, master_version: int, key_id: bytes, seed: bytes) -> bytes:
        message = derivation_input(key_id, seed)
        if master_version not in self._inventory().masters:
            # Maybe another node rotated a moment ago: look again before refusing.
            if master_version not in self._inventory(refresh=True).masters:
                raise IntegrityFailure("unknown master version")
        try:
            return self._secret_sign(_master_label(master_version), message)
        except _ObjectMissing:
            # Retired by another node since our last look, or the token lost its objects.
            if master_version not in self._inventory(refresh=True).masters:
                raise IntegrityFailure("unknown master version") from None
            self._token_lost("a master key")

    def rotate_master(self) -> int:
        def create(session: Any) -> int:
            inv = _scan(_Slot(session, 0))
            version = max(inv.masters | inv.retired) + 1
            _generate_secret(session, _master_label(version))
            return version

        version = self._pool.run_rw(create)
        self._inventory(refresh=True)
        return version

    def retire_master(self, version: int) -> None:
        def destroy(session: Any) -> None:
            inv = _scan(_Slot(session, 0))
            if version not in inv.masters:
                raise ConfigError(f"master version {version} is not a usable version")
            if version == max(inv.masters):
                raise ConfigError("the current master version cannot be retired; rotate first")
            # Tombstone first: if the destroy below fails, the version is still never reused.
            session.create_object({
                Attribute.CLASS: ObjectClass.DATA,
                Attribute.TOKEN: True,
                Attribute.PRIVATE: True,
                Attribute.LABEL: f"{_master_label(version)}-retired",
                Attribute.APPLICATION: "sceau",
                Attribute.VALUE: b"retired",
            })
            for obj in list(session.get_objects({
                Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.LABEL: _master_label(version)
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
            inv = _scan(_Slot(session, 0))
            if version in inv.masters or version in inv.retired:
                raise ConfigError(f"master version {version} already exists or was retired")
            _import_secret(session, _master_label(version), bytes(raw))

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

        def action(slot: _Slot) -> bytes:
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
            inv = _scan(_Slot(session, 0))
            version = max(i.version for i in inv.signers[purpose]) + 1
            _generate_pair(session, f"sceau-{purpose.value}-v{version}", alg)

        self._pool.run_rw(create)
        self._inventory(refresh=True)
        return self.signing_key(purpose)

    # --- JWE ----------------------------------------------------------------------------

    def jwe_private_jwk(self) -> Mapping[str, Any]:
        return self._jwe.private_jwk

    def jwe_public_jwk(self) -> Mapping[str, Any]:
        return self._jwe.public_jwk

    def jwe_private_jwks(self) -> list[Mapping[str, Any]]:
        return self._jwe.private_jwks

    def jwe_public_jwks(self) -> list[Mapping[str, Any]]:
        return self._jwe.public_jwks

    # --- DKE key pairs (RSA-2048, decrypt only, sensitive and non-extractable) ----------

    def create_dke_key(self, label: str) -> tuple[int, int]:
        object_label = _dke_label(label)

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
                private_template={Attribute.TOKEN: True, **_DKE_PRIVATE_POLICY},
            )
            n = int.from_bytes(bytes(public[Attribute.MODULUS]), "big")
            e = int.from_bytes(bytes(public[Attribute.PUBLIC_EXPONENT]), "big")
            return n, e

        return self._pool.run_rw(create)

    def dke_decrypt(self, label: str, ciphertext: bytes) -> bytes:
        object_label = _dke_label(label)

        def action(slot: _Slot) -> bytes | None:
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
        object_label = _dke_label(label)

        def destroy(session: Any) -> None:
            for obj in list(session.get_objects({Attribute.LABEL: object_label})):
                obj.destroy()

        self._pool.run_rw(destroy)
        self._pool.run(lambda slot: slot.keys.clear())

    # --- health -------------------------------------------------------------------------

    def hmac_with_test_key(self, key: bytes, data: bytes) -> bytes:
        def action(slot: _Slot) -> bytes:
            # A session object (CKA_TOKEN false): gone when the session closes, and destroyed
            # right away anyway. Created non-extractable like the real keys.
            test_key = slot.session.create_object({
                Attribute.CLASS: ObjectClass.SECRET_KEY,
                Attribute.KEY_TYPE: KeyType.GENERIC_SECRET,
                Attribute.VALUE: bytes(key),
                Attribute.LABEL: "sceau-selftest",
                **_SECRET_TEMPLATE,
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
        current = max(inv.masters)
        rows: list[dict[str, Any]] = []
        for version in sorted(inv.masters | inv.retired):
            rows.append({
                "label": _master_label(version), "kind": "master", "version": version,
                "kid": None, "current": version == current, "retired": version in inv.retired,
            })
        for version in sorted(inv.seals):
            rows.append({"label": f"sceau-seal-v{version}", "kind": "seal", "version": version,
                         "kid": None, "current": version == max(inv.seals), "retired": False})
        for purpose, infos in inv.signers.items():
            for info in infos:
                rows.append({
                    "label": f"sceau-{purpose.value}-v{info.version}", "kind": purpose.value,
                    "version": info.version, "kid": info.kid, "alg": info.alg,
                    "current": info is infos[-1], "retired": False,
                })
        rows.extend(self.jwe_status_rows())
        return rows

    def close(self) -> None:
        self._pool.close()


# --- object creation ---------------------------------------------------------------------


def _best_alg(mechanisms: set[Any]) -> str:
    """Ed25519 when the token can make and use it; ECDSA P-256 otherwise."""
    if Mechanism.EDDSA in mechanisms and Mechanism.EC_EDWARDS_KEY_PAIR_GEN in mechanisms:
        return ALG_EDDSA
    if Mechanism.ECDSA in mechanisms and Mechanism.EC_KEY_PAIR_GEN in mechanisms:
        return ALG_ES256
    raise KeystoreUnavailable("the token supports neither EdDSA nor ECDSA signing")


def _generate_secret(session: Any, label: str) -> None:
    template = dict(_SECRET_TEMPLATE)
    session.generate_key(
        KeyType.GENERIC_SECRET,
        8 * MASTER_KEY_LEN,
        label=label,
        id=label.encode("ascii"),
        store=True,
        capabilities=MechanismFlag.SIGN,
        template=template,
    )


# What a signing private key may do, whether generated in the token or imported into it:
# sign, nothing else, and never leave the token.
_SIGNING_PRIVATE_POLICY = {
    Attribute.PRIVATE: True,
    Attribute.SENSITIVE: True,
    Attribute.EXTRACTABLE: False,
    Attribute.SIGN: True,
    Attribute.DECRYPT: False,
    Attribute.UNWRAP: False,
    Attribute.DERIVE: False,
}


def _generate_pair(session: Any, label: str, alg: str) -> None:
    key_type = KeyType.EC_EDWARDS if alg == ALG_EDDSA else KeyType.EC
    params = _ED25519_PARAMS if alg == ALG_EDDSA else _P256_PARAMS
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
        private_template={Attribute.TOKEN: True, **_SIGNING_PRIVATE_POLICY},
    )



# A DKE private key decrypts (RSA-OAEP) and does nothing else, and never leaves the token.
_DKE_PRIVATE_POLICY = {
    Attribute.PRIVATE: True,
    Attribute.SENSITIVE: True,
    Attribute.EXTRACTABLE: False,
    Attribute.DECRYPT: True,
    Attribute.SIGN: False,
    Attribute.UNWRAP: False,
    Attribute.DERIVE: False,
}


def _dke_label(label: str) -> str:
    return f"sceau-dke-{label}"


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


# --- migration from the file backend -------------------------------------------------------


def _import_pair(session: Any, label: str, alg: str, pkcs8: bytes) -> None:
    """Import a software signing key into the token, non-extractable from then on."""
    key = serialization.load_der_private_key(pkcs8, password=None)
    common = {Attribute.LABEL: label, Attribute.ID: label.encode("ascii"), Attribute.TOKEN: True}
    if alg == ALG_EDDSA and isinstance(key, Ed25519PrivateKey):
        key_type, params = KeyType.EC_EDWARDS, _ED25519_PARAMS
        value = key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        point = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
    elif alg == ALG_ES256 and isinstance(key, ec.EllipticCurvePrivateKey):
        key_type, params = KeyType.EC, _P256_PARAMS
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
        **_SIGNING_PRIVATE_POLICY,
    })


def migrate_file_to_pkcs11(source: KeystoreSettings, target: KeystoreSettings) -> None:
    """Move a file keystore into an empty PKCS#11 token (docs/hsm.md, "Migration").

    Imports every usable master version (same version numbers, so stored keys still derive),
    tombstones for retired versions, the seal key (stored seals still verify), and every
    signing key version (old audit records still verify, the service keeps its kids); copies
    both JWE keys. The token objects are sensitive and non-extractable. The source files
    are left in place: the operator destroys them once the new keystore is verified.
    """
    from sceau.keystore.file import FileKeystore

    if source.backend != "file" or target.backend != "pkcs11":
        raise ConfigError("migration goes from a file keystore to a pkcs11 keystore")
    doc = FileKeystore.read_material_for_migration(source)
    jwe = JweKeyFile.load(source.path / JWE_FILE, source.passphrase(), source.passphrase_env)
    ensure_private_dir(target.path)
    if (target.path / JWE_FILE).exists():
        raise ConfigError(f"keystore at {target.path} is already initialized")
    pool = _TokenPool(target)
    try:
        _refuse_used_token(pool, target)

        def create(session: Any) -> None:
            for entry in doc["masters"]:
                label = _master_label(int(entry["version"]))
                if entry.get("retired"):
                    session.create_object({
                        Attribute.CLASS: ObjectClass.DATA, Attribute.TOKEN: True,
                        Attribute.PRIVATE: True, Attribute.LABEL: f"{label}-retired",
                        Attribute.APPLICATION: "sceau", Attribute.VALUE: b"retired",
                    })
                    continue
                _import_secret(session, label, b64u_decode(entry["key"]))
            _import_secret(
                session, f"sceau-seal-v{int(doc['seal']['version'])}",
                b64u_decode(doc["seal"]["key"]),
            )
            for purpose in KeyPurpose:
                for entry in doc["signing"][purpose.value]:
                    _import_pair(
                        session, f"sceau-{purpose.value}-v{int(entry['version'])}",
                        entry["alg"], b64u_decode(entry["pkcs8"]),
                    )

        pool.run_rw(create)
    finally:
        pool.close()
    write_secret_file(target.path / JWE_FILE, jwe.document(), target.passphrase())


def _import_secret(session: Any, label: str, raw: bytes) -> None:
    session.create_object({
        Attribute.CLASS: ObjectClass.SECRET_KEY,
        Attribute.KEY_TYPE: KeyType.GENERIC_SECRET,
        Attribute.VALUE: raw,
        Attribute.LABEL: label,
        Attribute.ID: label.encode("ascii"),
        **_SECRET_TEMPLATE,
    })
