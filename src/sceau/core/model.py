"""Frozen models of a key record and its parts (SPEC §5).

Times are integer NumericDates (seconds since the epoch, UTC); conversion to RFC 3339
happens at the API boundary. Identities are normalized by :func:`normalize_identity`
before they reach these models.

The field declarations of :class:`KeyRecord` and :class:`Authorization` are the one list
of what a key record holds: the seal payload, the metadata view (``sceau.service.keyops``
and its documented model in ``sceau.service.params``) and the store's columns
(``sceau.store.keys``) are all derived from them. Each field says how it is written as
JSON (``encode``), whether it is a time (RFC 3339 at the API) and whether it is internal
(the seed and the seal: never shown, and the seed only as its hash in the seal payload).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any

from sceau.core.canonical import canonical_json
from sceau.errors import AccessDenied
from sceau.vocab import AuthorizationStatus, KeyStatus, Reason, Right

SEAL_FORMAT_VERSION = 1


def normalize_identity(identity: str) -> str:
    """Lower-case the domain part of an identity or ``*@domain`` pattern.

    Domains compare case-insensitively (SPEC §6); local parts compare exactly. Normalizing
    once at the boundary lets every later comparison be a plain string equality.
    """
    local, at, domain = identity.rpartition("@")
    if not at:
        return identity
    return f"{local}@{domain.lower()}"


def _about(
    *, encode: Callable[[Any], Any] | None = None, time: bool = False, internal: bool = False
) -> dict[str, Any]:
    """A field's metadata: what the derived views need to know about it."""
    return {"encode": encode, "time": time, "internal": internal}


_TIME = _about(time=True)
_INTERNAL = _about(internal=True)


class _View:
    """The JSON view of a model: every field that is not internal, encoded where it says.

    Built once per model; reading the plain fields in one ``attrgetter`` call keeps it as
    fast as a hand-written dict (the seal payload is computed twice per decryption).
    """

    def __init__(self, model: type) -> None:
        shown = [f for f in dataclasses.fields(model) if not f.metadata.get("internal")]
        self.names = tuple(f.name for f in shown)
        self.times = tuple(f.name for f in shown if f.metadata.get("time"))
        self._get = attrgetter(*self.names)
        self._encoders = tuple(
            (f.name, f.metadata["encode"]) for f in shown if f.metadata.get("encode")
        )

    def of(self, obj: Any) -> dict[str, Any]:
        out = dict(zip(self.names, self._get(obj), strict=True))
        for name, encode in self._encoders:
            value = out[name]
            if value is not None:
                out[name] = encode(value)
        return out


@dataclass(frozen=True, slots=True)
class Rules:
    """Per-key rules checked at every decryption (SPEC §6 step 5)."""

    allowed_networks: tuple[str, ...] | None = None
    max_decryptions: int | None = None

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {}
        if self.allowed_networks is not None:
            out["allowed_networks"] = list(self.allowed_networks)
        if self.max_decryptions is not None:
            out["max_decryptions"] = self.max_decryptions
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Rules:
        """The inverse of :meth:`to_json`."""
        nets = data.get("allowed_networks")
        return cls(
            allowed_networks=tuple(nets) if nets is not None else None,
            max_decryptions=data.get("max_decryptions"),
        )


def _sorted_rights(rights: frozenset[Right]) -> list[str]:
    return sorted(str(r) for r in rights)


@dataclass(frozen=True, slots=True)
class Authorization:
    """One entry of a key's authorization list."""

    principal: str
    rights: frozenset[Right] = field(metadata=_about(encode=_sorted_rights))
    status: AuthorizationStatus = field(metadata=_about(encode=str))
    not_before: int | None = field(metadata=_TIME)
    not_after: int | None = field(metadata=_TIME)
    added_by: str
    added_at: int = field(metadata=_TIME)

    def to_json(self) -> dict[str, Any]:
        return _AUTHORIZATION_VIEW.of(self)


#: The type of each field of :class:`Authorization`, for the views derived at run time
#: (``sceau.store.rows``): when this module is compiled, mypyc erases generic annotations
#: (``frozenset[Right]`` reads as ``frozenset``). tests/core/test_model.py checks that this
#: table says what the annotations say.
AUTHORIZATION_TYPES: dict[str, Any] = {
    "principal": str,
    "rights": frozenset[Right],
    "status": AuthorizationStatus,
    "not_before": int | None,
    "not_after": int | None,
    "added_by": str,
    "added_at": int,
}

_AUTHORIZATION_VIEW = _View(Authorization)
#: The members of an authorization entry that are times (RFC 3339 at the API).
AUTHORIZATION_TIMES = _AUTHORIZATION_VIEW.times


def _entries(authorizations: tuple[Authorization, ...]) -> list[dict[str, Any]]:
    return [a.to_json() for a in authorizations]


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """A key record as the store holds it. ``seed`` is ``None`` once destroyed.

    Fields are in the order of the metadata view (results are JSON in member order).
    """

    key_id: bytes = field(metadata=_about(encode=bytes.hex))
    seed: bytes | None = field(metadata=_INTERNAL)
    owner: str
    application: str
    name: str | None
    tag: str | None
    status: KeyStatus = field(metadata=_about(encode=str))
    created_at: int = field(metadata=_TIME)
    expires_at: int = field(metadata=_TIME)
    not_before: int | None = field(metadata=_TIME)
    not_after: int | None = field(metadata=_TIME)
    destroy_at: int | None = field(metadata=_TIME)
    destroyed_at: int | None = field(metadata=_TIME)
    master_version: int
    authorizations: tuple[Authorization, ...] = field(metadata=_about(encode=_entries))
    rules: Rules = field(metadata=_about(encode=Rules.to_json))
    decryptions: int
    revision: int
    seal: bytes = field(default=b"", repr=False, metadata=_INTERNAL)

    def __repr__(self) -> str:  # never print the seed
        return f"KeyRecord(key_id={self.key_id.hex()}, status={self.status}, rev={self.revision})"

    def live_seed(self) -> bytes:
        """The seed, to derive the data key; a destroyed key (no seed) is refused as such."""
        if self.seed is None:
            raise AccessDenied(Reason.KEY_DESTROYED)
        return self.seed

    def authorization_for(self, principal: str) -> Authorization | None:
        """The entry whose principal is exactly ``principal`` (not a pattern match)."""
        for entry in self.authorizations:
            if entry.principal == principal:
                return entry
        return None

    def to_json(self) -> dict[str, Any]:
        """What the record says, as JSON values: every field but the seed and the seal.

        ``key_id`` is hex and times are NumericDates; the API's view converts both.
        """
        return _KEY_VIEW.of(self)

    def seal_payload(self) -> bytes:
        """Canonical JSON (RFC 8785) of every policy field, the revision and SHA-256(seed).

        The seal HMAC is computed over these bytes inside the keystore. ``decryptions`` is
        included so that a database edit resetting the counter is detected. Authorization
        entries are sorted by principal, so their order in the record does not matter.
        """
        body = self.to_json()
        body["authorizations"].sort(key=lambda entry: entry["principal"])
        body["v"] = SEAL_FORMAT_VERSION
        body["seed_sha256"] = (
            hashlib.sha256(self.seed).hexdigest() if self.seed is not None else None
        )
        return canonical_json(body)


#: The type of each field of :class:`KeyRecord` (see :data:`AUTHORIZATION_TYPES`).
KEY_TYPES: dict[str, Any] = {
    "key_id": bytes,
    "seed": bytes | None,
    "owner": str,
    "application": str,
    "name": str | None,
    "tag": str | None,
    "status": KeyStatus,
    "created_at": int,
    "expires_at": int,
    "not_before": int | None,
    "not_after": int | None,
    "destroy_at": int | None,
    "destroyed_at": int | None,
    "master_version": int,
    "authorizations": tuple[Authorization, ...],
    "rules": Rules,
    "decryptions": int,
    "revision": int,
    "seal": bytes,
}

_KEY_VIEW = _View(KeyRecord)
#: Every field of a key record, in declaration order.
KEY_FIELDS = tuple(f.name for f in dataclasses.fields(KeyRecord))
#: The members of the metadata view, in order: every field but the internal ones.
KEY_VIEW = _KEY_VIEW.names
#: The fields that are times (RFC 3339 at the API).
KEY_TIMES = _KEY_VIEW.times
