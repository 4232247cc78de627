"""Creating a data dir (``sceau init``): config, keystore, database, TLS, first admin."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import re
import secrets
import shutil
import stat
import time
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sceau.auditlog.witness import open_witness
from sceau.config import CONFIG_FILE, Config, env_name, load_config, render_default_config
from sceau.errors import ConfigError
from sceau.keystore import init_keystore, open_keystore
from sceau.service.accounts import hash_password
from sceau.service.runtime import keystore_settings
from sceau.store import accounts
from sceau.store.db import create_engines, upgrade
from sceau.vocab import AccountStatus, Role

ADMIN_USER = "admin"


@dataclass(frozen=True)
class InitResult:
    """What ``sceau init`` made: the data dir and the console admin's one-time password."""

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


# Names every certificate made here carries, so local clients and health checks verify.
LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")
TLS_DAYS = 825  # the longest lifetime browsers accept for a server certificate


def tls_names(config: Config, extra: Sequence[str] = ()) -> list[str]:
    """The names the service's certificate must carry, the service's own first.

    The host of an explicit ``service.service_id`` (what clients dial, and what ``aud``
    names), the configured ``server.host`` unless it is a wildcard address (0.0.0.0, ::),
    ``extra`` names, then localhost and the loopback addresses. Duplicates are dropped;
    DNS names are lower-cased and IP addresses written in their canonical form.
    """
    wanted: list[str] = []
    explicit = config.service.service_id
    if explicit:
        host = urlsplit(explicit).hostname
        if not host:
            raise ConfigError(f"service.service_id: {explicit!r} names no host")
        wanted.append(host)
    wanted.append(config.server.host)
    wanted += [*extra, *LOCAL_NAMES]
    names: list[str] = []
    for raw in wanted:
        name = _tls_name(raw)
        if name is not None and name not in names:
            names.append(name)
    return names


def _tls_name(raw: str) -> str | None:
    """``raw`` as a certificate name, None for a wildcard listen address."""
    text = raw.strip().strip("[]")
    if not text:
        return None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        pass
    else:
        return None if address.is_unspecified else str(address)
    try:
        name = text.encode("idna").decode("ascii").lower()
    except UnicodeError:
        raise ConfigError(f"{raw!r} is not a host name for the TLS certificate") from None
    if not _DNS_NAME.fullmatch(name):
        raise ConfigError(f"{raw!r} is not a host name for the TLS certificate")
    return name


_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"  # "_": container and host aliases
_DNS_NAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*")


def build_tls_certificate(
    hosts: Sequence[str], *, days: int = TLS_DAYS
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed ECDSA P-256 server certificate for ``hosts`` (names and IP addresses).

    An end-entity certificate, not a CA: ``CA:FALSE`` (critical), key usage
    ``digitalSignature`` only (ECDHE-ECDSA signs the handshake; there is no RSA key
    transport to encipher for) and extended key usage ``serverAuth``. Clients trust it by
    listing it as their trust anchor (``verify=DATA_DIR/tls/cert.pem``); OpenSSL accepts a
    self-signed end-entity certificate found in the trust store, and since it cannot sign
    other certificates, trusting it trusts nothing else. The first host is the subject CN.
    """
    if not hosts:
        raise ConfigError("a TLS certificate needs at least one name")
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    common = hosts[0] if len(hosts[0]) <= 64 else "Sceau service"
    subject = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Sceau (self-signed)"),
        x509.NameAttribute(NameOID.COMMON_NAME, common),
    ])
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
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def make_tls_certificate(tls_dir: Path, hosts: Sequence[str], *, days: int = TLS_DAYS) -> None:
    """Create ``tls_dir`` with a new self-signed ``cert.pem`` and its ``key.pem`` (0600)."""
    tls_dir.mkdir(mode=0o700, exist_ok=False)
    key, cert = build_tls_certificate(hosts, days=days)
    write_private(tls_dir / "key.pem", _key_pem(key))
    (tls_dir / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


@dataclass(frozen=True)
class RenewedCertificate:
    """What ``sceau tls renew`` wrote: the new certificate and where the old one went."""

    cert: Path
    names: tuple[str, ...]
    not_after: dt.datetime
    previous: Path | None


def renew_tls_certificate(
    config: Config, extra: Sequence[str] = (), *, days: int = TLS_DAYS, force: bool = False
) -> RenewedCertificate:
    """Replace ``DATA_DIR/tls/cert.pem`` and ``key.pem`` with a new self-signed pair.

    The names are :func:`tls_names` of the current configuration. The previous pair is kept
    as ``cert.pem.old`` / ``key.pem.old`` (one generation), so clients can be given both
    certificates during the switch. A certificate that is not self-signed (one an operator
    installed from a CA) is left alone unless ``force``. The new files replace the old ones
    atomically; a running ``sceau serve`` keeps the pair it loaded until restarted.
    """
    tls_dir = config.tls_cert.parent
    names = tls_names(config, extra)
    previous: Path | None = None
    if config.tls_cert.exists():
        current = x509.load_pem_x509_certificate(config.tls_cert.read_bytes())
        if current.issuer != current.subject and not force:
            raise ConfigError(
                f"{config.tls_cert} was not made by Sceau (issuer {current.issuer.rfc4514_string()}"
                "); renew it with its CA, or pass --force to replace it with a self-signed one"
            )
        previous = config.tls_cert.with_name("cert.pem.old")
    key, cert = build_tls_certificate(names, days=days)
    tls_dir.mkdir(mode=0o700, exist_ok=True)
    suffix = secrets.token_hex(4)
    new_key = tls_dir / f".key.pem.{suffix}.tmp"
    new_cert = tls_dir / f".cert.pem.{suffix}.tmp"
    write_private(new_key, _key_pem(key))
    new_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if previous is not None:
        os.replace(config.tls_cert, previous)
        if config.tls_key.exists():
            os.replace(config.tls_key, config.tls_key.with_name("key.pem.old"))
    os.replace(new_key, config.tls_key)
    os.replace(new_cert, config.tls_cert)
    return RenewedCertificate(cert=config.tls_cert, names=tuple(names),
                              not_after=cert.not_valid_after_utc, previous=previous)


@dataclass(frozen=True)
class KeystoreChoice:
    """Which keystore a data dir uses, as given on the command line (None: not given).

    ``backend`` None means: ``pkcs11`` when a PKCS#11 option is given, else what the
    environment says (``SCEAU_KEYSTORE``), else ``file``. ``pin_env`` / ``pin_file`` name
    where the PKCS#11 PIN is read from; the PIN itself is never an argument.
    ``signing_alg`` only matters when the keys are created (``ES256`` for a token whose
    policy forbids EdDSA); rotations keep the algorithm of the current key.
    """

    backend: str | None = None
    pkcs11_module: str | None = None
    pkcs11_token: str | None = None
    pin_env: str | None = None
    pin_file: Path | None = None
    signing_alg: str | None = None

    def __post_init__(self) -> None:
        if self.backend is not None and self.backend not in ("file", "pkcs11"):
            raise ConfigError(f"keystore backend must be 'file' or 'pkcs11', not {self.backend!r}")
        if self.backend == "file" and (
            self.pkcs11_module or self.pkcs11_token or self.pin_env or self.pin_file
        ):
            raise ConfigError("--module, --token, --pin-env and --pin-file need --keystore pkcs11")
        if self.pin_env is not None and self.pin_file is not None:
            raise ConfigError("give the PIN's source once: --pin-env or --pin-file")
        if self.pin_env is not None and not _ENV_NAME.fullmatch(self.pin_env):
            raise ConfigError(
                f"--pin-env takes the NAME of an environment variable, not {self.pin_env!r}"
            )

    def resolved_backend(self, config: Config) -> str:
        """``file`` or ``pkcs11`` (see the class docstring for None)."""
        if self.backend is not None:
            return self.backend
        if self.pkcs11_module or self.pkcs11_token or self.pin_env or self.pin_file:
            return "pkcs11"
        return config.keystore.backend

    def config_values(self, config: Config) -> dict[str, str]:
        """The sceau.toml values for this choice, completed from ``config`` (env, file)."""
        if self.resolved_backend(config) == "file":
            return {"keystore.backend": "file"}
        module = self.pkcs11_module or config.keystore.pkcs11_module
        token = self.pkcs11_token or config.keystore.pkcs11_token
        values = {
            "keystore.backend": "pkcs11",
            "keystore.pkcs11_module": module,
            "keystore.pkcs11_token": token,
        }
        if self.pin_file is not None:
            # Absolute: the service may run from another working directory.
            values["keystore.pin_file"] = str(self.pin_file.expanduser().resolve())
        elif self.pin_env is not None:
            values["keystore.pin_env"] = self.pin_env
        else:
            values["keystore.pin_env"] = config.keystore.pin_env
            if config.keystore.pin_file:
                values["keystore.pin_file"] = config.keystore.pin_file
        if not values["keystore.pkcs11_module"] or not values["keystore.pkcs11_token"]:
            raise ConfigError(
                "the pkcs11 keystore needs --module PATH and --token LABEL "
                "(or $SCEAU_PKCS11_MODULE and $SCEAU_PKCS11_TOKEN)"
            )
        return values


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")


def check_env_agrees(values: Mapping[str, str]) -> None:
    """Refuse when a ``SCEAU_*`` variable would override what is being written to sceau.toml.

    The environment wins over the file at every start; recording one token while the
    variable names another would leave a data dir that silently uses something else.
    """
    for dotted, value in values.items():
        variable = env_name(dotted)
        given = os.environ.get(variable)
        if given is not None and given != value:
            raise ConfigError(
                f"${variable}={given!r} overrides {dotted} = {value!r}; "
                f"unset it or make it agree"
            )


def _toml_value(value: str | int) -> str:
    if isinstance(value, int):
        return str(value)
    # A JSON string is a TOML basic string (same escapes); ensure_ascii=False because TOML
    # refuses the surrogate-pair escapes JSON would use beyond the BMP.
    return json.dumps(value, ensure_ascii=False)


def set_config_values(data_dir: Path, values: Mapping[str, str | int]) -> None:
    """Set ``section.name = value`` entries in ``DATA_DIR/sceau.toml``, keeping the rest.

    An existing line (set or commented out, as ``sceau init`` writes them) is replaced in
    place; a missing one is added to its section. The result is parsed back and checked
    before it replaces the file (atomically), so a bad edit never leaves a broken config.
    """
    path = data_dir / CONFIG_FILE
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    for dotted, value in values.items():
        section, name = dotted.split(".", 1)
        entry = f"{name} = {_toml_value(value)}"
        header = f"[{section}]"
        start = next((i for i, ln in enumerate(lines) if ln.strip() == header), None)
        if start is None:
            lines += ["", header, entry]
            continue
        end = next(
            (i for i in range(start + 1, len(lines)) if lines[i].lstrip().startswith("[")),
            len(lines),
        )
        live = re.compile(rf"\s*{re.escape(name)}\s*=")
        commented = re.compile(rf"\s*#\s*{re.escape(name)}\s*=")
        found = next((i for i in range(start + 1, end) if live.match(lines[i])), None)
        if found is None:
            found = next((i for i in range(start + 1, end) if commented.match(lines[i])), None)
        if found is not None:
            lines[found] = entry
        else:
            last = end
            while last > start + 1 and not lines[last - 1].strip():
                last -= 1
            lines.insert(last, entry)
    text = "\n".join(lines) + "\n"
    try:
        parsed = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:  # pragma: no cover - guarded by construction
        raise ConfigError(f"{path}: the edited configuration does not parse: {exc}") from None
    for dotted, value in values.items():
        section, name = dotted.split(".", 1)
        if parsed.get(section, {}).get(name) != value:
            raise ConfigError(f"{path}: could not set {dotted}; edit the file by hand")
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    tmp.write_text(text, encoding="utf-8")
    if path.exists():
        os.chmod(tmp, stat.S_IMODE(path.stat().st_mode))
    os.replace(tmp, path)


def initialize(
    data_dir: Path,
    *,
    keystore_backend: str | None = None,
    keystore: KeystoreChoice | None = None,
) -> InitResult:
    """Create a new data dir; refuses to touch an existing, non-empty one.

    ``keystore`` (or the older ``keystore_backend`` shorthand) picks the backend; for
    ``pkcs11`` the objects are created in the token and sceau.toml records module, token and
    the PIN's source. If the keystore cannot be created (token not found, wrong PIN), nothing
    is left behind, so the command can simply be run again.
    """
    choice = keystore or KeystoreChoice(backend=keystore_backend)
    if data_dir.exists() and (not data_dir.is_dir() or any(data_dir.iterdir())):
        raise ConfigError(f"{data_dir} already exists; refusing to overwrite an installation")
    created = not data_dir.exists()
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(data_dir, 0o700)
    try:
        (data_dir / CONFIG_FILE).write_text(render_default_config(), encoding="utf-8")
        values = choice.config_values(load_config(data_dir))
        check_env_agrees(values)
        set_config_values(data_dir, values)
        config = load_config(data_dir)
        names = tls_names(config)  # a bad service_id or host fails before anything is made
        settings = replace(keystore_settings(config), signing_alg=choice.signing_alg)
        init_keystore(settings)
    except BaseException:
        # Everything under data_dir is ours (it was empty): leave it as we found it.
        for child in data_dir.iterdir():
            if child.is_dir():
                shutil.rmtree(child)
            else:
                child.unlink()
        if created:
            data_dir.rmdir()
        raise
    make_tls_certificate(data_dir / "tls", names)
    open_witness(config).file.prepare()  # the audit witness dir, 0700 (docs/audit.md)
    engines = create_engines(config.database_url, synchronous=config.audit.synchronous)
    try:
        upgrade(engines)
        password = secrets.token_urlsafe(15)
        now = int(time.time())
        with open_keystore(settings) as sealer, engines.write.begin() as conn:
            if accounts.get_account(conn, ADMIN_USER) is None:
                accounts.insert_account(
                    conn,
                    sealer.seal_row(accounts.AccountRow(
                        username=ADMIN_USER,
                        password_hash=hash_password(password),
                        role=str(Role.ADMIN),
                        status=AccountStatus.ACTIVE,
                        must_change_password=True,
                        totp_secret=None,
                        created_at=now,
                        updated_at=now,
                    )),
                )
            else:
                password = ""
    finally:
        engines.dispose()
    db_file = data_dir / "sceau.db"
    if db_file.exists():
        os.chmod(db_file, 0o600)
    return InitResult(data_dir=data_dir, admin_user=ADMIN_USER, admin_password=password)
