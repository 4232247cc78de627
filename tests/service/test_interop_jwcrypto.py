"""A client written from SPEC.md alone with another JOSE stack (jwcrypto), no sceau.jose.

It signs requests with jwcrypto's JWS, optionally wraps them in a jwcrypto JWE to the
service's published encryption key, and checks responses with jwcrypto against the JWKS.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from typing import Any

import httpx
import pytest
from jwcrypto import jwe, jwk, jws

from support import Server

USER = "interop@example.com"


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64u(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SpecClient:
    def __init__(self, server: Server, alg: str) -> None:
        self.server = server
        self.url = server.url
        if alg == "ES256":
            self.key = jwk.JWK.generate(kty="EC", crv="P-256")
        elif alg == "EdDSA":
            self.key = jwk.JWK.generate(kty="OKP", crv="Ed25519")
        else:
            self.key = jwk.JWK.generate(kty="RSA", size=2048)
        self.alg = alg
        self.enc = jwk.JWK.generate(kty="RSA", size=2048)
        public = self.key.export_public(as_dict=True)
        public.update(alg=alg)
        enc_public = self.enc.export_public(as_dict=True)
        enc_public.update(alg="RSA-OAEP-256", use="enc", kid="enc-1")
        self.kid = self.key.thumbprint()
        from sceau import admin

        with server.admin_session() as session:
            self.app_id = admin.add_application(session, name=f"interop-{alg}", jwk=public,
                                                enc_jwk=enc_public, users=["*"])
        self.jwks = jwk.JWKSet.from_json(
            httpx.get(f"{self.url}/.well-known/jwks.json", verify=server.cert).text
        )
        config = httpx.get(f"{self.url}/.well-known/sceau-configuration",
                           verify=server.cert).json()
        self.service_id = config["service_id"]
        self.response_kid = config["response_signing_kid"]
        self.enc_kid = config["encryption_kid"]

    def call(self, op: str, params: dict[str, Any], *, wrap: bool = False) -> Any:
        now = int(time.time())
        jti = b64u(secrets.token_bytes(16))
        claims = {"iss": self.app_id, "sub": USER, "aud": self.service_id, "iat": now,
                  "exp": now + 60, "jti": jti, "op": op, "params": params}
        token = jws.JWS(json.dumps(claims).encode())
        token.add_signature(self.key, alg=self.alg, protected={
            "alg": self.alg, "kid": self.kid, "typ": "sceau-req+jwt"})
        body = token.serialize(compact=True)
        if wrap:
            # The alg is the one the JWKS gives the key discovery names (ECDH-ES+A256KW
            # for the EC key it names today; RSA-OAEP-256 for the RSA key).
            service_enc = self.jwks.get_key(self.enc_kid)
            outer = jwe.JWE(body.encode(), protected={
                "alg": service_enc["alg"], "enc": "A256GCM", "cty": "JWT", "kid": self.enc_kid})
            outer.add_recipient(service_enc)
            body = outer.serialize(compact=True)
        response = httpx.post(f"{self.url}/v1/{op}", content=body,
                              headers={"Content-Type": "application/jose"},
                              verify=self.server.cert)
        if response.status_code != 200:
            return response.json()
        text = response.text
        if text.count(".") == 4:
            envelope = jwe.JWE()
            envelope.deserialize(text, key=self.enc)
            text = envelope.payload.decode()
        signed = jws.JWS()
        signed.deserialize(text)
        assert signed.jose_header["kid"] == self.response_kid
        assert signed.jose_header["typ"] == "sceau-resp+jwt"
        signed.verify(self.jwks.get_key(self.response_kid))
        result = json.loads(signed.payload)
        assert result["req"] == jti and result["aud"] == self.app_id and result["op"] == op
        return result["result"]


@pytest.mark.parametrize("alg", ["ES256", "EdDSA", "PS256", "RS256"])
def test_every_operation_from_the_spec(server: Server, alg: str) -> None:
    c = SpecClient(server, alg)
    enc = c.call("encrypt", {"plaintext": b64u(b"interop"), "name": "doc", "tag": "t1"})
    key_id = enc["key_id"]
    assert unb64u(c.call("decrypt", {"ciphertext": enc["ciphertext"]})["plaintext"]) == b"interop"
    wrapped = c.call("encrypt", {"plaintext": b64u(b"over JWE")}, wrap=True)
    assert unb64u(c.call("decrypt", {"ciphertext": wrapped["ciphertext"]}, wrap=True)
                  ["plaintext"]) == b"over JWE"
    batch = c.call("encrypt", {"items": [{"plaintext": b64u(b"a")}, {"plaintext": b64u(b"b")}]})
    assert len(batch["items"]) == 2
    dk = c.call("generate-data-key", {"name": "local"})
    assert len(unb64u(dk["key"])) == 32 and len(unb64u(dk["token"])) == 21
    again = c.call("get-data-key", {"key_id": dk["key_id"]})
    assert again["key"] == dk["key"]
    meta = c.call("describe-key", {"key_id": key_id})
    assert meta["name"] == "doc" and meta["owner"] == USER
    listed = c.call("list-keys", {"tag": "t1"})
    assert key_id in [k["key_id"] for k in listed["keys"]]
    c.call("add-authorization", {"key_id": key_id, "principal": "*@partner.example",
                                 "rights": ["decrypt"]})
    c.call("disable-authorization", {"key_id": key_id, "principal": "*@partner.example"})
    c.call("enable-authorization", {"key_id": key_id, "principal": "*@partner.example"})
    c.call("remove-authorization", {"key_id": key_id, "principal": "*@partner.example"})
    assert c.call("update-key", {"key_id": key_id, "name": "renamed"})["name"] == "renamed"
    assert c.call("disable-key", {"key_id": key_id})["status"] == "disabled"
    assert c.call("decrypt", {"ciphertext": enc["ciphertext"]})["reason"] == "key_disabled"
    assert c.call("enable-key", {"key_id": key_id})["status"] == "active"
    pending = c.call("destroy-key", {"key_id": key_id, "pending_days": 3})
    assert pending["status"] == "pending_destruction"
    assert c.call("cancel-destruction", {"key_id": key_id})["status"] == "disabled"
    accesses = c.call("list-accesses", {"key_id": key_id, "limit": 5})
    assert accesses["accesses"] and accesses["accesses"][0]["key"] == key_id
    destroyed = c.call("destroy-key", {"key_id": key_id})
    receipt = jws.JWS()
    receipt.deserialize(destroyed["receipt"])
    audit_kid = receipt.jose_header["kid"]
    receipt.verify(c.jwks.get_key(audit_kid))
    claims = json.loads(receipt.payload)
    assert claims["key_id"] == key_id and claims["iss"] == c.service_id
    assert receipt.jose_header["typ"] == "sceau-receipt+jwt"
