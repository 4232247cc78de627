"""Registered application keys: validation at registration, signature checks per request.

An application key is bound to exactly one algorithm (SPEC §2, §3): the token never chooses
it. Keys are validated once, strictly, when registered (SECURITY-CASES 26), and every
:class:`AppKey` / :class:`EncKey` re-validates its JWK on construction, so an instance is
always a usable, policy-conforming public key whatever path created it (registration or
a row read back from the store).

Decisions where the SPEC is silent (see the report / docs):

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
from typing import Any, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, x25519
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from jwcrypto import jwk as jwcrypto_jwk

from sceau.core.b64 import MalformedBase64, b64u_decode
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
    "thumbprint",
]

SIGNING_ALGS = frozenset({"PS256", "RS256", "ES256", "EdDSA"})
ENC_ALGS = frozenset({"RSA-OAEP-256", "ECDH-ES+A256KW"})

MIN_RSA_BITS = 2048
MAX_RSA_BITS = 4096
_MIN_RSA_E = 65537
_MAX_RSA_E_BITS = 64
_COORD_BYTES = 32
_ES256_SIG_BYTES = 64
_ED25519_SIG_BYTES = 64
# Order of the P-256 group: r and s of a valid ECDSA signature lie in [1, n-1].
_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551

_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_PUBLIC_MEMBERS: dict[str, tuple[str, ...]] = {
    "RSA": ("n", "e"),
    "EC": ("crv", "x", "y"),
    "OKP": ("crv", "x"),
}
_META_MEMBERS = frozenset({"kid", "alg", "use"})
# (kty, crv) -> the algorithms a key of that shape may be registered with.
_SIG_ALGS_FOR: dict[tuple[str, str | None], frozenset[str]] = {
    ("RSA", None): frozenset({"PS256", "RS256"}),
    ("EC", "P-256"): frozenset({"ES256"}),
    ("OKP", "Ed25519"): frozenset({"EdDSA"}),
}
_ENC_ALG_FOR: dict[tuple[str, str | None], str] = {
    ("RSA", None): "RSA-OAEP-256",
    ("EC", "P-256"): "ECDH-ES+A256KW",
    ("OKP", "X25519"): "ECDH-ES+A256KW",
}
_BAD_SIGNATURE = "signature does not verify"

Use = Literal["sig", "enc"]


def _member_bytes(jwk: Mapping[str, Any], name: str) -> bytes:
    value = jwk.get(name)
    if not isinstance(value, str):
        raise InvalidRequest(f"JWK member '{name}' must be a base64url string")
    try:
        return b64u_decode(value)
    except MalformedBase64:
        raise InvalidRequest(f"JWK member '{name}' is not canonical base64url") from None


def _fixed_bytes(jwk: Mapping[str, Any], name: str, size: int) -> bytes:
    raw = _member_bytes(jwk, name)
    if len(raw) != size:
        raise InvalidRequest(f"JWK member '{name}' must be {size} bytes")
    return raw


def _unsigned(jwk: Mapping[str, Any], name: str) -> int:
    raw = _member_bytes(jwk, name)
    if not raw or raw[0] == 0:
        # RFC 7518 §6.3.1: minimal big-endian; a leading zero would be a second spelling.
        raise InvalidRequest(f"JWK member '{name}' must be a minimal big-endian integer")
    return int.from_bytes(raw, "big")


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
    if not isinstance(kty, str) or kty not in _PUBLIC_MEMBERS:
        raise InvalidRequest("JWK 'kty' must be RSA, EC or OKP")
    allowed = {"kty", *_PUBLIC_MEMBERS[kty], *_META_MEMBERS}
    unknown = sorted(set(jwk) - allowed)
    if unknown:
        raise InvalidRequest(f"JWK member '{safe_name(unknown[0])}' is not supported for kty {kty}")
    return kty


def _load_public_key(jwk: Mapping[str, Any], kty: str, use: Use) -> tuple[str | None, Any]:
    """Decode and check the key material; return (crv, cryptography public key)."""
    if kty == "RSA":
        n, e = _unsigned(jwk, "n"), _unsigned(jwk, "e")
        if not MIN_RSA_BITS <= n.bit_length() <= MAX_RSA_BITS:
            raise InvalidRequest(
                f"RSA modulus must be {MIN_RSA_BITS} to {MAX_RSA_BITS} bits, "
                f"not {n.bit_length()}"
            )
        if n % 2 == 0:
            raise InvalidRequest("RSA modulus must be odd")
        if e % 2 == 0 or e < _MIN_RSA_E or e.bit_length() > _MAX_RSA_E_BITS:
            raise InvalidRequest("RSA public exponent must be odd, >= 65537 and < 2**64")
        try:
            return None, rsa.RSAPublicNumbers(e, n).public_key()
        except ValueError:
            raise InvalidRequest("RSA public key is not valid") from None
    crv = jwk.get("crv")
    if kty == "EC":
        if crv != "P-256":
            raise InvalidRequest("EC keys must use crv P-256")
        x = _fixed_bytes(jwk, "x", _COORD_BYTES)
        y = _fixed_bytes(jwk, "y", _COORD_BYTES)
        try:
            # cryptography checks that the point is on the curve.
            key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + x + y)
        except ValueError:
            raise InvalidRequest("EC point is not on curve P-256") from None
        return crv, key
    wanted = "Ed25519" if use == "sig" else "X25519"
    if crv != wanted:
        raise InvalidRequest(f"OKP {'signing' if use == 'sig' else 'encryption'} keys "
                             f"must use crv {wanted}")
    x = _fixed_bytes(jwk, "x", _COORD_BYTES)
    try:
        if use == "sig":
            return crv, ed25519.Ed25519PublicKey.from_public_bytes(x)
        return crv, x25519.X25519PublicKey.from_public_bytes(x)
    except ValueError:
        raise InvalidRequest(f"{wanted} public key is not valid") from None


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
    public = {name: jwk[name] for name in ("kty", *_PUBLIC_MEMBERS[kty])}
    if "kid" in jwk:
        try:
            kid = check_kid(jwk["kid"])
        except ValueError as exc:
            raise InvalidRequest(f"JWK 'kid' is not acceptable: {exc}") from None
    else:
        kid = thumbprint(public)
    public.update(kid=kid, alg=alg, use=use)
    return public, key


def thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 JWK thumbprint (SHA-256, unpadded base64url) of a public or private JWK."""
    kty = jwk.get("kty") if isinstance(jwk, Mapping) else None
    if not isinstance(kty, str) or kty not in _PUBLIC_MEMBERS:
        raise InvalidRequest("JWK 'kty' must be RSA, EC or OKP")
    required = {name: jwk.get(name) for name in ("kty", *_PUBLIC_MEMBERS[kty])}
    try:
        return str(jwcrypto_jwk.JWK(**required).thumbprint())
    except Exception as exc:  # noqa: BLE001 - jwcrypto raises assorted types on bad input
        raise InvalidRequest("JWK cannot be thumbprinted: malformed key") from exc


@dataclass(frozen=True)
class AppKey:
    """A registered application signing key, bound to one algorithm.

    Construction validates ``public_jwk`` (which must carry this ``kid`` and ``alg``) and
    raises :class:`InvalidRequest` if it is not acceptable.
    """

    kid: str
    alg: str
    public_jwk: Mapping[str, Any]
    _key: Any = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        public, key = _validated(self.public_jwk, "sig")
        if public["kid"] != self.kid or public["alg"] != self.alg:
            raise InvalidRequest("AppKey kid/alg differ from its JWK")
        object.__setattr__(self, "public_jwk", public)
        object.__setattr__(self, "_key", key)

    def verify(self, signing_input: bytes, signature: bytes) -> None:
        """Verify a raw JWS signature with this key's one algorithm; raise InvalidToken."""
        key = self._key
        try:
            if self.alg in ("PS256", "RS256"):
                # A shorter or longer signature is never valid (RFC 8017 §8.1.2 step 1);
                # checking here keeps lenient left-padding out of the picture.
                if len(signature) != (key.key_size + 7) // 8:
                    raise InvalidToken(_BAD_SIGNATURE)
                pad: padding.AsymmetricPadding = (
                    padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
                    if self.alg == "PS256"
                    else padding.PKCS1v15()
                )
                key.verify(signature, signing_input, pad, hashes.SHA256())
            elif self.alg == "ES256":
                # JWS ES256 is raw r||s (RFC 7518 §3.4); DER or any other length is refused.
                if len(signature) != _ES256_SIG_BYTES:
                    raise InvalidToken(_BAD_SIGNATURE)
                r = int.from_bytes(signature[:32], "big")
                s = int.from_bytes(signature[32:], "big")
                if not (0 < r < _P256_ORDER and 0 < s < _P256_ORDER):
                    raise InvalidToken(_BAD_SIGNATURE)
                key.verify(encode_dss_signature(r, s), signing_input, ec.ECDSA(hashes.SHA256()))
            elif self.alg == "EdDSA":
                if len(signature) != _ED25519_SIG_BYTES:
                    raise InvalidToken(_BAD_SIGNATURE)
                key.verify(signature, signing_input)
            else:  # unreachable: __post_init__ only admits SIGNING_ALGS
                raise InvalidToken(_BAD_SIGNATURE)
        except InvalidSignature:
            raise InvalidToken(_BAD_SIGNATURE) from None


def app_key_from_jwk(jwk: Mapping[str, Any]) -> AppKey:
    """Validate a submitted public JWK for registration; raise :class:`InvalidRequest`.

    RSA 2048..4096 bits with ``e`` odd >= 65537, EC P-256 (point on the curve), or OKP
    Ed25519; ``alg`` required and matching the key type (RSA: PS256/RS256, EC: ES256,
    Ed25519: EdDSA); no private members; ``kid`` defaults to the RFC 7638 thumbprint.
    """
    public, _ = _validated(jwk, "sig")
    return AppKey(kid=public["kid"], alg=public["alg"], public_jwk=public)


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
class EncKey:
    """An application's registered encryption key, for JWE responses.

    ``alg`` is ``RSA-OAEP-256`` for RSA (2048..4096 bits) and ``ECDH-ES+A256KW`` for EC
    P-256 or OKP X25519. Construction validates ``public_jwk``.
    """

    kid: str
    alg: str
    public_jwk: Mapping[str, Any]
    _key: Any = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        public, key = _validated(self.public_jwk, "enc")
        if public["kid"] != self.kid or public["alg"] != self.alg:
            raise InvalidRequest("EncKey kid/alg differ from its JWK")
        object.__setattr__(self, "public_jwk", public)
        object.__setattr__(self, "_key", key)

    @property
    def public_key(self) -> Any:
        """The loaded public key (``cryptography``), for :func:`sceau.jose.response.encrypt_to`."""
        return self._key


def enc_key_from_jwk(jwk: Mapping[str, Any]) -> EncKey:
    """Validate a public encryption JWK; ``alg`` optional (implied by the key type).

    Raises :class:`InvalidRequest` naming the problem.
    """
    public, _ = _validated(jwk, "enc")
    return EncKey(kid=public["kid"], alg=public["alg"], public_jwk=public)
