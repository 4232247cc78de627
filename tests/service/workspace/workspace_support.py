"""Test kit for the workspace key services: real issuers, real tokens, a real JWKS server.

Nothing of Sceau is imitated here. What stands in for the outside world:

* :class:`Issuer` is an identity provider, Google's token issuer or Entra ID: an RSA key
  pair made in the test-suite, its public JWKS, and JWTs signed with it (RS256, the
  vendors' algorithm), shaped as the vendors' documentation shows;
* :class:`JwksServer` is the issuers' web server: a loopback HTTPS server (its own
  certificate, made here) that serves JWKS documents and counts the fetches.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import ssl
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

# The DEK of the request example on Google's `wrap` reference page.
GOOGLE_DOC_DEK = base64.b64decode("wHrlNOTI9mU6PBdqiq7EQA==")


def answered_ok(response: Any) -> dict[str, Any]:
    """The JSON body of a 200 answer (the test fails with the body otherwise)."""
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def google_error(response: Any, status: int) -> dict[str, Any]:
    """A refusal with ``status`` in Google's error body: exactly code, message, details."""
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert set(body) == {"code", "message", "details"} and body["code"] == status
    return body


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _int_b64u(value: int) -> str:
    return b64u(value.to_bytes((value.bit_length() + 7) // 8, "big"))


@dataclass
class SigningKey:
    """One issuer key: RSA (RS256) or EC P-256 (ES256), with its kid."""

    kid: str
    private: Any
    alg: str = "RS256"

    @classmethod
    def rsa(cls, bits: int = 2048) -> SigningKey:
        return cls(kid=uuid.uuid4().hex, private=rsa.generate_private_key(65537, bits))

    @classmethod
    def ec(cls) -> SigningKey:
        return cls(kid=uuid.uuid4().hex, private=ec.generate_private_key(ec.SECP256R1()),
                   alg="ES256")

    def public_jwk(self) -> dict[str, Any]:
        if self.alg == "ES256":
            nums = self.private.public_key().public_numbers()
            return {"kty": "EC", "crv": "P-256", "x": b64u(nums.x.to_bytes(32, "big")),
                    "y": b64u(nums.y.to_bytes(32, "big")), "kid": self.kid, "use": "sig",
                    "alg": "ES256"}
        nums = self.private.public_key().public_numbers()
        return {"kty": "RSA", "n": _int_b64u(nums.n), "e": _int_b64u(nums.e),
                "kid": self.kid, "use": "sig", "alg": "RS256"}

    def sign(self, data: bytes) -> bytes:
        if self.alg == "ES256":
            r, s = decode_dss_signature(self.private.sign(data, ec.ECDSA(hashes.SHA256())))
            return r.to_bytes(32, "big") + s.to_bytes(32, "big")
        return self.private.sign(data, padding.PKCS1v15(), hashes.SHA256())


def compact_jwt(header: Mapping[str, Any], claims: Mapping[str, Any],
                sign: Any) -> str:
    h = b64u(json.dumps(header, separators=(",", ":")).encode())
    c = b64u(json.dumps(claims, separators=(",", ":")).encode())
    return f"{h}.{c}.{b64u(sign(f'{h}.{c}'.encode()))}"


@dataclass
class Issuer:
    """A token issuer: its name (``iss``), current key, and the set it publishes."""

    iss: str
    keys: list[SigningKey] = field(default_factory=lambda: [SigningKey.rsa()])

    @property
    def key(self) -> SigningKey:
        return self.keys[-1]

    def jwks(self) -> dict[str, Any]:
        return {"keys": [k.public_jwk() for k in self.keys]}

    def rotate(self) -> SigningKey:
        self.keys.append(SigningKey.rsa())
        return self.key

    def token(self, claims: Mapping[str, Any], *, key: SigningKey | None = None,
              header: Mapping[str, Any] | None = None, lifetime: int = 300,
              drop: tuple[str, ...] = ()) -> str:
        """A JWT with ``iss``, ``iat`` and ``exp`` filled in unless given or dropped."""
        key = key or self.key
        now = int(time.time())
        body: dict[str, Any] = {"iss": self.iss, "iat": now, "exp": now + lifetime, **claims}
        for name in drop:
            body.pop(name, None)
        hdr = dict(header) if header is not None else {"alg": key.alg, "kid": key.kid,
                                                        "typ": "JWT"}
        return compact_jwt(hdr, body, key.sign)


# --- the issuers' web server ---------------------------------------------------------------


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """A certificate and key for 127.0.0.1 (the JWKS server's; trusted via jwks_ca_file)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sceau test issuer")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "issuer-cert.pem", directory / "issuer-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class JwksServer:
    """Loopback HTTPS server: ``GET /<name>`` answers the JSON document registered as name.

    ``routes`` may also hold a callable taking (method, path, body) and returning
    (status, document): the tests' stand-in for another vendor's service.
    """

    def __init__(self, directory: Path) -> None:
        self.cert, self.key = self_signed_cert(directory)
        self.documents: dict[str, Any] = {}
        self.hits: dict[str, int] = {}
        self.requests: list[tuple[str, str, bytes]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, method: str) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                name = self.path.lstrip("/")
                outer.hits[name] = outer.hits.get(name, 0) + 1
                outer.requests.append((method, self.path, body))
                doc = outer.documents.get(name)
                status = 200
                if callable(doc):
                    status, doc = doc(method, self.path, body)
                if doc is None:
                    self.send_response(404)
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                data = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                self._answer("GET")

            def do_POST(self) -> None:  # noqa: N802
                self._answer("POST")

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(self.cert), str(self.key))
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def base(self) -> str:
        return f"https://127.0.0.1:{self.httpd.server_address[1]}"

    def url(self, name: str) -> str:
        return f"{self.base}/{name}"

    def publish(self, name: str, issuer: Issuer) -> str:
        self.documents[name] = issuer.jwks()
        return self.url(name)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# --- a Sceau server with the workspace services configured -----------------------------------


@dataclass
class Vendors:
    """The outside world of one test module: the issuers and their HTTPS server."""

    jwks: JwksServer
    idp: Issuer
    google: Issuer
    entra: Issuer
    gmail: Issuer
    audience: str = "cse-client-id"
    dke_audience: str = "https://dke.sceau.test"

    def toml(self, *, extra_cse: str = "", extra_dke: str = "") -> str:
        ca = self.jwks.cert
        return f"""
[cse]
enabled = true
jwks_ca_file = "{ca}"
jwks_refresh_min_s = 1
rewrap_from = ["{self.jwks.url('old-kacls')}"]
{extra_cse}
[[cse.identity_providers]]
issuer = "{self.idp.iss}"
audience = "{self.audience}"
jwks = "{self.jwks.url('idp-jwks')}"
[[cse.authorization_issuers]]
issuer = "{self.google.iss}"
jwks = "{self.jwks.url('google-jwks')}"
[[cse.authorization_issuers]]
issuer = "{self.gmail.iss}"
jwks = "{self.jwks.url('gmail-jwks')}"

[dke]
enabled = true
audience = "{self.dke_audience}"
jwks_ca_file = "{ca}"
jwks_refresh_min_s = 1
{extra_dke}
[[dke.token_issuers]]
issuer = "{self.entra.iss}"
jwks = "{self.jwks.url('entra-jwks')}"
"""

    def publish(self) -> None:
        self.jwks.publish("idp-jwks", self.idp)
        self.jwks.publish("google-jwks", self.google)
        self.jwks.publish("gmail-jwks", self.gmail)
        self.jwks.publish("entra-jwks", self.entra)


def make_vendors(directory: Path) -> Vendors:
    vendors = Vendors(
        jwks=JwksServer(directory),
        idp=Issuer("https://idp.sceau.test"),
        google=Issuer("gsuitecse-tokenissuer-drive@system.gserviceaccount.com"),
        entra=Issuer("https://sts.windows.net/00000000-0000-0000-0000-00000000cafe/"),
        gmail=Issuer("gsuitecse-tokenissuer-gmail@system.gserviceaccount.com"),
    )
    vendors.publish()
    return vendors


@dataclass
class Kacls:
    """Calls a Sceau server's /cse endpoints as Google's client does."""

    base: str
    cert: str
    vendors: Vendors

    @property
    def kacls_url(self) -> str:
        return f"{self.base}/cse"

    def authn(self, email: str, **claims: Any) -> str:
        body = {"aud": self.vendors.audience, "email": email, **claims}
        return self.vendors.idp.token(body)

    def authz(self, email: str, role: str, resource: str, perimeter: str = "",
              **claims: Any) -> str:
        body = {"aud": "cse-authorization", "email": email, "role": role,
                "resource_name": resource, "perimeter_id": perimeter,
                "kacls_url": self.kacls_url, **claims}
        return self.vendors.google.token(body)

    def gmail_authz(self, email: str, role: str, spki_hash: str, **claims: Any) -> str:
        """An authorization token of Google's Gmail issuer, shaped as Google documents it
        (roles ``decrypter`` and ``signer``, the key pair's ``spki_hash``)."""
        body = {"aud": "cse-authorization", "email": email, "role": role,
                "resource_name": "//googleapis.com/gmail/messages/" + uuid.uuid4().hex,
                "message_id": f"<{uuid.uuid4().hex}@mail.example.com>",
                "perimeter_id": "", "kacls_url": self.kacls_url,
                "spki_hash": spki_hash, "spki_hash_algorithm": "SHA-256", **claims}
        return self.vendors.gmail.token({k: v for k, v in body.items() if v is not None})

    def post(self, op: str, body: Mapping[str, Any], origin: str | None = None) -> Any:
        import httpx

        headers = {"origin": origin} if origin else {}
        with httpx.Client(verify=self.cert, timeout=30) as client:
            return client.post(f"{self.base}/cse/{op}", json=dict(body), headers=headers)

    def wrap(self, email: str, resource: str, key: bytes, *, perimeter: str = "",
             role: str = "writer", reason: str = "{client:'drive' op:'update'}") -> Any:
        return self.post("wrap", {
            "key": base64.b64encode(key).decode(),
            "authorization": self.authz(email, role, resource, perimeter),
            "authentication": self.authn(email),
            "reason": reason,
        })

    def unwrap(self, email: str, resource: str, wrapped: str, *, perimeter: str = "",
               role: str = "reader", authn: str | None = None, authz: str | None = None) -> Any:
        return self.post("unwrap", {
            "wrapped_key": wrapped,
            "authorization": authz or self.authz(email, role, resource, perimeter),
            "authentication": authn or self.authn(email),
            "reason": "{client:'drive' op:'read'}",
        })

    def privileged_unwrap(self, email: str, resource: str, wrapped: str) -> Any:
        """As Takeout calls it: a cse_admin's authentication token, no authorization token."""
        return self.post("privilegedunwrap", {
            "authentication": self.authn(email), "resource_name": resource,
            "wrapped_key": wrapped, "reason": "{client:'takeout' op:'read'}"})
