"""Mail: protect a MIME message under one key, and restore it exactly.

A protected message keeps the original header fields (routing, threading, dates) except
the content fields (``MIME-Version``, ``Content-*``), which move inside, and ``Subject``,
which moves inside too when asked. Its body becomes ``multipart/mixed`` with:

1. a ``text/plain`` part: a short notice for people, then ONE armored suite-1 block
   (``-----BEGIN SCEAU MESSAGE-----``) holding the *message payload*: the original content
   fields and body, every attachment's encoded bytes cut out, plus a manifest telling how
   to put them back;
2. one ``NAME.sceau`` attachment per original attachment, in the file connector's format
   (``sceau file open`` opens a saved one on its own), under the same key.

Nothing is stored twice, and opening splices each attachment back in its original transfer
encoding, so the result is byte-for-byte the original (verified by SHA-256 per attachment;
an encoding Sceau cannot reproduce exactly is carried verbatim in the manifest instead).
Header fields that relays add in transit (``Received``, ...) are kept, on top.

Payload (inside the armored envelope)::

    "SCM" 0x01 | u32 L | canonical JSON manifest (L bytes) | skeleton bytes

Manifest: ``{"attachments": [{"at", "sha256", "encoding"}...], "fields": N,
"content_at": [indexes], "subject": str | null}``; ``encoding`` is ``{"cte":
"base64", "line", "eol", "trail"}``, ``{"cte": "identity"}`` or ``{"cte": "raw", "raw"}``.
"""

from __future__ import annotations

import base64
import binascii
import email
import email.policy
import hashlib
import io
import json
import os
import quopri
from collections.abc import Iterable
from dataclasses import dataclass
from email.message import EmailMessage, Message
from typing import Any

from sceau.connectors.files import (
    FileInfo,
    KeySource,
    check_file_name,
    open_file_stream,
    seal_file_stream,
)
from sceau.connectors.mime import SenderNotAllowed, parse_header, participants, split_fields
from sceau.core.b64 import b64u_decode, b64u_encode
from sceau.core.canonical import canonical_json
from sceau.core.envelope import (
    armor,
    find_armored,
    open_gcm,
    parse_unverified_header,
    seal_gcm_with_token,
)
from sceau.core.stream import read_stream_key_id
from sceau.errors import IntegrityFailure, InvalidRequest

__all__ = [
    "MARKER_FIELD",
    "SCEAU_MEDIA_TYPE",
    "ProtectedMail",
    "SenderNotAllowed",
    "is_protected",
    "open_message",
    "protect_message",
    "split_fields",
]

SCEAU_MEDIA_TYPE = "application/vnd.sceau"
MARKER_FIELD = "X-Sceau"
PROTECTED_SUBJECT = "[Sceau protected message]"
_PAYLOAD_MAGIC = b"SCM\x01"
_MAX_MANIFEST = 16 * 1024 * 1024
_B64_LINE = 76
NOTICE = (
    "This message is protected by Sceau: only its sender and recipients can read it.\n"
    "To read it, open it with `sceau mail open MESSAGE.eml -o OPENED.eml` (or a Sceau-aware\n"
    "mail client). Each attachment NAME.sceau also opens alone with `sceau file open`.\n"
)


# --- raw header fields ---------------------------------------------------------------------


def _lines(data: bytes) -> list[bytes]:
    return data.splitlines(keepends=True)


def _field_name(field: bytes) -> str:
    return field.split(b":", 1)[0].strip().decode("ascii", "replace").lower()


def _is_content_field(field: bytes) -> bool:
    name = _field_name(field)
    return name == "mime-version" or name.startswith("content-")


def _is_ours(field: bytes) -> bool:
    return _is_content_field(field) or _field_name(field) == MARKER_FIELD.lower()


def _headers(fields: Iterable[bytes]) -> Message:
    return email.message_from_bytes(b"".join(fields) + b"\n", policy=email.policy.compat32)


def is_protected(message: bytes) -> bool:
    """Whether ``message`` carries the marker of a Sceau-protected message."""
    fields, _, _ = split_fields(message)
    return any(_field_name(f) == MARKER_FIELD.lower() for f in fields)


# --- attachments in a MIME body --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Attachment:
    start: int  # span of the encoded body in the entity bytes
    end: int
    name: str
    cte: str


def _is_attachment(headers: Message) -> bool:
    if headers.get_content_maintype() == "multipart":
        return False
    if headers.get_content_disposition() == "attachment":
        return True
    return bool(headers.get_filename()) and headers.get_content_maintype() not in (
        "text", "message")


def _attachments(entity: bytes, base: int = 0) -> list[_Attachment]:
    """Attachment body spans of a MIME entity (headers, blank line, body), recursively."""
    fields, sep, body = split_fields(entity)
    body_at = base + len(entity) - len(body)
    headers = _headers(fields)
    if headers.get_content_maintype() == "multipart":
        boundary = headers.get_boundary()
        if not boundary:
            return []
        found: list[_Attachment] = []
        for start, end in _parts(body, boundary.encode("ascii", "replace")):
            found += _attachments(body[start:end], body_at + start)
        return found
    if sep and _is_attachment(headers):
        cte = str(headers.get("Content-Transfer-Encoding", "7bit")).strip().lower()
        return [_Attachment(body_at, base + len(entity), headers.get_filename() or "", cte)]
    return []


def _parts(body: bytes, boundary: bytes) -> list[tuple[int, int]]:
    """Spans of the parts of a multipart body. The line end before a delimiter line belongs
    to the delimiter (RFC 2046 §5.1.1), so it is not part of the span."""
    delimiter = b"--" + boundary
    spans: list[tuple[int, int]] = []
    start: int | None = None
    pos = 0
    for line in _lines(body):
        bare = line.rstrip(b"\r\n").rstrip(b" \t")
        if bare in (delimiter, delimiter + b"--"):
            if start is not None:
                end = pos
                if body[end - 2:end] == b"\r\n":
                    end -= 2
                elif body[end - 1:end] == b"\n":
                    end -= 1
                spans.append((start, max(start, end)))
            if bare.endswith(b"--") and bare != delimiter:
                return spans
            start = pos + len(line)
        pos += len(line)
    return spans  # no closing delimiter: the last part stays in the skeleton


def _base64_lines(data: bytes, width: int, eol: bytes) -> bytes:
    text = base64.b64encode(data)
    return eol.join(text[i:i + width] for i in range(0, len(text), width))


def _decode(raw: bytes, cte: str) -> tuple[bytes, dict[str, Any]]:
    """The attachment's bytes, and how to re-encode them exactly into ``raw``."""
    if cte == "base64":
        try:
            data = binascii.a2b_base64(raw)
        except binascii.Error:
            data = None
        if data is not None:
            first = _lines(raw)[0] if raw else b""
            eol = b"\r\n" if first.endswith(b"\r\n") else b"\n"
            width = len(first.rstrip(b"\r\n")) or _B64_LINE
            encoded = _base64_lines(data, width, eol)
            for trail in (False, True):
                if encoded + (eol if trail else b"") == raw:
                    return data, {"cte": "base64", "line": width, "eol": eol.decode(),
                                  "trail": trail}
            return data, {"cte": "raw", "raw": b64u_encode(raw)}
        return raw, {"cte": "raw", "raw": b64u_encode(raw)}
    if cte in ("7bit", "8bit", "binary"):
        return raw, {"cte": "identity"}
    if cte == "quoted-printable":
        return quopri.decodestring(raw), {"cte": "raw", "raw": b64u_encode(raw)}
    return raw, {"cte": "identity"}


def _encode(data: bytes, encoding: dict[str, Any]) -> bytes:
    cte = encoding.get("cte")
    if cte == "base64":
        eol = str(encoding["eol"]).encode()
        return _base64_lines(data, int(encoding["line"]), eol) + (eol if encoding["trail"] else b"")
    if cte == "identity":
        return data
    if cte == "raw":
        return b64u_decode(str(encoding["raw"]))
    raise InvalidRequest("protected message has an unknown attachment encoding")


# --- protect ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProtectedMail:
    """A protected message and what was decided for it."""

    message: bytes
    key_id: str
    sender: str
    recipients: tuple[str, ...]
    attachments: tuple[str, ...]


def _attachment_name(name: str, index: int) -> str:
    try:
        check_file_name(name)
    except InvalidRequest:
        return f"attachment-{index + 1}"
    return name


def _sceau_part(name: str, sealed: bytes, eol: bytes) -> bytes:
    part = EmailMessage(policy=email.policy.default.clone(linesep=eol.decode()))
    part.set_content(sealed, maintype="application", subtype="vnd.sceau",
                     filename=name + ".sceau")
    del part["MIME-Version"]
    return part.as_bytes()


def protect_message(keys: KeySource, message: bytes, *, protect_subject: bool = False,
                    extra_recipients: Iterable[str] = (), require_sender: str | None = None,
                    **key_options: Any) -> ProtectedMail:
    """Protect a whole message under one new key owned by its sender.

    The header is read once, strictly, by :func:`sceau.connectors.mime.parse_header` and
    :func:`~sceau.connectors.mime.participants` (a message that could be read another way
    raises :class:`~sceau.connectors.mime.MalformedMessage`): the owner is the one From
    address, the key's recipients are the To, Cc and Bcc addresses plus
    ``extra_recipients`` (a relay's envelope recipients). The key source must be allowed to
    act for the owner. ``require_sender`` (the relay's authenticated login) must then be
    that very owner, compared without case, or :class:`SenderNotAllowed` is raised before
    any service call: the check and the owner come from one parse. ``key_options`` go to
    ``generate-data-key``.
    """
    header = parse_header(message)
    who = participants(header, require_sender=require_sender)
    if any(f.name == MARKER_FIELD.lower() for f in header.fields):
        raise InvalidRequest("the message is already protected")
    sender = who.sender
    recipients = list(who.recipients)
    seen = {sender.lower(), *(r.lower() for r in recipients)}
    for address in extra_recipients:
        if "@" in address and address.lower() not in seen:
            seen.add(address.lower())
            recipients.append(address)
    fields = [f.raw for f in header.fields]
    sep, body, eol = header.separator, header.body, header.eol
    message_id = header.named("message-id")

    content_at = [i for i, f in enumerate(header.fields)
                  if f.name == "mime-version" or f.name.startswith("content-")]
    entity = b"".join(fields[i] for i in content_at) + (sep or eol) + body
    found = _attachments(entity)
    skeleton = bytearray()
    listed: list[dict[str, Any]] = []
    contents: list[tuple[str, bytes]] = []
    cursor = 0
    for index, att in enumerate(found):
        raw = entity[att.start:att.end]
        data, encoding = _decode(raw, att.cte)
        skeleton += entity[cursor:att.start]
        listed.append({"at": len(skeleton), "encoding": encoding,
                       "sha256": hashlib.sha256(raw).hexdigest()})
        contents.append((_attachment_name(att.name, index), data))
        cursor = att.end
    skeleton += entity[cursor:]

    subject_at = next((i for i, f in enumerate(header.fields) if f.name == "subject"), None)
    manifest = {
        "attachments": listed,
        "content_at": content_at,
        "fields": len(fields),
        "sep": sep.decode("ascii"),
        "subject": fields[subject_at].decode("latin-1")
        if protect_subject and subject_at is not None else None,
    }
    encoded = canonical_json(manifest)
    payload = _PAYLOAD_MAGIC + len(encoded).to_bytes(4, "big") + encoded + bytes(skeleton)

    options = {"name": (message_id[0].text() if message_id else "") or "mail message",
               **key_options}
    if recipients:
        options["recipients"] = recipients
    dk = keys.generate_data_key(user=sender, **options)
    key_id = b64u_decode(dk.key_id)
    block = armor(seal_gcm_with_token(dk.key, dk.token, dk.iv, payload, None))

    boundary = "=_sceau_" + os.urandom(12).hex()
    out = bytearray()
    for i, field in enumerate(fields):
        if i in content_at:
            continue
        if protect_subject and i == subject_at:
            out += b"Subject: " + PROTECTED_SUBJECT.encode() + eol
        else:
            out += field
    if protect_subject and subject_at is None:
        out += b"Subject: " + PROTECTED_SUBJECT.encode() + eol
    out += b"MIME-Version: 1.0" + eol
    out += f'Content-Type: multipart/mixed; boundary="{boundary}"'.encode() + eol
    out += f"{MARKER_FIELD}: protected; v=1".encode() + eol + eol
    delimiter = b"--" + boundary.encode()
    out += delimiter + eol
    out += b'Content-Type: text/plain; charset="us-ascii"' + eol
    out += b"Content-Transfer-Encoding: 7bit" + eol + b"Content-Disposition: inline" + eol + eol
    out += (NOTICE + "\n" + block).replace("\n", eol.decode()).encode("ascii")
    for name, data in contents:
        sealed = io.BytesIO()
        seal_file_stream(io.BytesIO(data), sealed, dk.key, key_id,
                         FileInfo(name=name, size=len(data), mtime=None))
        out += eol + delimiter + eol + _sceau_part(name, sealed.getvalue(), eol).rstrip(b"\r\n")
    out += eol + delimiter + b"--" + eol
    return ProtectedMail(bytes(out), dk.key_id, sender, tuple(recipients),
                         tuple(name for name, _ in contents))


# --- open ------------------------------------------------------------------------------------


def _protected_parts(message: bytes) -> tuple[bytes, list[bytes]]:
    """The armored envelope and the sealed attachments (in order) of a protected message."""
    parsed = email.message_from_bytes(message, policy=email.policy.compat32)
    envelope: bytes | None = None
    sealed: list[bytes] = []
    for part in parsed.walk():
        if part.is_multipart():
            continue
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes):
            continue
        if part.get_content_type() == SCEAU_MEDIA_TYPE:
            sealed.append(payload)
        elif part.get_content_type() == "text/plain" and envelope is None:
            blocks = find_armored(payload.decode("ascii", "replace"))
            if blocks:
                envelope = blocks[0][2]
    if envelope is None:
        raise InvalidRequest("no Sceau block in this message (is it protected?)")
    return envelope, sealed


def _manifest(payload: bytes) -> tuple[dict[str, Any], bytes]:
    if payload[:4] != _PAYLOAD_MAGIC or len(payload) < 8:
        raise InvalidRequest("the Sceau block is not a protected mail message")
    length = int.from_bytes(payload[4:8], "big")
    if length > min(_MAX_MANIFEST, len(payload) - 8):
        raise InvalidRequest("the Sceau block is not a protected mail message")
    try:
        manifest = json.loads(payload[8:8 + length])
    except ValueError:
        raise InvalidRequest("the Sceau block is not a protected mail message") from None
    if not isinstance(manifest, dict):
        raise InvalidRequest("the Sceau block is not a protected mail message")
    return manifest, payload[8 + length:]


def open_message(keys: KeySource, message: bytes, *, user: str | None = None) -> bytes:
    """Restore the original message from a protected one (``get-data-key`` as ``user``)."""
    envelope, sealed = _protected_parts(message)
    key_id = parse_unverified_header(envelope).key_id
    data_key = keys.get_data_key(b64u_encode(key_id), user=user)
    manifest, skeleton = _manifest(open_gcm(data_key, envelope, None))
    listed = manifest.get("attachments", [])
    if len(listed) != len(sealed):
        raise IntegrityFailure("the message's attachments do not match its Sceau block")

    entity = bytearray()
    cursor = 0
    for item, blob in zip(listed, sealed, strict=True):
        if read_stream_key_id(blob[:41]) != key_id:
            raise IntegrityFailure("an attachment is sealed under another key")
        plain = io.BytesIO()
        open_file_stream(io.BytesIO(blob), plain, data_key)
        raw = _encode(plain.getvalue(), item["encoding"])
        if hashlib.sha256(raw).hexdigest() != item["sha256"]:
            raise IntegrityFailure("an attachment does not match the message")
        at = int(item["at"])
        entity += skeleton[cursor:at] + raw
        cursor = at
    entity += skeleton[cursor:]

    content_fields, sep, body = split_fields(bytes(entity))
    kept = [f for f in split_fields(message)[0] if not _is_ours(f)]
    if manifest.get("subject") is not None:
        kept = _restore_subject(kept, str(manifest["subject"]).encode("latin-1"))
    total = int(manifest["fields"])
    content_at = [int(i) for i in manifest["content_at"]]
    original_kept = total - len(content_at)
    if len(kept) >= original_kept and len(content_fields) == len(content_at):
        # Fields added in transit sit on top; the original ones follow in their order.
        out = kept[: len(kept) - original_kept]
        rest = iter(kept[len(kept) - original_kept:])
        contents = iter(content_fields)
        for i in range(total):
            out.append(next(contents) if i in content_at else next(rest))
    else:
        out = kept + content_fields
    return b"".join(out) + str(manifest.get("sep", "")).encode("ascii") + body


def _restore_subject(fields: list[bytes], original: bytes) -> list[bytes]:
    for i, field in enumerate(fields):
        if _field_name(field) == "subject":
            return [*fields[:i], original, *fields[i + 1:]]
    return fields
