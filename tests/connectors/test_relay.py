"""SMTP relay: smtplib as the sending client, a local aiosmtpd sink as next hop, a real server.

Header tricks (SECURITY-CASES 50) go through the real relay over loopback SMTP, AUTH as
alice: each is refused, nothing reaches the next hop, and no key is made for anyone.
"""

from __future__ import annotations

import email
import email.policy
import smtplib
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from connectors_support import (
    HIDDEN,
    SENDER,
    TO,
    VICTIM,
    Sink,
    invoke,
    owned,
    send,
)

from sceau.client import Client
from sceau.connectors.mail import open_message
from sceau.connectors.mime import MalformedMessage
from sceau.connectors.relay import (
    Credentials,
    ProtectingHandler,
    Relay,
    client_tls_context,
    hash_password,
    is_loopback,
    mark_of,
    server_tls_context,
)
from sceau.core.b64 import b64u_encode
from sceau.core.envelope import find_armored, parse_unverified_header
from sceau.errors import BadCredentials, ConfigError
from sceau.provision import make_tls_certificate
from support import Server, TestApp, free_port


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


def owner_of(client: Client, forwarded: bytes) -> str:
    parsed = email.message_from_bytes(forwarded, policy=email.policy.default)
    notice = next(p for p in parsed.walk() if p.get_content_type() == "text/plain")
    [(_, _, block)] = find_armored(notice.get_content())
    key_id = b64u_encode(parse_unverified_header(block).key_id)
    owner: str = client.describe_key(key_id, user=SENDER)["owner"]
    return owner


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
    (b"SUBJECT: [secure] hi\r\n\r\nx", True, b"SUBJECT: hi\r\n\r\nx"),
    (b"Subject: =?utf-8?q?=5BSecure=5D_hi?=\r\n\r\nx", True, b"Subject: hi\r\n\r\nx"),
    (b"Subject: =?utf-8?q?=5Bsecure=5D_h=C3=AF?=\r\n\r\nx", True,
     b"Subject: =?utf-8?b?aMOv?=\r\n\r\nx"),  # the shorter encoding of "hï"
    (b"Subject: =?utf-8?q?h=C3=AF?=\r\n\r\nx", False, b"Subject: =?utf-8?q?h=C3=AF?=\r\n\r\nx"),
    (b"x-sceau-protect: 1\nSubject: hi\n\nx", True, b"Subject: hi\n\nx"),
    (b"Subject: hi [Secure]\r\n\r\nx", True, b"Subject: hi\r\n\r\nx"),
    (b"X-Sceau-Protect: 1\r\nSubject: hi\r\n\r\nx", True, b"Subject: hi\r\n\r\nx"),
    (b"Subject: secure hi\r\n\r\nx", False, b"Subject: secure hi\r\n\r\nx"),
    (b"Subject: hi\r\n\r\n[secure] in the body", False, b"Subject: hi\r\n\r\n[secure] in the body"),
])
def test_mark_of(raw: bytes, marked: bool, cleaned: bytes) -> None:
    assert mark_of(raw, tag="[secure]", header="X-Sceau-Protect") == (marked, cleaned)


@pytest.mark.parametrize("raw", [
    b"X-Sceau-Protect : 1\r\nSubject: hi\r\n\r\nx",  # a mark another parser may not see
    b"Subject : [secure] hi\r\n\r\nx",
    b"Subject: =?x-nothing?q?=5Bsecure=5D?=\r\n\r\nx",  # a tag that cannot be ruled out
])
def test_mark_of_refuses_marks_it_cannot_read_one_way(raw: bytes) -> None:
    with pytest.raises(MalformedMessage):
        mark_of(raw, tag="[secure]", header="X-Sceau-Protect")


def test_credentials_file_is_checked(tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_text("alice:not-a-hash\n")
    with pytest.raises(Exception, match="argon2"):
        Credentials.load(path)
    path.write_text(f"alice:{hash_password('pw')}\n")
    creds = Credentials.load(path)
    creds.check("alice", "pw")
    for user, password in (("alice", "pW"), ("bob", "pw")):
        with pytest.raises(BadCredentials):
            creds.check(user, password)


# --- SECURITY-CASES 50: one reading of the header ---------------------------------------------

REST = b"To: bob@example.com\r\nSubject: [secure] Numbers\r\n"
BODY = b"\r\nThe numbers are in: 42.\r\n"

# Each trick, sent with AUTH as alice, and the reply it must get: 554 5.6.0 when the header
# can be read more than one way, 550 when the one reading names someone else than alice.
TRICKS: dict[str, tuple[bytes, int]] = {
    "space before colon": (b"From : alice@example.com\r\nFrom: victim@example.com\r\n" + REST,
                           554),
    "space before colon, after": (b"From: victim@example.com\r\nFrom : alice@example.com\r\n"
                                  + REST, 554),
    "two from fields": (b"From: alice@example.com\r\nFrom: victim@example.com\r\n" + REST, 554),
    "two from fields, cases": (b"FROM: alice@example.com\r\nfrom: victim@example.com\r\n" + REST,
                               554),
    "two mailboxes": (b"From: alice@example.com, victim@example.com\r\n" + REST, 554),
    "group": (b"From: us: alice@example.com, victim@example.com;\r\n" + REST, 554),
    "folded second address": (b"From: alice@example.com\r\n victim@example.com\r\n" + REST, 554),
    "encoded address": (b"From: =?utf-8?q?alice=40example.com?= <victim@example.com>\r\n" + REST,
                        554),
    "encoded local part": (b"From: =?us-ascii?q?victim?=@example.com\r\n" + REST, 554),
    "quoted local part": (b'From: "alice@example.com"@example.com\r\n' + REST, 554),
    "address-like display name": (b'From: "alice@example.com" <victim@example.com>\r\n' + REST,
                                  550),
    "parenthesis trick": (b"From: alice@example.com)<victim@example.com>\r\n" + REST, 554),
    "nul": (b"From: victim@example.com\x00alice@example.com\r\n" + REST, 554),
    "bare cr": (b"From: alice@example.com\rFrom: victim@example.com\r\n" + REST, 554),
    "bare lf": (b"From: alice@example.com\r\nX-Note: 1\nFrom: victim@example.com\r\n" + REST,
                554),
    "vertical tab": (b"From: alice@example.com\x0bFrom: victim@example.com\r\n" + REST, 554),
    "line of only spaces": (b"From: alice@example.com\r\n \r\nFrom: victim@example.com\r\n"
                            + REST, 554),
    "mbox from line": (b"From victim@example.com Sat Nov 28 12:00:00 2026\r\n"
                       b"From: alice@example.com\r\n" + REST, 554),
    "8-bit": (b"From: alice@example.com\xff<victim@example.com>\r\n" + REST, 554),
    "two to fields": (b"From: alice@example.com\r\nTo: bob@example.com\r\n"
                      b"To: mallory@example.org\r\nSubject: [secure] Numbers\r\n", 554),
    "two subjects": (b"From: alice@example.com\r\nTo: bob@example.com\r\n"
                     b"Subject: [secure] Numbers\r\nSubject: the secret itself\r\n", 554),
    "marker with a space": (b"From: alice@example.com\r\nTo: bob@example.com\r\n"
                            b"X-Sceau-Protect : yes\r\nSubject: Numbers\r\n", 554),
}


@pytest.mark.parametrize("trick", sorted(TRICKS))
def test_header_tricks_are_refused_and_nothing_leaves(server: Server, relay: tuple[Relay, Sink],
                                                      sink: Sink, keys_client: Client,
                                                      trick: str) -> None:
    head, code = TRICKS[trick]
    before = owned(keys_client, SENDER)
    with pytest.raises(smtplib.SMTPDataError) as refused:
        send(relay[0], head + BODY, cafile=server.cert)
    assert refused.value.smtp_code == code
    reply = refused.value.smtp_error.decode()
    assert reply.startswith("5.6.0 Message refused" if code == 554 else "5.7.1 From address")
    assert sink.received == []  # never forwarded, in clear or at all
    assert owned(keys_client, VICTIM) == 0 and owned(keys_client, SENDER) == before


def test_from_space_colon_trick_makes_no_key_for_the_victim(server: Server,
                                                            relay: tuple[Relay, Sink],
                                                            sink: Sink,
                                                            keys_client: Client) -> None:
    # The attack of issue 14: `From :` read by the old sender check as alice, ignored by
    # the mail connector, whose key then went to victim.
    trick = (b"From : alice@example.com\r\nFrom: victim@example.com\r\nTo: bob@example.com\r\n"
             b"Subject: [secure] Numbers\r\n\r\nThe numbers are in: 42.\r\n")
    for login in (SENDER, "gateway"):  # bound to alice, and a trusted login bound to no one
        with pytest.raises(smtplib.SMTPDataError) as refused:
            send(relay[0], trick, login=login, cafile=server.cert)
        assert refused.value.smtp_code == 554
        assert b"space before its colon" in refused.value.smtp_error
    assert sink.received == []
    assert owned(keys_client, VICTIM) == 0
    # The same message read one way (From victim only) is a plain mismatch for alice.
    with pytest.raises(smtplib.SMTPDataError) as mismatch:
        send(relay[0], trick.replace(b"From : alice@example.com\r\n", b""), cafile=server.cert)
    assert mismatch.value.smtp_code == 550
    assert sink.received == [] and owned(keys_client, VICTIM) == 0


def test_malformed_unmarked_message_is_refused_too(server: Server, relay: tuple[Relay, Sink],
                                                   sink: Sink) -> None:
    # Its marks cannot be read one way either, so it is not forwarded as "unmarked".
    data = b"From : alice@example.com\r\nFrom: victim@example.com\r\nSubject: hi\r\n" + BODY
    with pytest.raises(smtplib.SMTPDataError) as refused:
        send(relay[0], data, cafile=server.cert)
    assert refused.value.smtp_code == 554 and sink.received == []


NORMAL: dict[str, bytes] = {
    "plain": b"From: alice@example.com\r\n" + REST,
    "display name with comma": (b'From: "Doe, Alice" <alice@example.com>\r\n'
                                b"To: Bob <bob@example.com>\r\nSubject: [secure] Numbers\r\n"),
    "encoded display name": (b"From: =?utf-8?q?Al=C3=AFce?= <alice@example.com>\r\n" + REST),
    "upper-case names": (b"FROM: alice@example.com\r\nTO: bob@example.com\r\n"
                         b"SUBJECT: [secure] Numbers\r\n"),
    "folded recipients": (b"From: alice@example.com\r\nTo: carol@example.com,\r\n bob@example.com"
                          b"\r\nSubject: [secure] Numbers\r\n"),
    "group of recipients": (b"From: alice@example.com\r\nTo: team: bob@example.com;\r\n"
                            b"Subject: [secure] Numbers\r\n"),
    "tag in an encoded subject": (b"From: alice@example.com\r\nTo: bob@example.com\r\n"
                                  b"Subject: =?UTF-8?Q?=5Bsecure=5D_R=C3=A9sum=C3=A9?=\r\n"),
    "from field in the body": b"From: alice@example.com\r\n" + REST,
}


@pytest.mark.parametrize("case", sorted(NORMAL))
def test_normal_headers_are_protected_for_alice(server: Server, app: TestApp,
                                                relay: tuple[Relay, Sink], sink: Sink,
                                                keys_client: Client, case: str) -> None:
    body = BODY + (b"From: victim@example.com\r\n" if case == "from field in the body" else b"")
    send(relay[0], NORMAL[case] + body, cafile=server.cert)
    [(_, _, forwarded)] = sink.received
    assert b"numbers are in" not in forwarded and b"\r\nX-Sceau: protected" in forwarded
    assert owner_of(keys_client, forwarded) == SENDER
    with server.client(app, TO) as client:
        opened = open_message(client, forwarded)
    assert b"The numbers are in: 42." in opened and b"secure" not in opened.lower()
    if case == "tag in an encoded subject":
        subject = email.message_from_bytes(opened, policy=email.policy.default)["Subject"]
        assert subject == "Résumé"


# --- listening address -------------------------------------------------------------------------


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("localhost", True),
    ("0.0.0.0", False), ("", False), ("::", False), ("192.0.2.7", False),
    ("relay.example.com", False), ("::ffff:127.0.0.1", False),
])
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_relay_off_loopback_needs_auth(server: Server, relay_app: TestApp,
                                       keys_client: Client, tmp_path: Path) -> None:
    handler = ProtectingHandler(keys_client, ("127.0.0.1", free_port()))
    for host in ("0.0.0.0", ""):
        with pytest.raises(ConfigError, match=r"needs AUTH: give a users file \(--users\)"):
            Relay(handler, host, free_port()).start()
    # The command line says the same and exits 2 before listening.
    profile = server.profile(relay_app, tmp_path / "relay.json")
    port = free_port()
    proc = invoke("mail", "relay", "--listen", f"0.0.0.0:{port}", "--next-hop", "127.0.0.1:25",
                  "-p", str(profile))
    assert proc.returncode == 2
    assert "needs AUTH: give a users file (--users)" in proc.stderr.decode()
    with pytest.raises(OSError):  # nothing listens there
        smtplib.SMTP("127.0.0.1", port, timeout=5)


# --- STARTTLS to the next hop ------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_hop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path, Sink]]:
    """A next hop offering STARTTLS with a self-signed certificate made here."""
    tls_dir = tmp_path_factory.mktemp("next-hop") / "tls"
    make_tls_certificate(tls_dir, ["127.0.0.1", "localhost"])
    sink = Sink()
    port = free_port()
    hop = Controller(sink, hostname="127.0.0.1", port=port,
                     tls_context=server_tls_context(tls_dir / "cert.pem", tls_dir / "key.pem"))
    hop.start()
    yield port, tls_dir / "cert.pem", sink
    hop.stop()


@pytest.fixture()
def local_relay(keys_client: Client) -> Iterator[Any]:
    """Start loopback relays (no AUTH needed there) towards a next hop, stop them after."""
    started: list[Relay] = []

    def start(port: int, **options: Any) -> Relay:
        running = Relay(ProtectingHandler(keys_client, ("127.0.0.1", port), **options),
                        "127.0.0.1", free_port())
        running.start()
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()


def test_next_hop_starttls_verified_with_the_ca_file(server: Server, app: TestApp,
                                                     tls_hop: tuple[int, Path, Sink],
                                                     local_relay: Any) -> None:
    port, cert, hop_sink = tls_hop
    hop_sink.received.clear()
    hop_sink.over_tls.clear()
    relay = local_relay(port, next_hop_tls=client_tls_context(cert))
    unmarked, marked = message(subject="Lunch?"), message(subject="[secure] Numbers")
    send(relay, unmarked, login=None, tls=False)
    send(relay, marked, login=None, tls=False)
    assert hop_sink.over_tls == [True, True]
    assert hop_sink.received[0] == (SENDER, [TO], unmarked)
    with server.client(app, TO) as client:
        assert open_message(client, hop_sink.received[1][2]) == marked.replace(b"[secure] ", b"")


@pytest.mark.parametrize("trust", ["system store", "another ca"])
def test_next_hop_certificate_that_does_not_verify_is_451(server: Server,
                                                          tls_hop: tuple[int, Path, Sink],
                                                          local_relay: Any, trust: str) -> None:
    port, _, hop_sink = tls_hop
    hop_sink.received.clear()
    ca = None if trust == "system store" else Path(server.cert)
    relay = local_relay(port, next_hop_tls=client_tls_context(ca))
    for subject in ("Lunch?", "[secure] Numbers"):
        with pytest.raises(smtplib.SMTPDataError) as refused:
            send(relay, message(subject=subject), login=None, tls=False)
        assert refused.value.smtp_code == 451
        assert refused.value.smtp_error.startswith(b"4.7.5 Next hop TLS failed")
    assert hop_sink.received == []  # never a fallback to plain text


def test_next_hop_without_starttls(relay: tuple[Relay, Sink], sink: Sink,
                                   local_relay: Any) -> None:
    plain_port = relay[0].handler._next_hop[1]  # the module's plain sink
    send(local_relay(plain_port), message(subject="Lunch?"), login=None, tls=False)
    assert sink.over_tls == [False]  # offered no STARTTLS: plain, as documented
    strict = local_relay(plain_port, require_next_hop_tls=True)
    with pytest.raises(smtplib.SMTPDataError) as refused:
        send(strict, message(subject="Lunch?"), login=None, tls=False)
    assert refused.value.smtp_code == 451
    assert refused.value.smtp_error.startswith(b"4.7.4 Next hop does not offer STARTTLS")
    assert len(sink.received) == 1
