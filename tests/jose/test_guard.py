"""Structural guard: strict JSON, compact JWS and JWE shapes (SECURITY-CASES 1, 6-8, 12)."""

from __future__ import annotations

import json
import time

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, x25519
from jwcrypto import jwk as jwcrypto_jwk

from sceau.core.b64 import b64u_encode
from sceau.errors import InvalidToken
from sceau.jose.guard import (
    MalformedJson,
    looks_like_jwe,
    parse_unverified_jwe,
    parse_unverified_jws,
    strict_json_loads,
)

TYP = "sceau-req+jwt"
ALGS = frozenset({"PS256", "RS256", "ES256", "EdDSA"})
GOOD_HEADER = {"alg": "ES256", "kid": "k-1", "typ": TYP}
GOOD_CLAIMS = {"iss": "app", "n": 1}
SIG = b"\x01" * 64


def b64j(value: object) -> str:
    return b64u_encode(json.dumps(value).encode())


def jws(header: object = GOOD_HEADER, claims: object = GOOD_CLAIMS, sig: bytes = SIG) -> bytes:
    return f"{b64j(header)}.{b64j(claims)}.{b64u_encode(sig)}".encode()


def raw_jws(header: bytes, claims: bytes = json.dumps(GOOD_CLAIMS).encode()) -> bytes:
    return f"{b64u_encode(header)}.{b64u_encode(claims)}.{b64u_encode(SIG)}".encode()


# --- strict JSON ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"\xff{}", id="invalid-utf8"),
        pytest.param(b'{"a":"\xc3"}', id="truncated-utf8"),
        pytest.param(b'\xef\xbb\xbf{"a":1}', id="bom"),
        pytest.param(b'{"a":1,"a":2}', id="duplicate-member"),
        pytest.param(b'{"a":{"b":1,"b":1}}', id="nested-duplicate"),
        pytest.param(b'{"a":NaN}', id="nan"),
        pytest.param(b'{"a":Infinity}', id="infinity"),
        pytest.param(b'{"a":-Infinity}', id="minus-infinity"),
        pytest.param(b'{"a":1e400}', id="float-overflow"),
        pytest.param(b'{"a":' + b"9" * 5000 + b"}", id="5000-digit-int"),
        pytest.param(b"[" * 10_000 + b"]" * 10_000, id="10000-deep-array"),
        pytest.param(b'{"a":' * 10_000 + b"1" + b"}" * 10_000, id="10000-deep-object"),
        pytest.param(b"[" * 10_000, id="10000-deep-unclosed"),
        pytest.param(b'{"a":1} x', id="trailing-garbage"),
        pytest.param(b"", id="empty"),
        pytest.param(b"'a'", id="single-quotes"),
    ],
)
def test_strict_json_refuses(data: bytes) -> None:
    with pytest.raises(MalformedJson):
        strict_json_loads(data)


def test_depth_limit_is_exact() -> None:
    assert strict_json_loads(b"[" * 64 + b"]" * 64, max_depth=64) is not None
    with pytest.raises(MalformedJson, match="deeper"):
        strict_json_loads(b"[" * 65 + b"]" * 65, max_depth=64)


@pytest.mark.parametrize("filler", ['"]]]"', '"\\\"]]"', '"a"'], ids=["plain", "escaped", "short"])
def test_depth_counted_outside_strings_only(filler: str) -> None:
    # Closers inside strings must not hide real nesting, on both pre-scan paths.
    deep = ("[" + filler + ",") * 65 + "1" + "]" * 65
    with pytest.raises(MalformedJson, match="deeper"):
        strict_json_loads(deep.encode(), max_depth=64)
    ok = ("[" + filler + ",") * 64 + "1" + "]" * 64
    assert strict_json_loads(ok.encode(), max_depth=64) is not None


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(json.dumps({"s": "[" * 1000 + "{" * 1000}).encode(), id="brackets-in-string"),
        pytest.param(json.dumps({"s": '\\"[[[[' * 100}).encode(), id="escaped-quotes"),
        pytest.param(json.dumps({"items": [{"a": i} for i in range(2000)]}).encode(), id="wide"),
    ],
)
def test_strict_json_accepts_wide_and_stringy(data: bytes) -> None:
    assert strict_json_loads(data) == json.loads(data)


def test_depth_prescan_is_linear_on_hostile_quotes() -> None:
    # An unterminated string followed by escaped quotes: a naive regex would be quadratic.
    data = b'["' + b'\\"[' * 300_000
    start = time.perf_counter()
    with pytest.raises(MalformedJson):
        strict_json_loads(data)
    assert time.perf_counter() - start < 2.0


# --- compact JWS -----------------------------------------------------------------------------


def test_jws_happy_path() -> None:
    token = jws()
    parsed = parse_unverified_jws(token, expected_typ=TYP, allowed_algs=ALGS)
    assert parsed.alg == "ES256" and parsed.kid == "k-1"
    assert parsed.claims == GOOD_CLAIMS
    assert parsed.signature == SIG
    assert parsed.signing_input == token.rsplit(b".", 1)[0]


FORBIDDEN_HEADERS = ["crit", "jku", "x5u", "jwk", "x5c", "x5t", "zip", "b64", "cty", "enc", "epk"]

JWS_REFUSALS = [
    *(pytest.param(jws({**GOOD_HEADER, "alg": a}), "alg", id=f"alg-{a}")
      for a in ["none", "None", "nOnE", "HS256", "HS512", "es256", "PS384", ""]),
    pytest.param(jws({**GOOD_HEADER, "alg": ["ES256"]}), "alg", id="alg-array"),
    *(pytest.param(jws({**GOOD_HEADER, h: "x"}), "not allowed", id=f"header-{h}")
      for h in FORBIDDEN_HEADERS),
    pytest.param(jws({"alg": "ES256", "typ": TYP}), "exactly", id="no-kid"),
    pytest.param(jws({"alg": "ES256", "kid": "k"}), "exactly", id="no-typ"),
    pytest.param(jws({**GOOD_HEADER, "typ": "sceau-resp+jwt"}), "typ", id="response-typ"),
    pytest.param(jws({**GOOD_HEADER, "typ": "JWT"}), "typ", id="typ-jwt"),
    pytest.param(jws({**GOOD_HEADER, "kid": "' OR '1'='1"}), "kid", id="kid-sql"),
    pytest.param(jws({**GOOD_HEADER, "kid": "../../etc/passwd"}), "kid", id="kid-dotdot"),
    pytest.param(jws({**GOOD_HEADER, "kid": "a\x00b"}), "kid", id="kid-nul"),
    pytest.param(jws({**GOOD_HEADER, "kid": "a" * 10_240}), "kid", id="kid-10kb"),
    pytest.param(jws({**GOOD_HEADER, "kid": ""}), "kid", id="kid-empty"),
    pytest.param(jws({**GOOD_HEADER, "kid": 7}), "kid", id="kid-int"),
    pytest.param(jws({**GOOD_HEADER, "kid": "kéy"}), "kid", id="kid-non-ascii"),
    pytest.param(jws(["ES256"]), "object", id="header-array"),
    pytest.param(jws(claims=["a"]), "object", id="claims-array"),
    pytest.param(jws(claims="str"), "object", id="claims-string"),
    pytest.param(jws(sig=b""), "signature", id="empty-signature"),
    pytest.param(
        json.dumps({"protected": b64j(GOOD_HEADER), "payload": b64j(GOOD_CLAIMS),
                    "signature": b64u_encode(SIG)}).encode(),
        "compact", id="json-serialization"),
    pytest.param(
        json.dumps({"payload": b64j(GOOD_CLAIMS), "signatures": [
            {"protected": b64j(GOOD_HEADER), "header": {"kid": "x"},
             "signature": b64u_encode(SIG)}]}).encode(),
        "compact", id="general-json-unprotected-header"),
    pytest.param(jws().rsplit(b".", 1)[0], "3 parts", id="missing-segment"),
    pytest.param(jws() + b".AAAA", "3 parts", id="extra-segment"),
    pytest.param(jws() + b"==", "compact", id="padding"),
    pytest.param(jws().replace(b".", b"=.", 1), "compact", id="padding-in-header"),
    pytest.param(jws() + b"\n", "compact", id="trailing-newline"),
    pytest.param(b" " + jws(), "compact", id="leading-space"),
    pytest.param(jws().replace(b".", b". ", 1), "compact", id="inner-space"),
    pytest.param("é".encode() + jws(), "compact", id="non-ascii"),
    pytest.param(jws().replace(b"-", b"+").replace(b"_", b"/") + b"+/", "compact",
                 id="std-base64-alphabet"),
    pytest.param(raw_jws(b'{"alg":"ES256","kid":"\xff","typ":"sceau-req+jwt"}'), "UTF-8",
                 id="header-invalid-utf8"),
    pytest.param(raw_jws(json.dumps(GOOD_HEADER).encode(), b'{"a":"\xfe"}'), "UTF-8",
                 id="claims-invalid-utf8"),
    pytest.param(raw_jws(b'{"alg":"ES256","alg":"none","kid":"k","typ":"sceau-req+jwt"}'),
                 "duplicate", id="header-duplicate-alg"),
    pytest.param(raw_jws(json.dumps(GOOD_HEADER).encode(), b'{"iss":"a","iss":"b"}'),
                 "duplicate", id="claims-duplicate-iss"),
    pytest.param(raw_jws(json.dumps(GOOD_HEADER).encode(), b"[" * 10_000 + b"]" * 10_000),
                 "deeper", id="claims-10000-deep"),
    pytest.param(raw_jws(json.dumps(GOOD_HEADER).encode(), b'{"exp":NaN}'), "NaN",
                 id="claims-nan"),
]


@pytest.mark.parametrize(("token", "detail"), JWS_REFUSALS)
def test_jws_refusals(token: bytes, detail: str) -> None:
    with pytest.raises(InvalidToken) as info:
        parse_unverified_jws(token, expected_typ=TYP, allowed_algs=ALGS)
    assert detail in info.value.detail


def test_jws_non_canonical_base64_trailing_bits() -> None:
    token = jws()
    header, claims, sig = token.split(b".")
    # 64-byte signature -> 86 characters, the last one carries 4 unused bits.
    assert len(sig) % 4 == 2
    assert sig[-1:] == b"Q"  # 0x01 -> 0b0000_01 then 0b01_0000: low bits zero
    bumped = sig[:-1] + b"R"  # same bytes, one unused bit set: a second spelling
    with pytest.raises(InvalidToken, match="base64url"):
        parse_unverified_jws(b".".join([header, claims, bumped]), expected_typ=TYP,
                             allowed_algs=ALGS)


def test_refusal_detail_never_echoes_hostile_names() -> None:
    with pytest.raises(InvalidToken) as info:
        parse_unverified_jws(jws({**GOOD_HEADER, "x\n<script>": 1}), expected_typ=TYP,
                             allowed_algs=ALGS)
    assert info.value.detail == "header member not allowed: (unprintable name)"


def test_jws_header_is_checked_against_each_callers_typ_and_algs() -> None:
    """A header parsed once (and remembered) is still judged by every caller's own rules."""
    token = jws()
    assert parse_unverified_jws(token, expected_typ=TYP, allowed_algs=ALGS).kid == "k-1"
    with pytest.raises(InvalidToken, match="typ"):
        parse_unverified_jws(token, expected_typ="sceau-resp+jwt", allowed_algs=ALGS)
    with pytest.raises(InvalidToken, match="alg"):
        parse_unverified_jws(token, expected_typ=TYP, allowed_algs=frozenset({"EdDSA"}))
    assert parse_unverified_jws(token, expected_typ=TYP, allowed_algs=ALGS).alg == "ES256"


def test_jws_refused_header_is_refused_every_time() -> None:
    token = jws({**GOOD_HEADER, "jku": "https://evil.example/k"})
    for _ in range(3):
        with pytest.raises(InvalidToken, match="header member not allowed: jku"):
            parse_unverified_jws(token, expected_typ=TYP, allowed_algs=ALGS)


def test_jws_header_mapping_is_read_only() -> None:
    first = parse_unverified_jws(jws(), expected_typ=TYP, allowed_algs=ALGS)
    with pytest.raises(TypeError):
        first.header["alg"] = "none"  # type: ignore[index]
    again = parse_unverified_jws(jws(claims={"n": 2}), expected_typ=TYP, allowed_algs=ALGS)
    assert dict(again.header) == GOOD_HEADER and again.claims == {"n": 2}


def test_jws_long_header_takes_the_uncached_path_with_the_same_refusal() -> None:
    # Over 1024 characters of base64url: checked each time, never remembered.
    long_kid = {**GOOD_HEADER, "kid": "k" * 900}
    with pytest.raises(InvalidToken, match="bad kid: kid longer than 256"):
        parse_unverified_jws(jws(long_kid), expected_typ=TYP, allowed_algs=ALGS)
    padded = {**GOOD_HEADER, "x": "y" * 900}
    with pytest.raises(InvalidToken, match="header member not allowed: x"):
        parse_unverified_jws(jws(padded), expected_typ=TYP, allowed_algs=ALGS)


@pytest.mark.parametrize("byte", [b"=", b"+", b"/", b" ", b"\t", b"\x00", b"\x80", b"\xff", b"~"])
def test_jws_any_byte_outside_base64url_and_dot_is_refused(byte: bytes) -> None:
    header, claims, sig = jws().split(b".")
    for token in (byte + jws(), jws() + byte, header + b"." + claims + byte + b"." + sig):
        with pytest.raises(InvalidToken, match="characters outside base64url"):
            parse_unverified_jws(token, expected_typ=TYP, allowed_algs=ALGS)


def test_jws_size_cap() -> None:
    with pytest.raises(InvalidToken, match="too large"):
        parse_unverified_jws(jws(), expected_typ=TYP, allowed_algs=ALGS, max_bytes=10)


# --- compact JWE -----------------------------------------------------------------------------

KID = "svc-enc"
# One kid per algorithm, as the service holds one key of each kind.
ECDH_KID = "svc-enc-ec"


def _p256_epk() -> dict[str, str]:
    key = jwcrypto_jwk.JWK.from_pyca(ec.generate_private_key(ec.SECP256R1()).public_key())
    out: dict[str, str] = key.export_public(as_dict=True)
    out.pop("kid")
    return out


def _x25519_epk() -> dict[str, str]:
    raw = x25519.X25519PrivateKey.generate().public_key().public_bytes_raw()
    return {"kty": "OKP", "crv": "X25519", "x": b64u_encode(raw)}


EPK = _p256_epk()
RSA_HEADER = {"alg": "RSA-OAEP-256", "enc": "A256GCM", "cty": "JWT", "kid": KID}
ECDH_HEADER = {"alg": "ECDH-ES+A256KW", "enc": "A256GCM", "cty": "JWT", "kid": ECDH_KID,
               "epk": EPK}
JWE_KEYS = {KID: "RSA-OAEP-256", ECDH_KID: "ECDH-ES+A256KW"}


def jwe(header: object, ek: bytes = b"\x02" * 40, iv: bytes = b"\x03" * 12,
        ct: bytes = b"\x04" * 30, tag: bytes = b"\x05" * 16) -> bytes:
    parts = [b64j(header), *(b64u_encode(p) for p in (ek, iv, ct, tag))]
    return ".".join(parts).encode()


def _off_curve(epk: dict[str, str]) -> dict[str, str]:
    y = bytearray(32)
    y[-1] = 1
    return {**epk, "y": b64u_encode(bytes(y))}


@pytest.mark.parametrize(
    "header",
    [
        pytest.param(RSA_HEADER, id="rsa-oaep-256"),
        pytest.param(ECDH_HEADER, id="ecdh-p256"),
        pytest.param({**ECDH_HEADER, "epk": _x25519_epk()}, id="ecdh-x25519"),
    ],
)
def test_jwe_header_accepted(header: dict[str, object]) -> None:
    parsed = parse_unverified_jwe(jwe(header), keys=JWE_KEYS)
    assert parsed.alg == header["alg"] and parsed.enc == "A256GCM"
    assert parsed.kid == header["kid"] and JWE_KEYS[parsed.kid] == parsed.alg


JWE_REFUSALS = [
    pytest.param(jwe({**RSA_HEADER, "alg": "RSA1_5"}), "alg", id="rsa1_5"),
    pytest.param(jwe({**RSA_HEADER, "alg": "RSA-OAEP"}), "alg", id="rsa-oaep-sha1"),
    pytest.param(jwe({**RSA_HEADER, "alg": "dir"}, ek=b""), "alg", id="dir"),
    pytest.param(jwe({**RSA_HEADER, "alg": "PBES2-HS512+A256KW", "p2c": 2**31, "p2s": "AAAA"}),
                 "not allowed", id="pbes2-huge-p2c"),
    pytest.param(jwe({**RSA_HEADER, "alg": "PBES2-HS256+A128KW"}), "alg", id="pbes2"),
    pytest.param(jwe({**RSA_HEADER, "alg": "A256KW"}), "alg", id="a256kw"),
    pytest.param(jwe({**RSA_HEADER, "alg": "A128GCMKW"}), "alg", id="a128gcmkw"),
    pytest.param(jwe({**ECDH_HEADER, "alg": "ECDH-ES"}), "alg", id="ecdh-es-direct"),
    pytest.param(jwe({**RSA_HEADER, "enc": "A128GCM"}), "enc", id="enc-a128gcm"),
    pytest.param(jwe({**RSA_HEADER, "enc": "A256CBC-HS512"}), "enc", id="enc-cbc"),
    pytest.param(jwe({**RSA_HEADER, "zip": "DEF"}), "not allowed", id="zip"),
    pytest.param(jwe({**RSA_HEADER, "crit": ["exp"]}), "not allowed", id="crit"),
    pytest.param(jwe({**RSA_HEADER, "jku": "https://evil"}), "not allowed", id="jku"),
    pytest.param(jwe({**RSA_HEADER, "typ": "JWE"}), "not allowed", id="typ"),
    pytest.param(jwe({**RSA_HEADER, "kid": "other"}), "kid", id="wrong-kid"),
    pytest.param(jwe({**RSA_HEADER, "kid": 7}), "kid", id="kid-not-a-string"),
    pytest.param(jwe({**RSA_HEADER, "kid": ECDH_KID}), "alg", id="rsa-alg-on-the-ec-kid"),
    pytest.param(jwe({**ECDH_HEADER, "kid": KID}), "alg", id="ecdh-alg-on-the-rsa-kid"),
    pytest.param(jwe({k: v for k, v in RSA_HEADER.items() if k != "kid"}), "needs", id="no-kid"),
    pytest.param(jwe({k: v for k, v in RSA_HEADER.items() if k != "cty"}), "needs", id="no-cty"),
    pytest.param(jwe({**RSA_HEADER, "cty": "json"}), "cty", id="cty-json"),
    pytest.param(jwe({**RSA_HEADER, "epk": EPK}), "epk", id="epk-on-rsa"),
    pytest.param(jwe({k: v for k, v in ECDH_HEADER.items() if k != "epk"}), "epk",
                 id="ecdh-no-epk"),
    pytest.param(jwe({**ECDH_HEADER, "epk": _off_curve(EPK)}), "epk", id="epk-off-curve"),
    pytest.param(jwe({**ECDH_HEADER, "epk": {**EPK, "crv": "P-384"}}), "epk", id="epk-p384"),
    pytest.param(jwe({**ECDH_HEADER, "epk": {**EPK, "d": EPK["x"]}}), "epk", id="epk-private"),
    pytest.param(jwe({**ECDH_HEADER, "epk": {**EPK, "x": EPK["x"][:-2]}}), "epk",
                 id="epk-short"),
    pytest.param(jwe({**ECDH_HEADER, "epk": {**EPK, "x": 5}}), "epk", id="epk-x-int"),
    pytest.param(jwe({**ECDH_HEADER, "epk": "key"}), "epk", id="epk-string"),
    pytest.param(jwe({**ECDH_HEADER, "epk": {"kty": "OKP", "crv": "X25519", "x": "AA"}}),
                 "epk", id="epk-x25519-short"),
    pytest.param(jwe(ECDH_HEADER, ek=b"\x02" * 41), "encrypted key", id="ecdh-ek-length"),
    pytest.param(jwe(RSA_HEADER, ek=b""), "encrypted key", id="rsa-ek-empty"),
    pytest.param(jwe(RSA_HEADER, iv=b"\x03" * 16), "iv", id="iv-16"),
    pytest.param(jwe(RSA_HEADER, tag=b"\x05" * 12), "tag", id="tag-12"),
    pytest.param(jwe(RSA_HEADER).rsplit(b".", 1)[0], "5 parts", id="four-parts"),
    pytest.param(jwe(RSA_HEADER) + b".", "5 parts", id="six-parts"),
    pytest.param(jwe(RSA_HEADER) + b"=", "compact", id="padding"),
]


@pytest.mark.parametrize(("token", "detail"), JWE_REFUSALS)
def test_jwe_refusals(token: bytes, detail: str) -> None:
    with pytest.raises(InvalidToken) as info:
        parse_unverified_jwe(token, keys=JWE_KEYS)
    assert detail in info.value.detail


def test_jwe_kid_the_caller_holds_no_key_for() -> None:
    with pytest.raises(InvalidToken, match="kid"):
        parse_unverified_jwe(jwe(ECDH_HEADER), keys={KID: "RSA-OAEP-256"})


def test_jwe_never_accepts_algs_outside_spec_even_if_caller_asks() -> None:
    with pytest.raises(InvalidToken, match="alg"):
        parse_unverified_jwe(jwe({**RSA_HEADER, "alg": "RSA1_5"}), keys={KID: "RSA1_5"})


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        pytest.param(b"a.b.c.d.e", True, id="five"),
        pytest.param(b"a.b.c", False, id="three"),
        pytest.param(b"a.b.c.d.e.f", False, id="six"),
    ],
)
def test_looks_like_jwe(token: bytes, expected: bool) -> None:
    assert looks_like_jwe(token) is expected
