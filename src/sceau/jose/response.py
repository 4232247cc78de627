"""Service side outputs: compact JWS assembled around a keystore signature, and JWE.

The JWS is assembled here rather than by a JOSE library because the signing key may live
in a PKCS#11 token: the keystore only ever sees the signing input and returns the raw
signature (Ed25519: 64 bytes; ES256: raw r||s, 64 bytes).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from jwcrypto import jwe as jwcrypto_jwe

from sceau.core.b64 import b64u_encode
from sceau.jose.appkeys import EncKey
from sceau.jose.guard import JWE_ENC

__all__ = ["compact_json", "compact_jws", "encrypt_to"]


def compact_json(value: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON (no whitespace, no NaN) as used for JOSE headers and claims."""
    return json.dumps(
        value, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def compact_jws(
    header: Mapping[str, Any],
    claims: Mapping[str, Any],
    sign: Callable[[bytes], bytes],
) -> str:
    """Serialize ``header`` and ``claims``, have ``sign`` sign them, return the compact JWS.

    ``sign`` receives the JWS signing input (ASCII ``b64u(header) "." b64u(claims)``) and
    returns the raw signature for ``header["alg"]``.
    """
    if not isinstance(header.get("alg"), str):
        raise ValueError("JWS header needs an alg")
    signing_input = (
        b64u_encode(compact_json(header)) + "." + b64u_encode(compact_json(claims))
    )
    signature = sign(signing_input.encode("ascii"))
    if not isinstance(signature, bytes) or not signature:
        raise ValueError("sign() must return the raw signature bytes")
    return signing_input + "." + b64u_encode(signature)


def encrypt_to(jws: str, enc_key: EncKey) -> str:
    """Wrap a compact JWS in a compact JWE to ``enc_key``.

    Header ``{alg: enc_key.alg, enc: A256GCM, cty: JWT, kid: enc_key.kid}`` (plus the
    ``epk`` that ECDH-ES adds).
    """
    protected = {"alg": enc_key.alg, "enc": JWE_ENC, "cty": "JWT", "kid": enc_key.kid}
    envelope = jwcrypto_jwe.JWE(plaintext=jws.encode("ascii"), protected=protected)
    envelope.add_recipient(enc_key.jwcrypto_key)
    token: str = envelope.serialize(compact=True)
    return token
