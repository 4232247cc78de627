"""An SMTP relay that protects marked messages in transit (aiosmtpd in, smtplib out).

A message is *marked* when it carries the marker header (default ``X-Sceau-Protect``,
removed) or the subject tag (default ``[secure]``, removed). Marked messages are
protected with :func:`sceau.connectors.mail.protect_message` (key owned by the From
address, recipients: To, Cc, Bcc and every envelope recipient) and forwarded; unmarked
ones are forwarded unchanged.

Fail closed: a marked message that cannot be protected, for whatever reason, is refused
with ``554`` and never forwarded in clear. A next hop that is unreachable gives ``451``
(the sender retries); a next hop that refuses gives its own 5xx back.

Listening side: optional STARTTLS (then required before any mail command) and AUTH PLAIN
/ LOGIN, offered only over TLS, checked against a file of ``user:argon2-hash`` lines. When
AUTH is on and the login is an address, the message's From must be that address: an
authenticated user cannot create keys owned by someone else.
"""

from __future__ import annotations

import asyncio
import logging
import re
import smtplib
import ssl
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from email.utils import getaddresses
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from sceau.connectors.files import KeySource
from sceau.connectors.mail import is_protected, protect_message, split_fields
from sceau.errors import ConfigError

__all__ = [
    "DEFAULT_HEADER",
    "DEFAULT_TAG",
    "Credentials",
    "ProtectingHandler",
    "Relay",
    "hash_password",
    "mark_of",
]

log = logging.getLogger("sceau.relay")

DEFAULT_TAG = "[secure]"
DEFAULT_HEADER = "X-Sceau-Protect"
_REFUSED = "554 5.7.1 Message could not be protected; it was not forwarded"
_NEXT_HOP_DOWN = "451 4.4.1 Next hop unavailable; try again later"
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

    def check(self, user: str, password: str) -> bool:
        hashed = self._users.get(user)
        try:
            self._hasher.verify(hashed or self._dummy, password)
        except (VerificationError, InvalidHashError):
            return False
        return hashed is not None

    def __call__(self, server: Any, session: Any, envelope: Any, mechanism: str,
                 auth_data: Any) -> AuthResult:
        """aiosmtpd authenticator: PLAIN and LOGIN only (aiosmtpd offers them over TLS)."""
        if mechanism not in ("PLAIN", "LOGIN") or not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        user = auth_data.login.decode("utf-8", "replace")
        if self.check(user, auth_data.password.decode("utf-8", "replace")):
            return AuthResult(success=True, auth_data=user)
        return AuthResult(success=False, handled=False)


def mark_of(message: bytes, *, tag: str | None, header: str | None) -> tuple[bool, bytes]:
    """Whether ``message`` asks for protection, and the message with the marks removed."""
    fields, sep, body = split_fields(message)
    marked = False
    kept: list[bytes] = []
    wanted = header.lower().encode() if header else None
    for field in fields:
        name = field.split(b":", 1)[0].strip().lower()
        if wanted is not None and name == wanted:
            marked = True
            continue
        if tag and name == b"subject":
            pattern = re.compile(rb" ?" + re.escape(tag.encode()), re.IGNORECASE)
            value = field[len(b"subject:"):]
            if pattern.search(value):
                marked = True
                value = pattern.sub(b"", value, count=1)
                field = field[: len(b"subject:")] + value
        kept.append(field)
    return marked, b"".join(kept) + sep + body


def _from_address(message: bytes) -> str | None:
    fields, _, _ = split_fields(message)
    values = [f.split(b":", 1)[1].decode("utf-8", "replace") for f in fields
              if f.split(b":", 1)[0].strip().lower() == b"from" and b":" in f]
    found = [addr for _, addr in getaddresses(values) if "@" in addr]
    return found[0] if found else None


class ProtectingHandler:
    """aiosmtpd handler: protect marked messages, forward everything to the next hop."""

    def __init__(self, keys: KeySource, next_hop: tuple[str, int], *,
                 tag: str | None = DEFAULT_TAG, header: str | None = DEFAULT_HEADER,
                 protect_subject: bool = False, timeout: float = 60.0) -> None:
        self._keys = keys
        self._protect_subject = protect_subject
        self._next_hop = next_hop
        self._tag = tag
        self._header = header
        self._timeout = timeout
        # The SDK client is shared; one protection at a time keeps it simple and safe.
        self._lock = threading.Lock()

    def _protect(self, message: bytes, rcpt_tos: Iterable[str]) -> bytes:
        with self._lock:
            return protect_message(self._keys, message, extra_recipients=rcpt_tos,
                                   protect_subject=self._protect_subject).message

    def _forward(self, mail_from: str, rcpt_tos: list[str], message: bytes) -> None:
        host, port = self._next_hop
        with smtplib.SMTP(host, port, timeout=self._timeout) as smtp:
            smtp.sendmail(mail_from, rcpt_tos, message)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        """Called by aiosmtpd once a message is received: answer with the SMTP reply."""
        loop = asyncio.get_running_loop()
        content = envelope.original_content or envelope.content
        if not isinstance(content, bytes):
            content = str(content).encode("utf-8", "surrogateescape")
        marked, cleaned = mark_of(content, tag=self._tag, header=self._header)
        outgoing = content
        if marked:
            login = session.auth_data if session.authenticated else None
            if isinstance(login, str) and "@" in login:
                sender = _from_address(cleaned)
                if sender is None or sender.lower() != login.lower():
                    return _FROM_MISMATCH
            if is_protected(cleaned):
                outgoing = cleaned
            else:
                try:
                    outgoing = await loop.run_in_executor(
                        None, self._protect, cleaned, list(envelope.rcpt_tos))
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
        except (smtplib.SMTPException, OSError):
            return _NEXT_HOP_DOWN
        return "250 2.0.0 OK" + (" (protected)" if marked else "")


def server_tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    """TLS 1.2+ server context for STARTTLS from a PEM certificate and key."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context


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
        """Listen; STARTTLS required when a TLS context is given, AUTH when credentials are."""
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
