"""Transport security (SECURITY-CASES 41): protocol versions, suites, plain HTTP, mutual TLS.

Refusals are proven against a positive control: the same client settings succeed against a
deliberately permissive TLS server using the same certificate, so a refusal is the Sceau
server's doing and not the local OpenSSL's.
"""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from security_support import SQLITE, TrailWatch, forge, post

from sceau.config import env_name, load_config
from sceau.errors import ConfigError
from sceau.service.server import server_tls_context, tls_context
from support import Server, TestApp, make_server

V = ssl.TLSVersion
CLIENT_CA_ENV = env_name("server.client_ca")
CLIENT_AUTH_ENV = env_name("server.client_auth")


def client_context(server_cert: str, minimum: ssl.TLSVersion, maximum: ssl.TLSVersion,
                   ciphers: str | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(server_cert)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.0/1.1 on purpose
        ctx.minimum_version, ctx.maximum_version = minimum, maximum
    if ciphers:
        ctx.set_ciphers(ciphers)
    return ctx


def handshake(port: int, ctx: ssl.SSLContext) -> tuple[str, str] | str:
    """(version, cipher) on success, else the error text."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock, \
                ctx.wrap_socket(sock, server_hostname="127.0.0.1") as conn:
            cipher = conn.cipher()
            assert cipher is not None and conn.version() is not None
            return str(conn.version()), cipher[0]
    except (ssl.SSLError, OSError) as exc:
        return f"{type(exc).__name__}: {exc}"


class PermissiveServer:
    """The control: a TLS server accepting TLS 1.0+ and every suite, same certificate."""

    def __init__(self, cert: str, key: str) -> None:
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            self.ctx.minimum_version = V.TLSv1
        self.ctx.set_ciphers("ALL:eNULL:@SECLEVEL=0")
        self.ctx.load_cert_chain(cert, key)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            try:
                conn.settimeout(5)
                self.ctx.wrap_socket(conn, server_side=True).close()
            except (ssl.SSLError, OSError):
                conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@pytest.fixture(scope="module")
def control(sec_server: Server) -> Iterator[PermissiveServer]:
    srv = PermissiveServer(sec_server.cert, str(sec_server.data_dir / "tls" / "key.pem"))
    yield srv
    srv.close()


# --- the server context ------------------------------------------------------------------------


def test_server_context_allows_only_forward_secret_aead(sec_server: Server) -> None:
    ctx = tls_context(Path(sec_server.cert), sec_server.data_dir / "tls" / "key.pem")
    assert ctx.minimum_version == V.TLSv1_2
    assert ctx.options & ssl.OP_NO_COMPRESSION and ctx.options & ssl.OP_NO_RENEGOTIATION
    suites = ctx.get_ciphers()
    assert suites
    for suite in suites:
        assert suite["aead"], suite["name"]
        if suite["protocol"] == "TLSv1.2":
            assert suite["kea"] == "kx-ecdhe", suite["name"]
    assert ctx.verify_mode == ssl.CERT_NONE  # no client certificates unless configured


# --- versions and suites -----------------------------------------------------------------------

REFUSED = {
    "TLS 1.0": (V.TLSv1, V.TLSv1, "ALL:@SECLEVEL=0"),
    "TLS 1.1": (V.TLSv1_1, V.TLSv1_1, "ALL:@SECLEVEL=0"),
    "TLS 1.2 ECDHE CBC SHA1": (V.TLSv1_2, V.TLSv1_2, "ECDHE-ECDSA-AES128-SHA:@SECLEVEL=0"),
    "TLS 1.2 ECDHE CBC SHA256": (V.TLSv1_2, V.TLSv1_2, "ECDHE-ECDSA-AES128-SHA256"),
    "TLS 1.2 ECDHE CBC SHA384": (V.TLSv1_2, V.TLSv1_2, "ECDHE-ECDSA-AES256-SHA384"),
    "TLS 1.2 ECDHE NULL cipher": (V.TLSv1_2, V.TLSv1_2, "ECDHE-ECDSA-NULL-SHA:@SECLEVEL=0"),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_weak_protocols_and_suites_refused(sec_server: Server, control: PermissiveServer,
                                           name: str) -> None:
    minimum, maximum, ciphers = REFUSED[name]
    ctx = client_context(sec_server.cert, minimum, maximum, ciphers)
    accepted = handshake(control.port, ctx)
    if isinstance(accepted, str):
        pytest.skip(f"this OpenSSL cannot offer {name} even to a permissive server: {accepted}")
    refused = handshake(sec_server.port, ctx)
    assert isinstance(refused, str), f"{name} negotiated: {refused}"


@pytest.mark.parametrize("suite", ["ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384",
                                   "ECDHE-ECDSA-CHACHA20-POLY1305"])
def test_tls12_forward_secret_aead_accepted(sec_server: Server, suite: str) -> None:
    ctx = client_context(sec_server.cert, V.TLSv1_2, V.TLSv1_2, suite)
    assert handshake(sec_server.port, ctx) == ("TLSv1.2", suite)


def test_tls13_negotiated_by_default(sec_server: Server) -> None:
    ctx = ssl.create_default_context(cafile=sec_server.cert)
    result = handshake(sec_server.port, ctx)
    assert isinstance(result, tuple) and result[0] == "TLSv1.3", result
    assert result[1] in {"TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256",
                         "TLS_AES_128_GCM_SHA256"}


def test_plain_http_on_the_tls_port_processes_nothing(sec_server: Server, sec_app: TestApp
                                                      ) -> None:
    forged = forge(sec_app, sec_server.url)
    request = (b"POST /v1/encrypt HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/jose"
               b"\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(forged.token)
               + forged.token.encode())
    watch = TrailWatch(sec_server)
    with socket.create_connection(("127.0.0.1", sec_server.port), timeout=5) as sock:
        sock.sendall(request)
        answer = b""
        try:
            while chunk := sock.recv(4096):
                answer += chunk
        except OSError:
            pass
    assert b"HTTP/" not in answer and b"ciphertext" not in answer
    assert watch.new() == []
    # The very same token is still fresh over TLS: the plain request was never processed.
    assert post(sec_server, forged.token).status_code == 200


# --- mutual TLS --------------------------------------------------------------------------------


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: str,
          issuer_key: ec.EllipticCurvePrivateKey, ca: bool) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5))
               .not_valid_after(now + dt.timedelta(hours=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False,
            encipher_only=False, decipher_only=False), critical=True)
    else:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write_pair(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("pki")
    ca_key, rogue_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(
        ec.SECP256R1())
    ca = _cert("sceau test apps CA", ca_key, "sceau test apps CA", ca_key, True)
    good_key, bad_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(
        ec.SECP256R1())
    (base / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    return {
        "ca": base / "ca.pem",
        "good": _write_pair(base / "good.pem", _cert("app-1", good_key, "sceau test apps CA",
                                                     ca_key, False), good_key),
        "rogue": _write_pair(base / "rogue.pem", _cert("app-1", bad_key, "rogue CA", rogue_key,
                                                       False), bad_key),
        "self-signed": _write_pair(base / "self.pem", _cert("app-1", bad_key, "app-1", bad_key,
                                                            False), bad_key),
    }


def _get(server: Server, client_cert: Path | None) -> int | str:
    """Status of GET /healthz with this client certificate, or the error text."""
    ctx = ssl.create_default_context(cafile=server.cert)
    if client_cert is not None:
        ctx.load_cert_chain(str(client_cert))
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock, \
                ctx.wrap_socket(sock, server_hostname="127.0.0.1") as conn:
            conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            answer = conn.recv(4096)  # TLS 1.3: a refused certificate shows up here
            if not answer:
                return "closed"
            return int(answer[9:12])
    except (ssl.SSLError, OSError) as exc:
        return f"{type(exc).__name__}: {exc}"


@pytest.fixture(scope="module")
def mtls_server(tmp_path_factory: pytest.TempPathFactory, pki: dict[str, Path]
                ) -> Iterator[Server]:
    env = {**SQLITE, CLIENT_CA_ENV: str(pki["ca"]), CLIENT_AUTH_ENV: "required"}
    srv = make_server(tmp_path_factory.mktemp("sec-mtls"), env=env, start=False)
    start_with_cert(srv, pki["good"])
    yield srv
    if srv.proc is not None:
        srv.stop()


def start_with_cert(server: Server, cert: Path) -> None:
    """Start and wait for /healthz, presenting ``cert`` (the harness' wait has no cert)."""
    server.start(wait=False)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert server.proc is not None and server.proc.poll() is None, server.log()[-2000:]
        if _get(server, cert) == 200:
            return
        time.sleep(0.2)
    raise AssertionError(f"server not up:\n{server.log()[-2000:]}")


def test_mutual_tls_required_then_optional(mtls_server: Server, pki: dict[str, Path]) -> None:
    required = {name: _get(mtls_server, pki.get(name)) for name in
                ("none", "good", "rogue", "self-signed")}
    assert required["good"] == 200, required
    for name in ("none", "rogue", "self-signed"):
        assert isinstance(required[name], str), required
    mtls_server.stop()
    mtls_server.env[CLIENT_AUTH_ENV] = "optional"
    start_with_cert(mtls_server, pki["good"])
    optional = {name: _get(mtls_server, pki.get(name)) for name in
                ("none", "good", "rogue", "self-signed")}
    assert optional["none"] == 200 and optional["good"] == 200, optional
    for name in ("rogue", "self-signed"):
        assert isinstance(optional[name], str), optional


@pytest.mark.parametrize(("env", "message"), [
    ({CLIENT_AUTH_ENV: "sometimes"}, r"server.client_auth \(from \$SCEAU_TLS_CLIENT_AUTH\)"),
    ({CLIENT_CA_ENV: "/nonexistent/ca.pem"}, "server.client_ca: cannot load"),
])
def test_mutual_tls_bad_settings_refused_at_start(sec_server: Server, env: dict[str, str],
                                                  message: str) -> None:
    """serve() builds the context from these before opening anything: a typo stops the start."""
    with pytest.raises(ConfigError, match=message):
        server_tls_context(load_config(sec_server.data_dir, env=env))


def test_client_auth_from_the_settings(sec_server: Server, pki: dict[str, Path]) -> None:
    default = load_config(sec_server.data_dir, env={})
    assert (default.server.client_ca, default.server.client_auth) == ("", "optional")
    assert server_tls_context(default).verify_mode == ssl.CERT_NONE
    mutual = load_config(sec_server.data_dir,
                         env={CLIENT_CA_ENV: f" {pki['ca']} ", CLIENT_AUTH_ENV: "required"})
    assert server_tls_context(mutual).verify_mode == ssl.CERT_REQUIRED
