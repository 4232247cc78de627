"""Gmail client-side encryption (S/MIME) over real HTTPS on every backend (SPEC §11).

Alice's key pair and certificate are made here with the `cryptography` library, as her
organisation's CA would; the private key is wrapped by the host CLI (`sceau cse
wrap-private-key`), and what Gmail would do with the files it writes is played by the
same library: encrypt a content key to the certificate's public key, verify a signature
with it. Tokens are real JWTs of this module's identity provider and of Google's Gmail
token issuer (roles `decrypter` and `signer`, the key pair's `spki_hash`), their JWKS
served by the loopback HTTPS server. Nothing in Sceau is turned off.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from workspace_support import Kacls, SigningKey, answered_ok, google_error

from audit_support import records
from sceau.core.workspace import parse_wrapped_private_key
from support import Server, run_cli

ALICE = "alice@example.com"
BOB = "bob@example.com"
ADMIN = "gmail.admin@example.com"
OAEP256 = "RSA/ECB/OAEPwithSHA-256andMGF1Padding"


# --- Alice's S/MIME key pair, made as her organisation's CA would ---------------------------


def _certificates(email: str, key: rsa.RSAPrivateKey) -> tuple[x509.Certificate,
                                                                x509.Certificate]:
    """A CA and a leaf S/MIME certificate for ``email`` on ``key``'s public key."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Example S/MIME CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=3650))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA256()))
    leaf = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Alice")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=365))
            .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(email)]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256()))
    return ca, leaf


def _spki_hash(public: rsa.RSAPublicKey) -> str:
    der = public.public_bytes(serialization.Encoding.DER,
                              serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


@dataclass
class Mailbox:
    """A mailbox's key pair as Gmail holds it after the upload."""

    email: str
    public: rsa.RSAPublicKey  # the certificate's, not the private key's
    spki_hash: str
    wrapped: str  # kaclsData
    key_id: str
    out: Path


def _wrap_with_cli(server: Server, directory: Path, email: str, *, key_format: Any,
                   extra: tuple[str, ...] = ()) -> Mailbox:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca, leaf = _certificates(email, key)
    key_path, cert_path = directory / "key.pem", directory / "chain.pem"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, key_format,
                                           serialization.NoEncryption()))
    # The CA first: the CLI finds the leaf by its public key.
    cert_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM)
                          + leaf.public_bytes(serialization.Encoding.PEM))
    out = directory / "gmail"
    done = run_cli("cse", "wrap-private-key", email.upper(), "--key", str(key_path),
                   "--cert", str(cert_path), "--out-dir", str(out), *extra,
                   "--data-dir", str(server.data_dir), env=server.env)
    summary = json.loads(done.stdout)
    wrap = json.loads((out / f"{email}.wrap").read_text())
    chain = pkcs7.load_pem_pkcs7_certificates((out / f"{email}.p7pem").read_bytes())
    # PKCS#7 keeps certificates in a SET: the whole chain is there, in DER order.
    assert {c.fingerprint(hashes.SHA256()) for c in chain} == {
        leaf.fingerprint(hashes.SHA256()), ca.fingerprint(hashes.SHA256())}
    public = leaf.public_key()
    assert isinstance(public, rsa.RSAPublicKey)
    return Mailbox(email, public, _spki_hash(public), wrap["wrapped_private_key"],
                   summary["key_id"], out)


@pytest.fixture(scope="module")
def alice(ws_server: Server, tmp_path_factory: pytest.TempPathFactory) -> Mailbox:
    return _wrap_with_cli(ws_server, tmp_path_factory.mktemp("alice"), ALICE,
                          key_format=serialization.PrivateFormat.TraditionalOpenSSL)


# --- Gmail's side -------------------------------------------------------------------------------


def _encrypt(public: rsa.RSAPublicKey, cek: bytes, algorithm: str,
             label: bytes | None = None) -> str:
    if algorithm == "RSA/ECB/PKCS1Padding":
        scheme: Any = padding.PKCS1v15()
    else:
        h = {"SHA-1": hashes.SHA1, "SHA-256": hashes.SHA256,
             "SHA-512": hashes.SHA512}[algorithm.split("with")[1].split("and")[0]]
        scheme = padding.OAEP(mgf=padding.MGF1(h()), algorithm=h(), label=label)
    return base64.b64encode(public.encrypt(cek, scheme)).decode()


def _decrypt_body(kacls: Kacls, box: Mailbox, edek: str, *, email: str = ALICE,
                  algorithm: str = OAEP256, **authz: Any) -> dict[str, Any]:
    return {
        "authentication": kacls.authn(email),
        "authorization": kacls.gmail_authz(email, authz.pop("role", "decrypter"),
                                           authz.pop("spki_hash", box.spki_hash), **authz),
        "algorithm": algorithm, "encrypted_data_encryption_key": edek,
        "wrapped_private_key": box.wrapped, "reason": "{client:'gmail' op:'decrypt'}",
    }


def _sign_body(kacls: Kacls, box: Mailbox, digest: bytes, *, email: str = ALICE,
               algorithm: str = "SHA256withRSA", **authz: Any) -> dict[str, Any]:
    return {
        "authentication": kacls.authn(email),
        "authorization": kacls.gmail_authz(email, authz.pop("role", "signer"),
                                           authz.pop("spki_hash", box.spki_hash), **authz),
        "algorithm": algorithm, "digest": base64.b64encode(digest).decode(),
        "wrapped_private_key": box.wrapped, "reason": "{client:'gmail' op:'sign'}",
    }


def _last(server: Server, action: str) -> dict[str, Any]:
    return [r for r in records(server) if r["action"] == action][-1]


# --- the files for Gmail ------------------------------------------------------------------------


def test_the_cli_prepares_the_key_pair_for_gmail(alice: Mailbox, ws_server: Server,
                                                 kacls: Kacls) -> None:
    wrap = json.loads((alice.out / f"{ALICE}.wrap").read_text())
    assert wrap["kacls_url"] == kacls.kacls_url
    body = json.loads((alice.out / f"{ALICE}.keypair.json").read_text())
    assert body["pkcs7"] == (alice.out / f"{ALICE}.p7pem").read_text()
    assert body["pkcs7"].startswith("-----BEGIN PKCS7-----")
    assert body["privateKeyMetadata"] == [{"kaclsKeyMetadata": {
        "kaclsUri": kacls.kacls_url, "kaclsData": alice.wrapped}}]
    # The wrapped key names its mailbox and public key; the private key is not in it.
    parsed = parse_wrapped_private_key(base64.b64decode(alice.wrapped))
    assert parsed.email == ALICE
    assert base64.b64encode(parsed.spki_hash).decode() == alice.spki_hash
    # One Sceau key per wrapped private key: owned by the mailbox, application
    # google-workspace, named after the mailbox and the public key.
    app = ws_server.register_app("gmail-owner", users=(ALICE,))
    with ws_server.client(app, user=ALICE) as client:
        described = client.describe_key(alice.key_id)
    assert described["owner"] == ALICE and described["application"] == "google-workspace"
    assert described["name"].startswith(f"gmail-smime/{ALICE}/")
    rec = _last(ws_server, "CSE_WRAP_PRIVATE_KEY")
    assert rec["outcome"] == "GRANTED" and rec["key"] == alice.key_id and rec["app"] == "cli"
    assert rec["details"]["mailbox"] == ALICE
    assert rec["details"]["spki_hash"] == alice.spki_hash
    # The CLI refuses to overwrite what it wrote (and wraps nothing then).
    refused = run_cli("cse", "wrap-private-key", ALICE, "--key", str(alice.out / "x"),
                      "--cert", str(alice.out / "y"), "--out-dir", str(alice.out),
                      "--data-dir", str(ws_server.data_dir), env=ws_server.env, check=False)
    assert refused.returncode != 0


def test_the_cli_refuses_a_certificate_of_another_mailbox(ws_server: Server,
                                                          tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca, leaf = _certificates(BOB, key)
    (tmp_path / "k.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    (tmp_path / "c.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (tmp_path / "o.pem").write_bytes(other.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    before = len([r for r in records(ws_server) if r["action"] == "CSE_WRAP_PRIVATE_KEY"])
    for who, key_file, expect in ((ALICE, "k.pem", "does not name"),
                                  (BOB, "o.pem", "private key's certificate")):
        done = run_cli("cse", "wrap-private-key", who, "--key", str(tmp_path / key_file),
                       "--cert", str(tmp_path / "c.pem"), "--out-dir", str(tmp_path / "out"),
                       "--data-dir", str(ws_server.data_dir), env=ws_server.env, check=False)
        assert done.returncode != 0 and expect in done.stderr.decode()
    after = len([r for r in records(ws_server) if r["action"] == "CSE_WRAP_PRIVATE_KEY"])
    assert after == before and not (tmp_path / "out").exists()


# --- round trips with an independent implementation ---------------------------------------------


@pytest.mark.parametrize("algorithm", ["SHA256withRSA", "SHA512withRSA", "SHA256withRSA/PSS"])
def test_privatekeysign_verifies_with_the_certificate(algorithm: str, alice: Mailbox,
                                                      kacls: Kacls, ws_server: Server) -> None:
    signed_attributes = b"\x31\x45" + os.urandom(69)  # stands in for the DER SignedAttributes
    h = hashes.SHA512() if "512" in algorithm else hashes.SHA256()
    hasher = hashes.Hash(h)
    hasher.update(signed_attributes)
    digest = hasher.finalize()
    signature = base64.b64decode(answered_ok(kacls.post("privatekeysign", _sign_body(
        kacls, alice, digest, algorithm=algorithm)))["signature"])
    scheme: Any = (padding.PSS(mgf=padding.MGF1(h), salt_length=h.digest_size)
                   if algorithm.endswith("/PSS") else padding.PKCS1v15())
    alice.public.verify(signature, signed_attributes, scheme, h)
    with pytest.raises(InvalidSignature):
        alice.public.verify(signature, signed_attributes + b"x", scheme, h)
    rec = _last(ws_server, "CSE_PRIVATE_KEY_SIGN")
    assert (rec["outcome"], rec["user"], rec["key"]) == ("GRANTED", ALICE, alice.key_id)
    assert rec["details"]["message_id"].endswith("@mail.example.com>")


@pytest.mark.parametrize("algorithm", ["RSA/ECB/PKCS1Padding", OAEP256,
                                       "RSA/ECB/OAEPwithSHA-1andMGF1Padding"])
def test_privatekeydecrypt_opens_what_was_encrypted_to_the_certificate(
        algorithm: str, alice: Mailbox, kacls: Kacls, ws_server: Server) -> None:
    cek = os.urandom(32)
    response = answered_ok(kacls.post("privatekeydecrypt", _decrypt_body(
        kacls, alice, _encrypt(alice.public, cek, algorithm), algorithm=algorithm)))
    assert base64.b64decode(response["data_encryption_key"]) == cek
    rec = _last(ws_server, "CSE_PRIVATE_KEY_DECRYPT")
    assert (rec["outcome"], rec["user"], rec["key"]) == ("GRANTED", ALICE, alice.key_id)
    assert rec["details"]["mailbox"] == ALICE


def test_an_oaep_label_is_honoured(alice: Mailbox, kacls: Kacls) -> None:
    cek = os.urandom(32)
    edek = _encrypt(alice.public, cek, OAEP256, label=b"smime")
    body = _decrypt_body(kacls, alice, edek)
    body["rsa_oaep_label"] = base64.b64encode(b"smime").decode()
    assert base64.b64decode(answered_ok(kacls.post("privatekeydecrypt", body))
                            ["data_encryption_key"]) == cek
    body = _decrypt_body(kacls, alice, edek)  # no label: does not decrypt
    google_error(kacls.post("privatekeydecrypt", body), 409)


# --- every check, performed and refused ---------------------------------------------------------


def _other_key(issuer: Any, claims: dict[str, Any]) -> str:
    return issuer.token(claims, key=SigningKey(issuer.key.kid, SigningKey.rsa().private))


def _cases(kacls: Kacls, box: Mailbox) -> dict[str, tuple[dict[str, Any], int]]:
    """Name -> (members replacing the good request's, expected status)."""
    v = kacls.vendors
    raw = parse_wrapped_private_key(base64.b64decode(box.wrapped))
    edited = bytearray(base64.b64decode(box.wrapped))
    edited[-1] ^= 1
    # The mailbox in the clear, edited to bob's (same length): refused before any opening.
    relabelled = base64.b64decode(box.wrapped).replace(ALICE.encode(), b"alicf@example.com")
    good_authz = {"aud": "cse-authorization", "email": ALICE, "role": "decrypter",
                  "resource_name": "//googleapis.com/gmail/messages/1", "perimeter_id": "",
                  "kacls_url": kacls.kacls_url, "spki_hash": box.spki_hash,
                  "spki_hash_algorithm": "SHA-256"}

    def authz(**changes: Any) -> dict[str, Any]:
        return {"authorization": kacls.gmail_authz(ALICE, changes.pop("role", "decrypter"),
                                                   changes.pop("spki_hash", box.spki_hash),
                                                   **changes)}

    return {
        "authn wrong aud": ({"authentication": v.idp.token({"aud": "x", "email": ALICE})},
                            401),
        "authn expired": ({"authentication": v.idp.token(
            {"aud": v.audience, "email": ALICE, "exp": 1_000_000})}, 401),
        "authn bad signature": ({"authentication": _other_key(
            v.idp, {"aud": v.audience, "email": ALICE})}, 401),
        "authz wrong aud": (authz(aud="cse-authorization-x"), 401),
        "authz wrong iss": ({"authorization": v.idp.token(good_authz)}, 401),
        "authz bad signature": ({"authorization": _other_key(v.gmail, good_authz)}, 401),
        "authz expired": (authz(exp=1_000_000), 401),
        "authz without spki_hash": (authz(spki_hash=None), 401),
        "authz spki_hash of another algorithm": (authz(spki_hash_algorithm="SHA-1"), 401),
        "resource_name over 512 bytes": (authz(resource_name="r" * 513), 401),
        "role signer": (authz(role="signer"), 403),
        "role reader": (authz(role="reader"), 403),
        "role writer": (authz(role="writer"), 403),
        "email mismatch": ({"authentication": kacls.authn(BOB)}, 403),
        "wrong kacls_url": (authz(kacls_url="https://evil.example/cse"), 403),
        "spki_hash of another key": (authz(spki_hash=base64.b64encode(
            hashlib.sha256(b"other").digest()).decode()), 403),
        "perimeter_id mismatch": (authz(perimeter_id="perimeter2"), 403),
        "delegated token": (authz(delegated_to="robot@example.com"), 403),
        "tampered wrapped key": ({"wrapped_private_key": base64.b64encode(
            bytes(edited)).decode()}, 409),
        "mailbox edited in the clear": ({"wrapped_private_key": base64.b64encode(
            relabelled).decode()}, 403),
        "a Drive wrapped key instead": ({"wrapped_private_key": base64.b64encode(
            b"SCK1\x00" + raw.envelope).decode()}, 400),
        "unsupported algorithm": ({"algorithm": "RSA/ECB/NoPadding"}, 400),
    }


CASES = ["authn wrong aud", "authn expired", "authn bad signature", "authz wrong aud",
         "authz wrong iss", "authz bad signature", "authz expired", "authz without spki_hash",
         "authz spki_hash of another algorithm", "resource_name over 512 bytes",
         "role signer", "role reader", "role writer", "email mismatch", "wrong kacls_url",
         "spki_hash of another key", "perimeter_id mismatch", "delegated token",
         "tampered wrapped key", "mailbox edited in the clear", "a Drive wrapped key instead",
         "unsupported algorithm"]


@pytest.mark.parametrize("case", CASES)
def test_every_privatekeydecrypt_check_refuses(case: str, alice: Mailbox, kacls: Kacls,
                                               ws_server: Server) -> None:
    cek = os.urandom(32)
    edek = _encrypt(alice.public, cek, OAEP256)
    good = _decrypt_body(kacls, alice, edek)
    assert base64.b64decode(answered_ok(kacls.post("privatekeydecrypt", good))
                            ["data_encryption_key"]) == cek  # the control is served
    cases = _cases(kacls, alice)
    assert list(cases) == CASES
    changes, status = cases[case]
    body = google_error(kacls.post("privatekeydecrypt", {**good, **changes}), status)
    assert base64.b64encode(cek).decode() not in json.dumps(body)
    rec = _last(ws_server, "CSE_PRIVATE_KEY_DECRYPT")
    assert rec["outcome"] in ("DENIED", "ERROR") and rec["app"] == "google-workspace"


SIGN_ROLES = [("signer", 200), ("decrypter", 403), ("writer", 403), ("reader", 403)]


@pytest.mark.parametrize(("role", "status"), SIGN_ROLES)
def test_privatekeysign_role(role: str, status: int, alice: Mailbox, kacls: Kacls) -> None:
    response = kacls.post("privatekeysign", _sign_body(kacls, alice, os.urandom(32),
                                                       role=role))
    if status == 200:
        answered_ok(response)
    else:
        google_error(response, status)


def test_privatekeysign_refuses_malformed_requests(alice: Mailbox, kacls: Kacls) -> None:
    digest = os.urandom(32)
    for algorithm in ("SHA1withRSA", "MD5withRSA", "NONEwithRSA"):
        google_error(kacls.post("privatekeysign", _sign_body(kacls, alice, digest,
                                                         algorithm=algorithm)), 400)
    # A digest of the wrong size for the algorithm.
    google_error(kacls.post("privatekeysign", _sign_body(kacls, alice, os.urandom(20))), 400)
    body = _sign_body(kacls, alice, digest, algorithm="SHA256withRSA/PSS")
    body["rsa_pss_salt_length"] = 4096
    google_error(kacls.post("privatekeysign", body), 400)
    # Someone else's tokens, both naming bob: the wrapped key is alice's.
    google_error(kacls.post("privatekeysign", _sign_body(kacls, alice, digest, email=BOB)), 403)


# --- the wrapped key is bound to its mailbox; the mailbox key decides ----------------------------


def test_the_wrapped_key_serves_its_mailbox_only(alice: Mailbox, kacls: Kacls,
                                                 ws_server: Server) -> None:
    """Bob, with valid tokens of his own naming alice's key, is refused (SPEC §6: he is
    neither the owner nor authorized); alice delegates to bob with a Sceau authorization
    and he is served; she withdraws it and he is refused again."""
    cek = os.urandom(32)
    edek = _encrypt(alice.public, cek, OAEP256)
    body = google_error(kacls.post("privatekeydecrypt",
                               _decrypt_body(kacls, alice, edek, email=BOB)), 403)
    assert "not_authorized" in body["details"]
    assert _last(ws_server, "CSE_PRIVATE_KEY_DECRYPT")["user"] == BOB
    app = ws_server.register_app("gmail-delegation", users=(ALICE,))
    with ws_server.client(app, user=ALICE) as client:
        client.add_authorization(alice.key_id, BOB)
        assert base64.b64decode(answered_ok(kacls.post("privatekeydecrypt", _decrypt_body(
            kacls, alice, edek, email=BOB)))["data_encryption_key"]) == cek
        client.remove_authorization(alice.key_id, BOB)
    google_error(kacls.post("privatekeydecrypt", _decrypt_body(kacls, alice, edek, email=BOB)),
             403)


def test_a_disabled_mailbox_key_refuses_the_next_call(ws_server: Server, kacls: Kacls,
                                                      tmp_path: Path) -> None:
    box = _wrap_with_cli(ws_server, tmp_path, "carol@example.com",
                         key_format=serialization.PrivateFormat.PKCS8)
    cek = os.urandom(32)
    edek = _encrypt(box.public, cek, OAEP256)
    digest = hashlib.sha256(b"attrs").digest()

    def decrypt() -> httpx.Response:
        return kacls.post("privatekeydecrypt", _decrypt_body(kacls, box, edek,
                                                             email=box.email))

    def sign() -> httpx.Response:
        return kacls.post("privatekeysign", _sign_body(kacls, box, digest, email=box.email))

    assert answered_ok(decrypt()) and answered_ok(sign())
    app = ws_server.register_app("gmail-revoke", users=(box.email,))
    with ws_server.client(app, user=box.email) as client:
        client.disable_key(box.key_id)
        assert "key_disabled" in google_error(decrypt(), 403)["details"]
        assert "key_disabled" in google_error(sign(), 403)["details"]
        accesses = client.list_accesses(box.key_id)["accesses"]
        assert {(a["action"], a["outcome"]) for a in accesses} >= {
            ("CSE_PRIVATE_KEY_DECRYPT", "GRANTED"), ("CSE_PRIVATE_KEY_SIGN", "GRANTED"),
            ("CSE_PRIVATE_KEY_DECRYPT", "DENIED"), ("CSE_PRIVATE_KEY_SIGN", "DENIED")}
        client.enable_key(box.key_id)
        assert base64.b64decode(answered_ok(decrypt())["data_encryption_key"]) == cek
        client.destroy_key(box.key_id)  # crypto-shredding: the mailbox's mail is gone
    assert "key_destroyed" in google_error(decrypt(), 403)["details"]
    assert "key_destroyed" in google_error(sign(), 403)["details"]


def test_drive_endpoints_never_use_a_mailbox_key(alice: Mailbox, kacls: Kacls,
                                                ws_server: Server) -> None:
    """A document cannot take a mailbox key's name, and a Drive-shaped wrapped key built
    from a wrapped private key's envelope opens nothing through unwrap."""
    app = ws_server.register_app("gmail-names", users=(ALICE,))
    with ws_server.client(app, user=ALICE) as client:
        name = client.describe_key(alice.key_id)["name"]
    assert "reserved" in google_error(kacls.wrap(ALICE, name + "x", os.urandom(32)),
                                  403)["details"]
    envelope = parse_wrapped_private_key(base64.b64decode(alice.wrapped)).envelope
    forged = base64.b64encode(b"SCK1\x00" + envelope).decode()
    body = google_error(kacls.unwrap(ALICE, name, forged, role="writer"), 403)
    assert "key" not in body
    rec = _last(ws_server, "CSE_UNWRAP")
    assert rec["details"]["check"] == "resource_name" and rec["key"] == alice.key_id


# --- privileged: Takeout and wrapping by a cse_admin --------------------------------------------


def _privileged_decrypt(kacls: Kacls, box: Mailbox, edek: str, email: str = ADMIN,
                        spki_hash: str | None = None) -> httpx.Response:
    return kacls.post("privilegedprivatekeydecrypt", {
        "authentication": kacls.authn(email), "algorithm": "RSA/ECB/PKCS1Padding",
        "encrypted_data_encryption_key": edek, "wrapped_private_key": box.wrapped,
        "spki_hash": spki_hash or box.spki_hash, "spki_hash_algorithm": "SHA-256",
        "reason": "admin decrypt"})


@pytest.fixture(scope="module")
def cse_admin(ws_server: Server) -> str:
    run_cli("cse", "admins", "add", ADMIN, "--data-dir", str(ws_server.data_dir),
            env=ws_server.env)
    return ADMIN


def test_privileged_private_key_decrypt_needs_cse_admin(alice: Mailbox, kacls: Kacls,
                                                        ws_server: Server,
                                                        cse_admin: str) -> None:
    cek = os.urandom(32)
    edek = _encrypt(alice.public, cek, "RSA/ECB/PKCS1Padding")
    google_error(_privileged_decrypt(kacls, alice, edek, email=BOB), 403)
    rec = _last(ws_server, "CSE_PRIVILEGED_PRIVATE_KEY_DECRYPT")
    assert (rec["outcome"], rec["user"], rec["details"]["check"]) == ("DENIED", BOB,
                                                                      "cse_admin")
    granted = answered_ok(_privileged_decrypt(kacls, alice, edek))
    assert base64.b64decode(granted["data_encryption_key"]) == cek
    rec = _last(ws_server, "CSE_PRIVILEGED_PRIVATE_KEY_DECRYPT")
    assert (rec["outcome"], rec["user"], rec["key"]) == ("GRANTED", ADMIN, alice.key_id)
    # The body's spki_hash must name the wrapped key; the admin token alone opens nothing
    # else.
    other = base64.b64encode(hashlib.sha256(b"x").digest()).decode()
    google_error(_privileged_decrypt(kacls, alice, edek, spki_hash=other), 403)
    bad = kacls.post("privilegedprivatekeydecrypt", {
        "authentication": kacls.authn(ADMIN), "algorithm": "RSA/ECB/PKCS1Padding",
        "encrypted_data_encryption_key": edek, "wrapped_private_key": alice.wrapped,
        "spki_hash": alice.spki_hash, "spki_hash_algorithm": "MD5", "reason": "x"})
    google_error(bad, 400)


PEM_EXAMPLE = "-----BEGIN RSA PRIVATE KEY-----"


def test_wrapprivatekey_by_a_cse_admin(kacls: Kacls, ws_server: Server,
                                       cse_admin: str) -> None:
    """Google's request shape (PEM in a JSON string, line breaks written as \\n): a new
    Sceau key owned by the mailbox named in Sceau's `email` member, or by the admin."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM,
                            serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption()).decode()
    assert pem.startswith(PEM_EXAMPLE)
    as_google_shows = pem.replace("\n", "\\n")
    body = {"authentication": kacls.authn(BOB), "private_key": as_google_shows,
            "perimeter_id": "", "email": "dave@example.com"}
    google_error(kacls.post("wrapprivatekey", body), 403)  # bob is no cse_admin
    made = answered_ok(kacls.post("wrapprivatekey", {**body, "authentication": kacls.authn(ADMIN)}))
    rec = _last(ws_server, "CSE_WRAP_PRIVATE_KEY")
    assert (rec["outcome"], rec["user"], rec["details"]["mailbox"]) == (
        "GRANTED", ADMIN, "dave@example.com")
    assert pem.split("\n")[1] not in json.dumps(rec)
    dave = Mailbox("dave@example.com", key.public_key(), _spki_hash(key.public_key()),
                   made["wrapped_private_key"], rec["key"], Path("."))
    cek = os.urandom(16)
    assert base64.b64decode(answered_ok(kacls.post("privatekeydecrypt", _decrypt_body(
        kacls, dave, _encrypt(dave.public, cek, OAEP256), email=dave.email)))
        ["data_encryption_key"]) == cek
    # Without `email`: the admin's own key. base64 DER (PKCS#8) is accepted too.
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    own = answered_ok(kacls.post("wrapprivatekey", {"authentication": kacls.authn(ADMIN),
                                             "private_key": base64.b64encode(der).decode()}))
    assert parse_wrapped_private_key(base64.b64decode(own["wrapped_private_key"])
                                     ).email == ADMIN
    for bad in ("not a key", base64.b64encode(b"\x30\x03\x02\x01\x00").decode()):
        google_error(kacls.post("wrapprivatekey", {"authentication": kacls.authn(ADMIN),
                                               "private_key": bad}), 400)


# --- what /status says, what never leaks --------------------------------------------------------


def test_status_lists_gmail_and_each_works(ws_server: Server) -> None:
    status = httpx.get(f"{ws_server.url}/cse/status", verify=ws_server.cert).json()
    assert status["operations_supported"] == [
        "status", "certs", "wrap", "unwrap", "digest", "privilegedwrap", "privilegedunwrap",
        "rewrap", "privatekeydecrypt", "privatekeysign", "privilegedprivatekeydecrypt",
        "wrapprivatekey"]


def test_no_secret_in_answers_logs_or_audit(alice: Mailbox, kacls: Kacls,
                                            ws_server: Server) -> None:
    cek = os.urandom(32)
    edek = _encrypt(alice.public, cek, OAEP256)
    body = _decrypt_body(kacls, alice, edek)
    answered_ok(kacls.post("privatekeydecrypt", body))
    refused = kacls.post("privatekeydecrypt", {**body, "algorithm": "RSA/ECB/PKCS1Padding"})
    trail = json.dumps(records(ws_server))
    log = ws_server.log()
    for secret in (base64.b64encode(cek).decode(), body["authentication"],
                   body["authorization"].split(".")[2], alice.wrapped[-40:]):
        assert secret not in trail and secret not in refused.text and secret not in log
