"""Public keys of external token issuers: identity providers, Google, Entra ID (SPEC §11).

A :class:`JwksSource` is one configured location: an ``https://`` URL (fetched with a
timeout, no redirects, a size cap, cached for ``cache_s``) or a ``file:`` path (read again
on the same schedule). A token naming a ``kid`` the cached set lacks refreshes the set
once, at most every ``refresh_min_s`` seconds per source: a key rotation at the issuer is
picked up at the first token signed with the new key, and nobody can make this service
hammer an identity provider by sending made-up ``kid`` values.

Only keys Sceau can verify with its allow-list come out of a set: RSA of 2048..8192 bits
and EC P-256, signature keys (``use`` absent or ``sig``). Anything else in a published set
is skipped, not an error: providers publish encryption keys and other types beside them.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from sceau.core.b64 import b64u_decode
from sceau.core.jwk import ISSUER_SIGNING_ALGS, KEY_SHAPE, ec_public_key, jws_verify, rsa_public_key
from sceau.errors import InvalidToken, SceauError
from sceau.jose.guard import MalformedJson, strict_json_loads
from sceau.vocab import ErrorCode

__all__ = ["JWT_ALGS", "JwksSource", "JwksUnavailable", "JwtKey", "parse_jwks"]

# Sceau chooses the algorithms, never the token (STYLE 6). Google and Entra ID sign RS256.
JWT_ALGS = ISSUER_SIGNING_ALGS
MAX_JWKS_BYTES = 256 * 1024
MAX_JWKS_KEYS = 100
_MIN_RSA_BITS = 2048
_MAX_RSA_BITS = 8192
_BAD_SIGNATURE = "signature does not verify"


class JwksUnavailable(SceauError):
    """A JWKS could not be obtained and none is cached: fail closed (503)."""

    code = ErrorCode.KEYSTORE_UNAVAILABLE
    title = "Token issuer keys unavailable"


def _b64_member(jwk: Mapping[str, Any], name: str) -> bytes:
    value = jwk.get(name)
    if not isinstance(value, str) or not value or len(value) > 2048:
        raise ValueError(f"member {name} missing or malformed")
    # Published sets come from a configured, trusted location; tolerate padding there.
    return b64u_decode(value.rstrip("="))  # MalformedBase64 is a ValueError


@dataclass(frozen=True)
class JwtKey:
    """One verification key from a published set, with the algorithms it may verify."""

    kid: str
    algs: frozenset[str]
    key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey

    def verify(self, alg: str, signing_input: bytes, signature: bytes) -> None:
        """Verify a JWS signature; :class:`InvalidToken` on any mismatch, else None."""
        if alg not in self.algs:
            raise InvalidToken("alg does not fit the issuer's key")
        try:
            jws_verify(alg, self.key, signing_input, signature)
        except InvalidSignature:
            raise InvalidToken(_BAD_SIGNATURE) from None


def _algs_of(kty: str) -> frozenset[str]:
    return frozenset(alg for alg in JWT_ALGS if KEY_SHAPE[alg][0] == kty)


def _parse_key(jwk: Mapping[str, Any]) -> JwtKey | None:
    """A verification key from one JWK, or None when Sceau does not use keys of its kind."""
    kid = jwk.get("kid")
    use = jwk.get("use")
    alg = jwk.get("alg")
    if not isinstance(kid, str) or not kid or (use is not None and use != "sig"):
        return None
    kty = jwk.get("kty")
    key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey
    try:
        if kty == "RSA":
            n = int.from_bytes(_b64_member(jwk, "n"), "big")
            e = int.from_bytes(_b64_member(jwk, "e"), "big")
            if not _MIN_RSA_BITS <= n.bit_length() <= _MAX_RSA_BITS or e < 3 or e % 2 == 0:
                return None
            key = rsa_public_key(n, e)
        elif kty == "EC" and jwk.get("crv") == "P-256":
            key = ec_public_key(_b64_member(jwk, "x"), _b64_member(jwk, "y"))
        else:
            return None
    except ValueError:  # JwkError included
        return None
    algs = _algs_of(kty)
    if alg is not None:
        # A key published with its algorithm verifies that algorithm only.
        algs = algs & {alg} if isinstance(alg, str) else frozenset()
    return JwtKey(kid=kid, algs=algs, key=key) if algs else None


def parse_jwks(raw: bytes) -> dict[str, JwtKey]:
    """The usable keys of a JWKS document, by kid; ValueError if it is not a JWKS."""
    if len(raw) > MAX_JWKS_BYTES:
        raise ValueError("JWKS too large")
    try:
        doc = strict_json_loads(raw, max_depth=8)
    except MalformedJson:
        raise ValueError("JWKS is not valid JSON") from None
    keys = doc.get("keys") if isinstance(doc, dict) else None
    if not isinstance(keys, list) or len(keys) > MAX_JWKS_KEYS:
        raise ValueError("JWKS has no 'keys' array (or too many keys)")
    out: dict[str, JwtKey] = {}
    for jwk in keys:
        if isinstance(jwk, dict):
            parsed = _parse_key(jwk)
            if parsed is not None and parsed.kid not in out:
                out[parsed.kid] = parsed
    return out


def _ssl_context(ca_file: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca_file or None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


class JwksSource:
    """One configured JWKS location, cached and refreshed as the module docstring says."""

    def __init__(
        self,
        location: str,
        *,
        ca_file: str = "",
        timeout_s: float = 5.0,
        cache_s: float = 3600.0,
        refresh_min_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.location = location
        self._ca_file = ca_file
        self._timeout = timeout_s
        self._cache_s = cache_s
        self._refresh_min_s = refresh_min_s
        self._clock = clock
        self._keys: dict[str, JwtKey] | None = None
        self._fetched_at = 0.0
        self._attempted_at: float | None = None
        self._generation = 0
        self._lock = asyncio.Lock()
        self._ssl: ssl.SSLContext | None = None

    async def key(self, kid: str) -> JwtKey | None:
        """The key named ``kid``, refreshing once if it is unknown; None if still unknown."""
        if self._keys is None or self._clock() - self._fetched_at >= self._cache_s:
            await self._refresh(stale_ok=True)
        if self._keys is None:  # unreachable: _refresh either fills the set or raises
            raise JwksUnavailable(f"no keys from {self.location}")
        found = self._keys.get(kid)
        if found is None and self._may_refresh():
            await self._refresh(stale_ok=True)
            found = self._keys.get(kid)
        return found

    def _may_refresh(self) -> bool:
        return self._attempted_at is None or (
            self._clock() - self._attempted_at >= self._refresh_min_s
        )

    async def _refresh(self, *, stale_ok: bool) -> None:
        generation = self._generation
        async with self._lock:
            if self._generation != generation:
                return  # another request refreshed while this one waited
            self._generation += 1
            self._attempted_at = self._clock()
            try:
                raw = await self._read()
                keys = parse_jwks(raw)
            except (OSError, ValueError, httpx.HTTPError) as exc:
                if self._keys is not None and stale_ok:
                    return  # keep serving with the keys we have; retried after refresh_min_s
                raise JwksUnavailable(
                    f"cannot read the JWKS at {self.location} ({type(exc).__name__})"
                ) from None
            self._keys = keys
            self._fetched_at = self._clock()

    async def _read(self) -> bytes:
        if self.location.startswith("file:"):
            path = Path(self.location[len("file:"):])
            return await asyncio.get_running_loop().run_in_executor(None, path.read_bytes)
        if self._ssl is None:
            self._ssl = _ssl_context(self._ca_file)
        async with httpx.AsyncClient(
            verify=self._ssl, timeout=self._timeout, follow_redirects=False, trust_env=False
        ) as client, client.stream("GET", self.location,
                                   headers={"accept": "application/json"}) as response:
            if response.status_code != 200:
                raise ValueError(f"HTTP {response.status_code}")
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > MAX_JWKS_BYTES:
                    raise ValueError("JWKS too large")
                chunks.append(chunk)
            return b"".join(chunks)

    def loaded_kids(self) -> list[str]:
        """The kids currently cached (for status pages and tests)."""
        return sorted(self._keys or {})

