"""The ``[cse]`` and ``[dke]`` sections of ``sceau.toml`` (SPEC §11).

Unlike the scalar sections (:mod:`sceau.config.sections`) these have arrays of tables and
no environment variables. Validated with the rest of the configuration: every error names
the setting (``cse.identity_providers[0].jwks``), and unknown members are refused: a typo
must fail at start, not silently leave a check off.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
)

__all__ = [
    "AuthorizationIssuer",
    "CseSettings",
    "DkeSettings",
    "IdentityProvider",
    "TokenIssuer",
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


def _needed_when_enabled(value: str | tuple[_Issuer, ...], info: ValidationInfo) -> None:
    # ``enabled`` is declared first, so it is validated (and in ``info.data``) by now.
    if info.data.get("enabled") and not value:
        raise ValueError("required when enabled" if isinstance(value, str)
                         else "at least one is needed when enabled")


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
    identity_providers: tuple[IdentityProvider, ...] = Field(default=(), validate_default=True)
    authorization_issuers: tuple[AuthorizationIssuer, ...] = Field(
        default=(), validate_default=True)
    # Instance name shown by /cse/status.
    name: str = "sceau"

    @field_validator("kacls_url")
    @classmethod
    def _kacls(cls, value: str) -> str:
        return normalize_url(_https_url(value)) if value else value

    @field_validator("identity_providers", "authorization_issuers")
    @classmethod
    def _needed(cls, value: tuple[_Issuer, ...], info: ValidationInfo) -> tuple[_Issuer, ...]:
        _needed_when_enabled(value, info)
        return value


class DkeSettings(_JwksFetching):
    """Microsoft Purview Double Key Encryption."""

    enabled: bool = False
    audience: str = Field(default="", validate_default=True)
    authorization_url: str = DEFAULT_DKE_AUTHORIZATION_URL
    token_issuers: tuple[TokenIssuer, ...] = Field(default=(), validate_default=True)

    @field_validator("authorization_url")
    @classmethod
    def _authz(cls, value: str) -> str:
        return _https_url(value)

    @field_validator("audience", "token_issuers")
    @classmethod
    def _needed(cls, value: Any, info: ValidationInfo) -> Any:
        _needed_when_enabled(value, info)
        return value
