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

Wrapped private keys (Gmail S/MIME). Gmail keeps what ``wrapprivatekey`` (or ``sceau cse
wrap-private-key``) returns as the key pair's ``kaclsData`` and sends it back with every
``privatekeydecrypt`` / ``privatekeysign``; Sceau makes it name the mailbox it belongs to
and the public key it opens::

    offset len  field
    0      4    magic "SCP1" (format version 1)
    4      32   SHA-256 of the key pair's DER SubjectPublicKeyInfo (Google's spki_hash)
    36     2    length M of the mailbox's email, big-endian (1..320)
    38     M    the mailbox's email, lower-case UTF-8
    38+M   1    length P of perimeter_id (0..128)
    39+M   P    perimeter_id, UTF-8
    39+M+P ..   a SPEC §7 suite-1 envelope of the PKCS#8 DER private key under the mailbox
                key's Sceau key, with associated data binding all of the above
                (:func:`private_key_aad`)

Each clear field is authenticated by the envelope's tag: an email, perimeter or hash
edited in the clear does not open. The magic differs from ``SCK1`` and so does the
associated data's purpose, so neither kind of wrapped key is ever accepted as the other.
"""

from __future__ import annotations

import hashlib
import hmac

from sceau.core.b64 import b64u_encode
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
    "MAX_EMAIL_BYTES",
    "MAILBOX_KEY_PREFIX",
    "MAX_PERIMETER_BYTES",
    "MAX_RESOURCE_BYTES",
    "PRIVATE_MAGIC",
    "SPKI_HASH_LEN",
    "WRAPPED_MAGIC",
    "WrappedKey",
    "WrappedPrivateKey",
    "binding_aad",
    "mailbox_key_name",
    "pack_wrapped_key",
    "pack_wrapped_private_key",
    "parse_wrapped_key",
    "parse_wrapped_private_key",
    "private_key_aad",
    "resource_key_hash",
]

# The built-in application names of the keys these services make (SPEC §11).
CSE_APPLICATION = "google-workspace"
DKE_APPLICATION = "microsoft-dke"
WRAPPED_MAGIC = b"SCK1"
PRIVATE_MAGIC = b"SCP1"
MAX_EMAIL_BYTES = 320
SPKI_HASH_LEN = 32
MAILBOX_KEY_PREFIX = "gmail-smime/"
MAX_RESOURCE_BYTES = 128  # Google's documented maximum for resource_name and perimeter_id
MAX_PERIMETER_BYTES = 128
_BINDING_PURPOSE = "sceau/cse/wrapped-key/v1"
_PRIVATE_PURPOSE = "sceau/cse/wrapped-private-key/v1"


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


# --- wrapped private keys (Gmail S/MIME) ------------------------------------------------------


def mailbox_key_name(email: str, spki_hash: bytes) -> str:
    """The Sceau key name of one mailbox's wrapped private key (what the console shows)."""
    return f"{MAILBOX_KEY_PREFIX}{email}/{b64u_encode(spki_hash)}"


def private_key_aad(email: str, spki_hash: bytes, perimeter_id: str) -> bytes:
    """The envelope's associated data for a wrapped private key."""
    return canonical_json({"purpose": _PRIVATE_PURPOSE, "email": email,
                           "spki_sha256": spki_hash.hex(), "perimeter_id": perimeter_id})


class WrappedPrivateKey:
    """A parsed (unverified) wrapped private key: mailbox, public key hash, perimeter."""

    __slots__ = ("email", "envelope", "header", "perimeter_id", "spki_hash")

    def __init__(self, email: str, spki_hash: bytes, perimeter_id: str, envelope: bytes,
                 header: EnvelopeHeader) -> None:
        self.email = email
        self.spki_hash = spki_hash
        self.perimeter_id = perimeter_id
        self.envelope = envelope
        self.header = header

    @property
    def aad(self) -> bytes:
        return private_key_aad(self.email, self.spki_hash, self.perimeter_id)


def pack_wrapped_private_key(email: str, spki_hash: bytes, perimeter_id: str,
                             envelope: bytes) -> bytes:
    """The wrapped-private-key bytes for an envelope sealed with :func:`private_key_aad`."""
    mail = email.encode()
    perimeter = perimeter_id.encode()
    if not 0 < len(mail) <= MAX_EMAIL_BYTES:
        raise InvalidRequest(f"email: 1 to {MAX_EMAIL_BYTES} bytes")
    if len(perimeter) > MAX_PERIMETER_BYTES:
        raise InvalidRequest(f"perimeter_id: at most {MAX_PERIMETER_BYTES} bytes")
    if len(spki_hash) != SPKI_HASH_LEN:
        raise InvalidRequest("spki_hash: a SHA-256 digest")
    return (PRIVATE_MAGIC + spki_hash + len(mail).to_bytes(2, "big") + mail
            + bytes([len(perimeter)]) + perimeter + envelope)


def parse_wrapped_private_key(data: bytes) -> WrappedPrivateKey:
    """Parse a wrapped private key's clear parts; ``invalid_request`` names what is wrong.

    Nothing here is authenticated yet: the caller opens the envelope with the key it names
    and :attr:`WrappedPrivateKey.aad`.
    """
    if len(data) < 38 or data[:4] != PRIVATE_MAGIC:
        raise InvalidRequest("wrapped_private_key: not a private key wrapped by this service")
    spki_hash = bytes(data[4:36])
    mail_len = int.from_bytes(data[36:38], "big")
    if not 0 < mail_len <= MAX_EMAIL_BYTES or len(data) < 39 + mail_len:
        raise InvalidRequest("wrapped_private_key: truncated")
    at = 38 + mail_len
    perimeter_len = data[at]
    start = at + 1 + perimeter_len
    if perimeter_len > MAX_PERIMETER_BYTES or len(data) < start + GCM_HEADER_LEN + TAG_LEN:
        raise InvalidRequest("wrapped_private_key: truncated")
    try:
        email = data[38:at].decode()
        perimeter = data[at + 1:start].decode()
    except UnicodeDecodeError:
        raise InvalidRequest("wrapped_private_key: malformed") from None
    envelope = bytes(data[start:])
    header = parse_unverified_header(envelope)
    if header.suite is not Suite.GCM:
        raise InvalidRequest("wrapped_private_key: not a suite-1 envelope")
    return WrappedPrivateKey(email, spki_hash, perimeter, envelope, header)
