"""The Sceau SDK: :class:`Client` and :class:`AsyncClient` for every API v1 operation.

Requests are signed with the application's key (optionally wrapped in JWE); responses are
accepted only when signed by the pinned service key and bound to the request. Errors are
raised as :mod:`sceau.errors` classes carrying the stable ``code`` (and ``reason``).

``seal_local`` / ``open_local`` encrypt on the client with a one-time data key
(``generate-data-key`` / ``get-data-key``) so the service never sees the data;
``protect_stream`` / ``open_stream`` do the same for streams of any size (suite 2, constant
memory).
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import httpx

from sceau.core.b64 import b64u_decode, b64u_encode
from sceau.core.envelope import (
    STREAM_HEADER_LEN,
    TOKEN_LEN,
    open_gcm,
    parse_unverified_header,
    seal_gcm_with_token,
)
from sceau.core.stream import (
    DEFAULT_SEGMENT_SIZE,
    decrypt_stream,
    encrypt_stream,
    read_stream_key_id,
)
from sceau.errors import AccessDenied, IntegrityFailure, SceauError, error_for_code
from sceau.jose.client import (
    ClientIdentity,
    UnknownServiceKey,
    open_response,
    sign_request,
    wrap_for_service,
)
from sceau.vocab import Op, Reason

__all__ = [
    "AsyncClient",
    "Client",
    "DataKey",
    "PrefixedReader",
    "Profile",
    "error_from_problem",
    "read_stream_header",
]

JOSE = "application/jose"
KEY_MATERIAL_OPS = frozenset({Op.GENERATE_DATA_KEY, Op.GET_DATA_KEY})


@dataclass(frozen=True)
class Profile:
    """A client profile file (written by ``sceau app keygen`` and ``sceau app add``)."""

    service_url: str
    app_id: str
    kid: str
    alg: str
    private_jwk: Mapping[str, Any]
    enc_private_jwk: Mapping[str, Any] | None
    user: str | None = None
    service_id: str | None = None
    ca_cert: str | None = None
    service_jwks: Mapping[str, Any] | None = None

    @classmethod
    def load(cls, path: str | Path) -> Profile:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if not data.get("app_id"):
            raise ValueError(f"{path}: no app_id yet; register the app with `sceau app add`")
        fields = {f: data.get(f) for f in cls.__dataclass_fields__}
        return cls(**fields)

    def client_kwargs(self, user: str | None = None) -> dict[str, Any]:
        """Constructor arguments of :class:`Client` / :class:`AsyncClient` for this profile."""
        return {
            "service_url": self.service_url,
            "identity": self.identity(),
            "user": user or self.user,
            "service_id": self.service_id,
            "service_jwks": self.service_jwks,
            "verify": self.ca_cert or True,
        }

    def identity(self) -> ClientIdentity:
        return ClientIdentity(
            app_id=self.app_id,
            kid=self.kid,
            alg=self.alg,
            private_jwk=self.private_jwk,
            enc_private_jwk=self.enc_private_jwk,
        )


@dataclass(frozen=True)
class DataKey:
    """A one-time data key from ``generate-data-key``: seal one envelope with ``key``/``iv``."""

    key_id: str
    key: bytes
    iv: bytes
    token: bytes

    def __repr__(self) -> str:
        return f"DataKey(key_id={self.key_id!r})"


def read_stream_header(src: BinaryIO) -> bytes:
    """Read the 41-byte suite-2 header from ``src`` (fewer bytes only at EOF).

    The result is unauthenticated; :func:`sceau.core.stream.read_stream_key_id` parses it
    (and raises ``EnvelopeFormatError`` for a short or foreign header).
    """
    header = bytearray()
    while len(header) < STREAM_HEADER_LEN:
        chunk = src.read(STREAM_HEADER_LEN - len(header))
        if not chunk:
            break
        header += chunk
    return bytes(header)


class PrefixedReader:
    """A binary reader yielding ``prefix`` and then the rest of ``src``.

    Lets a caller peek at a stream's first bytes (a header, to choose the key) and still
    hand the whole stream to a function that reads it from the start.
    """

    def __init__(self, prefix: bytes, src: BinaryIO) -> None:
        self._prefix = memoryview(bytes(prefix))
        self._src = src

    def readinto(self, buf: memoryview | bytearray) -> int:
        """Fill ``buf`` from the prefix first, then from ``src``; 0 at EOF."""
        view = memoryview(buf).cast("B")
        if len(self._prefix):
            n = min(len(view), len(self._prefix))
            view[:n] = self._prefix[:n]
            self._prefix = self._prefix[n:]
            return n
        readinto = getattr(self._src, "readinto", None)
        if readinto is not None:
            got: int | None = readinto(view)
            return got or 0
        data = self._src.read(len(view))
        view[: len(data)] = data
        return len(data)

    def read(self, size: int = -1) -> bytes:
        """Read up to ``size`` bytes (all that is left for a negative ``size``)."""
        if size < 0:
            return bytes(self._prefix) + self._src.read() if len(self._prefix) else self._src.read()
        buf = bytearray(size)
        n = self.readinto(buf)
        return bytes(buf[:n])


def _key_id_bytes(dk: DataKey) -> bytes:
    """The raw key id of a data key, checked against its token (which the header repeats)."""
    raw = b64u_decode(dk.key_id)
    if bytes(dk.token[5:TOKEN_LEN]) != raw:
        raise IntegrityFailure("the data key's token does not match its key id")
    return raw


def error_from_problem(status: int, body: bytes) -> SceauError:
    """The typed error for an RFC 9457 problem body."""
    try:
        problem = json.loads(body)
        code = str(problem["code"])
        detail = str(problem.get("detail", ""))
    except (ValueError, KeyError, TypeError):
        return SceauError(f"HTTP {status} without a problem body")
    cls = error_for_code(code)
    if cls is AccessDenied:
        try:
            return AccessDenied(Reason(problem.get("reason")), detail)
        except ValueError:
            return AccessDenied(Reason.NOT_AUTHORIZED, detail)
    error = cls(detail)
    if cls is SceauError:
        error.code = code  # type: ignore[misc]
    return error


class _Core:
    """What both clients share: request building and response checking."""

    def __init__(
        self,
        *,
        service_url: str,
        identity: ClientIdentity,
        user: str | None = None,
        service_id: str | None = None,
        service_jwks: Mapping[str, Any] | None = None,
        jwe: bool = False,
        token_lifetime: int = 60,
    ) -> None:
        self.service_url = service_url.rstrip("/")
        self.identity = identity
        self.user = user
        self.service_id = (service_id or self.service_url).rstrip("/")
        self.jwe = jwe
        self.token_lifetime = token_lifetime
        self._pinned: dict[str, Mapping[str, Any]] | None = None
        self._service_enc: Mapping[str, Any] | None = None
        if service_jwks is not None:
            self._pin(service_jwks, None)

    def _pin(self, jwks: Mapping[str, Any], config: Mapping[str, Any] | None) -> None:
        keys = [k for k in jwks.get("keys", []) if isinstance(k, Mapping)]
        wanted = config.get("response_signing_kid") if config else None
        self._pinned = {
            str(k["kid"]): k
            for k in keys
            if k.get("use") == "sig" and (wanted is None or k.get("kid") == wanted)
        }
        self._service_enc = _service_enc_key(keys, config)

    def _request(
        self, op: Op, params: Mapping[str, Any], user: str | None, jwe: bool | None
    ) -> tuple[str, str]:
        sub = user or self.user
        if not sub:
            raise ValueError("no user: pass user= or set one in the profile")
        signed = sign_request(
            self.identity, sub=sub, aud=self.service_id, op=op.value, params=params,
            now=int(time.time()), lifetime=self.token_lifetime,
        )
        if not (jwe if jwe is not None else self.jwe):
            return signed, signed.jti
        if self._service_enc is None:
            raise IntegrityFailure("the service published no encryption key")
        return wrap_for_service(signed, self._service_enc), signed.jti

    def _result(self, op: Op, jti: str, response: httpx.Response) -> Any:
        if response.status_code != 200:
            raise error_from_problem(response.status_code, response.content)
        assert self._pinned is not None
        claims = open_response(
            response.text,
            service_keys=self._pinned,
            enc_private_jwk=self.identity.enc_private_jwk,
            expected_aud=self.identity.app_id,
            expected_iss=self.service_id,
            expected_req=jti,
            expected_op=op.value,
            require_jwe=op in KEY_MATERIAL_OPS,
        )
        return claims["result"]


def _service_enc_key(keys: list[Mapping[str, Any]],
                     config: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """The service key to encrypt requests to: the one discovery names (``encryption_kid``).

    Without discovery (a profile's copy of the JWKS), or when the JWKS does not hold the
    named key (fetched a moment apart), an ``ECDH-ES+A256KW`` key is preferred: the service
    opens it at a quarter of the cost of RSA-OAEP.
    """
    enc = [k for k in keys if k.get("use") == "enc"]
    named = config.get("encryption_kid") if config else None
    for key in enc:
        if named is not None and key.get("kid") == named:
            return key
    preferred = [k for k in enc if k.get("alg") == "ECDH-ES+A256KW"] or enc
    return preferred[0] if preferred else None


def tls_verify(verify: str | bool) -> ssl.SSLContext | bool:
    """httpx's ``verify``: a CA file path becomes a context trusting exactly that file."""
    if isinstance(verify, str):
        return ssl.create_default_context(cafile=verify)
    return verify


def _clean(params: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if v is not None}


class Client(_Core):
    """Synchronous client. Use :meth:`from_profile` or pass the parts explicitly."""

    def __init__(self, *, verify: str | bool = True, timeout: float = 30.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._http = httpx.Client(verify=tls_verify(verify), timeout=timeout)

    @classmethod
    def from_profile(cls, path: str | Path, *, user: str | None = None, **kwargs: Any) -> Client:
        return cls(**Profile.load(path).client_kwargs(user), **kwargs)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def discover(self) -> None:
        """Fetch and pin the service's response-signing key (trust on first use over TLS)."""
        config = self._http.get(f"{self.service_url}/.well-known/sceau-configuration").json()
        jwks = self._http.get(f"{self.service_url}/.well-known/jwks.json").json()
        if config.get("service_id") != self.service_id:
            raise IntegrityFailure("the service id does not match this client's")
        self._pin(jwks, config)

    def call(self, op: Op | str, params: Mapping[str, Any], *, user: str | None = None,
             jwe: bool | None = None, keep_null: bool = False) -> Any:
        """Call one operation; returns its ``result`` or raises the typed error.

        Members whose value is ``None`` are dropped unless ``keep_null`` (``update-key``
        uses an explicit ``null`` to remove a bound).
        """
        op = Op(op)
        if self._pinned is None:
            self.discover()
        token, jti = self._request(op, dict(params) if keep_null else _clean(params), user, jwe)
        response = self._http.post(
            f"{self.service_url}/v1/{op.value}", content=token, headers={"Content-Type": JOSE}
        )
        try:
            return self._result(op, jti, response)
        except UnknownServiceKey:
            # The service rotated its response key: fetch the keys again over TLS, once.
            self.discover()
            return self._result(op, jti, response)

    # --- operations ---------------------------------------------------------------------

    def encrypt(self, plaintext: bytes, *, aad: bytes | None = None, user: str | None = None,
                **key_options: Any) -> tuple[str, bytes]:
        """Encrypt with a new key (or ``key_id=``); returns ``(key_id, envelope)``."""
        params = {"plaintext": b64u_encode(plaintext), **key_options}
        if aad is not None:
            params["aad"] = b64u_encode(aad)
        result = self.call(Op.ENCRYPT, params, user=user)
        return result["key_id"], b64u_decode(result["ciphertext"])

    def encrypt_batch(self, items: list[tuple[bytes, bytes | None]], *, user: str | None = None,
                      **key_options: Any) -> list[dict[str, Any]]:
        raw = [
            {"plaintext": b64u_encode(p), **({"aad": b64u_encode(a)} if a is not None else {})}
            for p, a in items
        ]
        result: list[dict[str, Any]] = self.call(
            Op.ENCRYPT, {"items": raw, **key_options}, user=user
        )["items"]
        return result

    def decrypt(self, ciphertext: bytes, *, aad: bytes | None = None,
                user: str | None = None) -> bytes:
        params = {"ciphertext": b64u_encode(ciphertext)}
        if aad is not None:
            params["aad"] = b64u_encode(aad)
        return b64u_decode(self.call(Op.DECRYPT, params, user=user)["plaintext"])

    def decrypt_batch(self, items: list[tuple[bytes, bytes | None]], *,
                      user: str | None = None) -> list[dict[str, Any]]:
        raw = [
            {"ciphertext": b64u_encode(c), **({"aad": b64u_encode(a)} if a is not None else {})}
            for c, a in items
        ]
        result: list[dict[str, Any]] = self.call(Op.DECRYPT, {"items": raw}, user=user)["items"]
        return result

    def generate_data_key(self, *, user: str | None = None, **key_options: Any) -> DataKey:
        r = self.call(Op.GENERATE_DATA_KEY, key_options, user=user)
        return DataKey(r["key_id"], b64u_decode(r["key"]), b64u_decode(r["iv"]),
                       b64u_decode(r["token"]))

    def get_data_key(self, key_id: str | None = None, *, token: bytes | None = None,
                     user: str | None = None) -> bytes:
        params: dict[str, Any] = {"key_id": key_id}
        if token is not None:
            params = {"token": b64u_encode(token)}
        return b64u_decode(self.call(Op.GET_DATA_KEY, params, user=user)["key"])

    def seal_local(self, plaintext: bytes, *, aad: bytes | None = None, user: str | None = None,
                   **key_options: Any) -> bytes:
        """Encrypt on this machine with a one-time data key (suite 1)."""
        dk = self.generate_data_key(user=user, **key_options)
        return seal_gcm_with_token(dk.key, dk.token, dk.iv, plaintext, aad)

    def open_local(self, envelope: bytes, *, aad: bytes | None = None,
                   user: str | None = None) -> bytes:
        """Decrypt on this machine: fetch the data key with ``get-data-key``, open locally."""
        header = parse_unverified_header(envelope)
        key = self.get_data_key(b64u_encode(header.key_id), user=user)
        return open_gcm(key, envelope, aad)

    def protect_stream(self, src: BinaryIO, dst: BinaryIO, *, user: str | None = None,
                       segment_size: int = DEFAULT_SEGMENT_SIZE,
                       progress: Callable[[int], None] | None = None,
                       **key_options: Any) -> str:
        """Encrypt ``src`` to ``dst`` on this machine as a suite-2 STREAM under a new key.

        One ``generate-data-key`` call (``key_options``: ``name``, ``recipients``, ...),
        then constant-memory encryption. Returns the new ``key_id``. ``progress`` gets the
        cumulative plaintext bytes done.
        """
        dk = self.generate_data_key(user=user, **key_options)
        encrypt_stream(src, dst, dk.key, _key_id_bytes(dk), segment_size=segment_size,
                       progress=progress)
        return dk.key_id

    def open_stream(self, src: BinaryIO, dst: BinaryIO, *, user: str | None = None,
                    progress: Callable[[int], None] | None = None) -> str:
        """Decrypt a suite-2 STREAM from ``src`` to ``dst``; returns its ``key_id``.

        The key id comes from header bytes 5..20; the key from ``get-data-key``. A header
        that does not parse raises ``EnvelopeFormatError`` before any service call; a stream
        that does not authenticate raises ``DecryptionFailed``, possibly after ``dst`` got
        the authentic segments before the fault (write to a temporary file and publish it
        only when this returns).
        """
        header = read_stream_header(src)
        key_id = b64u_encode(read_stream_key_id(header))
        key = self.get_data_key(key_id, user=user)
        decrypt_stream(PrefixedReader(header, src), dst, key,  # type: ignore[arg-type]
                       progress=progress)
        return key_id

    def describe_key(self, key_id: str, *, user: str | None = None) -> dict[str, Any]:
        result: dict[str, Any] = self.call(Op.DESCRIBE_KEY, {"key_id": key_id}, user=user)
        return result

    def list_keys(self, *, user: str | None = None, **filters: Any) -> dict[str, Any]:
        """One page ``{keys, next_cursor}``. A key the user may only use (not manage) comes
        in the recipient view: ``key_id``, ``name``, ``owner``, ``status`` and its own
        ``authorizations`` only (docs/policy.md); read other members with ``.get``."""
        result: dict[str, Any] = self.call(Op.LIST_KEYS, filters, user=user)
        return result

    def iter_keys(self, *, user: str | None = None, page_size: int = 100,
                  **filters: Any) -> Iterator[dict[str, Any]]:
        """Every key ``list-keys`` returns for ``filters``, following ``next_cursor``."""
        cursor: str | None = None
        while True:
            page = self.list_keys(user=user, limit=page_size, cursor=cursor, **filters)
            yield from page["keys"]
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def update_key(self, key_id: str, *, user: str | None = None, **changes: Any) -> dict[str, Any]:
        """Change the named fields; a field given as ``None`` is removed (sent as ``null``)."""
        result: dict[str, Any] = self.call(Op.UPDATE_KEY, {"key_id": key_id, **changes},
                                           user=user, keep_null=True)
        return result

    def _key_op(self, op: Op, key_id: str, user: str | None, **extra: Any) -> dict[str, Any]:
        result: dict[str, Any] = self.call(op, {"key_id": key_id, **extra}, user=user)
        return result

    def enable_key(self, key_id: str, *, user: str | None = None) -> dict[str, Any]:
        return self._key_op(Op.ENABLE_KEY, key_id, user)

    def disable_key(self, key_id: str, *, user: str | None = None) -> dict[str, Any]:
        return self._key_op(Op.DISABLE_KEY, key_id, user)

    def destroy_key(self, key_id: str, *, pending_days: int = 0,
                    user: str | None = None) -> dict[str, Any]:
        return self._key_op(Op.DESTROY_KEY, key_id, user, pending_days=pending_days)

    def cancel_destruction(self, key_id: str, *, user: str | None = None) -> dict[str, Any]:
        return self._key_op(Op.CANCEL_DESTRUCTION, key_id, user)

    def add_authorization(self, key_id: str, principal: str, rights: list[str] | None = None, *,
                          not_before: Any = None, not_after: Any = None,
                          user: str | None = None) -> dict[str, Any]:
        return self._key_op(Op.ADD_AUTHORIZATION, key_id, user, principal=principal,
                            rights=rights or ["decrypt"], not_before=not_before,
                            not_after=not_after)

    def remove_authorization(self, key_id: str, principal: str, *,
                             user: str | None = None) -> dict[str, Any]:
        return self._key_op(Op.REMOVE_AUTHORIZATION, key_id, user, principal=principal)

    def enable_authorization(self, key_id: str, principal: str, *,
                             user: str | None = None) -> dict[str, Any]:
        return self._key_op(Op.ENABLE_AUTHORIZATION, key_id, user, principal=principal)

    def disable_authorization(self, key_id: str, principal: str, *,
                              user: str | None = None) -> dict[str, Any]:
        return self._key_op(Op.DISABLE_AUTHORIZATION, key_id, user, principal=principal)

    def list_accesses(self, key_id: str, *, limit: int = 100, cursor: str | None = None,
                      user: str | None = None) -> dict[str, Any]:
        return self._key_op(Op.LIST_ACCESSES, key_id, user, limit=limit, cursor=cursor)


class AsyncClient(_Core):
    """Asynchronous client with the same operations as :class:`Client` (``await`` each)."""

    def __init__(self, *, verify: str | bool = True, timeout: float = 30.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._http = httpx.AsyncClient(verify=tls_verify(verify), timeout=timeout)

    @classmethod
    def from_profile(cls, path: str | Path, *, user: str | None = None,
                     **kwargs: Any) -> AsyncClient:
        return cls(**Profile.load(path).client_kwargs(user), **kwargs)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def discover(self) -> None:
        discovery = await self._http.get(f"{self.service_url}/.well-known/sceau-configuration")
        config = discovery.json()
        jwks = (await self._http.get(f"{self.service_url}/.well-known/jwks.json")).json()
        if config.get("service_id") != self.service_id:
            raise IntegrityFailure("the service id does not match this client's")
        self._pin(jwks, config)

    async def call(self, op: Op | str, params: Mapping[str, Any], *, user: str | None = None,
                   jwe: bool | None = None, keep_null: bool = False) -> Any:
        op = Op(op)
        if self._pinned is None:
            await self.discover()
        token, jti = self._request(op, dict(params) if keep_null else _clean(params), user, jwe)
        response = await self._http.post(
            f"{self.service_url}/v1/{op.value}", content=token, headers={"Content-Type": JOSE}
        )
        try:
            return self._result(op, jti, response)
        except UnknownServiceKey:
            await self.discover()
            return self._result(op, jti, response)

    async def encrypt(self, plaintext: bytes, *, aad: bytes | None = None,
                      user: str | None = None, **key_options: Any) -> tuple[str, bytes]:
        params = {"plaintext": b64u_encode(plaintext), **key_options}
        if aad is not None:
            params["aad"] = b64u_encode(aad)
        result = await self.call(Op.ENCRYPT, params, user=user)
        return result["key_id"], b64u_decode(result["ciphertext"])

    async def decrypt(self, ciphertext: bytes, *, aad: bytes | None = None,
                      user: str | None = None) -> bytes:
        params = {"ciphertext": b64u_encode(ciphertext)}
        if aad is not None:
            params["aad"] = b64u_encode(aad)
        return b64u_decode((await self.call(Op.DECRYPT, params, user=user))["plaintext"])

    async def generate_data_key(self, *, user: str | None = None, **key_options: Any) -> DataKey:
        r = await self.call(Op.GENERATE_DATA_KEY, key_options, user=user)
        return DataKey(r["key_id"], b64u_decode(r["key"]), b64u_decode(r["iv"]),
                       b64u_decode(r["token"]))

    async def get_data_key(self, key_id: str, *, user: str | None = None) -> bytes:
        r = await self.call(Op.GET_DATA_KEY, {"key_id": key_id}, user=user)
        return b64u_decode(r["key"])

    async def seal_local(self, plaintext: bytes, *, aad: bytes | None = None,
                         user: str | None = None, **key_options: Any) -> bytes:
        dk = await self.generate_data_key(user=user, **key_options)
        return seal_gcm_with_token(dk.key, dk.token, dk.iv, plaintext, aad)

    async def open_local(self, envelope: bytes, *, aad: bytes | None = None,
                         user: str | None = None) -> bytes:
        header = parse_unverified_header(envelope)
        key = await self.get_data_key(b64u_encode(header.key_id), user=user)
        return open_gcm(key, envelope, aad)

    async def describe_key(self, key_id: str, *, user: str | None = None) -> dict[str, Any]:
        result: dict[str, Any] = await self.call(Op.DESCRIBE_KEY, {"key_id": key_id}, user=user)
        return result

    async def protect_stream(self, src: BinaryIO, dst: BinaryIO, *, user: str | None = None,
                             segment_size: int = DEFAULT_SEGMENT_SIZE,
                             **key_options: Any) -> str:
        """As :meth:`Client.protect_stream`; the blocking stream work runs in a thread."""
        dk = await self.generate_data_key(user=user, **key_options)
        await asyncio.to_thread(encrypt_stream, src, dst, dk.key, _key_id_bytes(dk),
                                segment_size=segment_size)
        return dk.key_id

    async def open_stream(self, src: BinaryIO, dst: BinaryIO, *,
                          user: str | None = None) -> str:
        """As :meth:`Client.open_stream`; the blocking stream work runs in a thread."""
        header = await asyncio.to_thread(read_stream_header, src)
        key_id = b64u_encode(read_stream_key_id(header))
        key = await self.get_data_key(key_id, user=user)
        reader: Any = PrefixedReader(header, src)
        await asyncio.to_thread(decrypt_stream, reader, dst, key)
        return key_id

    async def list_keys(self, *, user: str | None = None, **filters: Any) -> dict[str, Any]:
        """As :meth:`Client.list_keys` (keys the user may only use in the recipient view)."""
        result: dict[str, Any] = await self.call(Op.LIST_KEYS, filters, user=user)
        return result

    async def update_key(self, key_id: str, *, user: str | None = None,
                         **changes: Any) -> dict[str, Any]:
        result: dict[str, Any] = await self.call(
            Op.UPDATE_KEY, {"key_id": key_id, **changes}, user=user, keep_null=True
        )
        return result

    async def _key_op(self, op: Op, key_id: str, user: str | None,
                      **extra: Any) -> dict[str, Any]:
        result: dict[str, Any] = await self.call(op, {"key_id": key_id, **extra}, user=user)
        return result

    async def enable_key(self, key_id: str, *, user: str | None = None) -> dict[str, Any]:
        return await self._key_op(Op.ENABLE_KEY, key_id, user)

    async def disable_key(self, key_id: str, *, user: str | None = None) -> dict[str, Any]:
        return await self._key_op(Op.DISABLE_KEY, key_id, user)

    async def destroy_key(self, key_id: str, *, pending_days: int = 0,
                          user: str | None = None) -> dict[str, Any]:
        return await self._key_op(Op.DESTROY_KEY, key_id, user, pending_days=pending_days)

    async def cancel_destruction(self, key_id: str, *, user: str | None = None) -> dict[str, Any]:
        return await self._key_op(Op.CANCEL_DESTRUCTION, key_id, user)

    async def add_authorization(self, key_id: str, principal: str,
                                rights: list[str] | None = None, *, not_before: Any = None,
                                not_after: Any = None, user: str | None = None) -> dict[str, Any]:
        return await self._key_op(Op.ADD_AUTHORIZATION, key_id, user, principal=principal,
                                  rights=rights or ["decrypt"], not_before=not_before,
                                  not_after=not_after)

    async def remove_authorization(self, key_id: str, principal: str, *,
                                   user: str | None = None) -> dict[str, Any]:
        return await self._key_op(Op.REMOVE_AUTHORIZATION, key_id, user, principal=principal)

    async def enable_authorization(self, key_id: str, principal: str, *,
                                   user: str | None = None) -> dict[str, Any]:
        return await self._key_op(Op.ENABLE_AUTHORIZATION, key_id, user, principal=principal)

    async def disable_authorization(self, key_id: str, principal: str, *,
                                    user: str | None = None) -> dict[str, Any]:
        return await self._key_op(Op.DISABLE_AUTHORIZATION, key_id, user, principal=principal)

    async def list_accesses(self, key_id: str, *, limit: int = 100, cursor: str | None = None,
                            user: str | None = None) -> dict[str, Any]:
        return await self._key_op(Op.LIST_ACCESSES, key_id, user, limit=limit, cursor=cursor)
