"""The keystore contract, run against every backend (the ``keystore`` fixture's params)."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import stat
import threading
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from jwcrypto import jwe, jwk

from sceau.core.b64 import b64u_decode
from sceau.core.jwk import jwk_thumbprint
from sceau.errors import ConfigError, IntegrityFailure, KeystoreUnavailable
from sceau.keystore import KeyPurpose, KeystoreSettings, init_keystore, open_keystore
from sceau.keystore.base import verify_signature
from sceau.keystore.selftest import DERIVATION_VECTOR, SELF_TESTS

KEY_ID = bytes(range(16))
SEED = bytes(range(100, 132))


# --- derivation ------------------------------------------------------------------------------


def test_derive_is_deterministic_and_input_bound(keystore: Any) -> None:
    v = keystore.current_master_version()
    first = keystore.derive(v, KEY_ID, SEED)
    assert len(first) == 32
    assert keystore.derive(v, KEY_ID, SEED) == first
    other_id = bytes([KEY_ID[0] ^ 1]) + KEY_ID[1:]
    other_seed = SEED[:-1] + bytes([SEED[-1] ^ 1])
    assert keystore.derive(v, other_id, SEED) != first
    assert keystore.derive(v, KEY_ID, other_seed) != first


def test_known_answer_with_imported_master(keystore: Any) -> None:
    """Same master bytes → the same data key on every backend (SECURITY-CASES 25)."""
    master, key_id, seed, want = DERIVATION_VECTOR
    version = keystore.current_master_version() + 1
    keystore.import_master(version, master)
    assert keystore.derive(version, key_id, seed).hex() == want
    assert hmac.new(master, b"sceau/dk/v1" + key_id + seed, hashlib.sha256).hexdigest() == want


@pytest.mark.parametrize(
    ("key_id", "seed"),
    [(bytes(15), bytes(32)), (bytes(17), bytes(32)), (bytes(16), bytes(31)), (b"", b"")],
)
def test_derive_refuses_ambiguous_lengths(keystore: Any, key_id: bytes, seed: bytes) -> None:
    with pytest.raises(ValueError):
        keystore.derive(keystore.current_master_version(), key_id, seed)


@pytest.mark.parametrize("version", [0, -1, 2, 99])
def test_derive_unknown_version(keystore: Any, version: int) -> None:
    with pytest.raises(IntegrityFailure, match="unknown master version"):
        keystore.derive(version, KEY_ID, SEED)


def test_rotation_and_retirement(keystore: Any) -> None:
    v1 = keystore.current_master_version()
    before = keystore.derive(v1, KEY_ID, SEED)
    v2 = keystore.rotate_master()
    assert v2 == v1 + 1
    assert keystore.current_master_version() == v2
    assert keystore.master_versions() == [v1, v2]
    # Version separation: the same input under another master version is another key.
    assert keystore.derive(v2, KEY_ID, SEED) != before
    assert keystore.derive(v1, KEY_ID, SEED) == before
    with pytest.raises(ConfigError):
        keystore.retire_master(v2)  # the current one
    keystore.retire_master(v1)
    assert keystore.master_versions() == [v2]
    with pytest.raises(IntegrityFailure, match="unknown master version"):
        keystore.derive(v1, KEY_ID, SEED)
    # A retired version number is never handed out or imported again.
    with pytest.raises(ConfigError):
        keystore.import_master(v1, bytes(32))
    assert keystore.rotate_master() == v2 + 1
    retired = [r for r in keystore.status() if r["kind"] == "master" and r["retired"]]
    assert [r["version"] for r in retired] == [v1]


def test_import_refuses_existing_version_and_bad_length(keystore: Any) -> None:
    with pytest.raises(ConfigError):
        keystore.import_master(keystore.current_master_version(), bytes(32))
    with pytest.raises(ValueError):
        keystore.import_master(50, bytes(31))


def test_other_instance_sees_rotation(keystore: Any, keystore_settings: KeystoreSettings) -> None:
    """A rotation by another process (the CLI) is picked up without a restart."""
    with open_keystore(keystore_settings) as other:
        v = other.rotate_master()
        expected = other.derive(v, KEY_ID, SEED)
    assert keystore.derive(v, KEY_ID, SEED) == expected


def test_concurrent_derivations_agree(keystore: Any) -> None:
    v = keystore.current_master_version()
    expected = {i: keystore.derive(v, bytes([i]) * 16, SEED) for i in range(8)}
    results: dict[int, list[bytes]] = {i: [] for i in range(8)}
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for _ in range(25):
                results[i].append(keystore.derive(v, bytes([i]) * 16, SEED))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert all(r == [expected[i]] * 25 for i, r in results.items())


# --- seals -----------------------------------------------------------------------------------


def test_seal_round_trip_and_tamper(keystore: Any) -> None:
    payload = b'{"key_id":"abc","revision":3}'
    mac = keystore.seal(payload)
    assert len(mac) == 32
    assert keystore.verify_seal(payload, mac) is None
    for bad_payload, bad_mac in [
        (payload + b" ", mac),
        (payload.replace(b"3", b"4"), mac),
        (payload, bytes([mac[0] ^ 1]) + mac[1:]),
        (payload, mac[:-1]),
        (payload, b""),
    ]:
        with pytest.raises(IntegrityFailure):
            keystore.verify_seal(bad_payload, bad_mac)


def test_seal_key_is_not_a_master_key(keystore: Any) -> None:
    message = b"sceau/dk/v1" + KEY_ID + SEED
    derived = keystore.derive(keystore.current_master_version(), KEY_ID, SEED)
    assert keystore.seal(message) != derived


# --- signatures ------------------------------------------------------------------------------


def _independent_verify(public_jwk: Any, data: bytes, signature: bytes) -> None:
    """Verify with `cryptography` directly, not through the keystore's own helper."""
    if public_jwk["alg"] == "EdDSA":
        Ed25519PublicKey.from_public_bytes(b64u_decode(public_jwk["x"])).verify(signature, data)
    else:
        assert public_jwk["alg"] == "ES256" and len(signature) == 64
        key = ec.EllipticCurvePublicNumbers(
            int.from_bytes(b64u_decode(public_jwk["x"]), "big"),
            int.from_bytes(b64u_decode(public_jwk["y"]), "big"),
            ec.SECP256R1(),
        ).public_key()
        der = encode_dss_signature(
            int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
        )
        key.verify(der, data, ec.ECDSA(hashes.SHA256()))


@pytest.mark.parametrize("signing_alg", [None, "ES256"])
@pytest.mark.parametrize("purpose", list(KeyPurpose))
def test_sign_verifies_with_public_jwk(
    make_keystore_settings: Any, purpose: KeyPurpose, signing_alg: str | None
) -> None:
    settings = make_keystore_settings(signing_alg=signing_alg)
    init_keystore(settings)
    with open_keystore(settings) as ks:
        data = b"hash of an audit record"
        info, signature = ks.sign(purpose, data)
        assert info == ks.signing_key(purpose)
        assert info.alg == (signing_alg or "EdDSA")  # SoftHSM2 2.6 offers CKM_EDDSA
        assert info.purpose is purpose and len(signature) == 64
        assert info.public_jwk["kid"] == info.kid == jwk_thumbprint(info.public_jwk)
        assert info.public_jwk["use"] == "sig" and info.public_jwk["alg"] == info.alg
        _independent_verify(info.public_jwk, data, signature)
        verify_signature(info.public_jwk, data, signature)
        with pytest.raises(InvalidSignature):
            _independent_verify(info.public_jwk, data + b"x", signature)
        with pytest.raises(IntegrityFailure):
            verify_signature(info.public_jwk, data, bytes(64))


def test_jwks_contents_and_signing_rotation(keystore: Any) -> None:
    old_response = keystore.signing_key(KeyPurpose.RESPONSE)
    old_audit = keystore.signing_key(KeyPurpose.AUDIT)
    assert old_response.kid != old_audit.kid
    new_audit = keystore.rotate_signing(KeyPurpose.AUDIT)
    assert new_audit.version == old_audit.version + 1 and new_audit.kid != old_audit.kid
    assert keystore.signing_key(KeyPurpose.AUDIT) == new_audit
    assert keystore.sign(KeyPurpose.AUDIT, b"x")[0] == new_audit
    assert keystore.signing_key(KeyPurpose.RESPONSE) == old_response
    assert keystore.audit_kids() == [new_audit.kid, old_audit.kid]

    jwks = keystore.public_jwks()
    by_kid = {k["kid"]: k for k in jwks["keys"]}
    assert len(by_kid) == len(jwks["keys"]) == 5
    ec_kid = keystore.encryption_kid()
    assert ec_kid != keystore.jwe_kid()
    assert {old_response.kid, old_audit.kid, new_audit.kid, keystore.jwe_kid(), ec_kid} == set(
        by_kid)
    for key in jwks["keys"]:
        assert key["kid"] == jwk_thumbprint(key)
        assert not {"d", "p", "q", "dp", "dq", "qi"} & set(key)  # public halves only
    enc = by_kid[keystore.jwe_kid()]
    assert (enc["kty"], enc["use"], enc["alg"]) == ("RSA", "enc", "RSA-OAEP-256")
    assert len(b64u_decode(enc["n"])) * 8 == 3072
    ec_enc = by_kid[ec_kid]
    assert (ec_enc["kty"], ec_enc["crv"], ec_enc["use"], ec_enc["alg"]) == (
        "EC", "P-256", "enc", "ECDH-ES+A256KW")
    assert all(by_kid[k]["use"] == "sig" for k in (old_audit.kid, new_audit.kid))
    json.dumps(jwks)  # serializable as is


def test_jwe_key_decrypts_what_its_public_half_encrypts(keystore: Any) -> None:
    public = jwk.JWK(**keystore.jwe_public_jwk())
    token = jwe.JWE(b"inner jws", json.dumps(
        {"alg": "RSA-OAEP-256", "enc": "A256GCM", "kid": keystore.jwe_kid()}
    ))
    token.add_recipient(public)
    compact = token.serialize(compact=True)
    private = jwk.JWK(**keystore.jwe_private_jwk())
    assert private.has_private and private.thumbprint() == keystore.jwe_kid()
    opened = jwe.JWE()
    opened.deserialize(compact, key=private)
    assert opened.payload == b"inner jws"


# --- self-test and health ------------------------------------------------------------------


def test_self_test_passes(keystore: Any) -> None:
    keystore.self_test()
    keystore.check_health()


@pytest.mark.parametrize("name", SELF_TESTS)
def test_self_test_forced_failure(keystore: Any, name: str) -> None:
    with pytest.raises(KeystoreUnavailable, match=f"self-test failed: {name}$"):
        keystore.self_test(forced=name)


def test_self_test_unknown_forced_name(keystore: Any) -> None:
    with pytest.raises(KeystoreUnavailable, match="keystore.selftest_fail names no self-test"):
        keystore.self_test(forced="no-such-test")


# --- lifecycle and files -------------------------------------------------------------------


def test_init_refuses_twice(keystore_settings: KeystoreSettings) -> None:
    with pytest.raises(ConfigError, match="already"):
        init_keystore(keystore_settings)


def test_status_lists_objects_without_secrets(keystore: Any) -> None:
    rows = keystore.status()
    labels = {r["label"] for r in rows}
    assert {"sceau-master-v1", "sceau-seal-v1", "sceau-response-v1", "sceau-audit-v1"} <= labels
    for row in rows:
        assert {"label", "kind", "version", "kid", "current", "retired"} <= set(row)
        assert not {"key", "value", "d", "pkcs8"} & set(row)
    text = json.dumps(rows)
    assert keystore.jwe_private_jwk()["d"] not in text


def test_file_permissions(keystore: Any, keystore_settings: KeystoreSettings) -> None:
    path = keystore_settings.path
    assert stat.S_IMODE(path.stat().st_mode) == 0o700
    files = list(path.iterdir())
    assert files and {f.name for f in files} >= {"jwe.json"}
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f.name


def test_open_refuses_group_readable_files(
    keystore: Any, keystore_settings: KeystoreSettings
) -> None:
    jwe_file = keystore_settings.path / "jwe.json"
    jwe_file.chmod(0o644)
    with pytest.raises(KeystoreUnavailable, match="chmod 600"):
        open_keystore(keystore_settings)


def test_open_uninitialized(make_keystore_settings: Any) -> None:
    with pytest.raises(KeystoreUnavailable):
        open_keystore(make_keystore_settings())


def test_passphrase_protected_round_trip(
    make_keystore_settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SCEAU_TEST_PASSPHRASE", "correct horse battery staple")
    settings = make_keystore_settings(passphrase_env="SCEAU_TEST_PASSPHRASE")
    init_keystore(settings)
    with open_keystore(settings) as ks:
        v = ks.rotate_master()
        key = ks.derive(v, KEY_ID, SEED)
        private_d = ks.jwe_private_jwk()["d"]
    for f in settings.path.iterdir():
        doc = json.loads(f.read_text())
        assert doc["enc"]["kdf"] == "scrypt" and "data" not in doc
        assert private_d not in f.read_text()
    with open_keystore(settings) as ks:
        assert ks.derive(v, KEY_ID, SEED) == key

    monkeypatch.setenv("SCEAU_TEST_PASSPHRASE", "wrong")
    with pytest.raises(KeystoreUnavailable, match="wrong passphrase"):
        open_keystore(settings)
    monkeypatch.delenv("SCEAU_TEST_PASSPHRASE")
    with pytest.raises(KeystoreUnavailable, match="passphrase-protected"):
        open_keystore(settings)


def test_passphrase_set_for_unprotected_keystore(
    keystore_settings: KeystoreSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SCEAU_TEST_PASSPHRASE", "late")
    settings = KeystoreSettings(
        keystore_settings.path,
        **{**_fields(keystore_settings), "passphrase_env": "SCEAU_TEST_PASSPHRASE"},
    )
    with pytest.raises(ConfigError, match="not passphrase-protected"):
        open_keystore(settings)


def test_tampered_protection_header_is_refused(
    make_keystore_settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SCEAU_TEST_PASSPHRASE", "pw")
    settings = make_keystore_settings(passphrase_env="SCEAU_TEST_PASSPHRASE")
    init_keystore(settings)
    target = settings.path / "jwe.json"
    doc = json.loads(target.read_text())
    doc["enc"]["n"] = doc["enc"]["n"] // 2  # a weaker KDF smuggled in: AAD must catch it
    target.write_text(json.dumps(doc))
    with pytest.raises(KeystoreUnavailable, match="cannot unlock"):
        open_keystore(settings)


@pytest.mark.pkcs11
def test_backends_agree(tmp_path: Path, settings_for: Any) -> None:
    """File and PKCS#11 keystores holding the same master bytes derive the same data keys."""
    raw = os.urandom(32)
    derived = []
    for backend in ("file", "pkcs11"):
        settings = settings_for(backend, tmp_path / backend)
        init_keystore(settings)
        with open_keystore(settings) as ks:
            ks.import_master(5, raw)
            derived.append(ks.derive(5, KEY_ID, SEED))
    assert derived[0] == derived[1] == hmac.new(
        raw, b"sceau/dk/v1" + KEY_ID + SEED, hashlib.sha256
    ).digest()


def _fields(settings: KeystoreSettings) -> dict[str, Any]:
    names = ("backend", "passphrase_env", "pkcs11_module", "pkcs11_token", "pin_env",
             "pin_file", "pool_size", "signing_alg")
    return {n: getattr(settings, n) for n in names}
