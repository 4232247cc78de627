"""Service configuration: one TOML file in the data dir plus ``SCEAU_*`` overrides.

Every setting is declared once in :data:`SETTINGS` with its type, default and environment
variable. Loading validates everything and names the bad setting in the error, so a typo
fails at start rather than at the first request.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sceau.errors import ConfigError

CONFIG_FILE = "sceau.toml"
DEFAULT_DATA_DIR = "./sceau-data"
#: Requests per second per application and node. One node serves about 1 100-1 350 calls a
#: second on SQLite and 700-850 on PostgreSQL (docs/performance.md, CPU per request of the
#: cheapest operations), so 500 leaves most of a node to the other applications when one
#: runs away, and is far above what an application makes in normal use (43 million calls a
#: day per node; bulk work goes in batches of up to 1 000 items per call).
DEFAULT_RATE_LIMIT_PER_APP = 500

# Sections with arrays of tables (``[[cse.identity_providers]]``): kept whole in
# :attr:`Config.sections` and validated by their own pydantic models
# (``sceau.service.workspace.settings``), which name the bad setting as this loader does.
TABLE_SECTIONS = frozenset({"cse", "dke"})


def default_data_dir() -> Path:
    """``$SCEAU_DATA_DIR``, else ``./sceau-data`` (SPEC §10, command line)."""
    return Path(os.environ.get("SCEAU_DATA_DIR") or DEFAULT_DATA_DIR)


@dataclass(frozen=True)
class Setting:
    """One configuration entry: ``section.name`` in TOML, ``env`` in the environment."""

    section: str
    name: str
    kind: type
    default: Any
    env: str
    check: Callable[[Any], str | None] | None = None
    doc: str = ""

    @property
    def dotted(self) -> str:
        return f"{self.section}.{self.name}"


def _positive(value: Any) -> str | None:
    return None if value > 0 else "must be > 0"


def _not_negative(value: Any) -> str | None:
    return None if value >= 0 else "must be >= 0"


def _port(value: Any) -> str | None:
    return None if 0 < value < 65536 else "must be a TCP port (1-65535)"


def _one_of(*choices: str) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if value in choices else f"must be one of {', '.join(choices)}"

    return check


def _node_id(value: Any) -> str | None:
    if value == "":
        return None
    ok = 0 < len(value) <= 64 and all(c.isalnum() or c in "-_." for c in value)
    return None if ok else "must be 1-64 letters, digits, '-', '_' or '.'"


def _syslog_target(value: Any) -> str | None:
    """A light check; ``sceau.auditlog.witness.SyslogTarget`` parses it at start."""
    if value == "" or value.startswith("unix:/"):
        return None
    scheme, sep, rest = value.partition("://")
    host, colon, port = rest.rpartition(":")
    if sep and scheme in ("udp", "tcp") and host and colon and port.isdigit():
        return None
    return "udp://host:port, tcp://host:port, unix:/path, or empty (off)"


def _https_url(value: Any) -> str | None:
    ok = value == "" or (value.startswith("https://") and len(value) > len("https://"))
    return None if ok else "an https:// URL, or empty (off)"


def _between(low: int, high: int) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if low <= value <= high else f"must be from {low} to {high}"

    return check


CONSOLE_ROLES = ("admin", "auditor", "user")


def _roles(value: Any) -> str | None:
    """A comma-separated list of console roles (empty: none)."""
    unknown = sorted(role_list(value) - set(CONSOLE_ROLES))
    if unknown:
        return f"unknown role(s) {', '.join(unknown)}; roles are {', '.join(CONSOLE_ROLES)}"
    return None


def role_list(value: str) -> frozenset[str]:
    """The roles named by a value that passed :func:`_roles`."""
    return frozenset(part.strip() for part in value.split(",") if part.strip())


SETTINGS: tuple[Setting, ...] = (
    Setting("service", "service_id", str, "", "SCEAU_SERVICE_ID",
            doc="service id (aud); default https://HOST:PORT"),
    Setting("server", "host", str, "127.0.0.1", "SCEAU_HOST"),
    Setting("server", "port", int, 8443, "SCEAU_PORT", _port),
    Setting("server", "workers", int, 1, "SCEAU_WORKERS", _positive),
    Setting("server", "request_timeout_s", int, 30, "SCEAU_REQUEST_TIMEOUT_S", _positive),
    Setting("server", "max_connections", int, 1024, "SCEAU_MAX_CONNECTIONS", _positive),
    Setting("server", "client_ca", str, "", "SCEAU_TLS_CLIENT_CA",
            doc="PEM bundle of CAs for application client certificates (mutual TLS)"),
    Setting("server", "client_auth", str, "optional", "SCEAU_TLS_CLIENT_AUTH",
            _one_of("optional", "required"), doc="with client_ca: optional or required"),
    Setting("store", "database_url", str, "", "SCEAU_DATABASE_URL",
            doc="SQLAlchemy URL; default sqlite:///DATA_DIR/sceau.db"),
    Setting("store", "pool_size", int, 8, "SCEAU_DB_POOL_SIZE", _positive),
    Setting("keystore", "backend", str, "file", "SCEAU_KEYSTORE", _one_of("file", "pkcs11")),
    Setting("keystore", "passphrase_env", str, "", "SCEAU_KEYSTORE_PASSPHRASE_ENV"),
    Setting("keystore", "pkcs11_module", str, "", "SCEAU_PKCS11_MODULE"),
    Setting("keystore", "pkcs11_token", str, "", "SCEAU_PKCS11_TOKEN"),
    Setting("keystore", "pin_env", str, "SCEAU_PKCS11_PIN", "SCEAU_PKCS11_PIN_ENV"),
    Setting("keystore", "pin_file", str, "", "SCEAU_PKCS11_PIN_FILE"),
    Setting("keystore", "pool_size", int, 4, "SCEAU_PKCS11_POOL_SIZE", _positive),
    Setting("limits", "max_body_bytes", int, 16 * 1024 * 1024, "SCEAU_MAX_BODY_BYTES", _positive),
    Setting("limits", "max_batch_items", int, 1000, "SCEAU_MAX_BATCH_ITEMS", _positive),
    Setting("limits", "max_plaintext_bytes", int, 8 * 1024 * 1024, "SCEAU_MAX_PLAINTEXT_BYTES",
            _positive),
    Setting("limits", "max_token_lifetime_s", int, 300, "SCEAU_MAX_TOKEN_LIFETIME_S", _positive),
    Setting("limits", "clock_skew_s", int, 60, "SCEAU_CLOCK_SKEW_S", _positive),
    Setting("limits", "refusals_per_ip_per_s", int, 20, "SCEAU_REFUSALS_PER_IP_PER_S",
            doc="refused calls (400/401/413) per second per client address before each "
            "further refusal is answered after a delay; 0 = no tarpit"),
    Setting("limits", "jwe_per_ip_per_s", int, 10, "SCEAU_JWE_PER_IP_PER_S", _positive,
            doc="JWE private-key operations per second per client address (bursts of 10x) "
            "that did not turn out to come from a registered application; over it 429"),
    # On by default: a runaway application is held to about half of what one node serves
    # (docs/deploy.md, "Rate limit"), which a normal one never reaches.
    Setting("limits", "rate_limit_per_app", int, DEFAULT_RATE_LIMIT_PER_APP,
            "SCEAU_RATE_LIMIT_PER_APP", _not_negative,
            doc="requests per second per application and node (bursts of one second); "
            "0 = unlimited"),
    Setting("keys", "default_lifetime_days", int, 365, "SCEAU_DEFAULT_LIFETIME_DAYS", _positive),
    Setting("audit", "node_id", str, "", "SCEAU_NODE_ID", _node_id,
            doc="this node's audit chain id; empty = leased automatically"),
    Setting("audit", "checkpoint_every", int, 1000, "SCEAU_CHECKPOINT_EVERY", _positive),
    Setting("audit", "checkpoint_interval_s", int, 10, "SCEAU_CHECKPOINT_INTERVAL_S", _positive),
    Setting("audit", "max_batch", int, 256, "SCEAU_AUDIT_MAX_BATCH", _positive),
    Setting("audit", "synchronous", str, "FULL", "SCEAU_SQLITE_SYNCHRONOUS",
            _one_of("FULL", "EXTRA")),
    Setting("audit", "witness_dir", str, "", "SCEAU_AUDIT_WITNESS_DIR",
            doc="append-only checkpoint witness files, one per node; default DATA_DIR/witness "
            "(a relative path is taken in DATA_DIR)"),
    Setting("audit", "witness_syslog", str, "", "SCEAU_AUDIT_WITNESS_SYSLOG", _syslog_target,
            doc="also send each checkpoint to udp://host:port, tcp://host:port or unix:/path "
            "(RFC 5424); empty = off"),
    Setting("audit", "witness_syslog_facility", str, "audit",
            "SCEAU_AUDIT_WITNESS_SYSLOG_FACILITY", doc="facility of the witness messages"),
    Setting("audit", "witness_url", str, "", "SCEAU_AUDIT_WITNESS_URL", _https_url,
            doc="also POST each checkpoint to this countersigning witness (another Sceau: "
            "https://HOST:PORT/witness/v1/checkpoint); empty = off"),
    Setting("audit", "witness_url_ca", str, "", "SCEAU_AUDIT_WITNESS_URL_CA",
            doc="PEM bundle the witness's TLS certificate must chain to; empty = system CAs"),
    Setting("audit", "witness_peers_dir", str, "", "SCEAU_AUDIT_WITNESS_PEERS_DIR",
            doc="serve as the countersigning witness of the services whose JWKS are the "
            "PEER.json files of this directory; empty = off"),
    # Separation of duties (docs/console.md): a gated console action needs this many admins,
    # the requester included. 1 would let one admin act alone: refused (fail closed); the
    # host operator's CLI is the way for an installation with a single admin.
    Setting("console", "approval_quorum", int, 2, "SCEAU_CONSOLE_APPROVAL_QUORUM",
            _between(2, 5), doc="admins needed for a gated action, requester included (2-5)"),
    Setting("console", "approval_ttl_s", int, 86_400, "SCEAU_CONSOLE_APPROVAL_TTL_S",
            _between(1, 7 * 86_400), doc="seconds a request waits for approval"),
    Setting("console", "totp_required_roles", str, "admin,auditor",
            "SCEAU_CONSOLE_TOTP_REQUIRED_ROLES", _roles,
            doc="roles that must enrol TOTP before reaching any page (comma-separated)"),
    Setting("log", "level", str, "INFO", "SCEAU_LOG_LEVEL",
            _one_of("DEBUG", "INFO", "WARNING", "ERROR")),
    # OpenID Connect sign-in to the console (docs/console.md). Off while issuer is empty; the
    # settings are checked together when the service starts (service/console/oidc.py).
    Setting("oidc", "issuer", str, "", "SCEAU_OIDC_ISSUER",
            doc="the provider's issuer URL (https); discovery at "
            "ISSUER/.well-known/openid-configuration; empty = no OpenID Connect sign-in"),
    Setting("oidc", "client_id", str, "", "SCEAU_OIDC_CLIENT_ID"),
    Setting("oidc", "client_secret_env", str, "", "SCEAU_OIDC_CLIENT_SECRET_ENV",
            doc="NAME of the environment variable holding the client secret (not the secret)"),
    Setting("oidc", "client_secret_file", str, "", "SCEAU_OIDC_CLIENT_SECRET_FILE",
            doc="or a file holding the client secret (one of the two)"),
    Setting("oidc", "token_auth", str, "client_secret_basic", "SCEAU_OIDC_TOKEN_AUTH",
            _one_of("client_secret_basic", "client_secret_post"),
            doc="how Sceau authenticates to the token endpoint"),
    Setting("oidc", "scopes", str, "openid email", "SCEAU_OIDC_SCOPES",
            doc="space-separated; must include openid and email"),
    Setting("oidc", "ca_file", str, "", "SCEAU_OIDC_CA_FILE",
            doc="PEM CAs to trust for the provider's TLS; empty = the system's"),
    Setting("oidc", "display_name", str, "", "SCEAU_OIDC_DISPLAY_NAME",
            doc="shown as 'Sign in with NAME'; default the issuer's host"),
    Setting("oidc", "provision", str, "user", "SCEAU_OIDC_PROVISION", _one_of("user", "none"),
            doc="an unknown verified email at first sign-in: user = a `user` account is "
            "created; none = refused until an account exists"),
    Setting("oidc", "email_domains", str, "", "SCEAU_OIDC_EMAIL_DOMAINS",
            doc="space-separated domains whose emails may sign in; '*' = any; required "
            "with provision = user"),
)


@dataclass(frozen=True)
class Config:
    """Validated configuration for one data dir."""

    data_dir: Path
    values: Mapping[str, Any] = field(repr=False)
    # The raw tables of :data:`TABLE_SECTIONS`, as read from the file.
    sections: Mapping[str, Any] = field(default_factory=dict, repr=False)

    def get(self, dotted: str) -> Any:
        return self.values[dotted]

    @property
    def host(self) -> str:
        return str(self.values["server.host"])

    @property
    def port(self) -> int:
        return int(self.values["server.port"])

    @property
    def service_id(self) -> str:
        explicit = str(self.values["service.service_id"])
        if explicit:
            return explicit.rstrip("/")
        host = self.host if ":" not in self.host else f"[{self.host}]"
        return f"https://{host}:{self.port}"

    @property
    def database_url(self) -> str:
        url = str(self.values["store.database_url"])
        return url or f"sqlite:///{(self.data_dir / 'sceau.db').resolve()}"

    @property
    def tls_cert(self) -> Path:
        return self.data_dir / "tls" / "cert.pem"

    @property
    def tls_key(self) -> Path:
        return self.data_dir / "tls" / "key.pem"

    def with_overrides(self, **overrides: Any) -> Config:
        """A copy with ``section.name`` (dots as ``__``) values replaced, validated."""
        values = dict(self.values)
        for key, value in overrides.items():
            dotted = key.replace("__", ".")
            setting = _BY_DOTTED.get(dotted)
            if setting is None:
                raise ConfigError(f"unknown setting {dotted!r}")
            values[dotted] = _coerce(setting, value, f"option {dotted}")
        return Config(self.data_dir, values, self.sections)


_BY_DOTTED = {s.dotted: s for s in SETTINGS}


def _coerce(setting: Setting, raw: Any, origin: str) -> Any:
    if setting.kind is int:
        if isinstance(raw, bool):
            raise ConfigError(f"{setting.dotted} (from {origin}): expected an integer")
        if isinstance(raw, str):
            try:
                raw = int(raw.strip(), 10)
            except ValueError:
                raise ConfigError(
                    f"{setting.dotted} (from {origin}): expected an integer, got {raw!r}"
                ) from None
        if not isinstance(raw, int):
            raise ConfigError(f"{setting.dotted} (from {origin}): expected an integer")
    elif setting.kind is str:
        if not isinstance(raw, str):
            raise ConfigError(f"{setting.dotted} (from {origin}): expected a string")
    if setting.check is not None:
        problem = setting.check(raw)
        if problem:
            raise ConfigError(f"{setting.dotted} (from {origin}): {problem}")
    return raw


def load_config(data_dir: Path, env: Mapping[str, str] | None = None) -> Config:
    """Read ``DATA_DIR/sceau.toml`` (optional) and apply ``SCEAU_*`` overrides."""
    env = os.environ if env is None else env
    path = data_dir / CONFIG_FILE
    file_values: dict[str, Any] = {}
    sections: dict[str, Any] = {}
    if path.exists():
        try:
            parsed = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        for section, table in parsed.items():
            if not isinstance(table, dict):
                raise ConfigError(f"{path}: top-level key {section!r} must be a [section]")
            if section in TABLE_SECTIONS:
                sections[section] = table
                continue
            for name, value in table.items():
                dotted = f"{section}.{name}"
                if dotted not in _BY_DOTTED:
                    raise ConfigError(f"{path}: unknown setting {dotted!r}")
                file_values[dotted] = value
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        if setting.env in env:
            values[setting.dotted] = _coerce(setting, env[setting.env], f"${setting.env}")
        elif setting.dotted in file_values:
            values[setting.dotted] = _coerce(setting, file_values[setting.dotted], str(path))
        else:
            values[setting.dotted] = setting.default
    return Config(data_dir, values, sections)


def render_default_config() -> str:
    """The commented ``sceau.toml`` written by ``sceau init``."""
    lines = ["# Sceau configuration. Every setting can be overridden by its SCEAU_* variable.", ""]
    section = ""
    for s in SETTINGS:
        if s.section != section:
            section = s.section
            lines += ["", f"[{section}]"]
        note = f"  # ${s.env}" + (f"; {s.doc}" if s.doc else "")
        value = f'"{s.default}"' if isinstance(s.default, str) else str(s.default)
        lines.append(f"# {s.name} = {value}{note}")
    return "\n".join(lines).lstrip() + "\n"
