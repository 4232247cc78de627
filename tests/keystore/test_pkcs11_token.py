"""PKCS#11-only properties: object attributes in the token, PIN handling, token loss."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pkcs11
import pytest
from pkcs11 import Attribute, Mechanism, ObjectClass
from pkcs11.exceptions import AttributeSensitive, KeyUnextractable, PKCS11Error

from sceau.errors import ConfigError, IntegrityFailure, KeystoreUnavailable
from sceau.keystore import KeyPurpose, KeystoreSettings, init_keystore, open_keystore
from sceau.keystore.base import verify_signature
from sceau.keystore.pkcs11 import Pkcs11Keystore

pytestmark = pytest.mark.pkcs11

KEY_ID = bytes(range(16))
SEED = bytes(range(32, 64))


@pytest.fixture
def settings(settings_for: Any, tmp_path: Path) -> KeystoreSettings:
    """An initialized PKCS#11 keystore on a fresh token."""
    s: KeystoreSettings = settings_for("pkcs11", tmp_path / "ks")
    init_keystore(s)
    return s


@pytest.fixture
def ks(settings: KeystoreSettings) -> Iterator[Pkcs11Keystore]:
    keystore = open_keystore(settings)
    assert isinstance(keystore, Pkcs11Keystore)
    # Recovery tests must not wait out the back-off after a failed rebuild.
    keystore._pool.retry_interval = 0.0
    try:
        yield keystore
    finally:
        keystore.close()


def _objects(settings: KeystoreSettings, cls: ObjectClass) -> dict[str, Any]:
    """The token's objects of one class by label, through a session of our own.

    Opened without a PIN: PKCS#11 login state belongs to the process, and the keystore
    under test is logged in already, so private objects are visible.
    """
    assert settings.pkcs11_module and settings.pkcs11_token
    token = pkcs11.lib(settings.pkcs11_module).get_token(token_label=settings.pkcs11_token)
    session = token.open()
    return {str(o[Attribute.LABEL]): o for o in session.get_objects({Attribute.CLASS: cls})}


SECRET_LABELS = ["sceau-master-v1", "sceau-seal-v1"]
PRIVATE_LABELS = ["sceau-response-v1", "sceau-audit-v1"]


def test_objects_are_labelled(ks: Pkcs11Keystore, settings: KeystoreSettings) -> None:
    assert set(_objects(settings, ObjectClass.SECRET_KEY)) == set(SECRET_LABELS)
    assert set(_objects(settings, ObjectClass.PRIVATE_KEY)) == set(PRIVATE_LABELS)
    assert set(_objects(settings, ObjectClass.PUBLIC_KEY)) == set(PRIVATE_LABELS)
    # The JWE key is a software key by design; it never appears in the token.
    assert (settings.path / "jwe.json").exists()


@pytest.mark.parametrize("imported", [False, True])
def test_secret_keys_never_leave_the_token(
    ks: Pkcs11Keystore, settings: KeystoreSettings, imported: bool
) -> None:
    """SECURITY-CASES 25: sensitive, non-extractable, CKA_VALUE unreadable, sign-only."""
    labels = SECRET_LABELS
    if imported:
        ks.import_master(9, bytes(range(32)))
        labels = ["sceau-master-v9"]
    secrets = _objects(settings, ObjectClass.SECRET_KEY)
    for label in labels:
        key = secrets[label]
        assert key[Attribute.SENSITIVE] is True
        assert key[Attribute.EXTRACTABLE] is False
        assert key[Attribute.TOKEN] is True and key[Attribute.PRIVATE] is True
        assert key[Attribute.SIGN] is True
        for usage in (Attribute.ENCRYPT, Attribute.DECRYPT, Attribute.WRAP,
                      Attribute.UNWRAP, Attribute.DERIVE, Attribute.VERIFY):
            assert key[usage] is False, (label, usage)
        with pytest.raises(AttributeSensitive):
            key[Attribute.VALUE]
        if not imported:
            assert key[Attribute.NEVER_EXTRACTABLE] is True


def test_private_signing_keys_are_sensitive(ks: Pkcs11Keystore, settings: KeystoreSettings) -> None:
    for label, key in _objects(settings, ObjectClass.PRIVATE_KEY).items():
        assert key[Attribute.SENSITIVE] is True and key[Attribute.EXTRACTABLE] is False, label
        with pytest.raises(PKCS11Error):
            key[Attribute.VALUE]


def test_dke_private_key_never_leaves_the_token(
    ks: Pkcs11Keystore, settings: KeystoreSettings
) -> None:
    """A DKE key pair's private half: sensitive, non-extractable, decrypt-only; reading its
    value or any private component fails. Retiring the version destroys both halves."""
    n, e = ks.create_dke_key("label-check.0123")
    label = "sceau-dke-label-check.0123"
    private = _objects(settings, ObjectClass.PRIVATE_KEY)[label]
    assert private[Attribute.SENSITIVE] is True
    assert private[Attribute.EXTRACTABLE] is False
    assert private[Attribute.NEVER_EXTRACTABLE] is True
    assert private[Attribute.ALWAYS_SENSITIVE] is True
    assert private[Attribute.TOKEN] is True and private[Attribute.PRIVATE] is True
    assert private[Attribute.DECRYPT] is True
    for usage in (Attribute.SIGN, Attribute.UNWRAP, Attribute.DERIVE):
        assert private[usage] is False, usage
    # The public components are readable (they are published); the private ones are not.
    assert int.from_bytes(bytes(private[Attribute.MODULUS]), "big") == n
    # CKA_VALUE does not exist on an RSA private key (the token says so); the private
    # components do, and are sensitive.
    with pytest.raises(PKCS11Error):
        private[Attribute.VALUE]
    for secret in (Attribute.PRIVATE_EXPONENT, Attribute.PRIME_1, Attribute.PRIME_2,
                   Attribute.EXPONENT_1, Attribute.EXPONENT_2, Attribute.COEFFICIENT):
        with pytest.raises(AttributeSensitive):
            private[secret]
    # Nor can it be wrapped out under a key the caller made for that (a session AES key
    # with CKA_WRAP): the token refuses, since the private key is not extractable.
    assert settings.pkcs11_module and settings.pkcs11_token
    token = pkcs11.lib(settings.pkcs11_module).get_token(token_label=settings.pkcs11_token)
    with token.open() as session:
        own = session.generate_key(pkcs11.KeyType.AES, 256, store=False,
                                   capabilities=pkcs11.MechanismFlag.WRAP)
        target = session.get_key(object_class=ObjectClass.PRIVATE_KEY, label=label)
        with pytest.raises(KeyUnextractable):
            own.wrap_key(target, mechanism=Mechanism.AES_KEY_WRAP_PAD)
    public = _objects(settings, ObjectClass.PUBLIC_KEY)[label]
    assert int.from_bytes(bytes(public[Attribute.PUBLIC_EXPONENT]), "big") == e
    ks.destroy_dke_key("label-check.0123")
    assert label not in _objects(settings, ObjectClass.PRIVATE_KEY)
    assert label not in _objects(settings, ObjectClass.PUBLIC_KEY)


def test_token_hmac_matches_derive(ks: Pkcs11Keystore, settings: KeystoreSettings) -> None:
    """derive() is C_Sign(CKM_SHA256_HMAC) on the master object, nothing computed outside."""
    key = _objects(settings, ObjectClass.SECRET_KEY)["sceau-master-v1"]
    direct = key.sign(b"sceau/dk/v1" + KEY_ID + SEED, mechanism=Mechanism.SHA256_HMAC)
    assert ks.derive(1, KEY_ID, SEED) == direct


def test_retire_destroys_the_object(ks: Pkcs11Keystore, settings: KeystoreSettings) -> None:
    ks.rotate_master()
    ks.retire_master(1)
    assert "sceau-master-v1" not in _objects(settings, ObjectClass.SECRET_KEY)
    assert "sceau-master-v1-retired" in _objects(settings, ObjectClass.DATA)


def test_wrong_pin(settings: KeystoreSettings, monkeypatch: pytest.MonkeyPatch) -> None:
    assert settings.pin_env
    monkeypatch.setenv(settings.pin_env, "not-the-pin")
    with pytest.raises(KeystoreUnavailable, match="wrong or locked PIN"):
        open_keystore(settings)


def test_missing_pin(settings: KeystoreSettings, monkeypatch: pytest.MonkeyPatch) -> None:
    assert settings.pin_env
    monkeypatch.delenv(settings.pin_env)
    with pytest.raises(KeystoreUnavailable, match="no PKCS#11 PIN"):
        open_keystore(settings)


def test_pin_file(
    settings: KeystoreSettings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert settings.pin_env
    pin = tmp_path / "pin"
    pin.write_text(__import__("os").environ[settings.pin_env] + "\n")
    pin.chmod(0o600)
    monkeypatch.delenv(settings.pin_env)
    with_file = KeystoreSettings(
        settings.path, backend="pkcs11", pkcs11_module=settings.pkcs11_module,
        pkcs11_token=settings.pkcs11_token, pin_env=None, pin_file=pin,
    )
    with open_keystore(with_file) as ks:
        ks.check_health()


def test_unknown_token(settings_for: Any, tmp_path: Path) -> None:
    s = settings_for("pkcs11", tmp_path / "ks", pkcs11_token="no-such-token")
    with pytest.raises(KeystoreUnavailable, match="not found"):
        init_keystore(s)


@pytest.mark.parametrize("missing", ["pkcs11_module", "pkcs11_token"])
def test_missing_module_settings(tmp_path: Path, missing: str) -> None:
    options = {"pkcs11_module": "/usr/lib/softhsm/libsofthsm2.so", "pkcs11_token": "t"}
    del options[missing]
    with pytest.raises(ConfigError, match="needs"):
        KeystoreSettings(tmp_path, backend="pkcs11", **options)


def test_token_gone_then_back(
    ks: Pkcs11Keystore, settings: KeystoreSettings, request: pytest.FixtureRequest
) -> None:
    """SECURITY-CASES 31: token removed → KeystoreUnavailable (no fallback); then recovery."""
    tokens: Path = request.getfixturevalue("softhsm").tokens
    expected = ks.derive(1, KEY_ID, SEED)
    seal = ks.seal(b"record")
    hidden = tokens.with_name("tokens.away")
    tokens.rename(hidden)
    try:
        with pytest.raises(KeystoreUnavailable):
            ks.check_health()
        with pytest.raises(KeystoreUnavailable):
            ks.derive(1, KEY_ID, SEED)
        with pytest.raises(KeystoreUnavailable):
            ks.sign(KeyPurpose.AUDIT, b"x")
        with pytest.raises(KeystoreUnavailable):
            ks.verify_seal(b"record", seal)
    finally:
        hidden.rename(tokens)
    ks.check_health()
    assert ks.derive(1, KEY_ID, SEED) == expected
    ks.verify_seal(b"record", seal)
    ks.self_test()


def test_pool_serves_many_threads(ks: Pkcs11Keystore) -> None:
    expected = ks.derive(1, KEY_ID, SEED)
    results: list[bytes] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(20):
                results.append(ks.derive(1, KEY_ID, SEED))
                ks.sign(KeyPurpose.RESPONSE, b"x")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(6)]  # pool_size is 2
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert results == [expected] * 120


def test_closed_keystore_refuses(settings: KeystoreSettings) -> None:
    ks = open_keystore(settings)
    ks.close()
    with pytest.raises(KeystoreUnavailable):
        ks.derive(1, KEY_ID, SEED)


def test_second_keystore_on_same_token_shares_login(
    ks: Pkcs11Keystore, settings: KeystoreSettings
) -> None:
    """Login state is per process; a second instance (CLI in-process) still works, and
    closing it does not log the first one out for good."""
    with open_keystore(settings) as other:
        assert other.derive(1, KEY_ID, SEED) == ks.derive(1, KEY_ID, SEED)
    assert len(ks.derive(1, KEY_ID, SEED)) == 32


@pytest.mark.parametrize("signing_alg", [None, "ES256"])
def test_migration_from_file(
    settings_for: Any, tmp_path: Path, signing_alg: str | None
) -> None:
    """Every stored key still derives, every seal and old signature still verifies."""
    from sceau.keystore.pkcs11 import migrate_file_to_pkcs11

    source = settings_for("file", tmp_path / "file", signing_alg=signing_alg)
    init_keystore(source)
    with open_keystore(source) as old:
        v2 = old.rotate_master()
        v3 = old.rotate_master()
        old.retire_master(1)
        old.rotate_signing(KeyPurpose.AUDIT)
        keys = {v: old.derive(v, KEY_ID, SEED) for v in (v2, v3)}
        seal = old.seal(b"record")
        old_jwks = old.public_jwks()
        old_audit_kids = old.audit_kids()
        info, signature = old.sign(KeyPurpose.AUDIT, b"audit hash")
        jwe_private = dict(old.jwe_private_jwk())

    target = settings_for("pkcs11", tmp_path / "token")
    migrate_file_to_pkcs11(source, target)
    with open_keystore(target) as new:
        assert new.master_versions() == [v2, v3] and new.current_master_version() == v3
        assert {v: new.derive(v, KEY_ID, SEED) for v in (v2, v3)} == keys
        with pytest.raises(IntegrityFailure):
            new.derive(1, KEY_ID, SEED)
        new.verify_seal(b"record", seal)
        assert new.public_jwks() == old_jwks and new.audit_kids() == old_audit_kids
        assert dict(new.jwe_private_jwk()) == jwe_private
        new_info, new_signature = new.sign(KeyPurpose.AUDIT, b"audit hash")
        assert new_info == info
        verify_signature(new_info.public_jwk, b"audit hash", new_signature)
        verify_signature(info.public_jwk, b"audit hash", signature)
        new.self_test()
    with pytest.raises(ConfigError, match="already"):
        migrate_file_to_pkcs11(source, target)
