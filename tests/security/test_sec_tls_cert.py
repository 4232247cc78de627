"""The certificate `sceau init` makes: an end-entity for the service's names, never a CA.

Clients trust it by naming ``DATA_DIR/tls/cert.pem`` as their only trust anchor. These tests
check its extensions, that Python's ssl (OpenSSL) verifies a real `sceau serve` with it under
each of its names and refuses other names, that it cannot vouch for a certificate signed
with its key, and that `sceau tls renew` replaces it.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
import ssl
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from security_support import SQLITE

from support import Server, make_server, run_cli

SERVICE_HOST = "sceau.example.test"
NODE_HOST = "node-1.sceau.internal"


def load(path: Path | str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(Path(path).read_bytes())


def san(cert: x509.Certificate) -> list[str]:
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(n.value) for n in names]


def verifies(port: int, cafile: str, hostname: str) -> str:
    """"ok" when a TLS handshake to 127.0.0.1 verifies ``hostname`` with ``cafile``, else why."""
    ctx = ssl.create_default_context(cafile=cafile)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock, \
                ctx.wrap_socket(sock, server_hostname=hostname):
            return "ok"
    except ssl.SSLCertVerificationError as exc:
        return str(exc.verify_message)


@pytest.fixture(scope="module")
def named(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server initialized with an explicit service id (and served under it)."""
    srv = make_server(tmp_path_factory.mktemp("tls-named"),
                      env={**SQLITE, "SCEAU_SERVICE_ID": f"https://{SERVICE_HOST}"})
    yield srv
    if srv.proc is not None:
        srv.stop()


def test_init_makes_an_end_entity_certificate_for_the_services_names(tmp_path: Path) -> None:
    data = tmp_path / "d"
    run_cli("init", "--data-dir", str(data), env={
        "SCEAU_SERVICE_ID": f"https://{SERVICE_HOST.upper()}:9443/", "SCEAU_HOST": NODE_HOST})
    cert = load(data / "tls" / "cert.pem")
    ext = cert.extensions
    basic = ext.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical and basic.value.ca is False and basic.value.path_length is None
    usage = ext.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature
    assert not (usage.value.key_cert_sign or usage.value.crl_sign or usage.value.key_encipherment
                or usage.value.content_commitment or usage.value.data_encipherment
                or usage.value.key_agreement)
    assert list(ext.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH]
    # The service id's host first (lower-cased), then the listen host, then loopback names.
    assert san(cert) == [SERVICE_HOST, NODE_HOST, "localhost", "127.0.0.1", "::1"]
    ips = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ips.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]
    assert cert.subject == cert.issuer
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == SERVICE_HOST
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert stat.S_IMODE((data / "tls" / "key.pem").stat().st_mode) == 0o600


def test_wildcard_listen_address_is_not_a_name(tmp_path: Path) -> None:
    data = tmp_path / "d"
    run_cli("init", "--data-dir", str(data), env={"SCEAU_HOST": "0.0.0.0"})
    assert san(load(data / "tls" / "cert.pem")) == ["localhost", "127.0.0.1", "::1"]


def test_bad_service_id_fails_init_before_anything_is_made(tmp_path: Path) -> None:
    data = tmp_path / "d"
    proc = run_cli("init", "--data-dir", str(data), check=False,
                   env={"SCEAU_SERVICE_ID": "https://bad host!/"})
    assert proc.returncode != 0 and b"TLS certificate" in proc.stderr
    assert not data.exists()


def test_real_https_verifies_under_every_name_and_only_those(named: Server) -> None:
    assert httpx.get(f"{named.url}/healthz", verify=named.cert).json() == {"status": "ok"}
    for name in (SERVICE_HOST, "localhost", "127.0.0.1"):
        assert verifies(named.port, named.cert, name) == "ok", name
    assert "mismatch" in verifies(named.port, named.cert, "other.example.test")


def test_another_installations_certificate_is_not_trusted(named: Server, tmp_path: Path) -> None:
    other = tmp_path / "other"
    run_cli("init", "--data-dir", str(other))
    assert verifies(named.port, str(other / "tls" / "cert.pem"), "localhost") != "ok"


def _serve_once(cert_pem: bytes, key_pem: bytes, tmp: Path) -> tuple[int, threading.Thread]:
    (tmp / "leaf.pem").write_bytes(cert_pem)
    (tmp / "leaf.key").write_bytes(key_pem)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp / "leaf.pem", tmp / "leaf.key")
    listener = socket.create_server(("127.0.0.1", 0))
    port = int(listener.getsockname()[1])

    def serve() -> None:
        with listener:
            conn, _ = listener.accept()
            try:
                with ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(1)
            except (ssl.SSLError, OSError):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return port, thread


def test_the_certificate_cannot_vouch_for_another(named: Server, tmp_path: Path) -> None:
    """A leaf signed with the service's key, naming the service as issuer, is refused.

    Trusting the self-signed certificate must trust exactly that certificate: with a CA
    certificate here, anyone holding the key (or a copy of the data dir) could mint
    certificates for any name that every client of the service would accept.
    """
    ca = load(named.cert)
    ca_key = serialization.load_pem_private_key(
        (named.data_dir / "tls" / "key.pem").read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "evil.example")]))
        .issuer_name(ca.subject)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("evil.example")]), False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    port, thread = _serve_once(
        leaf.public_bytes(serialization.Encoding.PEM),
        leaf_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption()),
        tmp_path,
    )
    outcome = verifies(port, named.cert, "evil.example")
    thread.join(10)
    assert outcome != "ok"


def test_tls_renew_replaces_the_pair_and_keeps_the_previous(named: Server) -> None:
    tls = named.data_dir / "tls"
    before = (tls / "cert.pem").read_bytes()
    old_cert = str(tls / "previous.pem")
    Path(old_cert).write_bytes(before)
    out = run_cli("tls", "renew", "--data-dir", str(named.data_dir), "--name", "extra.example.test",
                  "--days", "30", env=named.env).stdout.decode()
    assert "restart" in out
    assert (tls / "cert.pem.old").read_bytes() == before
    assert stat.S_IMODE((tls / "key.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE((tls / "key.pem.old").stat().st_mode) == 0o600
    renewed = load(tls / "cert.pem")
    assert san(renewed) == [SERVICE_HOST, "127.0.0.1", "extra.example.test", "localhost", "::1"]
    assert renewed.not_valid_after_utc - dt.datetime.now(dt.UTC) < dt.timedelta(days=31)
    # The running server keeps the pair it loaded until restarted.
    assert verifies(named.port, old_cert, SERVICE_HOST) == "ok"
    named.restart()
    assert verifies(named.port, named.cert, "extra.example.test") == "ok"
    assert verifies(named.port, old_cert, SERVICE_HOST) != "ok"


def test_tls_renew_leaves_a_ca_issued_certificate_alone(tmp_path: Path) -> None:
    data = tmp_path / "d"
    run_cli("init", "--data-dir", str(data))
    ca_key = ec.generate_private_key(ec.SECP256R1())
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    issued = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sceau.corp")]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Corp CA")]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
        .sign(ca_key, hashes.SHA256())
    ).public_bytes(serialization.Encoding.PEM)
    (data / "tls" / "cert.pem").write_bytes(issued)
    proc = run_cli("tls", "renew", "--data-dir", str(data), check=False)
    assert proc.returncode != 0 and b"--force" in proc.stderr
    assert (data / "tls" / "cert.pem").read_bytes() == issued
    run_cli("tls", "renew", "--data-dir", str(data), "--force")
    assert load(data / "tls" / "cert.pem").issuer == load(data / "tls" / "cert.pem").subject
