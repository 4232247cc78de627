"""Creating a data dir (``sceau init``): config, keystore, database, TLS, first admin."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sceau.config import CONFIG_FILE, Config, load_config, render_default_config
from sceau.errors import ConfigError
from sceau.keystore import init_keystore
from sceau.service.accounts import hash_password
from sceau.store import repo
from sceau.store.db import create_engines, upgrade
from sceau.vocab import Role

ADMIN_USER = "admin"


@dataclass(frozen=True)
class InitResult:
    data_dir: Path
    admin_user: str
    admin_password: str


def write_private(path: Path, data: bytes) -> None:
    """Create ``path`` with mode 0600 (never readable by others, even briefly)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def make_tls_certificate(tls_dir: Path, hosts: list[str], *, days: int = 825) -> None:
    """A self-signed ECDSA P-256 certificate for ``hosts`` (names and IP addresses)."""
    tls_dir.mkdir(mode=0o700, exist_ok=False)
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Sceau local service")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    write_private(
        tls_dir / "key.pem",
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    (tls_dir / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def initialize(data_dir: Path, *, keystore_backend: str | None = None) -> InitResult:
    """Create a new data dir; refuses to touch an existing, non-empty one."""
    if data_dir.exists() and (not data_dir.is_dir() or any(data_dir.iterdir())):
        raise ConfigError(f"{data_dir} already exists; refusing to overwrite an installation")
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(data_dir, 0o700)
    config_text = render_default_config()
    if keystore_backend and keystore_backend != "file":
        config_text = config_text.replace(
            '[keystore]\n# backend = "file"', f'[keystore]\nbackend = "{keystore_backend}"'
        )
    (data_dir / CONFIG_FILE).write_text(config_text, encoding="utf-8")
    config = load_config(data_dir)
    from sceau.service.runtime import keystore_settings

    init_keystore(keystore_settings(config))
    make_tls_certificate(data_dir / "tls", ["localhost", "127.0.0.1", "::1"])
    engines = create_engines(config.database_url, synchronous=str(config.get("audit.synchronous")))
    try:
        upgrade(engines)
        password = secrets.token_urlsafe(15)
        now = int(time.time())
        with engines.write.begin() as conn:
            if repo.get_account(conn, ADMIN_USER) is None:
                repo.insert_account(
                    conn,
                    repo.AccountRow(
                        username=ADMIN_USER,
                        password_hash=hash_password(password),
                        role=str(Role.ADMIN),
                        status="active",
                        must_change_password=True,
                        totp_secret=None,
                        created_at=now,
                        updated_at=now,
                    ),
                )
            else:
                password = ""
    finally:
        engines.dispose()
    db_file = data_dir / "sceau.db"
    if db_file.exists():
        os.chmod(db_file, 0o600)
    return InitResult(data_dir=data_dir, admin_user=ADMIN_USER, admin_password=password)


def config_for(data_dir: Path) -> Config:
    return load_config(data_dir)
