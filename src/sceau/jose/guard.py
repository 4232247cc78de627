"""Strict structural checks on JOSE objects, run before any library or key sees them.

Nothing here verifies a signature or decrypts anything: the functions are named
``parse_unverified_*`` so that no caller mistakes their output for trusted data. They
exist so that every token is refused by cheap checks (size, shape, base64url, JSON,
header allow-list) before any RSA/EC work, and so that the JOSE library only ever sees
objects already reduced to the one shape SPEC §3 allows.

Pure functions: no I/O, no clock, no keys.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import accumulate
from types import MappingProxyType
from typing import Any, NoReturn

from sceau.core.b64 import MalformedBase64, b64u_decode
from sceau.core.jwk import JwkError, public_key_from_jwk
from sceau.errors import InvalidToken

__all__ = [
    "JWE_ALGS",
    "JWE_ENC",
    "MAX_KID_CHARS",
    "MAX_TOKEN_BYTES",
    "MalformedJson",
    "UnverifiedJwe",
    "UnverifiedJws",
    "check_kid",
    "token_part",
    "safe_name",
    "looks_like_jwe",
    "parse_unverified_jwe",
    "parse_unverified_jws",
    "strict_json_loads",
]

#: Default cap on a compact token: a 16 MiB body plus room for the JOSE overhead.
MAX_TOKEN_BYTES = 16 * 1024 * 1024 + 64 * 1024
MAX_KID_CHARS = 256
#: The only key-management algorithms Sceau ever accepts for a JWE (SPEC §3).
JWE_ALGS = frozenset({"RSA-OAEP-256", "ECDH-ES+A256KW"})
JWE_ENC = "A256GCM"

_JWS_HEADER_MEMBERS = frozenset({"alg", "kid", "typ"})
_JWE_HEADER_MEMBERS = frozenset({"alg", "enc", "kid", "cty", "epk"})
_JWE_REQUIRED_MEMBERS = frozenset({"alg", "enc", "kid", "cty"})
_GCM_IV_BYTES = 12
_GCM_TAG_BYTES = 16
# AES key wrap of a 256-bit CEK (RFC 3394): 32 bytes plus the 8-byte integrity block.
_A256KW_WRAPPED_CEK_BYTES = 40

# A compact serialization is base64url parts and dots, nothing else: one C-level scan
# (deleting those bytes leaves nothing) refuses JSON serializations, whitespace, padding
# and non-ASCII before any splitting; translate() runs several times faster than a regex.
_COMPACT_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_."
# A JWS header this long or shorter is remembered once checked (see _jws_header): every
# request of an application carries the same few bytes. Longer ones are not kept, so the
# cache holds at most _HEADER_CACHE_SIZE small byte strings whatever callers send.
_CACHED_HEADER_BYTES = 1024
_HEADER_CACHE_SIZE = 512
# Printable ASCII without space, '/', '\\' or quotes: a kid is an opaque lookup key and
# never needs path, escape or quoting characters; refusing them keeps junk out of logs.
_KID_CHARS = re.compile(r"[!#-&(-.0-\[\]-~]+")
# For the depth pre-scan: a JSON string (escapes included), or an unterminated one running
# to the end. It can never fail to match at a quote, so the scan stays linear on hostile
# input (a pattern that could fail would be retried at every later quote: quadratic).
_JSON_STRING = re.compile(r'"(?:[^"\\]++|\\.?)*+(?:"|\Z)', re.DOTALL)
_PRINTABLE_NAME = re.compile(r"[A-Za-z0-9_#+.\-]{1,32}")
_NOT_BRACKET = re.compile(r"[^\[\]{}]++")
_BRACKET_STEP = bytes.maketrans(b"[{]}", bytes([1, 1, 255, 255]))


class MalformedJson(ValueError):
    """Not strict JSON: bad UTF-8, duplicate member, NaN/Infinity, too deep, or unparseable."""


def _refuse_constant(name: str) -> NoReturn:
    raise MalformedJson(f"JSON constant {name} is not allowed")


def _finite_float(text: str) -> float:
    value = float(text)
    # 1e400 parses to inf: refuse it like the literal Infinity.
    if not math.isfinite(value):
        raise MalformedJson("JSON number out of range")
    return value


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise MalformedJson("duplicate JSON member name")
    return obj


# What json.loads(text, object_pairs_hook=..., ...) would build on every call, built once
# (a decoder keeps no state between calls).
_STRICT_DECODER = json.JSONDecoder(
    object_pairs_hook=_unique_object,
    parse_constant=_refuse_constant,
    parse_float=_finite_float,
)


def _max_depth(text: str) -> int:
    """Deepest bracket nesting of ``text`` outside strings (an upper bound on invalid JSON)."""
    if "\\" in text:
        outside = _JSON_STRING.sub("", text)
    else:
        # Without escapes every quote toggles "inside a string": the even pieces between
        # quotes are exactly the text outside strings, and str.split runs at C speed.
        outside = "".join(text.split('"')[::2])
    stripped = _NOT_BRACKET.sub("", outside)
    if not stripped:
        return 0
    # Signed bytes (+1 for an opener, -1 for a closer) summed in C: no Python-level loop
    # over a 16 MiB document.
    steps = memoryview(stripped.encode("ascii").translate(_BRACKET_STEP)).cast("b")
    return max(accumulate(steps))


def strict_json_loads(data: bytes, *, max_depth: int = 64) -> Any:
    """Parse ``data`` as strict JSON or raise :class:`MalformedJson`.

    UTF-8 only (no BOM), duplicate member names refused, ``NaN``/``Infinity`` and
    overflowing numbers refused, integers limited by Python's 4300-digit cap, nesting
    limited to ``max_depth`` — checked by a linear pre-scan *before* :func:`json.loads`,
    so 10 000-deep input never reaches the recursive parser.
    """
    if not isinstance(data, bytes | bytearray):
        raise TypeError("strict_json_loads expects bytes")
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedJson("JSON is not valid UTF-8") from None
    # Fast path: fewer openers than the cap cannot nest deeper than the cap.
    if text.count("[") + text.count("{") > max_depth and _max_depth(text) > max_depth:
        raise MalformedJson(f"JSON nested deeper than {max_depth}")
    try:
        return _STRICT_DECODER.decode(text)
    except MalformedJson:
        raise
    except (ValueError, RecursionError) as exc:
        # ValueError covers JSONDecodeError and the int max-digits limit. RecursionError is
        # unreachable after the pre-scan; caught so that a bug there still fails closed.
        raise MalformedJson("not valid JSON") from exc


def safe_name(name: str) -> str:
    """``name`` if it is short and plain enough to echo in an error detail or a log line."""
    return name if _PRINTABLE_NAME.fullmatch(name) else "(unprintable name)"


def check_kid(kid: object) -> str:
    """Return ``kid`` if it is a plausible key id, else raise :class:`ValueError`.

    Cheap and strict: a non-empty string of at most 256 printable ASCII characters without
    space, quotes, ``/`` or ``\\``. Lookups use the exact string, so this is about keeping
    garbage out of lookups and logs, not about injection (queries are parametrized).
    """
    if not isinstance(kid, str) or not kid:
        raise ValueError("kid must be a non-empty string")
    if len(kid) > MAX_KID_CHARS:
        raise ValueError(f"kid longer than {MAX_KID_CHARS} characters")
    if _KID_CHARS.fullmatch(kid) is None:
        raise ValueError("kid has characters outside printable ASCII or one of ' \"/\\")
    return kid


def _split_compact(token: bytes, parts: int, max_bytes: int) -> list[bytes]:
    if not isinstance(token, bytes | bytearray):
        raise InvalidToken("token must be bytes")
    if len(token) > max_bytes:
        raise InvalidToken("token too large")
    if token.translate(None, _COMPACT_CHARS):
        raise InvalidToken("not a compact serialization: characters outside base64url and '.'")
    pieces = bytes(token).split(b".")
    if len(pieces) != parts:
        raise InvalidToken(f"not a compact serialization: expected {parts} parts")
    return pieces


def token_part(part: bytes | str, what: str) -> bytes:
    """One base64url part of a compact token, decoded; ``invalid_token`` naming ``what``."""
    try:
        return b64u_decode(part)
    except MalformedBase64:
        raise InvalidToken(f"{what}: not canonical base64url") from None


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        value = strict_json_loads(raw)
    except MalformedJson as exc:
        raise InvalidToken(f"{what}: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidToken(f"{what}: not a JSON object")
    return value


def looks_like_jwe(token: bytes) -> bool:
    """True when ``token`` has the five dot-separated parts of a compact JWE."""
    return token.count(b".") == 4


def _jws_header(
    header_b64: bytes, expected_typ: str, allowed_algs: frozenset[str]
) -> tuple[Mapping[str, Any], str, str]:
    """The checked protected header of a JWS: ``(header, kid, alg)``, or InvalidToken."""
    header = _json_object(token_part(header_b64, "header"), "header")
    members = set(header)
    if members != _JWS_HEADER_MEMBERS:
        extra = sorted(members - _JWS_HEADER_MEMBERS)
        if extra:
            raise InvalidToken(f"header member not allowed: {safe_name(extra[0])}")
        raise InvalidToken("header must have exactly alg, kid and typ")
    alg = header["alg"]
    if not isinstance(alg, str) or alg not in allowed_algs:
        raise InvalidToken("alg not allowed")
    if header["typ"] != expected_typ:
        raise InvalidToken("wrong typ")
    try:
        kid = check_kid(header["kid"])
    except ValueError as exc:
        raise InvalidToken(f"bad kid: {exc}") from None
    # Read-only: the same mapping is handed to every caller that sends these bytes.
    return MappingProxyType(header), kid, alg


# Pure function of its arguments, so remembering it changes nothing but the time: the
# same header bytes always give the same answer (refusals are not remembered; they raise).
_cached_jws_header = functools.lru_cache(maxsize=_HEADER_CACHE_SIZE)(_jws_header)


@dataclass(frozen=True, slots=True)
class UnverifiedJws:
    """A compact JWS that passed the structural checks. Its signature is NOT verified."""

    header: Mapping[str, Any]
    claims: Mapping[str, Any]
    signing_input: bytes
    signature: bytes
    kid: str
    alg: str


def parse_unverified_jws(
    token: bytes,
    *,
    expected_typ: str,
    allowed_algs: frozenset[str],
    max_bytes: int = MAX_TOKEN_BYTES,
) -> UnverifiedJws:
    """Check a compact JWS's structure and header; raise :class:`InvalidToken` otherwise.

    Exactly three strict base64url parts; header members exactly ``alg``, ``kid``,
    ``typ`` (so ``crit``, ``jku``, ``x5u``, ``jwk``, ``x5c``, ``zip``, ``b64``... are
    refused); ``typ`` equal to ``expected_typ``; ``alg`` in ``allowed_algs`` compared
    case-sensitively; ``kid`` as :func:`check_kid`; the payload a JSON object. The
    signature is only decoded, never checked.
    """
    header_b64, claims_b64, sig_b64 = _split_compact(token, 3, max_bytes)
    if len(header_b64) <= _CACHED_HEADER_BYTES:
        header, kid, alg = _cached_jws_header(bytes(header_b64), expected_typ, allowed_algs)
    else:
        header, kid, alg = _jws_header(header_b64, expected_typ, allowed_algs)
    signature = token_part(sig_b64, "signature")
    if not signature:
        raise InvalidToken("empty signature")
    claims = _json_object(token_part(claims_b64, "payload"), "claims")
    return UnverifiedJws(
        header=header,
        claims=claims,
        signing_input=bytes(header_b64 + b"." + claims_b64),
        signature=signature,
        kid=kid,
        alg=alg,
    )


@dataclass(frozen=True, slots=True)
class UnverifiedJwe:
    """A compact JWE whose header passed the allow-list. Nothing is decrypted yet."""

    header: Mapping[str, Any]
    alg: str
    enc: str
    kid: str
    token: bytes


# The members of the only two shapes an ephemeral key may have.
_EPK_SHAPES: dict[tuple[str, str], frozenset[str]] = {
    ("EC", "P-256"): frozenset({"kty", "crv", "x", "y"}),
    ("OKP", "X25519"): frozenset({"kty", "crv", "x"}),
}


def _check_epk(epk: object) -> None:
    """The ephemeral key must be a bare public P-256 or X25519 point, on its curve."""
    if not isinstance(epk, dict):
        raise InvalidToken("epk must be a JSON object")
    members = _EPK_SHAPES.get((str(epk.get("kty")), str(epk.get("crv"))))
    if members is None or set(epk) != members:
        raise InvalidToken("epk must be a public EC P-256 or OKP X25519 key")
    try:
        # A point off the curve is refused (invalid-curve attack).
        public_key_from_jwk(epk)
    except JwkError as exc:
        raise InvalidToken(f"epk is not a valid public key: {exc.detail}") from None


def parse_unverified_jwe(
    token: bytes,
    *,
    keys: Mapping[str, str],
    max_bytes: int = MAX_TOKEN_BYTES,
) -> UnverifiedJwe:
    """Check a compact JWE's structure and header before any private-key operation.

    ``keys`` maps each ``kid`` the caller holds a private key for to the one algorithm
    that key is used with: the algorithm comes from the key, never from the token.

    Five strict base64url parts; header members among ``alg``, ``enc``, ``kid``, ``cty``,
    ``epk`` (``epk`` present exactly for ``ECDH-ES+A256KW``, a valid public P-256 or X25519
    key); ``alg`` in :data:`JWE_ALGS` (so ``RSA1_5``, ``dir``, ``A*KW``, ``PBES2-*`` are
    never accepted whatever the caller passes); ``enc`` = ``A256GCM``; ``cty`` = ``JWT``;
    ``kid`` one of ``keys`` and ``alg`` that key's algorithm; a 12-byte IV and a 16-byte
    tag. Raises :class:`InvalidToken`.
    """
    header_b64, ek_b64, iv_b64, ct_b64, tag_b64 = _split_compact(token, 5, max_bytes)
    header = _json_object(token_part(header_b64, "JWE header"), "JWE header")
    members = set(header)
    extra = sorted(members - _JWE_HEADER_MEMBERS)
    if extra:
        raise InvalidToken(f"JWE header member not allowed: {safe_name(extra[0])}")
    if not _JWE_REQUIRED_MEMBERS <= members:
        raise InvalidToken("JWE header needs alg, enc, kid and cty")
    alg, enc, kid = header["alg"], header["enc"], header["kid"]
    if not isinstance(alg, str) or alg not in JWE_ALGS:
        raise InvalidToken("JWE alg not allowed")
    if enc != JWE_ENC:
        raise InvalidToken("JWE enc not allowed")
    if header["cty"] != "JWT":
        raise InvalidToken("JWE cty must be JWT")
    if not isinstance(kid, str) or kid not in keys:
        raise InvalidToken("JWE kid is not one of the service's encryption keys")
    if alg != keys[kid]:
        raise InvalidToken("JWE alg not allowed for this kid")
    encrypted_key = token_part(ek_b64, "JWE encrypted key")
    if alg == "ECDH-ES+A256KW":
        if "epk" not in header:
            raise InvalidToken("JWE epk missing")
        _check_epk(header["epk"])
        if len(encrypted_key) != _A256KW_WRAPPED_CEK_BYTES:
            raise InvalidToken("JWE encrypted key has the wrong length")
    else:
        if "epk" in header:
            raise InvalidToken("JWE header member not allowed: epk")
        if not encrypted_key:
            raise InvalidToken("JWE encrypted key missing")
    if len(token_part(iv_b64, "JWE iv")) != _GCM_IV_BYTES:
        raise InvalidToken("JWE iv has the wrong length")
    token_part(ct_b64, "JWE ciphertext")
    if len(token_part(tag_b64, "JWE tag")) != _GCM_TAG_BYTES:
        raise InvalidToken("JWE tag has the wrong length")
    return UnverifiedJwe(header=header, alg=alg, enc=enc, kid=kid, token=bytes(token))
