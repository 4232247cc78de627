"""SMTP relay: smtplib as the sending client, a local aiosmtpd sink as next hop, a real server."""

from __future__ import annotations

import email
import email.policy
import smtplib
import ssl
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from sceau.connectors.mail import open_message
from sceau.connectors.relay import (
    Credentials,
    ProtectingHandler,
    Relay,
    hash_password,
    mark_of,
    server_tls_context,
)
from support import Server, TestApp, free_port

SENDER, TO, HIDDEN = "alice@example.com", "bob@example.com", "erin@example.com"
PASSWORD = "correct horse battery staple"


class Sink:
    """The next hop: keeps what it receives."""

    def __init__(self) -> None:
        self.received: list[tuple[str, list[str], bytes]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        self.received.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 OK"


@pytest.fixture(scope="module")
def relay_app(server: Server) -> TestApp:
    # This application may act only for example.com users: anyone else cannot be protected.
    return server.register_app("relay", users=("*@example.com",))


@pytest.fixture(scope="module")
def relay(server: Server, relay_app: TestApp,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Relay, Sink]]:
    sink = Sink()
    sink_port = free_port()
    next_hop = Controller(sink, hostname="127.0.0.1", port=sink_port)
    next_hop.start()
    users = tmp_path_factory.mktemp("relay") / "users"
    # A login that is an address binds From to it; `gateway` (a system sender) is not bound.
    users.write_text(f"# relay users\n{SENDER}:{hash_password(PASSWORD)}\n"
                     f"gateway:{hash_password(PASSWORD)}\n")
    tls = server_tls_context(server.data_dir / "tls" / "cert.pem",
                             server.data_dir / "tls" / "key.pem")
    client = server.client(relay_app)
    running = Relay(ProtectingHandler(client, ("127.0.0.1", sink_port)), "127.0.0.1",
                    free_port(), tls=tls, credentials=Credentials.load(users))
    running.start()
    yield running, sink
    running.stop()
    next_hop.stop()
    client.close()


def message(subject: str = "Numbers", sender: str = SENDER, **extra: str) -> bytes:
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"] = sender
    msg["To"] = TO
    msg["Subject"] = subject
    for name, value in extra.items():
        msg[name.replace("_", "-")] = value
    msg.set_content("The numbers are in: 42.\n")
    msg.add_attachment(b"\x00secret attachment\xff", maintype="application",
                       subtype="octet-stream", filename="data.bin")
    return msg.as_bytes()


def send(relay: Relay, data: bytes, *, login: str | None = SENDER, password: str = PASSWORD,
         tls: bool = True, cafile: str | None = None, rcpt: tuple[str, ...] = (TO,)) -> None:
    with smtplib.SMTP(relay.host, relay.port, timeout=30) as smtp:
        if tls:
            smtp.starttls(context=ssl.create_default_context(cafile=cafile))
        if login is not None:
            smtp.login(login, password)
        smtp.sendmail(SENDER, list(rcpt), data)


@pytest.fixture()
def sink(relay: tuple[Relay, Sink]) -> Sink:
    relay[1].received.clear()
    return relay[1]


def test_header_marked_message_is_protected(server: Server, app: TestApp,
                                            relay: tuple[Relay, Sink], sink: Sink) -> None:
    original = message(X_Sceau_Protect="yes")
    send(relay[0], original, cafile=server.cert, rcpt=(TO, HIDDEN))
    [(mail_from, rcpts, forwarded)] = sink.received
    assert mail_from == SENDER and rcpts == [TO, HIDDEN]
    assert b"numbers are in" not in forwarded and b"secret attachment" not in forwarded
    assert b"X-Sceau-Protect" not in forwarded and b"\r\nX-Sceau: protected" in forwarded
    expected = original.replace(b"X-Sceau-Protect: yes\r\n", b"")
    for reader in (TO, HIDDEN):  # an envelope-only (Bcc) recipient can read it too
        with server.client(app, reader) as client:
            assert open_message(client, forwarded) == expected


def test_subject_tag_marks_and_is_removed(server: Server, app: TestApp,
                                          relay: tuple[Relay, Sink], sink: Sink) -> None:
    original = message(subject="[SECURE] Numbers")
    send(relay[0], original, cafile=server.cert)
    [(_, _, forwarded)] = sink.received
    parsed = email.message_from_bytes(forwarded, policy=email.policy.default)
    assert parsed["Subject"] == "Numbers" and parsed["X-Sceau"] == "protected; v=1"
    with server.client(app, TO) as client:
        assert open_message(client, forwarded) == original.replace(b"[SECURE] ", b"")


def test_unmarked_message_is_forwarded_unchanged(server: Server, relay: tuple[Relay, Sink],
                                                 sink: Sink) -> None:
    original = message(subject="Lunch?")
    send(relay[0], original, cafile=server.cert)
    assert sink.received == [(SENDER, [TO], original)]


@pytest.mark.parametrize("bad", ["sender not allowed", "no from"])
def test_message_that_cannot_be_protected_is_refused(server: Server, relay: tuple[Relay, Sink],
                                                     sink: Sink, bad: str) -> None:
    data = (message(subject="[secure] x", sender="eve@elsewhere.org") if bad == "sender not allowed"
            else b"To: bob@example.com\r\nSubject: [secure] x\r\n\r\nhello\r\n")
    with pytest.raises(smtplib.SMTPDataError) as refused:
        send(relay[0], data, login="gateway", cafile=server.cert)
    assert refused.value.smtp_code == 554
    assert sink.received == []  # never forwarded in clear


def test_auth_needs_tls_and_the_right_password(server: Server, relay: tuple[Relay, Sink],
                                               sink: Sink) -> None:
    with pytest.raises(smtplib.SMTPException):  # no AUTH (nor mail) before STARTTLS
        send(relay[0], message(), tls=False)
    with pytest.raises(smtplib.SMTPAuthenticationError):
        send(relay[0], message(), password="wrong", cafile=server.cert)
    with pytest.raises(smtplib.SMTPSenderRefused):  # TLS but no AUTH: refused
        send(relay[0], message(), login=None, cafile=server.cert)
    with pytest.raises(smtplib.SMTPDataError) as mismatch:  # From is not the login
        send(relay[0], message(subject="[secure] x", sender=TO), cafile=server.cert)
    assert mismatch.value.smtp_code == 550
    assert sink.received == []


@pytest.mark.parametrize(("raw", "marked", "cleaned"), [
    (b"Subject: [secure] hi\r\n\r\nx", True, b"Subject: hi\r\n\r\nx"),
    (b"Subject: hi [Secure]\r\n\r\nx", True, b"Subject: hi\r\n\r\nx"),
    (b"X-Sceau-Protect: 1\r\nSubject: hi\r\n\r\nx", True, b"Subject: hi\r\n\r\nx"),
    (b"Subject: secure hi\r\n\r\nx", False, b"Subject: secure hi\r\n\r\nx"),
    (b"Subject: hi\r\n\r\n[secure] in the body", False, b"Subject: hi\r\n\r\n[secure] in the body"),
])
def test_mark_of(raw: bytes, marked: bool, cleaned: bytes) -> None:
    assert mark_of(raw, tag="[secure]", header="X-Sceau-Protect") == (marked, cleaned)


def test_credentials_file_is_checked(tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_text("alice:not-a-hash\n")
    with pytest.raises(Exception, match="argon2"):
        Credentials.load(path)
    path.write_text(f"alice:{hash_password('pw')}\n")
    creds = Credentials.load(path)
    assert creds.check("alice", "pw") and not creds.check("alice", "pW")
    assert not creds.check("bob", "pw")
