"""The scalar sections of ``sceau.toml``: one frozen pydantic model per ``[section]``.

Each setting is declared once, with :func:`setting`: its default, its ``SCEAU_*``
environment variable, the comment ``sceau init`` writes beside it, and its range. The
models refuse unknown keys, so a misspelt setting is an error naming it rather than a value
silently left at its default. Values from the environment arrive as text: integers are
parsed from it, but a TOML boolean or float is never taken for an integer.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field
from pydantic.fields import FieldInfo

__all__ = [
    "CONSOLE_ROLES",
    "DEFAULT_RATE_LIMIT_PER_APP",
    "AuditSection",
    "ConsoleSection",
    "KeysSection",
    "KeystoreSection",
    "LimitsSection",
    "LogSection",
    "OidcSection",
    "ServerSection",
    "ServiceSection",
    "StoreSection",
    "env_of",
    "role_list",
    "setting",
]

#: Requests per second per application and node. One node serves about 1 100-1 350 calls a
#: second on SQLite and 700-850 on PostgreSQL (docs/performance.md, CPU per request of the
#: cheapest operations), so 500 leaves most of a node to the other applications when one
#: runs away, and is far above what an application makes in normal use (43 million calls a
#: day per node; bulk work goes in batches of up to 1 000 items per call).
DEFAULT_RATE_LIMIT_PER_APP = 500
DAY = 86_400
CONSOLE_ROLES = ("admin", "auditor", "user")


def setting(default: Any, env: str, doc: str = "", **checks: Any) -> Any:
    """A setting: default, ``SCEAU_*`` variable, comment for ``sceau init``, range checks."""
    return Field(default, description=doc, json_schema_extra={"env": env}, **checks)


def env_of(field: FieldInfo) -> str:
    """The environment variable a field declared with :func:`setting`."""
    extra = field.json_schema_extra
    if not isinstance(extra, dict) or not isinstance(extra.get("env"), str):
        raise TypeError("a setting is declared with setting(default, env, ...)")
    return str(extra["env"])


def _integer(value: Any) -> Any:
    # pydantic's lax mode would read true as 1 and 2.0 as 2; a setting wants an integer.
    if isinstance(value, bool | float):
        raise ValueError("expected an integer")
    return value


Integer = Annotated[int, BeforeValidator(_integer)]


def _workers(value: Any) -> Any:
    """``"auto"`` or a whole number of at least 1 (text from the environment or an option)."""
    if isinstance(value, str) and value.strip() == "auto":
        return "auto"
    if isinstance(value, bool | float):
        raise ValueError('expected an integer of at least 1, or "auto"')
    if isinstance(value, str):
        try:
            value = int(value.strip(), 10)
        except ValueError:
            raise ValueError('expected an integer of at least 1, or "auto"') from None
    if not isinstance(value, int) or value < 1:
        raise ValueError('expected an integer of at least 1, or "auto"')
    return value


def _node_id(value: str) -> str:
    if value and not (len(value) <= 64 and all(c.isalnum() or c in "-_." for c in value)):
        raise ValueError("must be 1-64 letters, digits, '-', '_' or '.'")
    return value


def _syslog_target(value: str) -> str:
    """A light check; ``sceau.auditlog.witness.SyslogTarget`` parses it at start."""
    if value == "" or value.startswith("unix:/"):
        return value
    scheme, sep, rest = value.partition("://")
    host, colon, port = rest.rpartition(":")
    if sep and scheme in ("udp", "tcp") and host and colon and port.isdigit():
        return value
    raise ValueError("udp://host:port, tcp://host:port, unix:/path, or empty (off)")


def _https_url_or_empty(value: str) -> str:
    if value == "" or (value.startswith("https://") and len(value) > len("https://")):
        return value
    raise ValueError("an https:// URL, or empty (off)")


def role_list(value: str) -> frozenset[str]:
    """The roles named by a comma-separated list (empty: none)."""
    return frozenset(part.strip() for part in value.split(",") if part.strip())


def _roles(value: str) -> str:
    unknown = sorted(role_list(value) - set(CONSOLE_ROLES))
    if unknown:
        raise ValueError(
            f"unknown role(s) {', '.join(unknown)}; roles are {', '.join(CONSOLE_ROLES)}"
        )
    return value


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ServiceSection(_Section):
    service_id: str = setting("", "SCEAU_SERVICE_ID",
                              "service id (aud); default https://HOST:PORT")


class ServerSection(_Section):
    host: str = setting("127.0.0.1", "SCEAU_HOST")
    port: Integer = setting(8443, "SCEAU_PORT", ge=1, le=65535)
    workers: Annotated[int | Literal["auto"], BeforeValidator(_workers)] = setting(
        "auto", "SCEAU_WORKERS",
        "worker processes on the one port (sceau serve --workers); auto = one per usable "
        "core; each is a node: its own audit chain, and the connection cap and the rate "
        "limits apply per worker")
    request_timeout_s: Integer = setting(30, "SCEAU_REQUEST_TIMEOUT_S", gt=0)
    max_connections: Integer = setting(1024, "SCEAU_MAX_CONNECTIONS",
                                       "open connections per worker process", gt=0)
    client_ca: str = setting(
        "", "SCEAU_TLS_CLIENT_CA",
        "PEM bundle of CAs for application client certificates (mutual TLS)")
    client_auth: Literal["optional", "required"] = setting(
        "optional", "SCEAU_TLS_CLIENT_AUTH", "with client_ca: optional or required")


class StoreSection(_Section):
    database_url: str = setting("", "SCEAU_DATABASE_URL",
                                "SQLAlchemy URL; default sqlite:///DATA_DIR/sceau.db")
    pool_size: Integer = setting(8, "SCEAU_DB_POOL_SIZE", gt=0)


class KeystoreSection(_Section):
    backend: Literal["file", "pkcs11"] = setting("file", "SCEAU_KEYSTORE")
    passphrase_env: str = setting("", "SCEAU_KEYSTORE_PASSPHRASE_ENV")
    pkcs11_module: str = setting("", "SCEAU_PKCS11_MODULE")
    pkcs11_token: str = setting("", "SCEAU_PKCS11_TOKEN")
    pin_env: str = setting("SCEAU_PKCS11_PIN", "SCEAU_PKCS11_PIN_ENV")
    pin_file: str = setting("", "SCEAU_PKCS11_PIN_FILE")
    pool_size: Integer = setting(4, "SCEAU_PKCS11_POOL_SIZE", gt=0)
    # A test hook: the self-test named here fails at start (its expected answer corrupted),
    # so the refusal path can be watched. sceau.keystore.selftest checks the name.
    selftest_fail: str = setting(
        "", "SCEAU_SELFTEST_FAIL",
        "tests only: make this start-up self-test fail (docs/hsm.md); empty = none")


class LimitsSection(_Section):
    max_body_bytes: Integer = setting(16 * 1024 * 1024, "SCEAU_MAX_BODY_BYTES", gt=0)
    max_batch_items: Integer = setting(1000, "SCEAU_MAX_BATCH_ITEMS", gt=0)
    max_plaintext_bytes: Integer = setting(8 * 1024 * 1024, "SCEAU_MAX_PLAINTEXT_BYTES", gt=0)
    max_token_lifetime_s: Integer = setting(300, "SCEAU_MAX_TOKEN_LIFETIME_S", gt=0)
    clock_skew_s: Integer = setting(60, "SCEAU_CLOCK_SKEW_S", gt=0)
    refusals_per_ip_per_s: Integer = setting(
        20, "SCEAU_REFUSALS_PER_IP_PER_S",
        "refused calls (400/401/413) per second per client address before each further "
        "refusal is answered after a delay; 0 = no tarpit")
    jwe_per_ip_per_s: Integer = setting(
        10, "SCEAU_JWE_PER_IP_PER_S",
        "JWE private-key operations per second per client address (bursts of 10x) that did "
        "not turn out to come from a registered application; over it 429", gt=0)
    # On by default: a runaway application is held to about half of what one node serves
    # (docs/deploy.md, "Rate limit"), which a normal one never reaches.
    rate_limit_per_app: Integer = setting(
        DEFAULT_RATE_LIMIT_PER_APP, "SCEAU_RATE_LIMIT_PER_APP",
        "requests per second per application and node, that is per worker process (bursts "
        "of one second); 0 = unlimited",
        ge=0)


class KeysSection(_Section):
    default_lifetime_days: Integer = setting(365, "SCEAU_DEFAULT_LIFETIME_DAYS", gt=0)
    # Test clocks (docs/erasure.md): a test sets a one-second "day" and a fast sweep.
    day_seconds: Integer = setting(
        DAY, "SCEAU_DAY_SECONDS",
        "tests only: seconds in a \"day\" of pending_days and purge-expired --older-than",
        ge=1, le=DAY)
    sweep_interval_s: float = setting(
        30.0, "SCEAU_SWEEP_INTERVAL_S",
        "seconds between two sweeps (pending destructions, replay cache)",
        ge=0.05, le=DAY)


class AuditSection(_Section):
    node_id: Annotated[str, AfterValidator(_node_id)] = setting(
        "", "SCEAU_NODE_ID", "this node's audit chain id; empty = leased automatically")
    checkpoint_every: Integer = setting(1000, "SCEAU_CHECKPOINT_EVERY", gt=0)
    checkpoint_interval_s: Integer = setting(10, "SCEAU_CHECKPOINT_INTERVAL_S", gt=0)
    max_batch: Integer = setting(256, "SCEAU_AUDIT_MAX_BATCH", gt=0)
    synchronous: Literal["FULL", "EXTRA"] = setting("FULL", "SCEAU_SQLITE_SYNCHRONOUS")
    witness_dir: str = setting(
        "", "SCEAU_AUDIT_WITNESS_DIR",
        "append-only checkpoint witness files, one per node; default DATA_DIR/witness "
        "(a relative path is taken in DATA_DIR)")
    witness_syslog: Annotated[str, AfterValidator(_syslog_target)] = setting(
        "", "SCEAU_AUDIT_WITNESS_SYSLOG",
        "also send each checkpoint to udp://host:port, tcp://host:port or unix:/path "
        "(RFC 5424); empty = off")
    witness_syslog_facility: str = setting(
        "audit", "SCEAU_AUDIT_WITNESS_SYSLOG_FACILITY", "facility of the witness messages")
    witness_url: Annotated[str, AfterValidator(_https_url_or_empty)] = setting(
        "", "SCEAU_AUDIT_WITNESS_URL",
        "also POST each checkpoint to this countersigning witness (another Sceau: "
        "https://HOST:PORT/witness/v1/checkpoint); empty = off")
    witness_url_ca: str = setting(
        "", "SCEAU_AUDIT_WITNESS_URL_CA",
        "PEM bundle the witness's TLS certificate must chain to; empty = system CAs")
    witness_peers_dir: str = setting(
        "", "SCEAU_AUDIT_WITNESS_PEERS_DIR",
        "serve as the countersigning witness of the services whose JWKS are the PEER.json "
        "files of this directory; empty = off")


class ConsoleSection(_Section):
    # Separation of duties (docs/console.md): a gated console action needs this many admins,
    # the requester included. 1 would let one admin act alone: refused (fail closed); the
    # host operator's CLI is the way for an installation with a single admin.
    approval_quorum: Integer = setting(
        2, "SCEAU_CONSOLE_APPROVAL_QUORUM",
        "admins needed for a gated action, requester included (2-5)", ge=2, le=5)
    approval_ttl_s: Integer = setting(
        DAY, "SCEAU_CONSOLE_APPROVAL_TTL_S", "seconds a request waits for approval",
        ge=1, le=7 * DAY)
    totp_required_roles: Annotated[str, AfterValidator(_roles)] = setting(
        "admin,auditor", "SCEAU_CONSOLE_TOTP_REQUIRED_ROLES",
        "roles that must enrol TOTP before reaching any page (comma-separated)")

    @property
    def totp_roles(self) -> frozenset[str]:
        return role_list(self.totp_required_roles)


class LogSection(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = setting("INFO", "SCEAU_LOG_LEVEL")


class OidcSection(_Section):
    """OpenID Connect sign-in to the console (docs/console.md).

    Off while ``issuer`` is empty; the settings are checked together when the service
    starts (``service/console/oidc.py``), which also reads the client secret.
    """

    issuer: str = setting(
        "", "SCEAU_OIDC_ISSUER",
        "the provider's issuer URL (https); discovery at ISSUER/.well-known/openid-"
        "configuration; empty = no OpenID Connect sign-in")
    client_id: str = setting("", "SCEAU_OIDC_CLIENT_ID")
    client_secret_env: str = setting(
        "", "SCEAU_OIDC_CLIENT_SECRET_ENV",
        "NAME of the environment variable holding the client secret (not the secret)")
    client_secret_file: str = setting(
        "", "SCEAU_OIDC_CLIENT_SECRET_FILE",
        "or a file holding the client secret (one of the two)")
    token_auth: Literal["client_secret_basic", "client_secret_post"] = setting(
        "client_secret_basic", "SCEAU_OIDC_TOKEN_AUTH",
        "how Sceau authenticates to the token endpoint")
    scopes: str = setting("openid email", "SCEAU_OIDC_SCOPES",
                          "space-separated; must include openid and email")
    ca_file: str = setting("", "SCEAU_OIDC_CA_FILE",
                           "PEM CAs to trust for the provider's TLS; empty = the system's")
    display_name: str = setting("", "SCEAU_OIDC_DISPLAY_NAME",
                                "shown as 'Sign in with NAME'; default the issuer's host")
    provision: Literal["user", "none"] = setting(
        "user", "SCEAU_OIDC_PROVISION",
        "an unknown verified email at first sign-in: user = a `user` account is created; "
        "none = refused until an account exists")
    email_domains: str = setting(
        "", "SCEAU_OIDC_EMAIL_DOMAINS",
        "space-separated domains whose emails may sign in; '*' = any; required with "
        "provision = user")
