"""The inbound-JWE keys: EC P-256 (preferred) beside RSA, on both backends, and the upgrade
of a keystore made before the EC key existed (SECURITY-CASES 49, docs/hsm.md)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from jwcrypto import jwe, jwk

from sceau.core.b64 import b64u_encode
from sceau.errors import KeystoreUnavailable
from sceau.keystore import KeystoreSettings, init_keystore, open_keystore
from sceau.keystore.file import derive_ec_jwe_jwk, read_secret_file, write_secret_file
from support import make_server

JWE_FILE = "jwe.json"


def _downgrade(settings: KeystoreSettings) -> dict[str, Any]:
    """Rewrite jwe.json as a keystore from before the EC key wrote it; the RSA JWK."""
    path = settings.path / JWE_FILE
    data = read_secret_file(path, settings.passphrase(), settings.passphrase_env)
    write_secret_file(path, {"jwk": data["jwk"]}, settings.passphrase())
    return dict(data["jwk"])


def _stored(settings: KeystoreSettings) -> dict[str, Any]:
    data: dict[str, Any] = read_secret_file(
        settings.path / JWE_FILE, settings.passphrase(), settings.passphrase_env)
    return data


def test_a_new_keystore_holds_both_keys_ec_preferred(keystore: Any,
                                                     keystore_settings: KeystoreSettings) -> None:
    publics = keystore.jwe_public_jwks()
    assert [(k["kty"], k["alg"], k["use"]) for k in publics] == [
        ("EC", "ECDH-ES+A256KW", "enc"), ("RSA", "RSA-OAEP-256", "enc")]
    assert keystore.encryption_kid() == publics[0]["kid"] != keystore.jwe_kid()
    assert publics[1] == dict(keystore.jwe_public_jwk())  # the RSA key keeps its old API
    privates = keystore.jwe_private_jwks()
    assert [k["kid"] for k in privates] == [k["kid"] for k in publics]
    assert all("d" in k for k in privates) and not any("d" in k for k in publics)
    stored = _stored(keystore_settings)
    assert stored["ec_jwk"]["kid"] == keystore.encryption_kid()
    # A new keystore's EC key is random, not the one derived for upgrades.
    assert derive_ec_jwe_jwk(stored["jwk"])["kid"] != keystore.encryption_kid()


def test_each_jwe_key_opens_what_its_public_half_encrypts(keystore: Any) -> None:
    for public, private in zip(keystore.jwe_public_jwks(), keystore.jwe_private_jwks(),
                               strict=True):
        token = jwe.JWE(b"inner jws", json.dumps(
            {"alg": public["alg"], "enc": "A256GCM", "kid": public["kid"]}))
        token.add_recipient(jwk.JWK(**public))
        opened = jwe.JWE()
        opened.deserialize(token.serialize(compact=True), key=jwk.JWK(**private))
        assert opened.payload == b"inner jws"


def test_status_lists_both_jwe_keys(keystore: Any) -> None:
    rows = [r for r in keystore.status() if r["kind"] == "jwe"]
    assert [(r["label"], r["alg"], r["kid"]) for r in rows] == [
        ("jwe", "RSA-OAEP-256", keystore.jwe_kid()),
        ("jwe-ec", "ECDH-ES+A256KW", keystore.encryption_kid())]


def test_an_old_keystore_gets_the_derived_key_and_keeps_it(
        keystore_settings: KeystoreSettings) -> None:
    rsa_jwk = _downgrade(keystore_settings)
    old_file = (keystore_settings.path / JWE_FILE).read_bytes()
    with open_keystore(keystore_settings) as ks:
        assert ks.jwe_kid() == rsa_jwk["kid"]  # the RSA key is unchanged
        upgraded = ks.encryption_kid()
        ks.self_test()  # ecdh_p256 with the new key
    assert upgraded == derive_ec_jwe_jwk(rsa_jwk)["kid"]
    assert _stored(keystore_settings)["ec_jwk"]["kid"] == upgraded  # written back
    with open_keystore(keystore_settings) as ks:
        assert ks.encryption_kid() == upgraded
    # Another node with its own copy of the old file reaches the same key on its own.
    (keystore_settings.path / JWE_FILE).write_bytes(old_file)
    with open_keystore(keystore_settings) as ks:
        assert ks.encryption_kid() == upgraded


def test_the_upgrade_keeps_a_passphrase_protected_file_protected(
        make_keystore_settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCEAU_TEST_PASSPHRASE", "correct horse battery staple")
    settings = make_keystore_settings(passphrase_env="SCEAU_TEST_PASSPHRASE")
    init_keystore(settings)
    rsa_jwk = _downgrade(settings)
    with open_keystore(settings) as ks:
        ec_private = [k for k in ks.jwe_private_jwks() if k["kty"] == "EC"][0]
    text = (settings.path / JWE_FILE).read_text()
    doc = json.loads(text)
    assert doc["enc"]["kdf"] == "scrypt" and "data" not in doc
    assert ec_private["d"] not in text and rsa_jwk["d"] not in text
    assert _stored(settings)["ec_jwk"]["d"] == ec_private["d"]


@contextlib.contextmanager
def _unwritable(directory: Path) -> Iterator[None]:
    """Make ``directory`` refuse new files, as a read-only mount would (root included)."""
    directory.chmod(0o500)
    immutable = False
    probe = directory / ".probe"
    try:
        try:
            probe.touch()
        except OSError:
            pass
        else:
            probe.unlink()
            immutable = subprocess.run(["chattr", "+i", str(directory)],
                                       capture_output=True).returncode == 0
            if not immutable:
                pytest.skip("cannot make a directory unwritable here")
        yield
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(directory)], check=True)
        directory.chmod(0o700)


@pytest.mark.skipif(shutil.which("chattr") is None and os.geteuid() == 0,
                    reason="root without chattr can write anywhere")
def test_an_old_keystore_on_a_read_only_dir_still_opens(
        keystore_settings: KeystoreSettings) -> None:
    rsa_jwk = _downgrade(keystore_settings)
    with _unwritable(keystore_settings.path), open_keystore(keystore_settings) as ks:
        assert ks.encryption_kid() == derive_ec_jwe_jwk(rsa_jwk)["kid"]
    assert "ec_jwk" not in _stored(keystore_settings)  # nothing could be written


@pytest.mark.parametrize("member", ["x", "d", "kid", "crv"])
def test_a_tampered_ec_key_is_refused(keystore_settings: KeystoreSettings,
                                      member: str) -> None:
    path = keystore_settings.path / JWE_FILE
    data = _stored(keystore_settings)
    other = derive_ec_jwe_jwk({"d": b64u_encode(os.urandom(32))})
    data["ec_jwk"][member] = other[member] if member != "crv" else "P-384"
    write_secret_file(path, data, None)
    with pytest.raises(KeystoreUnavailable, match="no usable JWE key"):
        open_keystore(keystore_settings)


def test_the_derivation_is_pinned() -> None:
    """Nodes on different versions must derive the same key: a change here breaks them."""
    derived = derive_ec_jwe_jwk({"d": b64u_encode(bytes(range(256)))})
    assert derived["kid"] == "GJ5NBLDpAyn8TDCkXvcRbkQgCNwUb5gCYu5mLkdFGGo"
    assert derived["d"] == "5j9V-66wy1Bk877mG4n_Kc8ulOOctMdKqGOZdgT7pu4"
    assert (derived["crv"], derived["alg"], derived["use"]) == ("P-256", "ECDH-ES+A256KW", "enc")


@pytest.mark.pkcs11
def test_migration_to_a_token_copies_both_jwe_keys(tmp_path: Path, settings_for: Any) -> None:
    from sceau.keystore.pkcs11 import migrate_file_to_pkcs11

    source = settings_for("file", tmp_path / "file")
    target = settings_for("pkcs11", tmp_path / "token")
    init_keystore(source)
    migrate_file_to_pkcs11(source, target)
    with open_keystore(source) as old, open_keystore(target) as new:
        assert new.jwe_private_jwks() == old.jwe_private_jwks()
        assert new.encryption_kid() == old.encryption_kid()


def test_a_data_dir_from_before_the_ec_key_starts_and_gets_one(tmp_path: Path) -> None:
    """The upgrade end to end: `sceau serve` on an old data dir publishes and uses both."""
    from sceau.jose.client import sign_request, wrap_for_service

    server = make_server(tmp_path, start=False)
    settings = KeystoreSettings(server.data_dir / "keystore")
    rsa_jwk = _downgrade(settings)
    server.start()
    try:
        with server.http() as http:
            config = http.get(f"{server.url}/.well-known/sceau-configuration").json()
            jwks = http.get(f"{server.url}/.well-known/jwks.json").json()
        derived = derive_ec_jwe_jwk(rsa_jwk)
        assert config["encryption_kid"] == derived["kid"]
        enc = {k["kid"]: k for k in jwks["keys"] if k["use"] == "enc"}
        assert set(enc) == {rsa_jwk["kid"], derived["kid"]}
        app = server.register_app()
        for kid in enc:  # a client pinned to the RSA key keeps working, the EC one works
            jws = sign_request(app.identity, sub="alice@example.com", aud=server.url,
                               op="encrypt", params={"plaintext": "aGk"}, now=int(time.time()))
            response = httpx.post(f"{server.url}/v1/encrypt", verify=server.cert,
                                  content=wrap_for_service(jws, enc[kid]),
                                  headers={"Content-Type": "application/jose"})
            assert response.status_code == 200, response.text
    finally:
        server.stop()
    assert _stored(settings)["ec_jwk"]["kid"] == derived["kid"]

