"""Service configuration: one frozen, validated :class:`Config` per data dir.

:func:`load_config` reads ``DATA_DIR/sceau.toml`` (pydantic-settings' TOML source), lays
each setting's ``SCEAU_*`` environment variable over it, then any command-line override,
and validates the whole at once. A misspelt key, a value of the wrong type or out of range
is a :class:`~sceau.errors.ConfigError` naming the setting (and where it came from), so a
typo fails at start rather than at the first request. The settings themselves are declared
in :mod:`sceau.config.sections` (scalars) and :mod:`sceau.config.workspace` (``[cse]``,
``[dke]``); code reads them as typed attributes: ``config.audit.witness_dir``.

May import: the standard library, pydantic (with pydantic-settings) and :mod:`sceau.errors`,
nothing else: every layer may read the configuration, so it depends on none of them.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from sceau.config.sections import (
    DEFAULT_RATE_LIMIT_PER_APP,
    AuditSection,
    ConsoleSection,
    KeysSection,
    KeystoreSection,
    LimitsSection,
    LogSection,
    OidcSection,
    ServerSection,
    ServiceSection,
    StoreSection,
    env_of,
)
from sceau.config.workspace import CseSettings, DkeSettings
from sceau.errors import ConfigError

__all__ = [
    "CONFIG_FILE",
    "DEFAULT_RATE_LIMIT_PER_APP",
    "Config",
    "default_data_dir",
    "env_name",
    "load_config",
    "render_default_config",
]

CONFIG_FILE = "sceau.toml"
DEFAULT_DATA_DIR = "./sceau-data"


def default_data_dir() -> Path:
    """``$SCEAU_DATA_DIR``, else ``./sceau-data`` (SPEC §10, command line)."""
    return Path(os.environ.get("SCEAU_DATA_DIR") or DEFAULT_DATA_DIR)


class Config(BaseSettings):
    """Validated configuration for one data dir; only :func:`load_config` makes one."""

    model_config = SettingsConfigDict(frozen=True, extra="forbid")

    data_dir: Path
    service: ServiceSection = Field(default_factory=ServiceSection)
    server: ServerSection = Field(default_factory=ServerSection)
    store: StoreSection = Field(default_factory=StoreSection)
    keystore: KeystoreSection = Field(default_factory=KeystoreSection)
    limits: LimitsSection = Field(default_factory=LimitsSection)
    keys: KeysSection = Field(default_factory=KeysSection)
    audit: AuditSection = Field(default_factory=AuditSection)
    console: ConsoleSection = Field(default_factory=ConsoleSection)
    log: LogSection = Field(default_factory=LogSection)
    oidc: OidcSection = Field(default_factory=OidcSection)
    cse: CseSettings = Field(default_factory=CseSettings)
    dke: DkeSettings = Field(default_factory=DkeSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # load_config hands over its own sources; a Config built any other way takes its
        # arguments only, never pydantic-settings' default environment names (LOG, KEYS...).
        return (init_settings,)

    @property
    def service_id(self) -> str:
        explicit = self.service.service_id
        if explicit:
            return explicit.rstrip("/")
        host = self.server.host if ":" not in self.server.host else f"[{self.server.host}]"
        return f"https://{host}:{self.server.port}"

    @property
    def database_url(self) -> str:
        return self.store.database_url or f"sqlite:///{(self.data_dir / 'sceau.db').resolve()}"

    @property
    def tls_cert(self) -> Path:
        return self.data_dir / "tls" / "cert.pem"

    @property
    def tls_key(self) -> Path:
        return self.data_dir / "tls" / "key.pem"


def _settings() -> Iterator[tuple[str, str, FieldInfo]]:
    """(section, name, field) of every setting that has an environment variable."""
    for section, section_field in Config.model_fields.items():
        model = section_field.annotation
        if isinstance(model, type) and issubclass(model, BaseModel):
            for name, field in model.model_fields.items():
                if isinstance(field.json_schema_extra, dict):
                    yield section, name, field


_ENV = {f"{section}.{name}": env_of(field) for section, name, field in _settings()}


def env_name(dotted: str) -> str:
    """The environment variable of ``section.name``."""
    return _ENV[dotted]


class _SettingsEnvironment(PydanticBaseSettingsSource):
    """Each setting's own ``SCEAU_*`` variable (:data:`_ENV`), as nested section values.

    The names are the documented ones (``SCEAU_DB_POOL_SIZE`` for ``store.pool_size``...),
    older than any nesting convention, so each is declared on its field rather than
    derived by pydantic-settings' ``EnvSettingsSource``.
    """

    def __init__(self, env: Mapping[str, str]) -> None:
        super().__init__(Config)
        self._env = env

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ reads every setting at once

    def __call__(self) -> dict[str, Any]:
        values: dict[str, dict[str, str]] = {}
        for dotted, variable in _ENV.items():
            if variable in self._env:
                section, name = dotted.split(".")
                values.setdefault(section, {})[name] = self._env[variable]
        return values


def _nested(dotted_values: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    nested: dict[str, dict[str, Any]] = {}
    for dotted, value in dotted_values.items():
        section, _, name = dotted.partition(".")
        nested.setdefault(section, {})[name] = value
    return nested


def load_config(
    data_dir: Path,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Read ``DATA_DIR/sceau.toml`` (optional), then ``SCEAU_*`` variables, then overrides.

    ``env`` defaults to the process environment; ``overrides`` maps ``section.name`` to a
    value (command-line options) and wins over both.
    """
    env = os.environ if env is None else env
    overrides = overrides or {}
    path = data_dir / CONFIG_FILE
    try:
        from_file = TomlConfigSettingsSource(Config, toml_file=path)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    for key, table in from_file.toml_data.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: top-level key {key!r} must be a [section]")
    sources = (
        InitSettingsSource(Config, {"data_dir": data_dir, **_nested(overrides)}),
        _SettingsEnvironment(env),
        from_file,
    )
    try:
        # _build_sources is BaseSettings' argument for sources made by the caller; mypy sees
        # only the fields as arguments (pydantic's dataclass_transform).
        return Config(_build_sources=(sources, {}))  # type: ignore[call-arg]
    except ValidationError as exc:
        problems = [_describe(error, path, env, overrides) for error in exc.errors()]
        raise ConfigError("; ".join(problems)) from None


def _describe(
    error: ErrorDetails, path: Path, env: Mapping[str, str], overrides: Mapping[str, Any]
) -> str:
    """One validation error as ``setting (from origin): problem``, naming the setting."""
    dotted = ""
    for part in error["loc"]:
        dotted += f"[{part}]" if isinstance(part, int) else f".{part}"
    dotted = dotted.lstrip(".")
    if error["type"] == "extra_forbidden":
        return f"{path}: unknown setting {dotted!r}"
    variable = _ENV.get(dotted)
    if dotted in overrides:
        origin = f"option {dotted}"
    elif variable is not None and variable in env:
        origin = f"${variable}"
    else:
        origin = str(path)
    problem = error["msg"]
    if error["type"] == "value_error":
        problem = str(error.get("ctx", {}).get("error", problem))
    return f"{dotted} (from {origin}): {problem}"


def render_default_config() -> str:
    """The commented ``sceau.toml`` written by ``sceau init``."""
    lines = ["# Sceau configuration. Every setting can be overridden by its SCEAU_* variable.", ""]
    current = ""
    for section, name, field in _settings():
        if section != current:
            current = section
            lines += ["", f"[{section}]"]
        note = f"  # ${env_of(field)}" + (f"; {field.description}" if field.description else "")
        default = field.default
        value = f'"{default}"' if isinstance(default, str) else str(default)
        lines.append(f"# {name} = {value}{note}")
    return "\n".join(lines).lstrip() + "\n"
