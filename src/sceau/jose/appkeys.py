"""Registered application keys: validation at registration, signature checks per request.

An application key is bound to exactly one algorithm (SPEC §2, §3): the token never chooses
it. Keys are validated once, strictly, when registered (SECURITY-CASES 26), and every
:class:`AppKey` / :class:`EncKey` re-validates its JWK on construction, so an instance is
always a usable, policy-conforming public key whatever path created it (registration or
a row read back from the store).

Decisions where the SPEC is silent:

* RSA: modulus 2048..4096 bits, odd, without a leading zero octet; ``e`` odd with
  65537 <= e < 2**64 (OpenSSL refuses larger exponents for big moduli anyway).
* Only the members ``kty``, the key's own public members, ``kid``, ``alg`` and ``use`` are
  accepted; anything else (``x5c``, ``key_ops``, ...) is refused by name, private members
  (``d``, ``p``, ``q``, ...) with a message saying a private key was submitted.
* Base64url members must be canonical and fixed-length where the curve fixes it, so one
  key has exactly one JWK spelling and one RFC 7638 thumbprint (duplicate detection
  across applications relies on that).
* PS256 uses a 32-byte salt exactly (RFC 7518 §3.5).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Self

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from jwcrypto import jwk as jwcrypto_jwk

from sceau.core.jwk import (
    APP_SIGNING_ALGS,
    KEY_SHAPE,
    PUBLIC_MEMBERS,
    jwk_thumbprint,
    jws_verify,
    member_uint,
    public_key_from_jwk,
    rsa_public_key,
)
from sceau.errors import InvalidRequest, InvalidToken
from sceau.jose.guard import check_kid, safe_name

__all__ = [
    "ENC_ALGS",
    "SIGNING_ALGS",
    "AppKey",
    "EncKey",
    "app_key_from_jwk",
    "app_key_from_pem",
    "enc_key_from_jwk",
]

SIGNING_ALGS = APP_SIGNING_ALGS
ENC_ALGS = frozenset({"RSA-OAEP-256", "ECDH-ES+A256KW"})

MIN_RSA_BITS = 2048
MAX_RSA_BITS = 4096
_MIN_RSA_E = 65537
_MAX_RSA_E_BITS = 64

_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_META_MEMBERS = frozenset({"kid", "alg", "use"})
# (kty, crv) -> the algorithms a key of that shape may be registered with.
_SIG_ALGS_FOR: dict[tuple[str, str | None], frozenset[str]] = {
    shape: frozenset(alg for alg in SIGNING_ALGS if KEY_SHAPE[alg] == shape)
    for shape in KEY_SHAPE.values()
}
_ENC_ALG_FOR: dict[tuple[str, str | None], str] = {
    ("RSA", None): "RSA-OAEP-256",
    ("EC", "P-256"): "ECDH-ES+A256KW",
    ("OKP", "X25519"): "ECDH-ES+A256KW",
}
_BAD_SIGNATURE = "signature does not verify"

Use = Literal["sig", "enc"]


def _check_members(jwk: Mapping[str, Any]) -> str:
    """Refuse private and unknown members; return the key type."""
    if not isinstance(jwk, Mapping) or not all(isinstance(k, str) for k in jwk):
        raise InvalidRequest("JWK must be a JSON object")
    private = sorted(_PRIVATE_MEMBERS.intersection(jwk))
    if private:
        raise InvalidRequest(
            f"JWK contains private key material (member '{private[0]}'): "
            "register the public key only"
        )
    kty = jwk.get("kty")
    if not isinstance(kty, str) or kty not in PUBLIC_MEMBERS:
        raise InvalidRequest("JWK 'kty' must be RSA, EC or OKP")
    allowed = {*PUBLIC_MEMBERS[kty], *_META_MEMBERS}
    unknown = sorted(set(jwk) - allowed)
    if unknown:
        raise InvalidRequest(f"JWK member '{safe_name(unknown[0])}' is not supported for kty {kty}")
    return kty


def _load_public_key(jwk: Mapping[str, Any], kty: str, use: Use) -> tuple[str | None, Any]:
    """Decode and check the key material; return (crv, cryptography public key)."""
    if kty == "RSA":
        n, e = member_uint(jwk, "n"), member_uint(jwk, "e")
        if not MIN_RSA_BITS <= n.bit_length() <= MAX_RSA_BITS:
            raise InvalidRequest(
                f"RSA modulus must be {MIN_RSA_BITS} to {MAX_RSA_BITS} bits, "
                f"not {n.bit_length()}"
            )
        if n % 2 == 0:
            raise InvalidRequest("RSA modulus must be odd")
        if e % 2 == 0 or e < _MIN_RSA_E or e.bit_length() > _MAX_RSA_E_BITS:
            raise InvalidRequest("RSA public exponent must be odd, >= 65537 and < 2**64")
        return None, rsa_public_key(n, e)
    crv = jwk.get("crv")
    wanted = "Ed25519" if use == "sig" else "X25519"
    if kty == "OKP" and crv != wanted:
        raise InvalidRequest(f"OKP {'signing' if use == 'sig' else 'encryption'} keys "
                             f"must use crv {wanted}")
    return crv, public_key_from_jwk(jwk)


def _validated(
    jwk: Mapping[str, Any], use: Use
) -> tuple[dict[str, Any], Any]:
    """The normalized public JWK (with kid and alg) and the loaded public key."""
    kty = _check_members(jwk)
    crv, key = _load_public_key(jwk, kty, use)
    if "use" in jwk and jwk["use"] != use:
        raise InvalidRequest(f"JWK 'use' must be '{use}'")
    alg = jwk.get("alg")
    if use == "sig":
        allowed = _SIG_ALGS_FOR[(kty, crv)]
        if alg is None:
            raise InvalidRequest("JWK 'alg' is required: the one algorithm this key signs with")
        if alg not in allowed:
            raise InvalidRequest(
                f"JWK 'alg' must be one of {', '.join(sorted(allowed))} for this key type"
            )
    else:
        expected = _ENC_ALG_FOR.get((kty, crv))
        if expected is None:
            raise InvalidRequest("encryption keys must be RSA, EC P-256 or OKP X25519")
        if alg is not None and alg != expected:
            raise InvalidRequest(f"JWK 'alg' must be {expected} for this key type")
        alg = expected
    public = {name: jwk[name] for name in PUBLIC_MEMBERS[kty]}
    if "kid" in jwk:
        try:
            kid = check_kid(jwk["kid"])
        except ValueError as exc:
            raise InvalidRequest(f"JWK 'kid' is not acceptable: {exc}") from None
    else:
        kid = jwk_thumbprint(public)
    public.update(kid=kid, alg=alg, use=use)
    return public, key


@dataclass(frozen=True)
class _RegisteredKey:
    """A public JWK validated for its ``use``, bound to one ``kid`` and one ``alg``.

    Construction validates ``public_jwk`` (which must carry this ``kid`` and ``alg``) and
    raises :class:`InvalidRequest` if it is not acceptable.
    """

    use: ClassVar[Use]
    kid: str
    alg: str
    public_jwk: Mapping[str, Any]
    _key: Any = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        public, key = _validated(self.public_jwk, self.use)
        if public["kid"] != self.kid or public["alg"] != self.alg:
            raise InvalidRequest(f"{type(self).__name__} kid/alg differ from its JWK")
        object.__setattr__(self, "public_jwk", public)
        object.__setattr__(self, "_key", key)

    @classmethod
    def from_jwk(cls, jwk: Mapping[str, Any]) -> Self:
        """The key of a submitted JWK (``kid`` and ``alg`` as validation settles them)."""
        public, _ = _validated(jwk, cls.use)
        return cls(kid=public["kid"], alg=public["alg"], public_jwk=public)


@dataclass(frozen=True)
class AppKey(_RegisteredKey):
    """A registered application signing key, bound to one algorithm."""

    use: ClassVar[Use] = "sig"

    def verify(self, signing_input: bytes, signature: bytes) -> None:
        """Verify a raw JWS signature with this key's one algorithm; raise InvalidToken."""
        try:
            jws_verify(self.alg, self._key, signing_input, signature)
        except InvalidSignature:
            raise InvalidToken(_BAD_SIGNATURE) from None


def app_key_from_jwk(jwk: Mapping[str, Any]) -> AppKey:
    """Validate a submitted public JWK for registration; raise :class:`InvalidRequest`.

    RSA 2048..4096 bits with ``e`` odd >= 65537, EC P-256 (point on the curve), or OKP
    Ed25519; ``alg`` required and matching the key type (RSA: PS256/RS256, EC: ES256,
    Ed25519: EdDSA); no private members; ``kid`` defaults to the RFC 7638 thumbprint.
    """
    return AppKey.from_jwk(jwk)


def app_key_from_pem(pem: bytes, alg: str, kid: str | None = None) -> AppKey:
    """Register a PEM (SubjectPublicKeyInfo) public key with its one ``alg``."""
    if b"PRIVATE KEY" in pem:
        raise InvalidRequest("PEM contains a private key: register the public key only")
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError):
        raise InvalidRequest("not a PEM public key") from None
    try:
        jwk: dict[str, Any] = jwcrypto_jwk.JWK.from_pyca(key).export_public(as_dict=True)
    except Exception as exc:  # noqa: BLE001 - unsupported key types raise assorted errors
        raise InvalidRequest("unsupported public key type") from exc
    jwk.pop("kid", None)
    jwk["alg"] = alg
    if kid is not None:
        jwk["kid"] = kid
    return app_key_from_jwk(jwk)


@dataclass(frozen=True)
class EncKey(_RegisteredKey):
    """An application's registered encryption key, for JWE responses.

    ``alg`` is ``RSA-OAEP-256`` for RSA (2048..4096 bits) and ``ECDH-ES+A256KW`` for EC
    P-256 or OKP X25519.
    """

    use: ClassVar[Use] = "enc"

    @property
    def public_key(self) -> Any:
        """The loaded public key (``cryptography``), for
        :func:`sceau.jose.response.lowlevel_jwe_encrypt`."""
        return self._key


def enc_key_from_jwk(jwk: Mapping[str, Any]) -> EncKey:
    """Validate a public encryption JWK; ``alg`` optional (implied by the key type).

    Raises :class:`InvalidRequest` naming the problem.
    """
    return EncKey.from_jwk(jwk)
