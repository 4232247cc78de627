"""Formats of the workspace key services (SPEC §11): no I/O, no clock.

Wrapped keys (CSE). Google stores what ``wrap`` returns next to the document and sends it
back unchanged; Sceau makes it carry what it is bound to, so that ``privilegedunwrap``
can restore the ``perimeter_id`` and every unwrap can check it::

    offset len  field
    0      4    magic "SCK1" (format version 1)
    4      1    length P of perimeter_id (0..128)
    5      P    perimeter_id, UTF-8
    5+P    ..   a SPEC §7 suite-1 envelope of the DEK under the resource's Sceau key, with
                associated data binding resource_name and perimeter_id (:func:`binding_aad`)

The key id is in the envelope's header, so a wrapped key names its resource's key. A
perimeter edited in the clear fails the envelope's tag (the AAD differs), as does a
wrapped key replayed under another resource name.

Resource key hash (Google's definition, vectors in ``shared/vectors``):
``HMAC-SHA256(DEK, "ResourceKeyDigest:" || resource_name || ":" || perimeter_id)``.
"""

from __future__ import annotations

import hashlib
import hmac

from sceau.core.canonical import canonical_json
from sceau.core.envelope import (
    GCM_HEADER_LEN,
    TAG_LEN,
    EnvelopeHeader,
    Suite,
    parse_unverified_header,
)
from sceau.errors import InvalidRequest

__all__ = [
    "MAX_PERIMETER_BYTES",
    "MAX_RESOURCE_BYTES",
    "WRAPPED_MAGIC",
    "WrappedKey",
    "binding_aad",
    "pack_wrapped_key",
    "parse_wrapped_key",
    "resource_key_hash",
]

WRAPPED_MAGIC = b"SCK1"
MAX_RESOURCE_BYTES = 128  # Google's documented maximum for resource_name and perimeter_id
MAX_PERIMETER_BYTES = 128
_BINDING_PURPOSE = "sceau/cse/wrapped-key/v1"


def resource_key_hash(dek: bytes, resource_name: str, perimeter_id: str) -> bytes:
    """Google's resource key hash of a DEK for a resource (32 raw bytes)."""
    message = f"ResourceKeyDigest:{resource_name}:{perimeter_id}".encode()
    return hmac.new(dek, message, hashlib.sha256).digest()


def binding_aad(resource_name: str, perimeter_id: str) -> bytes:
    """The envelope's associated data: purpose, resource name and perimeter, unambiguous."""
    return canonical_json({"purpose": _BINDING_PURPOSE, "resource_name": resource_name,
                           "perimeter_id": perimeter_id})


class WrappedKey:
    """A parsed (unverified) wrapped key: its perimeter and the envelope's header."""

    __slots__ = ("envelope", "header", "perimeter_id")

    def __init__(self, perimeter_id: str, envelope: bytes, header: EnvelopeHeader) -> None:
        self.perimeter_id = perimeter_id
        self.envelope = envelope
        self.header = header


def pack_wrapped_key(perimeter_id: str, envelope: bytes) -> bytes:
    """The wrapped-key bytes for an envelope sealed with :func:`binding_aad`."""
    raw = perimeter_id.encode()
    if len(raw) > MAX_PERIMETER_BYTES:
        raise InvalidRequest(f"perimeter_id: at most {MAX_PERIMETER_BYTES} bytes")
    return WRAPPED_MAGIC + bytes([len(raw)]) + raw + envelope


def parse_wrapped_key(data: bytes) -> WrappedKey:
    """Parse a wrapped key's clear parts; ``invalid_request`` names what is wrong.

    Nothing here is authenticated yet: the caller opens the envelope with the key it names
    and :func:`binding_aad` of what it expects.
    """
    if len(data) < 5 or data[:4] != WRAPPED_MAGIC:
        raise InvalidRequest("wrapped_key: not a key wrapped by this service")
    size = data[4]
    if size > MAX_PERIMETER_BYTES or len(data) < 5 + size + GCM_HEADER_LEN + TAG_LEN:
        raise InvalidRequest("wrapped_key: truncated")
    try:
        perimeter = data[5:5 + size].decode()
    except UnicodeDecodeError:
        raise InvalidRequest("wrapped_key: malformed") from None
    envelope = bytes(data[5 + size:])
    header = parse_unverified_header(envelope)
    if header.suite is not Suite.GCM:
        raise InvalidRequest("wrapped_key: not a suite-1 envelope")
    return WrappedKey(perimeter, envelope, header)
