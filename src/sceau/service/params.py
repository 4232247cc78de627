"""Operation parameters and results (SPEC §4, §10), parsed at the boundary into frozen models.

Pydantic models with ``extra="forbid"`` and strict types; their JSON schemas feed
``/openapi.json``. Errors name the offending member: ``invalid_request`` with
``detail = "<member>: <problem>"``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    WithJsonSchema,
    create_model,
    model_validator,
)

from sceau.core.b64 import MalformedBase64, b64u_decode
from sceau.core.model import KEY_TIMES, KEY_TYPES, KEY_VIEW, Authorization, Rules
from sceau.errors import InvalidRequest
from sceau.vocab import AuthorizationStatus, KeyStatus, ListRole, ListStatus, Op, Right

MAX_NAME = 512
MAX_TAG = 256
MAX_PRINCIPAL = 254
MAX_RECIPIENTS = 1000
# Refuse times outside [1970, 9999] so every value converts to RFC 3339 and back.
MAX_TIME = 253402300799


def _b64(value: Any) -> bytes:
    if not isinstance(value, str):
        raise ValueError("must be a base64url string")
    try:
        return b64u_decode(value)
    except MalformedBase64:
        raise ValueError("not canonical unpadded base64url") from None


def _key_id(value: Any) -> bytes:
    raw = _b64(value)
    if len(raw) != 16:
        raise ValueError("must be 16 bytes")
    return raw


def _time(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("must be an RFC 3339 string or a NumericDate")
    if isinstance(value, int):
        if not 0 <= value <= MAX_TIME:
            raise ValueError("out of range")
        return value
    if isinstance(value, str):
        if len(value) > 40:
            raise ValueError("not an RFC 3339 time")
        text = value.replace("z", "Z")
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError("not an RFC 3339 time") from None
        if parsed.tzinfo is None or "T" not in text.upper():
            raise ValueError("RFC 3339 time needs a date, a time and an offset")
        seconds = int(parsed.timestamp())
        if not 0 <= seconds <= MAX_TIME:
            raise ValueError("out of range")
        return seconds
    raise ValueError("must be an RFC 3339 string or a NumericDate")


def rfc3339(seconds: int | None) -> str | None:
    """Whole-second RFC 3339 UTC, as every result carries times (SPEC §10)."""
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


B64 = Annotated[
    bytes,
    BeforeValidator(_b64),
    WithJsonSchema({"type": "string", "contentEncoding": "base64url"}),
]
KeyId = Annotated[
    bytes,
    BeforeValidator(_key_id),
    WithJsonSchema({"type": "string", "contentEncoding": "base64url", "description": "16 bytes"}),
]
Time = Annotated[
    int,
    BeforeValidator(_time),
    PlainSerializer(rfc3339),
    WithJsonSchema({"oneOf": [{"type": "string", "format": "date-time"}, {"type": "integer"}]}),
]
Principal = Annotated[str, Field(min_length=1, max_length=MAX_PRINCIPAL)]


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def _check_window(not_before: int | None, not_after: int | None) -> None:
    if not_before is not None and not_after is not None and not_after <= not_before:
        raise ValueError("not_after must be later than not_before")


def _check_one_form(name: str, single: Any, items: Any, aad: Any) -> None:
    """One value (``name``) or a batch of ``items``; a batch carries its ``aad`` per item."""
    if (single is None) == (items is None):
        raise ValueError(f"give either {name} or items")
    if items is not None and aad is not None:
        raise ValueError("aad goes inside each item of a batch")


class RulesParam(Params):
    allowed_networks: list[Annotated[str, Field(max_length=64)]] | None = Field(
        None, max_length=256
    )
    max_decryptions: int | None = Field(None, ge=0, le=2**53)


class KeyOptions(Params):
    """Options of a key created by ``encrypt`` or ``generate-data-key``."""

    name: str | None = Field(None, max_length=MAX_NAME)
    tag: str | None = Field(None, max_length=MAX_TAG)
    recipients: list[Principal] | None = Field(None, max_length=MAX_RECIPIENTS)
    not_before: Time | None = None
    not_after: Time | None = None
    expires_at: Time | None = None
    lifetime_days: int | None = Field(None, ge=1, le=36500)
    rules: RulesParam | None = None

    @model_validator(mode="after")
    def _coherent(self) -> KeyOptions:
        if self.lifetime_days is not None and self.expires_at is not None:
            raise ValueError("lifetime_days and expires_at are mutually exclusive")
        _check_window(self.not_before, self.not_after)
        return self


class EncryptItem(Params):
    plaintext: B64
    aad: B64 | None = None


class EncryptParams(KeyOptions):
    plaintext: B64 | None = None
    aad: B64 | None = None
    items: list[dict[str, Any]] | None = None
    key_id: KeyId | None = None

    @model_validator(mode="after")
    def _one_form(self) -> EncryptParams:
        _check_one_form("plaintext", self.plaintext, self.items, self.aad)
        return self


class DecryptItem(Params):
    ciphertext: B64
    aad: B64 | None = None


class DecryptParams(Params):
    ciphertext: B64 | None = None
    aad: B64 | None = None
    items: list[dict[str, Any]] | None = None

    @model_validator(mode="after")
    def _one_form(self) -> DecryptParams:
        _check_one_form("ciphertext", self.ciphertext, self.items, self.aad)
        return self


class GenerateDataKeyParams(KeyOptions):
    pass


class GetDataKeyParams(Params):
    key_id: KeyId | None = None
    token: B64 | None = None

    @model_validator(mode="after")
    def _one_form(self) -> GetDataKeyParams:
        if (self.key_id is None) == (self.token is None):
            raise ValueError("give either key_id or token")
        return self


class KeyRef(Params):
    key_id: KeyId


class ListKeysParams(Params):
    role: Annotated[ListRole, Field(strict=False)] = ListRole.ANY
    status: Annotated[ListStatus, Field(strict=False)] | None = None
    created_from: Time | None = None
    created_to: Time | None = None
    name: str | None = Field(None, max_length=MAX_NAME)
    application: str | None = Field(None, max_length=64)
    tag: str | None = Field(None, max_length=MAX_TAG)
    limit: int = Field(100, ge=1, le=1000)
    cursor: str | None = Field(None, max_length=200)


class UpdateKeyParams(Params):
    key_id: KeyId
    name: str | None = Field(None, max_length=MAX_NAME)
    tag: str | None = Field(None, max_length=MAX_TAG)
    not_before: Time | None = None
    not_after: Time | None = None
    expires_at: Time | None = None
    rules: RulesParam | None = None


class DestroyKeyParams(Params):
    key_id: KeyId
    pending_days: int = Field(0, ge=0, le=30)


class AddAuthorizationParams(Params):
    key_id: KeyId
    principal: Principal
    rights: list[Annotated[Right, Field(strict=False)]] = Field(min_length=1, max_length=2)
    not_before: Time | None = None
    not_after: Time | None = None

    @model_validator(mode="after")
    def _window(self) -> AddAuthorizationParams:
        _check_window(self.not_before, self.not_after)
        return self


class PrincipalRef(Params):
    key_id: KeyId
    principal: Principal


class ListAccessesParams(Params):
    key_id: KeyId
    limit: int = Field(100, ge=1, le=1000)
    cursor: str | None = Field(None, max_length=200)


M = TypeVar("M", bound="Params")

PARAMS: dict[Op, type[Params]] = {
    Op.ENCRYPT: EncryptParams,
    Op.DECRYPT: DecryptParams,
    Op.GENERATE_DATA_KEY: GenerateDataKeyParams,
    Op.GET_DATA_KEY: GetDataKeyParams,
    Op.DESCRIBE_KEY: KeyRef,
    Op.LIST_KEYS: ListKeysParams,
    Op.UPDATE_KEY: UpdateKeyParams,
    Op.ENABLE_KEY: KeyRef,
    Op.DISABLE_KEY: KeyRef,
    Op.DESTROY_KEY: DestroyKeyParams,
    Op.CANCEL_DESTRUCTION: KeyRef,
    Op.ADD_AUTHORIZATION: AddAuthorizationParams,
    Op.REMOVE_AUTHORIZATION: PrincipalRef,
    Op.ENABLE_AUTHORIZATION: PrincipalRef,
    Op.DISABLE_AUTHORIZATION: PrincipalRef,
    Op.LIST_ACCESSES: ListAccessesParams,
}


def _describe(exc: ValidationError) -> str:
    first = exc.errors(include_url=False, include_input=False)[0]
    loc = ".".join(str(p) for p in first["loc"]) or "params"
    msg = str(first["msg"]).removeprefix("Value error, ")
    return f"{loc}: {msg}"


def parse_model(model: type[M], raw: Any, *, where: str = "params") -> M:
    """Validate ``raw`` into ``model``; ``invalid_request`` naming the member otherwise."""
    if not isinstance(raw, dict):
        raise InvalidRequest(f"{where}: must be an object")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise InvalidRequest(_describe(exc)) from None


def parse_params(op: Op, raw: Any) -> Params:
    return parse_model(PARAMS[op], raw)


# --- results (documentation of the wire shapes; handlers build plain dicts) -----------------


class AuthorizationOut(BaseModel):
    principal: str
    rights: list[Right]
    status: AuthorizationStatus
    not_before: str | None
    not_after: str | None
    added_by: str
    added_at: str


def _key_metadata_fields() -> type[BaseModel]:
    """The members of ``keyops.metadata``, derived from the key record's fields: the same
    names in the same order, each with its type on the wire (times as RFC 3339 text)."""
    wire: dict[Any, Any] = {
        bytes: str,
        KeyStatus: ListStatus,
        Rules: dict[str, Any],
        tuple[Authorization, ...]: list[AuthorizationOut],
    }
    hints = KEY_TYPES  # not the annotations: sceau.core.model may be compiled
    members: dict[str, Any] = {}
    for name in KEY_VIEW:
        hint = hints[name]
        if name in KEY_TIMES:
            hint = str if hint is int else str | None
        members[name] = (wire.get(hint, hint), ...)
    return create_model("KeyMetadata", **members)


class KeyMetadata(_key_metadata_fields()):  # type: ignore[misc]  # members derived above
    pass


class EncryptResult(BaseModel):
    key_id: str | None = None
    ciphertext: str | None = None
    items: list[dict[str, Any]] | None = None


class DecryptResult(BaseModel):
    key_id: str | None = None
    plaintext: str | None = None
    items: list[dict[str, Any]] | None = None


class DataKeyResult(BaseModel):
    key_id: str
    key: str
    iv: str | None = None
    token: str | None = None


class OwnAuthorizationOut(BaseModel):
    """One of the caller's own authorization entries, as a recipient sees it."""

    principal: str
    rights: list[Right]
    status: AuthorizationStatus
    not_before: str | None
    not_after: str | None


class RecipientKeyView(BaseModel):
    """A key the caller may use but not manage: no other principal, no rules or networks.

    ``authorizations`` holds only the entries that govern the caller (its exact entry, or
    else the ``*@domain`` entries matching it). Owners and ``manage`` holders get
    :class:`KeyMetadata` instead.
    """

    key_id: str
    name: str | None
    owner: str
    status: ListStatus
    authorizations: list[OwnAuthorizationOut]


class ListKeysResult(BaseModel):
    """Each key in full (owner, ``manage``) or in the recipient view."""

    keys: list[KeyMetadata | RecipientKeyView]
    next_cursor: str | None


class DestroyResult(BaseModel):
    key_id: str
    destroyed_at: str
    receipt: str


class ListAccessesResult(BaseModel):
    accesses: list[dict[str, Any]]
    next_cursor: str | None


RESULTS: dict[Op, type[BaseModel]] = {
    Op.ENCRYPT: EncryptResult,
    Op.DECRYPT: DecryptResult,
    Op.GENERATE_DATA_KEY: DataKeyResult,
    Op.GET_DATA_KEY: DataKeyResult,
    Op.LIST_KEYS: ListKeysResult,
    Op.DESTROY_KEY: DestroyResult,
    Op.LIST_ACCESSES: ListAccessesResult,
}


def result_model(op: Op) -> type[BaseModel]:
    return RESULTS.get(op, KeyMetadata)
