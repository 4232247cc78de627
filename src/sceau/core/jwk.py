"""JSON Web Keys and raw JWS signatures (RFC 7517, 7518, 7638, 8037) in one place. No I/O.

* :class:`SigAlg` binds each signing algorithm to one key shape; the three lists of
  signing algorithms (what an application, the service's keystore and an external token
  issuer may sign with) are derived from that one table.
* JWK members are read strictly: canonical base64url (:mod:`sceau.core.b64`), the fixed
  length where the curve fixes it, RSA integers minimal big-endian. One key therefore has
  one spelling and one RFC 7638 thumbprint.
* :func:`public_key_from_jwk` and :func:`public_jwk` go from JWK to key and back;
  :func:`jwk_thumbprint` names a key.
* :func:`jws_sign` and :func:`jws_verify` work on raw JWS signatures: ES256 is ``r || s``
  (RFC 7518 §3.4); the DER that ``cryptography`` speaks never leaves this module.

Refusals raise :class:`JwkError`, an :class:`InvalidRequest` whose detail names the member
at fault and never echoes its value, or ``cryptography``'s ``InvalidSignature``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, x25519
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from sceau.core.b64 import MalformedBase64, b64u_decode, b64u_encode
from sceau.errors import InvalidRequest
from sceau.vocab import SigAlg

__all__ = [
    "APP_SIGNING_ALGS",
    "ISSUER_SIGNING_ALGS",
    "KEY_SHAPE",
    "PUBLIC_MEMBERS",
    "SERVICE_SIGNING_ALGS",
    "JwkError",
    "PrivateKey",
    "PublicKey",
    "SigAlg",
    "ec_public_key",
    "jwk_thumbprint",
    "member_bytes",
    "member_uint",
    "public_jwk",
    "public_key_from_jwk",
    "rsa_public_key",
    "jws_sign",
    "jws_verify",
]

PublicKey = (
    rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey
    | x25519.X25519PublicKey
)
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey

RSA = "RSA"
EC = "EC"
OKP = "OKP"
P256 = "P-256"
ED25519 = "Ed25519"
X25519 = "X25519"

#: The (kty, crv) of the one key shape each signing algorithm uses (crv None for RSA).
KEY_SHAPE: dict[SigAlg, tuple[str, str | None]] = {
    SigAlg.EDDSA: (OKP, ED25519),
    SigAlg.ES256: (EC, P256),
    SigAlg.PS256: (RSA, None),
    SigAlg.RS256: (RSA, None),
}
#: Applications register a key for any of them.
APP_SIGNING_ALGS = frozenset(SigAlg)
#: The service's own keys (responses, audit) live in the keystore, a PKCS#11 token maybe:
#: short elliptic-curve signatures only, Ed25519 first.
SERVICE_SIGNING_ALGS = tuple(alg for alg in SigAlg if KEY_SHAPE[alg][0] != RSA)
#: External token issuers (identity providers, Google, Entra ID) sign with RSA or P-256.
ISSUER_SIGNING_ALGS = frozenset(alg for alg in SigAlg if KEY_SHAPE[alg][0] != OKP)

#: The public members of each key type, in the order a JWK is written; also the members an
#: RFC 7638 thumbprint covers (§3.2).
PUBLIC_MEMBERS: dict[str, tuple[str, ...]] = {
    RSA: ("kty", "n", "e"),
    EC: ("kty", "crv", "x", "y"),
    OKP: ("kty", "crv", "x"),
}
COORD_BYTES = 32
ES256_SIGNATURE_BYTES = 2 * COORD_BYTES
ED25519_SIGNATURE_BYTES = 64
#: Order of the P-256 group: r and s of a valid ECDSA signature lie in [1, n-1].
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)  # RFC 7518 §3.5
_ECDSA = ec.ECDSA(hashes.SHA256())
_PRIVATE_TYPES = (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey,
                  x25519.X25519PrivateKey)


class JwkError(InvalidRequest, ValueError):
    """A JWK that cannot be used (400 where it reaches a caller, a ``ValueError`` to code
    that reads keys of its own). The detail names the member, never its value."""


# --- members ---------------------------------------------------------------------------------


def member_bytes(jwk: Mapping[str, Any], name: str, size: int | None = None) -> bytes:
    """The bytes of base64url member ``name``: canonical, and ``size`` long when given."""
    value = jwk.get(name)
    if not isinstance(value, str):
        raise JwkError(f"JWK member '{name}' must be a base64url string")
    try:
        raw = b64u_decode(value)
    except MalformedBase64:
        raise JwkError(f"JWK member '{name}' is not canonical base64url") from None
    if size is not None and len(raw) != size:
        raise JwkError(f"JWK member '{name}' must be {size} bytes")
    return raw


def member_uint(jwk: Mapping[str, Any], name: str) -> int:
    """The unsigned integer of member ``name``, minimal big-endian (RFC 7518 §6.3.1)."""
    raw = member_bytes(jwk, name)
    if not raw or raw[0] == 0:
        # A leading zero would be a second spelling of the same key.
        raise JwkError(f"JWK member '{name}' must be a minimal big-endian integer")
    return int.from_bytes(raw, "big")


def _uint_bytes(value: int, size: int | None = None) -> str:
    return b64u_encode(value.to_bytes(size or (value.bit_length() + 7) // 8, "big"))


# --- JWK -> key --------------------------------------------------------------------------------


def rsa_public_key(n: int, e: int) -> rsa.RSAPublicKey:
    """The RSA public key ``(n, e)``; size and exponent policy are the caller's."""
    try:
        return rsa.RSAPublicNumbers(e, n).public_key()
    except ValueError:
        raise JwkError("RSA public key is not valid") from None


def ec_public_key(x: bytes, y: bytes) -> ec.EllipticCurvePublicKey:
    """The P-256 point ``(x, y)``; a point off the curve is refused (invalid-curve attacks)."""
    if len(x) != COORD_BYTES or len(y) != COORD_BYTES:
        raise JwkError(f"EC coordinates must be {COORD_BYTES} bytes")
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + x + y)
    except ValueError:
        raise JwkError("EC point is not on curve P-256") from None


def public_key_from_jwk(jwk: Mapping[str, Any]) -> PublicKey:
    """The public key of an RSA, EC P-256, OKP Ed25519 or OKP X25519 JWK.

    Only the public members are read (a private JWK gives its public half). RSA ``n`` and
    ``e`` must be minimal big-endian; how large they may be is the caller's policy.
    """
    kty = jwk.get("kty") if isinstance(jwk, Mapping) else None
    crv = jwk.get("crv") if isinstance(jwk, Mapping) else None
    if kty == RSA:
        return rsa_public_key(member_uint(jwk, "n"), member_uint(jwk, "e"))
    if kty == EC:
        if crv != P256:
            raise JwkError("EC keys must use crv P-256")
        x, y = member_bytes(jwk, "x", COORD_BYTES), member_bytes(jwk, "y", COORD_BYTES)
        return ec_public_key(x, y)
    if kty == OKP and crv in (ED25519, X25519):
        x = member_bytes(jwk, "x", COORD_BYTES)
        try:
            if crv == ED25519:
                return ed25519.Ed25519PublicKey.from_public_bytes(x)
            return x25519.X25519PublicKey.from_public_bytes(x)
        except ValueError:
            raise JwkError(f"{crv} public key is not valid") from None
    if kty == OKP:
        raise JwkError("OKP keys must use crv Ed25519 or X25519")
    raise JwkError("JWK 'kty' must be RSA, EC or OKP")


# --- key -> JWK --------------------------------------------------------------------------------


def public_jwk(key: PublicKey | PrivateKey | x25519.X25519PrivateKey) -> dict[str, str]:
    """The bare public JWK (``kty`` and the public members only) of a key or key pair."""
    public = key.public_key() if isinstance(key, _PRIVATE_TYPES) else key
    if isinstance(public, rsa.RSAPublicKey):
        numbers = public.public_numbers()
        return {"kty": RSA, "n": _uint_bytes(numbers.n), "e": _uint_bytes(numbers.e)}
    if isinstance(public, ec.EllipticCurvePublicKey):
        if not isinstance(public.curve, ec.SECP256R1):
            raise JwkError("EC keys must use crv P-256")
        point = public.public_numbers()
        return {"kty": EC, "crv": P256, "x": _uint_bytes(point.x, COORD_BYTES),
                "y": _uint_bytes(point.y, COORD_BYTES)}
    raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
    if isinstance(public, ed25519.Ed25519PublicKey):
        return {"kty": OKP, "crv": ED25519, "x": b64u_encode(public.public_bytes(*raw))}
    if isinstance(public, x25519.X25519PublicKey):
        return {"kty": OKP, "crv": X25519, "x": b64u_encode(public.public_bytes(*raw))}
    raise JwkError("unsupported key type")


def jwk_thumbprint(jwk: Mapping[str, Any]) -> str:
    """The RFC 7638 thumbprint (SHA-256, unpadded base64url) of a public or private JWK.

    Only the required public members count, sorted, without whitespace (§3); they must be
    present and strings.
    """
    kty = jwk.get("kty") if isinstance(jwk, Mapping) else None
    members = PUBLIC_MEMBERS.get(kty) if isinstance(kty, str) else None
    if members is None:
        raise JwkError("JWK 'kty' must be RSA, EC or OKP")
    required: dict[str, str] = {}
    for name in members:
        value = jwk.get(name)
        if not isinstance(value, str) or not value:
            raise JwkError(f"JWK cannot be thumbprinted: member '{name}' missing or not a string")
        required[name] = value
    canonical = json.dumps(required, separators=(",", ":"), sort_keys=True)
    return b64u_encode(hashlib.sha256(canonical.encode("utf-8")).digest())


# --- raw JWS signatures ------------------------------------------------------------------------


def jws_sign(alg: SigAlg | str, key: Any, data: bytes) -> bytes:
    """The raw JWS signature of ``data`` with a private ``key`` of ``alg``'s shape."""
    if alg == SigAlg.ES256 and isinstance(key, ec.EllipticCurvePrivateKey):
        r, s = decode_dss_signature(key.sign(data, _ECDSA))
        return r.to_bytes(COORD_BYTES, "big") + s.to_bytes(COORD_BYTES, "big")
    if alg == SigAlg.EDDSA and isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(data)
    if alg == SigAlg.PS256 and isinstance(key, rsa.RSAPrivateKey):
        return key.sign(data, _PSS, hashes.SHA256())
    if alg == SigAlg.RS256 and isinstance(key, rsa.RSAPrivateKey):
        return key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    raise ValueError(f"cannot sign {alg} with this key")


def jws_verify(alg: SigAlg | str, key: Any, data: bytes, signature: bytes) -> None:
    """Verify a raw JWS signature with ``alg`` and a public ``key`` of its shape.

    Raises ``InvalidSignature`` for any mismatch, a key of another shape included. The
    length is checked first: a longer or shorter RSA signature is never valid (RFC 8017
    §8.1.2, no lenient left-padding), ES256 is exactly 64 bytes with ``0 < r, s < n``.
    """
    if alg in (SigAlg.PS256, SigAlg.RS256) and isinstance(key, rsa.RSAPublicKey):
        if len(signature) != (key.key_size + 7) // 8:
            raise InvalidSignature
        pad = _PSS if alg == SigAlg.PS256 else padding.PKCS1v15()
        key.verify(signature, data, pad, hashes.SHA256())
    elif alg == SigAlg.ES256 and isinstance(key, ec.EllipticCurvePublicKey):
        if len(signature) != ES256_SIGNATURE_BYTES:
            raise InvalidSignature
        r = int.from_bytes(signature[:COORD_BYTES], "big")
        s = int.from_bytes(signature[COORD_BYTES:], "big")
        if not (0 < r < P256_ORDER and 0 < s < P256_ORDER):
            raise InvalidSignature
        key.verify(encode_dss_signature(r, s), data, _ECDSA)
    elif alg == SigAlg.EDDSA and isinstance(key, ed25519.Ed25519PublicKey):
        if len(signature) != ED25519_SIGNATURE_BYTES:
            raise InvalidSignature
        key.verify(signature, data)
    else:
        raise InvalidSignature
