"""The Sceau SDK: :class:`Client` and :class:`AsyncClient` for every API v1 operation.

Requests are signed with the application's key (optionally wrapped in JWE); responses are
accepted only when signed by the pinned service key and bound to the request. Errors are
raised as :mod:`sceau.errors` classes carrying the stable ``code`` (and ``reason``).

``seal_local`` / ``open_local`` encrypt on the client with a one-time data key
(``generate-data-key`` / ``get-data-key``) so the service never sees the data;
``protect_stream`` / ``open_stream`` do the same for streams of any size (suite 2, constant
memory).

Every operation is written once, in the operation table (:class:`_Operations`), as a *plan*:
a generator that builds the requests, yields each step it needs (an HTTP exchange, blocking
local work such as stream encryption, an item for an iterator) and checks the results. The
two transports only perform those steps: :class:`Client` at once, :class:`AsyncClient` with
``await`` (blocking work in a thread). Both therefore have the same operations, with the
same arguments and results; ``tests/client/test_sdk.py`` holds them to it.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import ssl
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Generator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Concatenate, Generic, ParamSpec, TypeVar, overload

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

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


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
        # A code this SDK does not know (a newer service): kept as the service sent it.
        error.code = code  # type: ignore[assignment, misc]
    return error


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


def _with_aad(name: str, data: bytes, aad: bytes | None) -> dict[str, Any]:
    """``{name: b64u(data)}``, with ``aad`` when there is one (one item of a request)."""
    item = {name: b64u_encode(data)}
    if aad is not None:
        item["aad"] = b64u_encode(aad)
    return item


# --- plans and their steps ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Http:
    """Step: one HTTP exchange; the plan gets the ``httpx.Response`` back."""

    method: str
    url: str
    token: str | None = None  # the body of a POST: a compact JWS or JWE


@dataclass(frozen=True, slots=True)
class _Blocking:
    """Step: local work that blocks (stream encryption); the plan gets its result back.

    :class:`Client` runs it at once, :class:`AsyncClient` in a worker thread.
    """

    work: Callable[[], Any]


@dataclass(frozen=True, slots=True)
class _Item(Generic[T]):
    """Step of an iterating plan: ``item`` goes to the caller; the plan gets None back."""

    item: T


_Step = _Http | _Blocking | _Item[Any]
_Plan = Generator[_Step, Any, R]


class _Steps(Generic[R]):
    """Walks one plan: :meth:`send` hands a step's outcome in; ``step`` is the next step,
    None once the plan returned ``value``. A transport's loop needs nothing more."""

    def __init__(self, plan: _Plan[R]) -> None:
        self._plan = plan
        self.step: _Step | None = None
        self.value: R | None = None
        self.send(None)

    def send(self, outcome: Any) -> None:
        try:
            self.step = self._plan.send(outcome)
        except StopIteration as done:
            self.step, self.value = None, done.value

    def result(self) -> R:
        return self.value  # type: ignore[return-value]  # the plan returned an R

    def pop_item(self) -> Any:
        """The item of the current :class:`_Item` step, moving the plan past it."""
        if not isinstance(self.step, _Item):
            raise TypeError("the plan's step is not an item")
        item = self.step.item
        self.send(None)
        return item


class _Entry(Generic[P, R]):
    """An entry of the operation table: its plan, and the plan's documentation."""

    def __init__(self, plan: Callable[Concatenate[Any, P], _Plan[R]]) -> None:
        self.plan = plan
        self.__doc__ = plan.__doc__
        signature = inspect.signature(plan)
        # What a client's method shows (help(), IDEs): the plan's parameters without self.
        self.signature = signature.replace(parameters=list(signature.parameters.values())[1:])

    def _dressed(self, runner: Callable[..., Any]) -> Callable[..., Any]:
        """``runner`` named, documented and signed as the plan, without its ``self``."""
        functools.update_wrapper(runner, self.plan)
        runner.__signature__ = self.signature  # type: ignore[attr-defined]
        return runner


class _Operation(_Entry[P, R]):
    """Read on a :class:`Client`, a method that runs the plan and returns its result; on an
    :class:`AsyncClient`, a coroutine method."""

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> _Operation[P, R]: ...
    @overload
    def __get__(self, obj: Client, owner: type | None = None) -> Callable[P, R]: ...
    @overload
    def __get__(
        self, obj: AsyncClient, owner: type | None = None
    ) -> Callable[P, Coroutine[Any, Any, R]]: ...

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        plan = self.plan
        if isinstance(obj, AsyncClient):
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                return await obj._run(plan(obj, *args, **kwargs))
            return self._dressed(run_async)

        def run(*args: Any, **kwargs: Any) -> Any:
            return obj._run(plan(obj, *args, **kwargs))
        return self._dressed(run)


class _Iteration(_Entry[P, None], Generic[P, T]):
    """An iterating entry: an iterator on a :class:`Client`, an async iterator on an
    :class:`AsyncClient`, of the items the plan yields."""

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> _Iteration[P, T]: ...
    @overload
    def __get__(self, obj: Client, owner: type | None = None) -> Callable[P, Iterator[T]]: ...
    @overload
    def __get__(
        self, obj: AsyncClient, owner: type | None = None
    ) -> Callable[P, AsyncIterator[T]]: ...

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        plan = self.plan

        def iterate(*args: Any, **kwargs: Any) -> Any:
            return obj._iterate(plan(obj, *args, **kwargs))
        return self._dressed(iterate)


def _iteration(item: type[T]) -> Callable[[Callable[Concatenate[Any, P], _Plan[None]]],
                                          _Iteration[P, T]]:
    """Decorator: an iterating table entry whose items are of type ``item``."""
    return _Iteration


# --- the operation table --------------------------------------------------------------------


class _Operations:
    """What both clients share: configuration, pinned service keys, and every operation,
    each as a plan (module docstring)."""

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
        """The request token for ``op`` (a JWS, or a JWE around it) and its ``jti``."""
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
        """The ``result`` of a response to the request ``jti``, verified; or the typed error."""
        if response.status_code != 200:
            raise error_from_problem(response.status_code, response.content)
        if self._pinned is None:
            raise IntegrityFailure("no service key is pinned: discover() first")
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

    # --- the protocol ---------------------------------------------------------------------

    @_Operation
    def discover(self) -> _Plan[None]:
        """Fetch and pin the service's response-signing key (trust on first use over TLS)."""
        config = (yield _Http("GET", f"{self.service_url}/.well-known/sceau-configuration")).json()
        jwks = (yield _Http("GET", f"{self.service_url}/.well-known/jwks.json")).json()
        if config.get("service_id") != self.service_id:
            raise IntegrityFailure("the service id does not match this client's")
        self._pin(jwks, config)

    @_Operation
    def call(self, op: Op | str, params: Mapping[str, Any], *, user: str | None = None,
             jwe: bool | None = None, keep_null: bool = False) -> _Plan[Any]:
        """Call one operation; returns its ``result`` or raises the typed error.

        Members whose value is ``None`` are dropped unless ``keep_null`` (``update-key``
        uses an explicit ``null`` to remove a bound).
        """
        op = Op(op)
        if self._pinned is None:
            yield from _discover(self)
        token, jti = self._request(op, dict(params) if keep_null else _clean(params), user, jwe)
        response = yield _Http("POST", f"{self.service_url}/v1/{op.value}", token)
        try:
            return self._result(op, jti, response)
        except UnknownServiceKey:
            # The service rotated its response key: fetch the keys again over TLS, once.
            yield from _discover(self)
            return self._result(op, jti, response)

    # --- operations -----------------------------------------------------------------------

    @_Operation
    def encrypt(self, /, plaintext: bytes, *, aad: bytes | None = None, user: str | None = None,
                **key_options: Any) -> _Plan[tuple[str, bytes]]:
        """Encrypt with a new key (or ``key_id=``); returns ``(key_id, envelope)``."""
        params = {**_with_aad("plaintext", plaintext, aad), **key_options}
        result = yield from _call(self, Op.ENCRYPT, params, user=user)
        return result["key_id"], b64u_decode(result["ciphertext"])

    @_Operation
    def encrypt_batch(self, /, items: list[tuple[bytes, bytes | None]], *, user: str | None = None,
                      **key_options: Any) -> _Plan[list[dict[str, Any]]]:
        """Encrypt each ``(plaintext, aad)``, a new key per item (or ``key_id=``); returns the
        ``items`` of the result, one per input, each with its ``ciphertext`` or ``error``."""
        raw = [_with_aad("plaintext", p, a) for p, a in items]
        result = yield from _call(self, Op.ENCRYPT, {"items": raw, **key_options}, user=user)
        items_out: list[dict[str, Any]] = result["items"]
        return items_out

    @_Operation
    def decrypt(self, ciphertext: bytes, *, aad: bytes | None = None,
                user: str | None = None) -> _Plan[bytes]:
        """The plaintext of an envelope."""
        params = _with_aad("ciphertext", ciphertext, aad)
        result = yield from _call(self, Op.DECRYPT, params, user=user)
        return b64u_decode(result["plaintext"])

    @_Operation
    def decrypt_batch(self, items: list[tuple[bytes, bytes | None]], *,
                      user: str | None = None) -> _Plan[list[dict[str, Any]]]:
        """Decrypt each ``(envelope, aad)``; returns the ``items`` of the result, one per
        input, each with its ``plaintext`` or ``error``."""
        raw = [_with_aad("ciphertext", c, a) for c, a in items]
        result = yield from _call(self, Op.DECRYPT, {"items": raw}, user=user)
        items_out: list[dict[str, Any]] = result["items"]
        return items_out

    @_Operation
    def generate_data_key(self, /, *, user: str | None = None,
                          **key_options: Any) -> _Plan[DataKey]:
        """A new key and a one-time data key under it, to seal one envelope locally."""
        r = yield from _call(self, Op.GENERATE_DATA_KEY, key_options, user=user)
        return DataKey(r["key_id"], b64u_decode(r["key"]), b64u_decode(r["iv"]),
                       b64u_decode(r["token"]))

    @_Operation
    def get_data_key(self, key_id: str | None = None, *, token: bytes | None = None,
                     user: str | None = None) -> _Plan[bytes]:
        """The data key of ``key_id`` (or of an envelope's ``token``), to open locally."""
        params: dict[str, Any] = {"key_id": key_id}
        if token is not None:
            params = {"token": b64u_encode(token)}
        result = yield from _call(self, Op.GET_DATA_KEY, params, user=user)
        return b64u_decode(result["key"])

    @_Operation
    def seal_local(self, /, plaintext: bytes, *, aad: bytes | None = None, user: str | None = None,
                   **key_options: Any) -> _Plan[bytes]:
        """Encrypt on this machine with a one-time data key (suite 1)."""
        dk = yield from _generate_data_key(self, user=user, **key_options)
        return seal_gcm_with_token(dk.key, dk.token, dk.iv, plaintext, aad)

    @_Operation
    def open_local(self, envelope: bytes, *, aad: bytes | None = None,
                   user: str | None = None) -> _Plan[bytes]:
        """Decrypt on this machine: fetch the data key with ``get-data-key``, open locally."""
        header = parse_unverified_header(envelope)
        key = yield from _get_data_key(self, b64u_encode(header.key_id), user=user)
        return open_gcm(key, envelope, aad)

    @_Operation
    def protect_stream(self, /, src: BinaryIO, dst: BinaryIO, *, user: str | None = None,
                       segment_size: int = DEFAULT_SEGMENT_SIZE,
                       progress: Callable[[int], None] | None = None,
                       **key_options: Any) -> _Plan[str]:
        """Encrypt ``src`` to ``dst`` on this machine as a suite-2 STREAM under a new key.

        One ``generate-data-key`` call (``key_options``: ``name``, ``recipients``, ...),
        then constant-memory encryption. Returns the new ``key_id``. ``progress`` gets the
        cumulative plaintext bytes done.
        """
        dk = yield from _generate_data_key(self, user=user, **key_options)
        yield _Blocking(functools.partial(
            encrypt_stream, src, dst, dk.key, _key_id_bytes(dk), segment_size=segment_size,
            progress=progress))
        return dk.key_id

    @_Operation
    def open_stream(self, src: BinaryIO, dst: BinaryIO, *, user: str | None = None,
                    progress: Callable[[int], None] | None = None) -> _Plan[str]:
        """Decrypt a suite-2 STREAM from ``src`` to ``dst``; returns its ``key_id``.

        The key id comes from header bytes 5..20; the key from ``get-data-key``. A header
        that does not parse raises ``EnvelopeFormatError`` before any service call; a stream
        that does not authenticate raises ``DecryptionFailed``, possibly after ``dst`` got
        the authentic segments before the fault (write to a temporary file and publish it
        only when this returns).
        """
        header = yield _Blocking(functools.partial(read_stream_header, src))
        key_id = b64u_encode(read_stream_key_id(header))
        key = yield from _get_data_key(self, key_id, user=user)
        reader: Any = PrefixedReader(header, src)
        yield _Blocking(functools.partial(decrypt_stream, reader, dst, key, progress=progress))
        return key_id

    @_Operation
    def describe_key(self, key_id: str, *, user: str | None = None) -> _Plan[dict[str, Any]]:
        """The key's description (status, rules, authorizations, counters)."""
        return (yield from _key_op(self, Op.DESCRIBE_KEY, key_id, user))

    @_Operation
    def list_keys(self, /, *, user: str | None = None, **filters: Any) -> _Plan[dict[str, Any]]:
        """One page ``{keys, next_cursor}``. A key the user may only use (not manage) comes
        in the recipient view: ``key_id``, ``name``, ``owner``, ``status`` and its own
        ``authorizations`` only (docs/policy.md); read other members with ``.get``."""
        page: dict[str, Any] = yield from _call(self, Op.LIST_KEYS, filters, user=user)
        return page

    @_iteration(dict)
    def iter_keys(self, /, *, user: str | None = None, page_size: int = 100,
                  **filters: Any) -> _Plan[None]:
        """Every key ``list-keys`` returns for ``filters``, following ``next_cursor``."""
        cursor: str | None = None
        while True:
            page = yield from _list_keys(self, user=user, limit=page_size, cursor=cursor,
                                         **filters)
            for key in page["keys"]:
                yield _Item(key)
            cursor = page.get("next_cursor")
            if not cursor:
                return

    @_Operation
    def update_key(self, /, key_id: str, *, user: str | None = None,
                   **changes: Any) -> _Plan[dict[str, Any]]:
        """Change the named fields; a field given as ``None`` is removed (sent as ``null``)."""
        result: dict[str, Any] = yield from _call(
            self, Op.UPDATE_KEY, {"key_id": key_id, **changes}, user=user, keep_null=True)
        return result

    @_Operation
    def enable_key(self, key_id: str, *, user: str | None = None) -> _Plan[dict[str, Any]]:
        """Enable a disabled key."""
        return (yield from _key_op(self, Op.ENABLE_KEY, key_id, user))

    @_Operation
    def disable_key(self, key_id: str, *, user: str | None = None) -> _Plan[dict[str, Any]]:
        """Disable a key: nothing is encrypted or decrypted with it until enabled again."""
        return (yield from _key_op(self, Op.DISABLE_KEY, key_id, user))

    @_Operation
    def destroy_key(self, key_id: str, *, pending_days: int = 0,
                    user: str | None = None) -> _Plan[dict[str, Any]]:
        """Destroy a key now, or after ``pending_days`` (cancellable until then)."""
        return (yield from _key_op(self, Op.DESTROY_KEY, key_id, user,
                                   pending_days=pending_days))

    @_Operation
    def cancel_destruction(self, key_id: str, *,
                           user: str | None = None) -> _Plan[dict[str, Any]]:
        """Cancel a pending destruction."""
        return (yield from _key_op(self, Op.CANCEL_DESTRUCTION, key_id, user))

    @_Operation
    def add_authorization(self, key_id: str, principal: str, rights: list[str] | None = None, *,
                          not_before: Any = None, not_after: Any = None,
                          user: str | None = None) -> _Plan[dict[str, Any]]:
        """Authorize ``principal`` on the key (``rights`` default: decrypt)."""
        return (yield from _key_op(self, Op.ADD_AUTHORIZATION, key_id, user,
                                   principal=principal, rights=rights or ["decrypt"],
                                   not_before=not_before, not_after=not_after))

    @_Operation
    def remove_authorization(self, key_id: str, principal: str, *,
                             user: str | None = None) -> _Plan[dict[str, Any]]:
        """Remove ``principal``'s authorization."""
        return (yield from _grant_op(self, Op.REMOVE_AUTHORIZATION, key_id, principal, user))

    @_Operation
    def enable_authorization(self, key_id: str, principal: str, *,
                             user: str | None = None) -> _Plan[dict[str, Any]]:
        """Enable ``principal``'s disabled authorization."""
        return (yield from _grant_op(self, Op.ENABLE_AUTHORIZATION, key_id, principal, user))

    @_Operation
    def disable_authorization(self, key_id: str, principal: str, *,
                              user: str | None = None) -> _Plan[dict[str, Any]]:
        """Disable ``principal``'s authorization (kept, usable again once enabled)."""
        return (yield from _grant_op(self, Op.DISABLE_AUTHORIZATION, key_id, principal, user))

    @_Operation
    def list_accesses(self, key_id: str, *, limit: int = 100, cursor: str | None = None,
                      user: str | None = None) -> _Plan[dict[str, Any]]:
        """One page of the key's access history."""
        return (yield from _key_op(self, Op.LIST_ACCESSES, key_id, user, limit=limit,
                                   cursor=cursor))


# Plans that other plans reuse.
_discover = _Operations.discover.plan
_call = _Operations.call.plan
_generate_data_key = _Operations.generate_data_key.plan
_get_data_key = _Operations.get_data_key.plan
_list_keys = _Operations.list_keys.plan


def _key_op(client: _Operations, op: Op, key_id: str, user: str | None,
            **extra: Any) -> _Plan[dict[str, Any]]:
    result: dict[str, Any] = yield from _call(client, op, {"key_id": key_id, **extra}, user=user)
    return result


def _grant_op(client: _Operations, op: Op, key_id: str, principal: str,
              user: str | None) -> _Plan[dict[str, Any]]:
    return (yield from _key_op(client, op, key_id, user, principal=principal))


# --- the two transports -------------------------------------------------------------------


class Client(_Operations):
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

    def _perform(self, step: _Step) -> Any:
        if isinstance(step, _Http):
            headers = {"Content-Type": JOSE} if step.token is not None else None
            return self._http.request(step.method, step.url, content=step.token, headers=headers)
        if isinstance(step, _Blocking):
            return step.work()
        raise TypeError("an item outside an iteration")

    def _run(self, plan: _Plan[R]) -> R:
        """Run a plan to its result, performing each step at once."""
        steps = _Steps(plan)
        while steps.step is not None:
            steps.send(self._perform(steps.step))
        return steps.result()

    def _iterate(self, plan: _Plan[None]) -> Iterator[Any]:
        """Run an iterating plan; its items come out as the plan yields them."""
        steps = _Steps(plan)
        while steps.step is not None:
            if isinstance(steps.step, _Item):
                yield steps.pop_item()
            else:
                steps.send(self._perform(steps.step))


class AsyncClient(_Operations):
    """Asynchronous client with the same operations as :class:`Client` (``await`` each;
    ``async for`` over :meth:`iter_keys`)."""

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

    async def _perform(self, step: _Step) -> Any:
        if isinstance(step, _Http):
            headers = {"Content-Type": JOSE} if step.token is not None else None
            return await self._http.request(step.method, step.url, content=step.token,
                                            headers=headers)
        if isinstance(step, _Blocking):
            return await asyncio.to_thread(step.work)
        raise TypeError("an item outside an iteration")

    async def _run(self, plan: _Plan[R]) -> R:
        steps = _Steps(plan)  # as Client._run, each step awaited
        while steps.step is not None:
            steps.send(await self._perform(steps.step))
        return steps.result()

    async def _iterate(self, plan: _Plan[None]) -> AsyncIterator[Any]:
        steps = _Steps(plan)  # as Client._iterate, each step awaited
        while steps.step is not None:
            if isinstance(steps.step, _Item):
                yield steps.pop_item()
            else:
                steps.send(await self._perform(steps.step))
