"""JWKS sources and vendor token verification (SPEC §11): every check performed and refused.

Real RSA/EC keys made here, real JWTs, the JWKS served over real HTTPS on loopback (or
read from a file:), verified by Sceau's own code. Nothing is turned off.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from workspace_support import Issuer, JwksServer, SigningKey, b64u, compact_jwt

from sceau.config import Config, load_config
from sceau.errors import ConfigError, InvalidToken, TokenExpired
from sceau.service.workspace.jwks import JwksSource, JwksUnavailable
from sceau.service.workspace.tokens import TrustedIssuer, verify_jwt

AUD = "cse-client-id"


@pytest.fixture(scope="module")
def jwks_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JwksServer]:
    srv = JwksServer(tmp_path_factory.mktemp("issuer"))
    yield srv
    srv.close()


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _trusted(issuer: Issuer, source: JwksSource, audience: str = AUD) -> dict[str, TrustedIssuer]:
    return {issuer.iss: TrustedIssuer(issuer=issuer.iss, audience=audience, keys=source)}


def _verify(token: Any, trusted: dict[str, TrustedIssuer], now: int | None = None) -> Any:
    return asyncio.run(verify_jwt(token, trusted, now=now or int(time.time()), skew=60,
                                  what="authentication"))


def _source(server: JwksServer, name: str, clock: Any = time.monotonic,
            refresh_min_s: float = 10.0) -> JwksSource:
    return JwksSource(server.url(name), ca_file=str(server.cert), timeout_s=5,
                      refresh_min_s=refresh_min_s, clock=clock)


def test_a_token_shaped_as_google_documents_verifies(jwks_server: JwksServer) -> None:
    idp = Issuer("https://idp.example.com")
    jwks_server.publish("idp-ok", idp)
    claims = {"aud": AUD, "email": "alice@example.com", "google_email": "alice@example.com"}
    verified = _verify(idp.token(claims), _trusted(idp, _source(jwks_server, "idp-ok")))
    assert verified.claims["email"] == "alice@example.com"
    assert verified.issuer == idp.iss
    assert verified.kid == idp.key.kid


def test_audience_may_be_an_array_holding_ours(jwks_server: JwksServer) -> None:
    idp = Issuer("https://idp-array.example.com")
    jwks_server.publish("idp-array", idp)
    trusted = _trusted(idp, _source(jwks_server, "idp-array"))
    assert _verify(idp.token({"aud": ["other", AUD]}), trusted).claims["aud"] == ["other", AUD]
    with pytest.raises(InvalidToken, match="aud"):
        _verify(idp.token({"aud": ["other"]}), trusted)


def test_es256_issuer_keys_verify(jwks_server: JwksServer) -> None:
    idp = Issuer("https://ec-idp.example.com", keys=[SigningKey.ec()])
    jwks_server.publish("idp-ec", idp)
    assert _verify(idp.token({"aud": AUD}), _trusted(idp, _source(jwks_server, "idp-ec")))


def _hs256(issuer: Issuer) -> str:
    import hashlib
    import hmac

    secret = json.dumps(issuer.key.public_jwk()).encode()
    return compact_jwt({"alg": "HS256", "kid": issuer.key.kid, "typ": "JWT"},
                       {"iss": issuer.iss, "aud": AUD, "exp": int(time.time()) + 60},
                       lambda data: hmac.new(secret, data, hashlib.sha256).digest())


# (case, how to make the token from the issuer, expected error, text in the detail)
REFUSALS: list[tuple[str, Any, type[Exception], str]] = [
    ("missing aud", lambda i: i.token({}), InvalidToken, "aud"),
    ("wrong aud", lambda i: i.token({"aud": "someone-else"}), InvalidToken, "aud"),
    ("aud not a string", lambda i: i.token({"aud": 7}), InvalidToken, "aud"),
    ("missing iss", lambda i: i.token({"aud": AUD}, drop=("iss",)), InvalidToken, "issuer"),
    ("untrusted iss", lambda i: i.token({"aud": AUD, "iss": "https://evil.example"}),
     InvalidToken, "issuer"),
    ("signature by another key under the same kid",
     lambda i: i.token({"aud": AUD}, key=SigningKey(i.key.kid, SigningKey.rsa().private)),
     InvalidToken, "signature"),
    ("signature bits flipped",
     lambda i: (lambda t: t[:-6] + ("AAAAAA" if t[-6:] != "AAAAAA" else "BBBBBB"))(
         i.token({"aud": AUD})), InvalidToken, ""),
    ("expired beyond the skew", lambda i: i.token({"aud": AUD, "exp": int(time.time()) - 61}),
     TokenExpired, "expired"),
    ("missing exp", lambda i: i.token({"aud": AUD}, drop=("exp",)), InvalidToken, "exp"),
    ("exp as a string", lambda i: i.token({"aud": AUD, "exp": str(int(time.time()) + 60)}),
     InvalidToken, "exp"),
    ("exp as a float", lambda i: i.token({"aud": AUD, "exp": time.time() + 60.5}),
     InvalidToken, "exp"),
    ("iat in the future", lambda i: i.token({"aud": AUD, "iat": int(time.time()) + 600,
                                             "exp": int(time.time()) + 900}),
     InvalidToken, "iat"),
    ("nbf in the future", lambda i: i.token({"aud": AUD, "nbf": int(time.time()) + 600}),
     InvalidToken, "not yet"),
    ("alg none", lambda i: compact_jwt({"alg": "none", "kid": i.key.kid}, {"iss": i.iss},
                                       lambda d: b"x"), InvalidToken, "alg"),
    ("HS256 keyed with the public key", _hs256, InvalidToken, "alg"),
    ("RS512 (not in Sceau's list)",
     lambda i: i.token({"aud": AUD}, header={"alg": "RS512", "kid": i.key.kid}),
     InvalidToken, "alg"),
    ("ES256 header over an RSA key",
     lambda i: i.token({"aud": AUD}, header={"alg": "ES256", "kid": i.key.kid}),
     InvalidToken, "alg"),
    ("no kid", lambda i: i.token({"aud": AUD}, header={"alg": "RS256"}), InvalidToken, "kid"),
    ("typ not a JWT", lambda i: i.token({"aud": AUD}, header={"alg": "RS256",
                                                              "kid": i.key.kid, "typ": "JWE"}),
     InvalidToken, "typ"),
    ("not a string", lambda i: 12345, InvalidToken, "missing"),
    ("two parts", lambda i: "a.b", InvalidToken, "compact"),
    ("padding in base64url", lambda i: i.token({"aud": AUD}).replace(".", "=.", 1),
     InvalidToken, "base64url"),
    ("claims not an object", lambda i: compact_jwt({"alg": "RS256", "kid": i.key.kid}, [1],
                                                   i.key.sign), InvalidToken, "object"),
]


@pytest.mark.parametrize(("case", "make", "error", "text"), REFUSALS, ids=[r[0] for r in REFUSALS])
def test_every_token_check_refuses(jwks_server: JwksServer, case: str, make: Any,
                                   error: type[Exception], text: str) -> None:
    idp = Issuer("https://idp-refusals.example.com")
    name = f"idp-refusals-{abs(hash(case))}"
    jwks_server.publish(name, idp)
    trusted = _trusted(idp, _source(jwks_server, name))
    # The same issuer's well-formed token verifies: the refusal is the check's doing.
    assert _verify(idp.token({"aud": AUD}), trusted)
    with pytest.raises(error) as raised:
        _verify(make(idp), trusted)
    assert text in str(raised.value)


@pytest.mark.parametrize("member", ["jku", "x5u", "jwk", "x5c", "crit"])
def test_key_location_headers_are_refused_without_any_fetch(jwks_server: JwksServer,
                                                            member: str) -> None:
    idp = Issuer("https://idp-jku.example.com")
    jwks_server.publish(f"idp-jku-{member}", idp)
    jwks_server.documents["attacker-jwks"] = Issuer("https://evil").jwks()
    trusted = _trusted(idp, _source(jwks_server, f"idp-jku-{member}"))
    header = {"alg": "RS256", "kid": idp.key.kid, member: jwks_server.url("attacker-jwks")}
    before = dict(jwks_server.hits)
    with pytest.raises(InvalidToken, match="header"):
        _verify(idp.token({"aud": AUD}, header=header), trusted)
    assert jwks_server.hits == before  # nothing fetched, neither ours nor the named URL


def test_unknown_kid_refreshes_once_then_refuses(jwks_server: JwksServer) -> None:
    clock = Clock()
    idp = Issuer("https://idp-rotate.example.com")
    jwks_server.publish("idp-rotate", idp)
    source = _source(jwks_server, "idp-rotate", clock=clock, refresh_min_s=10)
    trusted = _trusted(idp, source)
    assert _verify(idp.token({"aud": AUD}), trusted)
    assert jwks_server.hits["idp-rotate"] == 1
    # The issuer rotates: the first token under the new kid refreshes the set and verifies.
    idp.rotate()
    jwks_server.publish("idp-rotate", idp)
    clock.t += 11
    assert _verify(idp.token({"aud": AUD}), trusted).kid == idp.key.kid
    assert jwks_server.hits["idp-rotate"] == 2
    # A made-up kid right after: no new fetch (rate limit), refused.
    stranger = SigningKey.rsa()
    with pytest.raises(InvalidToken, match="kid"):
        _verify(idp.token({"aud": AUD}, key=stranger), trusted)
    assert jwks_server.hits["idp-rotate"] == 2
    # Later, one refresh, still unknown: refused after exactly one more fetch.
    clock.t += 11
    with pytest.raises(InvalidToken, match="kid"):
        _verify(idp.token({"aud": AUD}, key=stranger), trusted)
    assert jwks_server.hits["idp-rotate"] == 3
    # Known kids are served from the cache.
    _verify(idp.token({"aud": AUD}), trusted)
    assert jwks_server.hits["idp-rotate"] == 3


def test_cache_expires_and_a_failed_refresh_keeps_the_cached_keys(
        jwks_server: JwksServer) -> None:
    clock = Clock()
    idp = Issuer("https://idp-cache.example.com")
    jwks_server.publish("idp-cache", idp)
    source = JwksSource(jwks_server.url("idp-cache"), ca_file=str(jwks_server.cert),
                        cache_s=60, clock=clock)
    trusted = _trusted(idp, source)
    _verify(idp.token({"aud": AUD}), trusted)
    clock.t += 61
    del jwks_server.documents["idp-cache"]  # the provider answers 404 for a while
    assert _verify(idp.token({"aud": AUD}), trusted)
    assert jwks_server.hits["idp-cache"] == 2


def test_unreachable_jwks_without_cache_fails_closed(jwks_server: JwksServer) -> None:
    idp = Issuer("https://idp-gone.example.com")
    trusted = _trusted(idp, _source(jwks_server, "no-such-document"))
    with pytest.raises(JwksUnavailable):
        _verify(idp.token({"aud": AUD}), trusted)


def test_jwks_server_with_an_untrusted_certificate_is_refused(jwks_server: JwksServer) -> None:
    idp = Issuer("https://idp-tls.example.com")
    jwks_server.publish("idp-tls", idp)
    source = JwksSource(jwks_server.url("idp-tls"), ca_file="", timeout_s=5)  # system CAs
    with pytest.raises(JwksUnavailable):
        _verify(idp.token({"aud": AUD}), _trusted(idp, source))
    assert jwks_server.hits.get("idp-tls", 0) == 0  # TLS failed before any request


def test_file_jwks_source(tmp_path: Path) -> None:
    idp = Issuer("https://idp-file.example.com")
    path = tmp_path / "idp-jwks.json"
    path.write_text(json.dumps(idp.jwks()))
    clock = Clock()
    source = JwksSource(f"file:{path}", clock=clock, refresh_min_s=0)
    trusted = _trusted(idp, source)
    assert _verify(idp.token({"aud": AUD}), trusted)
    idp.rotate()
    path.write_text(json.dumps(idp.jwks()))
    assert _verify(idp.token({"aud": AUD}), trusted).kid == idp.key.kid


def test_jwks_skips_keys_sceau_does_not_use(jwks_server: JwksServer) -> None:
    idp = Issuer("https://idp-mixed.example.com")
    weak = SigningKey.rsa(1024)
    doc = idp.jwks()
    enc = dict(idp.key.public_jwk(), use="enc", kid="enc-key")
    doc["keys"] += [weak.public_jwk(), enc, {"kty": "oct", "k": b64u(b"x" * 32), "kid": "h"}]
    jwks_server.documents["idp-mixed"] = doc
    source = _source(jwks_server, "idp-mixed")
    trusted = _trusted(idp, source)
    assert _verify(idp.token({"aud": AUD}), trusted)
    with pytest.raises(InvalidToken, match="kid"):
        _verify(idp.token({"aud": AUD}, key=weak), trusted)
    assert source.loaded_kids() == [idp.key.kid]


# --- configuration ---------------------------------------------------------------------------


def _config(tmp_path: Path, text: str) -> Config:
    (tmp_path / "sceau.toml").write_text(text)
    return load_config(tmp_path, env={})


CONFIG_ERRORS = [
    ('[cse]\nenabled = true\n', "cse.identity_providers"),
    ('[cse]\nenabled = true\n[[cse.identity_providers]]\nissuer = "i"\naudience = "a"\n'
     'jwks = "http://idp/jwks"\n', "cse.identity_providers[0].jwks"),
    ('[cse]\nenabled = true\nstrikt = true\n', "cse.strikt"),
    ('[cse]\nrewrap_from = ["http://old"]\n', "cse.rewrap_from[0]"),
    ('[cse]\nemail_types = ["anyone"]\n', "cse.email_types[0]"),
    ('[dke]\nenabled = true\n', "dke.audience"),
    ('[dke]\nenabled = true\naudience = "https://k"\n', "dke.token_issuers"),
    ('[dke]\n[[dke.token_issuers]]\nissuer = "i"\n', "dke.token_issuers[0].jwks"),
]


@pytest.mark.parametrize(("text", "named"), CONFIG_ERRORS)
def test_configuration_errors_name_the_setting(tmp_path: Path, text: str, named: str) -> None:
    with pytest.raises(ConfigError) as raised:
        _config(tmp_path, text)
    assert named in str(raised.value)


def test_configuration_as_the_spec_shows(tmp_path: Path) -> None:
    config = _config(tmp_path, """
[cse]
enabled = true
rewrap_from = ["https://old-kacls.example.com/api/"]
[[cse.identity_providers]]
issuer = "https://idp.example.com"
audience = "cse-client-id"
jwks = "https://idp.example.com/jwks.json"
[[cse.authorization_issuers]]
issuer = "gsuitecse-tokenissuer-drive@system.gserviceaccount.com"
jwks = "https://www.googleapis.com/service_accounts/v1/jwk/gsuitecse-tokenissuer-drive@system.gserviceaccount.com"
[dke]
enabled = true
audience = "https://keys.example.com"
[[dke.token_issuers]]
issuer = "https://sts.windows.net/tenant/"
jwks = "file:/etc/sceau/entra-jwks.json"
""")
    cse, dke = config.cse, config.dke
    assert cse.enabled and not cse.strict and cse.rewrap_from == ("https://old-kacls.example.com/api",)
    assert cse.identity_providers[0].audience == "cse-client-id"
    assert dke.authorization_url.startswith("https://login.microsoftonline.com/common/")
    assert not _config(tmp_path, "").cse.enabled
