"""A real OpenID provider for the console's OpenID Connect tests, and a person who uses it.

:class:`TestProvider` runs ``tests/oidc/provider.mjs`` (the npm package ``oidc-provider``,
installed by ``scripts/setup-test-provider.sh``) over HTTPS on loopback, with a certificate
from a throw-away CA made here; Sceau trusts that CA through ``oidc.ca_file``. The issuer is
``https://localhost:PORT`` while Sceau serves ``https://127.0.0.1:PORT``: two sites, as in a
deployment, so the browser's SameSite rules apply to the callback as they would there.

:class:`Person` drives the provider's own sign-in pages with httpx, as a browser without
JavaScript would, and hands back the callback URL the provider redirected to.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import re
import secrets
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

HERE = Path(__file__).resolve().parent / "oidc"
SCRIPT = HERE / "provider.mjs"
CLIENT_ID = "sceau-console"
OTHER_CLIENT_ID = "other-app"
OTHER_REDIRECT = "https://127.0.0.1:9/other/callback"
SECRET_ENV = "SCEAU_TEST_OIDC_SECRET"

# The provider's people: login -> the claims it asserts about them.
USERS: Mapping[str, Mapping[str, Any]] = {
    "alice": {"email": "alice@example.com", "email_verified": True},
    "bob": {"email": "bob@example.com", "email_verified": True},
    "erin": {"email": "erin@example.com", "email_verified": True},
    "mixed": {"email": "Mixed@Example.COM", "email_verified": True},
    "pat": {"email": "pat@example.com", "email_verified": True},
    "frank": {"email": "frank@example.com", "email_verified": True},
    "outsider": {"email": "outsider@elsewhere.org", "email_verified": True},
    "carol": {"email": "carol@example.com", "email_verified": False},
    "dave": {"email": "dave@example.com"},
    "string": {"email": "string@example.com", "email_verified": "true"},
}


def need_node() -> None:
    """Skip (with the reason) without Node.js; fail when the provider is not installed."""
    if shutil.which("node") is None:
        pytest.skip("Node.js is missing: run `make system` (installs Debian's nodejs and npm)")
    if not (HERE / "node_modules" / "oidc-provider").is_dir():
        pytest.fail("tests/oidc/node_modules is missing: run `make test-provider` "
                    "(scripts/setup-test-provider.sh)", pytrace=False)


@dataclass(frozen=True)
class TestCA:
    """A CA and the provider's certificate (localhost and 127.0.0.1) it signed."""

    __test__ = False

    ca_file: Path
    cert_file: Path
    key_file: Path


def make_ca(directory: Path) -> TestCA:
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Sceau test OpenID CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(
              digital_signature=False, content_commitment=False, key_encipherment=False,
              data_encipherment=False, key_agreement=False, key_cert_sign=True,
              crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    out = TestCA(directory / "ca.pem", directory / "provider.pem", directory / "provider.key")
    out.ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    out.cert_file.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    out.key_file.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return out


@dataclass
class TestProvider:
    """A running oidc-provider with Sceau's client and a second, unrelated client."""

    __test__ = False

    directory: Path
    ca: TestCA
    client_secret: str
    other_secret: str
    issuer: str = ""
    proc: subprocess.Popen[bytes] | None = None

    @property
    def port(self) -> int:
        return int(self.issuer.rpartition(":")[2])

    def start(self, redirect_uri: str) -> None:
        config = {
            "host": "localhost",
            "cert": str(self.ca.cert_file), "key": str(self.ca.key_file),
            "users": USERS,
            "clients": [
                {"client_id": CLIENT_ID, "client_secret": self.client_secret,
                 "redirect_uris": [redirect_uri], "response_types": ["code"],
                 "grant_types": ["authorization_code"],
                 "token_endpoint_auth_method": "client_secret_basic"},
                {"client_id": OTHER_CLIENT_ID, "client_secret": self.other_secret,
                 "redirect_uris": [OTHER_REDIRECT], "response_types": ["code"],
                 "grant_types": ["authorization_code"],
                 "token_endpoint_auth_method": "client_secret_basic"},
            ],
        }
        path = self.directory / "provider.json"
        path.write_text(json.dumps(config))
        log = (self.directory / "provider.log").open("ab")
        self.proc = subprocess.Popen(["node", str(SCRIPT), str(path)], cwd=HERE,
                                     stdout=subprocess.PIPE, stderr=log)
        assert self.proc.stdout is not None
        # Anything printed before the ready line (a runtime warning) is skipped; end of
        # output without it means the provider stopped.
        line = ""
        for _ in range(100):
            line = self.proc.stdout.readline().decode()
            if not line or line.startswith("ready "):
                break
        if not line.startswith("ready "):
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError(f"the test provider did not start:\n{self.log()[-3000:]}")
        self.issuer = line.split()[1]

    def log(self) -> str:
        path = self.directory / "provider.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None

    def sceau_env(self) -> dict[str, str]:
        """The settings that point a Sceau server at this provider (the secret by name)."""
        return {
            "SCEAU_OIDC_ISSUER": self.issuer,
            "SCEAU_OIDC_CLIENT_ID": CLIENT_ID,
            "SCEAU_OIDC_CLIENT_SECRET_ENV": SECRET_ENV,
            SECRET_ENV: self.client_secret,
            "SCEAU_OIDC_CA_FILE": str(self.ca.ca_file),
            "SCEAU_OIDC_DISPLAY_NAME": "Example ID",
            "SCEAU_OIDC_EMAIL_DOMAINS": "example.com",
        }

    def metadata(self) -> dict[str, Any]:
        url = f"{self.issuer}/.well-known/openid-configuration"
        document: dict[str, Any] = httpx.get(url, verify=str(self.ca.ca_file)).json()
        return document

    def jwks(self) -> dict[str, Any]:
        keys: dict[str, Any] = httpx.get(self.metadata()["jwks_uri"],
                                         verify=str(self.ca.ca_file)).json()
        return keys


@contextlib.contextmanager
def running_provider(directory: Path, redirect_uri: str) -> Iterator[TestProvider]:
    """A provider whose Sceau client may redirect only to ``redirect_uri``; stopped after."""
    need_node()
    provider = TestProvider(directory=directory, ca=make_ca(directory),
                            client_secret=secrets.token_urlsafe(24),
                            other_secret=secrets.token_urlsafe(24))
    provider.start(redirect_uri)
    try:
        yield provider
    finally:
        provider.stop()


@dataclass
class Person:
    """Someone with an account at the provider, signing in with a plain HTTP client."""

    provider: TestProvider
    login: str
    http: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.http = httpx.Client(verify=str(self.provider.ca.ca_file), timeout=30,
                                 follow_redirects=False)

    def close(self) -> None:
        self.http.close()

    def authorize(self, url: str) -> str:
        """Follow an authorization URL through the provider's sign-in page.

        Returns the URL the provider sends the browser back to (not followed).
        """
        target = url
        for _ in range(12):
            response = self.http.get(target)
            if response.status_code in (302, 303):
                location = urljoin(target, response.headers["location"])
                if not location.startswith(self.provider.issuer + "/"):
                    return location
                target = location
                continue
            form = re.search(r'<form[^>]*action="([^"]+)"[^>]*>\s*<input type="hidden" '
                             r'name="prompt" value="login"', response.text)
            if response.status_code == 200 and form is not None:
                posted = self.http.post(urljoin(target, form.group(1)), data={
                    "prompt": "login", "login": self.login, "password": "any password"})
                assert posted.status_code in (302, 303), posted.text[:1000]
                target = urljoin(target, posted.headers["location"])
                continue
            raise AssertionError(f"unexpected provider answer {response.status_code}: "
                                 f"{response.text[:1000]}")
        raise AssertionError("too many redirects at the provider")

