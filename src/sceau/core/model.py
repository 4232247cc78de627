"""Frozen models of a key record and its parts (SPEC §5).

Times are integer NumericDates (seconds since the epoch, UTC); conversion to RFC 3339
happens at the API boundary. Identities are normalized by :func:`normalize_identity`
before they reach these models.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

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


@dataclass(frozen=True, slots=True)
class Authorization:
    """One entry of a key's authorization list."""

    principal: str
    rights: frozenset[Right]
    status: AuthorizationStatus
    not_before: int | None
    not_after: int | None
    added_by: str
    added_at: int

    def to_json(self) -> dict[str, object]:
        return {
            "principal": self.principal,
            "rights": sorted(str(r) for r in self.rights),
            "status": str(self.status),
            "not_before": self.not_before,
            "not_after": self.not_after,
            "added_by": self.added_by,
            "added_at": self.added_at,
        }


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """A key record as the store holds it. ``seed`` is ``None`` once destroyed."""

    key_id: bytes
    seed: bytes | None
    master_version: int
    owner: str
    application: str
    name: str | None
    tag: str | None
    created_at: int
    expires_at: int
    not_before: int | None
    not_after: int | None
    status: KeyStatus
    destroy_at: int | None
    destroyed_at: int | None
    authorizations: tuple[Authorization, ...]
    rules: Rules
    decryptions: int
    revision: int
    seal: bytes = field(default=b"", repr=False)

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

    def seal_payload(self) -> bytes:
        """Canonical JSON (RFC 8785) of every policy field, the revision and SHA-256(seed).

        The seal HMAC is computed over these bytes inside the keystore. ``decryptions`` is
        included so that a database edit resetting the counter is detected.
        """
        seed_hash = hashlib.sha256(self.seed).hexdigest() if self.seed is not None else None
        body = {
            "v": SEAL_FORMAT_VERSION,
            "key_id": self.key_id.hex(),
            "seed_sha256": seed_hash,
            "master_version": self.master_version,
            "owner": self.owner,
            "application": self.application,
            "name": self.name,
            "tag": self.tag,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "not_before": self.not_before,
            "not_after": self.not_after,
            "status": str(self.status),
            "destroy_at": self.destroy_at,
            "destroyed_at": self.destroyed_at,
            "authorizations": [
                a.to_json() for a in sorted(self.authorizations, key=lambda a: a.principal)
            ],
            "rules": self.rules.to_json(),
            "decryptions": self.decryptions,
            "revision": self.revision,
        }
        return canonical_json(body)
