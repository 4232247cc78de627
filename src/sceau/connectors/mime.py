"""The one strict reading of a message's header section (RFC 5322 §2.2, §3.4, §3.6).

Every decision about who a message is from and who it is for is taken from
:func:`parse_header` and :func:`participants`, and from nothing else: the key owner and
recipients in :func:`sceau.connectors.mail.protect_message`, the relay's check that From is
the authenticated user, and the relay's marks. Two parsers that read one message
differently are an attack (SECURITY-CASES 50: ``From : alice`` before ``From: victim``
passed a sender check as alice while the key went to victim), so this reading refuses,
with :class:`MalformedMessage`, whatever another reasonable parser could read otherwise:

- a header line that is neither ``Name:`` (printable ASCII, nothing between the name and
  the colon: the obsolete ``Name :`` of RFC 5322 §4.5 is refused) nor a folded
  continuation; a continuation first; a line of only spaces (some parsers end the header
  there);
- NUL and other control characters, a bare CR, line ends that change inside the header;
- (:func:`participants`) zero or several ``From`` fields, a ``From`` that is not exactly one
  mailbox, several of a field that RFC 5322 §3.6 allows once (``To``, ``Subject``, ...);
  non-ASCII bytes in an address field; quoted local parts, domain literals, source routes,
  comments or spaces inside an address; an encoded-word (RFC 2047) inside an address, one
  that does not decode, or one that decodes to ``@``, ``<``, ``>`` or a control character.

Field names compare case-insensitively (``FROM:`` is ``From:``, RFC 5322 §1.2.2). The body,
everything after the first empty line, is never read for fields.

Error details are fixed texts: they never quote the message, so they are safe to put in an
SMTP reply. This module does no I/O.
"""

from __future__ import annotations

import base64
import binascii
import re
import unicodedata
from dataclasses import dataclass

from sceau.errors import InvalidRequest, UserNotAllowed

__all__ = [
    "Field",
    "Header",
    "MalformedMessage",
    "Participants",
    "SenderNotAllowed",
    "decode_unstructured",
    "parse_header",
    "participants",
    "split_fields",
]


class MalformedMessage(InvalidRequest):
    """The message's header cannot be read one way only: nothing is done with it."""


class SenderNotAllowed(UserNotAllowed):
    """The message's From is not the one address the caller may send as."""


# --- the header section ----------------------------------------------------------------------


def split_fields(message: bytes) -> tuple[list[bytes], bytes, bytes]:
    """Split a message into raw header fields (folding and line ends kept), the blank
    separator line (``b""`` if none) and the body, so that they concatenate back to it.

    This is the structural split alone, with no checks: :func:`parse_header` runs it and
    then refuses anything ambiguous. Use it directly only for MIME entities inside a body
    and for messages Sceau itself made.
    """
    fields: list[bytes] = []
    pos = 0
    for line in message.splitlines(keepends=True):
        if line in (b"\r\n", b"\n"):
            return fields, line, message[pos + len(line):]
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line
        else:
            fields.append(line)
        pos += len(line)
    return fields, b"", b""


@dataclass(frozen=True, slots=True)
class Field:
    """One header field: its lower-case name, its bytes as in the message (folding and line
    end kept) and its unfolded value (after the colon, line end removed)."""

    name: str
    raw: bytes
    value: bytes

    def text(self) -> str:
        """The value for display and key names: UTF-8 (RFC 6532), stripped; never used to
        decide who a message is from or for."""
        return self.value.decode("utf-8", "replace").strip()


@dataclass(frozen=True, slots=True)
class Header:
    """A message split at its first empty line, every header field checked."""

    fields: tuple[Field, ...]
    eol: bytes
    separator: bytes
    body: bytes

    def named(self, name: str) -> tuple[Field, ...]:
        """Every field called ``name`` (any case), in order."""
        wanted = name.lower()
        return tuple(f for f in self.fields if f.name == wanted)


# A field name is printable ASCII except the colon, and the colon follows it at once.
_FIELD_NAME = re.compile(rb"[\x21-\x39\x3b-\x7e]+:")
# Control characters other than TAB, once line ends are taken off.
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_BARE_CR = re.compile(rb"\r(?!\n)")


def _eol(line: bytes) -> bytes:
    if line.endswith(b"\r\n"):
        return b"\r\n"
    return b"\n" if line.endswith(b"\n") else b""


def parse_header(message: bytes) -> Header:
    """Split ``message`` into checked header fields, the empty line and the body.

    Raises :class:`MalformedMessage` for any line that is not a field or a continuation, a
    space before a field's colon, control characters, a bare CR or mixed line ends in the
    header. Says nothing yet about which fields are there: see :func:`participants`.
    """
    raw_fields, separator, body = split_fields(message)
    head = message[: len(message) - len(body) - len(separator)]
    if _BARE_CR.search(head):
        raise MalformedMessage("the message header has a bare CR")
    lines = head.splitlines(keepends=True)
    eol = _eol(lines[0]) if lines else _eol(separator)
    eol = eol or b"\r\n"
    for line in lines[:-1]:
        if _eol(line) != eol:
            raise MalformedMessage("the message header mixes CRLF and LF line ends")
    if lines and _eol(lines[-1]) not in (eol, b""):
        raise MalformedMessage("the message header mixes CRLF and LF line ends")
    if separator and separator != eol:
        raise MalformedMessage("the message header mixes CRLF and LF line ends")

    fields: list[Field] = []
    for raw in raw_fields:
        parts = [line[: len(line) - len(_eol(line))] for line in raw.splitlines(keepends=True)]
        for part in parts:
            if _CONTROL.search(part):
                raise MalformedMessage("the message header has a NUL or control character")
        if parts[0][:1] in (b" ", b"\t"):
            raise MalformedMessage("the message header starts with a folded line")
        if any(not part.strip(b" \t") for part in parts[1:]):
            raise MalformedMessage("the message header has a line of only spaces")
        name = _FIELD_NAME.match(parts[0])
        if name is None:
            before = parts[0].partition(b":")[0]
            if b":" in parts[0] and before.rstrip(b" \t") != before:
                raise MalformedMessage(
                    "a header field has a space before its colon (obsolete syntax, refused)")
            raise MalformedMessage("the message header has a line that is not a field")
        value = b"".join(parts)[name.end():]
        fields.append(Field(name.group()[:-1].decode("ascii").lower(), raw, value))
    return Header(tuple(fields), eol, separator, body)


# --- addresses -----------------------------------------------------------------------------


class _Syntax(Exception):
    """An address field that does not parse; the field's name is added by the caller."""


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # "atom", "quoted", or one of the specials < > : ; @ , .
    text: str
    spaced: bool  # whitespace or a comment came right before it


_ATEXT = re.compile(r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+")
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?")
_SPECIALS = "<>:;@,."
_MAX_COMMENT_DEPTH = 8


def _skip_comment(text: str, at: int) -> int:
    """The index after the comment that starts at ``text[at]`` (nested, with quoted pairs)."""
    depth = 0
    while at < len(text):
        char = text[at]
        if char == "\\":
            at += 2
            continue
        if char == "(":
            depth += 1
            if depth > _MAX_COMMENT_DEPTH:
                raise _Syntax("has comments nested too deep")
        elif char == ")":
            depth -= 1
            if depth == 0:
                return at + 1
        at += 1
    raise _Syntax("has a comment that is not closed")


def _quoted(text: str, at: int) -> tuple[str, int]:
    """The content of the quoted string at ``text[at]`` and the index after it."""
    out: list[str] = []
    at += 1
    while at < len(text):
        char = text[at]
        if char == "\\":
            if at + 1 >= len(text):
                break
            out.append(text[at + 1])
            at += 2
        elif char == '"':
            return "".join(out), at + 1
        else:
            out.append(char)
            at += 1
    raise _Syntax("has a quoted string that is not closed")


def _tokens(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    at = 0
    spaced = False
    while at < len(text):
        char = text[at]
        if char in " \t":
            spaced, at = True, at + 1
            continue
        if char == "(":
            spaced, at = True, _skip_comment(text, at)
            continue
        if char == '"':
            content, at = _quoted(text, at)
            tokens.append(_Token("quoted", content, spaced))
        elif char in _SPECIALS:
            tokens.append(_Token(char, char, spaced))
            at += 1
        elif (atom := _ATEXT.match(text, at)) is not None:
            tokens.append(_Token("atom", atom.group(), spaced))
            at = atom.end()
        else:
            # '[' (domain literal), '\' outside quotes, a stray ')'.
            raise _Syntax("holds a character not allowed outside quotes")
        spaced = False
    return tokens


class _Reader:
    """Recursive descent over the tokens of one address field (RFC 5322 §3.4, without the
    obsolete forms and with stricter addresses: see the module docstring)."""

    def __init__(self, tokens: list[_Token]) -> None:
        self.tokens = tokens
        self.at = 0

    def kind(self, offset: int = 0) -> str | None:
        at = self.at + offset
        return self.tokens[at].kind if at < len(self.tokens) else None

    def address_list(self, *, groups: bool) -> list[str]:
        found: list[str] = []
        while self.kind() is not None:
            if self.kind() == ",":  # an empty element (obs-addr-list): nothing hides in it
                self.at += 1
                continue
            found += self.address(groups=groups)
            if self.kind() not in (None, ","):
                raise _Syntax("has text after an address")
            if self.kind() == ",":
                self.at += 1
        return found

    def address(self, *, groups: bool) -> list[str]:
        start = self.at
        phrase: list[_Token] = []
        while self.kind() in ("atom", "quoted", "."):
            phrase.append(self.tokens[self.at])
            self.at += 1
        if phrase and phrase[0].kind == ".":
            raise _Syntax("has a display name that starts with a dot")
        following = self.kind()
        if following == "<":
            return [self.angle_addr()]
        if following == ":":
            if not groups:
                raise _Syntax("holds a group, which is not allowed there")
            if not phrase:
                raise _Syntax("holds a group without a name")
            return self.group()
        if following == "@":
            self.at = start
            return [self.addr_spec()]
        raise _Syntax("holds something that is not an address")

    def group(self) -> list[str]:
        self.at += 1  # ':'
        members: list[str] = []
        while True:
            kind = self.kind()
            if kind is None:
                raise _Syntax("has a group not closed with ';'")
            if kind == ";":
                self.at += 1
                return members
            if kind == ",":
                self.at += 1
                continue
            members += self.address(groups=False)
            if self.kind() not in (",", ";", None):
                raise _Syntax("has text after an address")

    def angle_addr(self) -> str:
        self.at += 1  # '<'
        if self.kind() == "@":
            raise _Syntax("holds a source route")
        address = self.addr_spec()
        if self.kind() != ">":
            raise _Syntax("has an address in <> that is not closed")
        self.at += 1
        return address

    def dot_atom(self, *, spaced_ok: bool) -> str:
        token = self.tokens[self.at] if self.kind() is not None else None
        if token is None or token.kind != "atom":
            if token is not None and token.kind == "quoted":
                raise _Syntax("holds a quoted local part, which Sceau does not accept")
            raise _Syntax("holds an address with an empty part")
        if token.spaced and not spaced_ok:
            raise _Syntax("has a space or comment inside an address")
        parts = [token.text]
        self.at += 1
        while self.kind() == ".":
            dot = self.tokens[self.at]
            after = self.tokens[self.at + 1] if self.kind(1) is not None else None
            if after is None or after.kind != "atom":
                raise _Syntax("holds an address with an empty part")
            if dot.spaced or after.spaced:
                raise _Syntax("has a space or comment inside an address")
            parts.append(after.text)
            self.at += 2
        return ".".join(parts)

    def addr_spec(self) -> str:
        local = self.dot_atom(spaced_ok=True)  # a space may come before an address
        if self.kind() != "@":
            raise _Syntax("holds something that is not an address")
        if self.tokens[self.at].spaced:
            raise _Syntax("has a space or comment inside an address")
        self.at += 1
        domain = self.dot_atom(spaced_ok=False)
        if not all(_LABEL.fullmatch(label) for label in domain.split(".")):
            raise _Syntax("holds a domain that is not letters, digits and hyphens")
        if "=?" in local:
            raise _Syntax("holds an encoded-word (RFC 2047) inside an address")
        return f"{local}@{domain}"


# Deliberately loose (any charset, any encoding letter, any text up to the first "?="), so
# that anything a lenient decoder would decode is looked at.
_ENCODED_WORD = re.compile(r"=\?([^?]*)\?([^?]*)\?(.*?)\?=", re.DOTALL)
_Q_ESCAPE = re.compile(r"=([0-9A-Fa-f]{2})")


def _word_bytes(encoding: str, text: str) -> bytes:
    if encoding in ("q", "Q"):
        if "=" in _Q_ESCAPE.sub("", text):
            raise _Syntax("has an encoded-word that does not decode")
        unescaped = _Q_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), text.replace("_", " "))
        return unescaped.encode("latin-1")
    if encoding in ("b", "B"):
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise _Syntax("has an encoded-word that does not decode") from None
    raise _Syntax("has an encoded-word that does not decode")


def _decode_word(charset: str, encoding: str, text: str) -> tuple[bytes, str]:
    """The bytes an encoded-word carries and their text in its charset (RFC 2231's
    ``*language`` suffix dropped)."""
    data = _word_bytes(encoding, text)
    try:
        return data, data.decode(charset.partition("*")[0] or "?")
    except (LookupError, ValueError):
        raise _Syntax("has an encoded-word that does not decode") from None


def _check_encoded_words(text: str) -> None:
    """Refuse an encoded-word that a decoder could turn into another address.

    Sceau never decodes address fields before reading them (RFC 2047 §5 allows encoded-words
    only in display names and comments), but a reader that does must not see an address
    where Sceau sees a name: so what the word decodes to, as bytes, in its charset, and
    after NFKC normalization, may hold no ``@``, ``<``, ``>`` nor control character.
    """
    for word in _ENCODED_WORD.finditer(text):
        data, decoded = _decode_word(*word.groups())
        for view in (data.decode("latin-1"), decoded, unicodedata.normalize("NFKC", decoded)):
            if any(c in "@<>" or unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in view):
                raise _Syntax("has an encoded-word that decodes to an address or a control "
                              "character")


def decode_unstructured(field: Field) -> str:
    """The text of an unstructured field (``Subject``) as a mail client shows it: raw bytes
    as UTF-8 (RFC 6532), encoded-words decoded, the space between two of them dropped (RFC
    2047 §6.2). An encoded-word that does not decode raises :class:`MalformedMessage`: the
    relay looks for its subject tag in this text, and cannot say a message is unmarked
    when it cannot read the subject."""
    text = field.value.decode("utf-8", "replace")
    out: list[str] = []
    end = 0
    for word in _ENCODED_WORD.finditer(text):
        between = text[end:word.start()]
        if end == 0 or between.strip(" \t"):
            out.append(between)
        try:
            out.append(_decode_word(*word.groups())[1])
        except _Syntax as exc:
            raise MalformedMessage(f"the {_ONCE.get(field.name, field.name)} field {exc}") \
                from None
        end = word.end()
    out.append(text[end:])
    return "".join(out)


# The fields RFC 5322 §3.6 allows at most once (From exactly once), with their usual spelling.
_ONCE = {
    "from": "From", "sender": "Sender", "reply-to": "Reply-To", "to": "To", "cc": "Cc",
    "bcc": "Bcc", "subject": "Subject", "message-id": "Message-ID", "date": "Date",
    "in-reply-to": "In-Reply-To", "references": "References",
}
_RECIPIENT_FIELDS = ("to", "cc", "bcc")


def _field_addresses(field: Field, *, single: bool) -> list[str]:
    title = _ONCE.get(field.name, field.name)
    try:
        try:
            text = field.value.decode("ascii")
        except UnicodeDecodeError:
            raise _Syntax("has non-ASCII bytes (encode display names as RFC 2047 words; "
                          "internationalized addresses are not supported)") from None
        _check_encoded_words(text)
        reader = _Reader(_tokens(text))
        if single:
            found = [] if reader.kind() is None else reader.address(groups=False)
            if reader.kind() is not None or len(found) != 1:
                raise _Syntax("must hold exactly one address")
            return found
        return reader.address_list(groups=True)
    except _Syntax as exc:
        raise MalformedMessage(f"the {title} field {exc}") from None


@dataclass(frozen=True, slots=True)
class Participants:
    """Who a message is from (the one ``From`` mailbox) and for (``To``, ``Cc``, ``Bcc``,
    groups opened, each address once, the sender left out)."""

    sender: str
    recipients: tuple[str, ...]


def participants(header: Header, *, require_sender: str | None) -> Participants:
    """The message's one sender and its recipients, or :class:`MalformedMessage`.

    The sender becomes a key's owner and is what the relay compares with its login, so the
    rules are those of RFC 5322 §3.6 with nothing obsolete: exactly one ``From`` field
    holding exactly one mailbox; at most one ``Sender`` (one mailbox), ``To``, ``Cc``,
    ``Bcc``, ``Subject``, ... ``require_sender`` (required, may be ``None``) is the one
    address the caller may send as: any other sender, compared without case, raises
    :class:`SenderNotAllowed`, so a check and the key owner come from this one reading.
    """
    for name, title in _ONCE.items():
        if len(header.named(name)) > 1:
            raise MalformedMessage(f"the message has several {title} fields")
    froms = header.named("from")
    if not froms:
        raise MalformedMessage("the message has no From field (its address becomes the key's "
                               "owner)")
    [sender] = _field_addresses(froms[0], single=True)
    if require_sender is not None and sender.lower() != require_sender.lower():
        raise SenderNotAllowed("the From address is not the authenticated user")
    for field in header.named("sender"):
        _field_addresses(field, single=True)
    seen = {sender.lower()}
    recipients: list[str] = []
    for name in _RECIPIENT_FIELDS:
        for field in header.named(name):
            for address in _field_addresses(field, single=False):
                if address.lower() not in seen:
                    seen.add(address.lower())
                    recipients.append(address)
    return Participants(sender, tuple(recipients))
