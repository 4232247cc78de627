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
    Setting("limits", "rate_limit_per_app", int, 0, "SCEAU_RATE_LIMIT_PER_APP",
            doc="requests per second per application; 0 = unlimited"),
    Setting("keys", "default_lifetime_days", int, 365, "SCEAU_DEFAULT_LIFETIME_DAYS", _positive),
    Setting("audit", "node_id", str, "", "SCEAU_NODE_ID", _node_id,
            doc="this node's audit chain id; empty = leased automatically"),
    Setting("audit", "checkpoint_every", int, 1000, "SCEAU_CHECKPOINT_EVERY", _positive),
    Setting("audit", "checkpoint_interval_s", int, 10, "SCEAU_CHECKPOINT_INTERVAL_S", _positive),
    Setting("audit", "max_batch", int, 256, "SCEAU_AUDIT_MAX_BATCH", _positive),
    Setting("audit", "synchronous", str, "FULL", "SCEAU_SQLITE_SYNCHRONOUS",
            _one_of("FULL", "EXTRA")),
    Setting("log", "level", str, "INFO", "SCEAU_LOG_LEVEL",
            _one_of("DEBUG", "INFO", "WARNING", "ERROR")),
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
