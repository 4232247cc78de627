"""An SMTP relay that protects marked messages in transit (aiosmtpd in, smtplib out).

A message is *marked* when it carries the marker header (default ``X-Sceau-Protect``,
removed) or the subject tag (default ``[secure]``, removed; also found in an RFC 2047
encoded subject). Marked messages are protected with
:func:`sceau.connectors.mail.protect_message` (key owned by the From address, recipients:
To, Cc, Bcc and every envelope recipient) and forwarded; unmarked ones are forwarded
unchanged.

One reading of the header: the marks, the sender check and the key owner all come from
:mod:`sceau.connectors.mime`, which refuses a header another parser could read otherwise
(``From :``, two ``From`` fields, ...). Such a message is refused with ``554 5.6.0``, marked
or not, since its marks cannot be read either.

Fail closed: a marked message that cannot be protected, for whatever reason, is refused
with ``554`` and never forwarded in clear. A next hop that is unreachable gives ``451``
(the sender retries); a next hop that refuses gives its own 5xx back.

Listening side: optional STARTTLS (then required before any mail command) and AUTH PLAIN
/ LOGIN, offered only over TLS, checked against a file of ``user:argon2-hash`` lines. AUTH
is required to listen on anything but a loopback address. When AUTH is on and the login is
an address, the message's From must be that address (``550``): an authenticated user
cannot create keys owned by someone else.

Sending side: STARTTLS whenever the next hop offers it, its certificate verified against
the system store or a given CA file. A certificate that does not verify is a ``451``, never
a fallback to plain text: the operator fixes the CA file and the sender's retry goes
through. A next hop that does not offer STARTTLS gets plain SMTP unless TLS is required.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import smtplib
import ssl
import threading
from dataclasses import dataclass
from email.header import Header as EmailHeader
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from sceau.connectors.files import KeySource
from sceau.connectors.mail import MARKER_FIELD, protect_message
from sceau.connectors.mime import (
    Field,
    MalformedMessage,
    SenderNotAllowed,
    decode_unstructured,
    parse_header,
    participants,
)
from sceau.errors import BadCredentials, ConfigError

__all__ = [
    "DEFAULT_HEADER",
    "DEFAULT_TAG",
    "Credentials",
    "ProtectingHandler",
    "Relay",
    "client_tls_context",
    "hash_password",
    "is_loopback",
    "mark_of",
    "server_tls_context",
]

log = logging.getLogger("sceau.relay")

DEFAULT_TAG = "[secure]"
DEFAULT_HEADER = "X-Sceau-Protect"
_REFUSED = "554 5.7.1 Message could not be protected; it was not forwarded"
_MALFORMED = "554 5.6.0 Message refused, it was not forwarded: {}"
_NEXT_HOP_DOWN = "451 4.4.1 Next hop unavailable; try again later"
_NEXT_HOP_TLS_FAILED = "451 4.7.5 Next hop TLS failed; try again later"
_NEXT_HOP_NO_TLS = "451 4.7.4 Next hop does not offer STARTTLS; try again later"
_FROM_MISMATCH = "550 5.7.1 From address does not match the authenticated user"


def hash_password(password: str) -> str:
    """An argon2id hash for a line ``user:HASH`` of the credentials file."""
    return PasswordHasher().hash(password)


class Credentials:
    """Users allowed to relay: a file of ``user:argon2-hash`` lines (``#`` comments)."""

    def __init__(self, users: dict[str, str]) -> None:
        self._users = users
        self._hasher = PasswordHasher()
        # Unknown users are checked against a real hash too, so timing does not tell
        # whether a user name exists.
        self._dummy = self._hasher.hash("not a password")

    @classmethod
    def load(cls, path: Path) -> Credentials:
        users: dict[str, str] = {}
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            user, sep, hashed = line.partition(":")
            if not sep or not user or not hashed.startswith("$argon2"):
                raise ConfigError(f"{path}:{number}: expected user:argon2-hash")
            users[user] = hashed
        return cls(users)

    def check(self, user: str, password: str) -> None:
        """Raise :class:`BadCredentials` unless ``user`` exists and ``password`` is theirs;
        one argon2 verification whichever the outcome."""
        hashed = self._users.get(user)
        try:
            self._hasher.verify(hashed or self._dummy, password)
        except (VerificationError, InvalidHashError):
            raise BadCredentials("wrong password") from None
        if hashed is None:
            raise BadCredentials("no such user")

    def __call__(self, server: Any, session: Any, envelope: Any, mechanism: str,
                 auth_data: Any) -> AuthResult:
        """aiosmtpd authenticator: PLAIN and LOGIN only (aiosmtpd offers them over TLS)."""
        if mechanism not in ("PLAIN", "LOGIN") or not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        user = auth_data.login.decode("utf-8", "replace")
        try:
            self.check(user, auth_data.password.decode("utf-8", "replace"))
        except BadCredentials:
            return AuthResult(success=False, handled=False)
        return AuthResult(success=True, auth_data=user)


def _untag(field: Field, tag: str, eol: bytes) -> tuple[bool, bytes]:
    """Whether the Subject ``field`` holds ``tag`` (any case), and the field without it.

    The raw bytes are searched first, so the usual plain subject keeps its bytes. A tag a
    mail client put inside an encoded-word (``=?UTF-8?Q?=5Bsecure=5D_R=C3=A9sum=C3=A9?=``,
    the whole subject encoded for one accent) is found in the decoded text; the field is
    then written anew, encoded again if it is not ASCII.
    """
    name = field.raw[: len(field.name) + 1]  # "Subject:" as written (no space before ':')
    value = field.raw[len(name):]
    raw_tag = re.compile(rb" ?" + re.escape(tag.encode()), re.IGNORECASE)
    if raw_tag.search(value):
        return True, name + raw_tag.sub(b"", value, count=1)
    text = decode_unstructured(field)
    text_tag = re.compile(" ?" + re.escape(tag), re.IGNORECASE)
    if not text_tag.search(text):
        return False, field.raw
    text = text_tag.sub("", text, count=1).strip()
    if text.isascii() and "=?" not in text:
        return True, name + b" " + text.encode("ascii") + eol
    encoded = EmailHeader(text, "utf-8", header_name="Subject").encode(linesep=eol.decode())
    return True, name + b" " + encoded.encode("ascii") + eol


def mark_of(message: bytes, *, tag: str | None, header: str | None) -> tuple[bool, bytes]:
    """Whether ``message`` asks for protection, and the message with the marks removed.

    The header is read by :func:`sceau.connectors.mime.parse_header`: a header it refuses
    raises :class:`~sceau.connectors.mime.MalformedMessage`, since its marks cannot be
    read one way only either.
    """
    parsed = parse_header(message)
    marked = False
    kept: list[bytes] = []
    wanted = header.lower() if header else None
    for field in parsed.fields:
        if wanted is not None and field.name == wanted:
            marked = True
            continue
        raw = field.raw
        if tag and field.name == "subject":
            tagged, raw = _untag(field, tag, parsed.eol)
            marked = marked or tagged
        kept.append(raw)
    return marked, b"".join(kept) + parsed.separator + parsed.body


def client_tls_context(ca_file: Path | None) -> ssl.SSLContext:
    """TLS 1.2+ client context for STARTTLS to the next hop: certificate and host name
    verified against ``ca_file`` alone when given, else the system's trust store."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class _NextHopWithoutTLS(Exception):
    """The next hop offers no STARTTLS and the relay requires it."""


class ProtectingHandler:
    """aiosmtpd handler: protect marked messages, forward everything to the next hop.

    ``next_hop_tls``: the context for STARTTLS to the next hop, from
    :func:`client_tls_context` (``None``: the system store, verified).
    ``require_next_hop_tls``: refuse (``451``) to forward over plain SMTP when the
    next hop does not offer STARTTLS; without it, STARTTLS is used whenever offered, which
    an active attacker between the two can suppress.
    """

    def __init__(self, keys: KeySource, next_hop: tuple[str, int], *,
                 tag: str | None = DEFAULT_TAG, header: str | None = DEFAULT_HEADER,
                 protect_subject: bool = False, timeout: float = 60.0,
                 next_hop_tls: ssl.SSLContext | None = None,
                 require_next_hop_tls: bool = False) -> None:
        self._keys = keys
        self._protect_subject = protect_subject
        self._next_hop = next_hop
        self._next_hop_tls = next_hop_tls or client_tls_context(None)
        self._require_next_hop_tls = require_next_hop_tls
        self._tag = tag
        self._header = header
        self._timeout = timeout
        # The SDK client is shared; one protection at a time keeps it simple and safe.
        self._lock = threading.Lock()

    def _protect(self, message: bytes, rcpt_tos: list[str], login: str | None) -> bytes:
        # The sender check first, on the reading protect_message makes of the same bytes:
        # it also covers a message that is already protected and forwarded as it is.
        header = parse_header(message)
        participants(header, require_sender=login)
        if any(f.name == MARKER_FIELD.lower() for f in header.fields):
            return message
        with self._lock:
            return protect_message(self._keys, message, extra_recipients=rcpt_tos,
                                   protect_subject=self._protect_subject,
                                   require_sender=login).message

    def _forward(self, mail_from: str, rcpt_tos: list[str], message: bytes) -> None:
        host, port = self._next_hop
        with smtplib.SMTP(host, port, timeout=self._timeout) as smtp:
            smtp.ehlo_or_helo_if_needed()
            if smtp.has_extn("starttls"):
                # Verified against the host name given as the next hop; a failure raises
                # ssl.SSLError and nothing is sent.
                smtp.starttls(context=self._next_hop_tls)
            elif self._require_next_hop_tls:
                raise _NextHopWithoutTLS
            smtp.sendmail(mail_from, rcpt_tos, message)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        """Called by aiosmtpd once a message is received: answer with the SMTP reply."""
        loop = asyncio.get_running_loop()
        content = envelope.original_content or envelope.content
        if not isinstance(content, bytes):
            content = str(content).encode("utf-8", "surrogateescape")
        try:
            marked, cleaned = mark_of(content, tag=self._tag, header=self._header)
        except MalformedMessage as exc:
            log.warning("message from %s refused: %s", envelope.mail_from, exc.detail)
            return _MALFORMED.format(exc.detail)
        outgoing = content
        if marked:
            login = session.auth_data if session.authenticated else None
            bound = login if isinstance(login, str) and "@" in login else None
            try:
                outgoing = await loop.run_in_executor(
                    None, self._protect, cleaned, list(envelope.rcpt_tos), bound)
            except SenderNotAllowed:
                return _FROM_MISMATCH
            except MalformedMessage as exc:
                log.warning("message from %s refused: %s", envelope.mail_from, exc.detail)
                return _MALFORMED.format(exc.detail)
            # Fail closed on anything at all: a marked message must never leave in clear.
            except Exception as exc:  # noqa: BLE001
                log.warning("message from %s not protected: %s", envelope.mail_from,
                            type(exc).__name__)
                return _REFUSED
        try:
            await loop.run_in_executor(None, self._forward, envelope.mail_from,
                                       list(envelope.rcpt_tos), outgoing)
        except smtplib.SMTPResponseException as exc:
            if 500 <= exc.smtp_code < 600:
                text = exc.smtp_error
                if isinstance(text, bytes):
                    text = text.decode("utf-8", "replace")
                return f"{exc.smtp_code} {text}"
            return _NEXT_HOP_DOWN
        except smtplib.SMTPRecipientsRefused:
            return "550 5.1.1 Recipients refused by the next hop"
        except _NextHopWithoutTLS:
            log.warning("next hop %s:%d offers no STARTTLS and TLS is required", *self._next_hop)
            return _NEXT_HOP_NO_TLS
        except ssl.SSLError as exc:
            log.warning("next hop %s:%d: TLS failed (%s); if its certificate is right, give "
                        "its CA with --next-hop-ca", *self._next_hop, exc)
            return _NEXT_HOP_TLS_FAILED
        except (smtplib.SMTPException, OSError):
            return _NEXT_HOP_DOWN
        return "250 2.0.0 OK" + (" (protected)" if marked else "")


def server_tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    """TLS 1.2+ server context for STARTTLS from a PEM certificate and key."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context


def is_loopback(host: str) -> bool:
    """Whether ``host`` is ``localhost`` or a loopback address (an empty host, like any
    other name, is not: it may listen on every interface)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class Relay:
    """A running relay (a thread with its own event loop), started by :meth:`start`."""

    handler: ProtectingHandler
    host: str
    port: int
    tls: ssl.SSLContext | None = None
    credentials: Credentials | None = None
    _controller: Controller | None = None

    def start(self) -> None:
        """Listen; STARTTLS required when a TLS context is given, AUTH when credentials are.

        An open relay that creates keys in anyone's name is not something to expose: off a
        loopback address, AUTH (hence STARTTLS) is required.
        """
        if self.credentials is None and not is_loopback(self.host):
            raise ConfigError(f"listening on {self.host or 'every interface'!r}, not a loopback "
                              "address, needs AUTH: give a users file (--users)")
        if self.credentials is not None and self.tls is None:
            raise ConfigError("AUTH needs STARTTLS: give a TLS certificate and key")
        kwargs: dict[str, Any] = {}
        if self.tls is not None:
            kwargs.update(tls_context=self.tls, require_starttls=True)
        if self.credentials is not None:
            kwargs.update(authenticator=self.credentials, auth_required=True,
                          auth_require_tls=True)
        self._controller = Controller(self.handler, hostname=self.host, port=self.port,
                                      **kwargs)
        self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None
