"""End to end over HTTPS: encrypt, decrypt, batches, data keys, describe (issue 2)."""

from __future__ import annotations

import asyncio
import io
import os
from typing import Any

import pytest

from audit_support import last_record, verify_store
from sceau.client import AsyncClient
from sceau.core.b64 import b64u_decode, b64u_encode
from sceau.core.envelope import open_gcm, seal_gcm_with_token
from sceau.errors import AccessDenied, InvalidRequest, NotFound, SceauError
from sceau.vocab import Reason
from support import Server, TestApp

OWNER = "alice@example.com"
RECIPIENT = "bob@example.com"
STRANGER = "mallory@example.org"


def test_owner_encrypts_and_decrypts(server: Server, app: TestApp) -> None:
    with server.client(app, OWNER) as c:
        key_id, envelope = c.encrypt(b"the payroll", aad=b"doc-1", name="payroll.xlsx")
        assert envelope[:3] == b"SCU" and b"the payroll" not in envelope
        assert c.decrypt(envelope, aad=b"doc-1") == b"the payroll"
        meta = c.describe_key(key_id)
    assert meta["owner"] == OWNER and meta["name"] == "payroll.xlsx"
    assert meta["status"] == "active" and meta["decryptions"] == 1
    assert "seed" not in meta and "seal" not in meta
    rec = last_record(server, action="DECRYPT", key=key_id)
    assert rec["outcome"] == "GRANTED" and rec["user"] == OWNER and rec["app"] == app.app_id


def test_recipient_and_stranger(server: Server, app: TestApp) -> None:
    with server.client(app, OWNER) as c:
        key_id, envelope = c.encrypt(b"for bob", recipients=[RECIPIENT])
    with server.client(app, RECIPIENT) as c:
        assert c.decrypt(envelope) == b"for bob"
        with pytest.raises(NotFound):  # a recipient without manage cannot describe
            c.describe_key(key_id)
    with server.client(app, STRANGER) as c:
        with pytest.raises(AccessDenied) as denied:
            c.decrypt(envelope)
        assert denied.value.reason == Reason.NOT_AUTHORIZED
        with pytest.raises(NotFound) as hidden:
            c.describe_key(key_id)
        with pytest.raises(NotFound) as unknown:
            c.describe_key(b64u_encode(os.urandom(16)))
    assert hidden.value.detail == unknown.value.detail
    rec = last_record(server, action="DECRYPT", key=key_id, user=STRANGER)
    assert rec["outcome"] == "DENIED" and rec["reason"] == "not_authorized"


def test_aad_mismatch_is_integrity_failure(server: Server, app: TestApp) -> None:
    with server.client(app, OWNER) as c:
        _, envelope = c.encrypt(b"bound", aad=b"item-A")
        with pytest.raises(SceauError) as exc:
            c.decrypt(envelope, aad=b"item-B")
    assert exc.value.code == "integrity_failure"


def test_batch_with_good_and_bad_items(server: Server, app: TestApp) -> None:
    with server.client(app, OWNER) as c:
        results = c.encrypt_batch([(b"one", None), (b"two", b"ctx")])
        assert [("key_id" in r) for r in results] == [True, True]
        assert results[0]["key_id"] != results[1]["key_id"]  # one key per item
        good = [r["ciphertext"] for r in results]
        _, foreign = c.encrypt(b"x")
        raw_items = [
            {"ciphertext": good[0]},
            {"ciphertext": good[1], "aad": b64u_encode(b"ctx")},
            {"ciphertext": good[1]},  # missing aad
            {"ciphertext": "AAAA"},  # too short
            {"ciphertext": b64u_encode(foreign), "bogus": 1},  # unknown member
        ]
        out = c.call("decrypt", {"items": raw_items})["items"]
    assert out[0]["plaintext"] == b64u_encode(b"one")
    assert out[1]["plaintext"] == b64u_encode(b"two")
    assert out[2]["error"]["code"] == "integrity_failure"
    assert out[3]["error"]["code"] == "invalid_request"
    assert out[4]["error"]["code"] == "invalid_request" and "bogus" in out[4]["error"]["detail"]


def test_batch_limit_and_bad_envelope_fail_whole_call(server: Server, app: TestApp) -> None:
    with server.client(app, OWNER) as c:
        with pytest.raises(InvalidRequest, match="items"):
            c.call("encrypt", {"items": [{"plaintext": "AA"}] * 1001})
        with pytest.raises(InvalidRequest, match="plaintext"):
            c.call("encrypt", {"plaintext": "not base64!"})


def test_every_envelope_error_names_the_member(server: Server, app: TestApp) -> None:
    with server.client(app, OWNER) as c:
        _, good = c.encrypt(b"x")
        bad = {"bad magic": b"XCU" + good[3:], "version": good[:3] + b"\x09" + good[4:],
               "suite": good[:4] + b"\x07" + good[5:], "too short": good[:10]}
        for what, envelope in bad.items():
            with pytest.raises(InvalidRequest) as refused:
                c.decrypt(envelope)
            assert refused.value.detail.startswith("ciphertext: "), what
        items = c.decrypt_batch([(envelope, None) for envelope in bad.values()])
    assert all(item["error"]["detail"].startswith("ciphertext: ") for item in items)
    assert "magic" in items[0]["error"]["detail"]


def test_client_side_and_service_side_interoperate(server: Server, app: TestApp) -> None:
    with server.client(app, OWNER) as c:
        sealed_here = c.seal_local(b"sealed by the client", aad=b"m")
        assert c.decrypt(sealed_here, aad=b"m") == b"sealed by the client"
        _, sealed_there = c.encrypt(b"sealed by the service")
        assert c.open_local(sealed_there) == b"sealed by the service"
        dk = c.generate_data_key(name="local")
        env = seal_gcm_with_token(dk.key, dk.token, dk.iv, b"abc", None)
        assert open_gcm(c.get_data_key(dk.key_id), env, None) == b"abc"
        assert c.get_data_key(token=dk.token) == dk.key


def test_data_key_needs_an_encryption_key(server: Server) -> None:
    no_enc = server.register_app("no-enc", enc=False)
    with server.client(no_enc, OWNER) as c:
        with pytest.raises(InvalidRequest, match="encryption key"):
            c.generate_data_key()
        _, env = c.encrypt(b"plain JWS answers are fine")
        assert c.decrypt(env) == b"plain JWS answers are fine"


def test_jwe_request_gets_jwe_response(server: Server, app: TestApp) -> None:
    with server.client(app, OWNER, jwe=True) as c:
        _, env = c.encrypt(b"confidential request")
        assert c.decrypt(env) == b"confidential request"


def test_max_decryptions_counts_get_data_key(server: Server, app: TestApp) -> None:
    with server.client(app, OWNER) as c:
        key_id, env = c.encrypt(b"twice", rules={"max_decryptions": 2})
        c.decrypt(env)
        c.get_data_key(key_id)
        with pytest.raises(AccessDenied) as exc:
            c.decrypt(env)
    assert exc.value.reason == Reason.MAX_DECRYPTIONS_REACHED


def _async_client(server: Server, app: TestApp, user: str) -> AsyncClient:
    return AsyncClient(service_url=server.url, identity=app.identity, user=user,
                       verify=server.cert)


def test_async_client_batches(server: Server, app: TestApp) -> None:
    async def scenario() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        async with _async_client(server, app, OWNER) as c:
            sealed = await c.encrypt_batch([(b"one", None), (b"two", b"ctx")],
                                           recipients=[RECIPIENT])
            envelopes = [b64u_decode(item["ciphertext"]) for item in sealed]
            opened = await c.decrypt_batch([(envelopes[0], None), (envelopes[1], b"ctx"),
                                            (envelopes[1], b"other")])
            return sealed, opened

    sealed, opened = asyncio.run(scenario())
    assert len({item["key_id"] for item in sealed}) == 2  # one key per item
    assert [item.get("plaintext") for item in opened[:2]] == [b64u_encode(b"one"),
                                                              b64u_encode(b"two")]
    assert opened[2]["error"]["code"] == "integrity_failure"
    with server.client(app, RECIPIENT) as c:  # the key options reached the service
        assert c.decrypt(b64u_decode(sealed[0]["ciphertext"])) == b"one"


def test_async_client_iterates_keys_across_pages(server: Server, app: TestApp) -> None:
    owner = "pages@example.com"
    with server.client(app, owner) as c:
        made = {c.encrypt(b"x", name=f"page-{i}")[0] for i in range(5)}
        expected = [k["key_id"] for k in c.iter_keys(page_size=2, role="owner")]

    async def scenario() -> list[str]:
        async with _async_client(server, app, owner) as c:
            return [k["key_id"] async for k in c.iter_keys(page_size=2, role="owner")]

    listed = asyncio.run(scenario())
    assert listed == expected and set(listed) == made


def test_async_client_local_sealing_and_streams(server: Server, app: TestApp) -> None:
    async def scenario() -> tuple[bytes, bytes, str, str]:
        async with _async_client(server, app, OWNER) as c:
            envelope = await c.seal_local(b"local", aad=b"a")
            opened = await c.open_local(envelope, aad=b"a")
            sealed, plain = io.BytesIO(), io.BytesIO()
            done: list[int] = []
            made = await c.protect_stream(io.BytesIO(b"s" * 70_000), sealed,
                                          segment_size=16_384, progress=done.append)
            sealed.seek(0)
            found = await c.open_stream(sealed, plain)
            return opened, plain.getvalue(), made, found if done[-1] == 70_000 else ""

    opened, streamed, made, found = asyncio.run(scenario())
    assert opened == b"local" and streamed == b"s" * 70_000 and made == found


def test_trail_verifies(server: Server, app: TestApp) -> None:
    with server.client(app, OWNER) as c:
        c.encrypt(b"one more record")
    report = verify_store(server)
    assert report.ok, report.first_problem
    assert report.records > 0


def test_client_follows_a_response_key_rotation(server: Server, app: TestApp) -> None:
    from support import run_cli

    with server.client(app, OWNER) as c:
        _, env = c.encrypt(b"before rotation")
        run_cli("keystore", "rotate", "--response", "--data-dir", str(server.data_dir),
                env=server.env)
        # The pinned key is no longer the one signing: the SDK re-fetches the JWKS once.
        assert c.decrypt(env) == b"before rotation"
