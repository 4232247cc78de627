"""The ``[cse]`` and ``[dke]`` sections of ``sceau.toml`` (SPEC §11), as pydantic models.

The main loader (:mod:`sceau.config`) takes scalar settings only; these two sections have
arrays of tables, so they are kept whole in ``Config.sections`` and validated here, once,
at start. Every error names the setting (``cse.identity_providers[0].jwks: ...``) the way
the main loader does, and unknown members are refused: a typo must fail at start, not
silently leave a check off.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

from sceau.config import Config
from sceau.errors import ConfigError

__all__ = [
    "AuthorizationIssuer",
    "CseSettings",
    "DkeSettings",
    "IdentityProvider",
    "TokenIssuer",
    "cse_settings",
    "dke_settings",
    "normalize_url",
]

GOOGLE_AUTHZ_AUDIENCE = "cse-authorization"
DEFAULT_DKE_AUTHORIZATION_URL = "https://login.microsoftonline.com/common/oauth2/authorize"
EmailType = Literal["google", "google-visitor", "customer-idp"]


def normalize_url(url: str) -> str:
    """A KACLS URL for comparison: one trailing ``/`` removed (SPEC §11, CSE decisions)."""
    return url[:-1] if url.endswith("/") else url


def _jwks_location(value: str) -> str:
    """``https://...`` or ``file:/path``: nothing else is fetched (no http, no redirects)."""
    if value.startswith("file:"):
        if not value[len("file:"):]:
            raise ValueError("a file: JWKS location needs a path")
        return value
    parts = urlsplit(value)
    if parts.scheme != "https" or not parts.hostname:
        raise ValueError("must be an https:// URL or a file: path")
    return value


def _https_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme != "https" or not parts.hostname or parts.query or parts.fragment:
        raise ValueError("must be an https:// URL without query or fragment")
    return value


# Another KACLS's URL, as rewrap may call it: https only, compared without a trailing '/'.
KaclsUrl = Annotated[str, AfterValidator(lambda v: normalize_url(_https_url(v)))]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class _Issuer(_Strict):
    """A token issuer and where its public keys are (``https://`` or ``file:``)."""

    issuer: str = Field(min_length=1)
    jwks: str

    @field_validator("jwks")
    @classmethod
    def _check_jwks(cls, value: str) -> str:
        return _jwks_location(value)


class IdentityProvider(_Issuer):
    """An identity provider whose tokens authenticate CSE users."""

    audience: str = Field(min_length=1)


class AuthorizationIssuer(_Issuer):
    """An issuer of Google's authorization tokens (one per Workspace product)."""


class TokenIssuer(_Issuer):
    """An issuer of the bearer tokens Office sends to the DKE endpoints (Entra ID)."""


class _JwksFetching(_Strict):
    # PEM bundle trusted for https JWKS URLs instead of the system store (a private CA, or
    # the tests' loopback server). Empty: the system store.
    jwks_ca_file: str = ""
    jwks_timeout_s: float = Field(default=5.0, gt=0, le=60)
    # How long a fetched JWKS is used before it is fetched again.
    jwks_cache_s: int = Field(default=3600, ge=1)
    # An unknown kid refreshes a JWKS at most this often: anyone can send tokens with made-up
    # kids, and must not turn this service into a flood against the identity provider.
    jwks_refresh_min_s: float = Field(default=10.0, ge=0)


class CseSettings(_JwksFetching):
    """Google Workspace client-side encryption (the KACLS)."""

    enabled: bool = False
    kacls_url: str = ""  # default: <service_id>/cse
    strict: bool = False
    rewrap_from: tuple[KaclsUrl, ...] = ()
    authorization_audience: str = GOOGLE_AUTHZ_AUDIENCE
    # Which email_type values of the authorization token are served. Guests
    # (google-visitor, customer-idp) are served only when listed.
    email_types: tuple[EmailType, ...] = ("google",)
    identity_providers: tuple[IdentityProvider, ...] = ()
    authorization_issuers: tuple[AuthorizationIssuer, ...] = ()
    # Instance name shown by /cse/status.
    name: str = "sceau"

    @field_validator("kacls_url")
    @classmethod
    def _kacls(cls, value: str) -> str:
        return normalize_url(_https_url(value)) if value else value


class DkeSettings(_JwksFetching):
    """Microsoft Purview Double Key Encryption."""

    enabled: bool = False
    audience: str = ""
    authorization_url: str = DEFAULT_DKE_AUTHORIZATION_URL
    token_issuers: tuple[TokenIssuer, ...] = ()

    @field_validator("authorization_url")
    @classmethod
    def _authz(cls, value: str) -> str:
        return _https_url(value)


def _location(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _parse(model: type[_Strict], section: str, raw: Any) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"[{section}] must be a table")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ConfigError(f"{section}{_location(tuple(first['loc']))}: {first['msg']}") from None


def cse_settings(config: Config) -> CseSettings:
    """The validated ``[cse]`` section (disabled when absent)."""
    settings: CseSettings = _parse(CseSettings, "cse", config.sections.get("cse"))
    if settings.enabled:
        if not settings.identity_providers:
            raise ConfigError("cse.identity_providers: at least one is needed when enabled")
        if not settings.authorization_issuers:
            raise ConfigError("cse.authorization_issuers: at least one is needed when enabled")
    return settings


def dke_settings(config: Config) -> DkeSettings:
    """The validated ``[dke]`` section (disabled when absent)."""
    settings: DkeSettings = _parse(DkeSettings, "dke", config.sections.get("dke"))
    if settings.enabled:
        if not settings.audience:
            raise ConfigError("dke.audience: required when enabled")
        if not settings.token_issuers:
            raise ConfigError("dke.token_issuers: at least one is needed when enabled")
    return settings
