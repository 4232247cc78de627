"""Mail connector end to end: `sceau mail protect/open` against a real server."""

from __future__ import annotations

import email
import email.policy
import os
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path

import pytest
from connectors_support import invoke

from sceau.connectors.mail import open_message, protect_message
from sceau.errors import IntegrityFailure, InvalidRequest
from support import Server, TestApp

SENDER = "alice@example.com"
TO, CC, BCC = "bob@example.com", "carol@example.com", "dave@example.org"
STRANGER = "mallory@example.org"
PDF = b"%PDF-1.7\n" + os.urandom(3000)


def _base(eol: str = "\n") -> EmailMessage:
    msg = EmailMessage(policy=email.policy.default.clone(linesep=eol))
    msg["From"] = f"Alice <{SENDER}>"
    msg["To"] = f"Bob <{TO}>"
    msg["Cc"] = CC
    msg["Bcc"] = BCC
    msg["Subject"] = "Quarterly numbers"
    msg["Message-ID"] = "<q3@example.com>"
    msg["Date"] = "Sat, 28 Nov 2026 12:00:00 +0000"
    return msg


def text_only() -> bytes:
    msg = _base()
    msg.set_content("Bob, the numbers are in.\n")
    return msg.as_bytes()


def alternative() -> bytes:
    msg = _base()
    msg.set_content("Bob, the numbers are in.\n")
    msg.add_alternative("<p>Bob, the <b>numbers</b> are in.</p>\n", subtype="html")
    return msg.as_bytes()


def attachments(eol: str = "\n") -> bytes:
    msg = _base(eol)
    msg.set_content("Bob, the numbers are in.\n")
    msg.add_alternative("<p>Bob, the <b>numbers</b> are in.</p>\n", subtype="html")
    msg.add_attachment(PDF, maintype="application", subtype="pdf", filename="report.pdf")
    msg.add_attachment("quarter,total\nq3,42\n", subtype="csv", filename="totals.csv")
    msg.add_attachment("é=ü\n" * 50, subtype="plain", filename="notes.txt", cte="quoted-printable")
    return msg.as_bytes()


def not_mime() -> bytes:
    return (f"From: {SENDER}\nTo: {TO}\nSubject: plain old mail\nX-Mailer: ed\n\n"
            "Bob, the numbers are in.\n").encode()


MESSAGES: dict[str, Callable[[], bytes]] = {
    "text": text_only,
    "html+text": alternative,
    "attachments": attachments,
    "attachments crlf": lambda: attachments("\r\n"),
    "not mime": not_mime,
}


@pytest.fixture(scope="module")
def profiles(server: Server, app: TestApp,
             tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("mail-profiles")
    return {user: server.profile(app, base / f"{user}.json", user)
            for user in (SENDER, TO, CC, BCC, STRANGER)}


@pytest.mark.parametrize("kind", sorted(MESSAGES))
@pytest.mark.parametrize("protect_subject", [False, True])
def test_protect_open_round_trip_is_exact(tmp_path: Path, profiles: dict[str, Path], kind: str,
                                          protect_subject: bool) -> None:
    original = MESSAGES[kind]()
    src, sealed, opened = tmp_path / "in.eml", tmp_path / "sealed.eml", tmp_path / "out.eml"
    src.write_bytes(original)
    extra = ["--protect-subject"] if protect_subject else []
    invoke("mail", "protect", str(src), "-o", str(sealed), "-p", str(profiles[SENDER]), *extra,
           check=True)
    protected = sealed.read_bytes()
    assert b"numbers are in" not in protected and PDF not in protected
    assert b"-----BEGIN SCEAU MESSAGE-----" in protected
    assert (b"Quarterly numbers" in protected) is (not protect_subject and kind != "not mime")
    parsed = email.message_from_bytes(protected, policy=email.policy.default)
    assert parsed["Message-ID"] == ("<q3@example.com>" if kind != "not mime" else None)
    invoke("mail", "open", str(sealed), "-o", str(opened), "-p", str(profiles[TO]), check=True)
    assert opened.read_bytes() == original


def test_attachments_become_name_sceau_files(tmp_path: Path, profiles: dict[str, Path]) -> None:
    src, sealed = tmp_path / "in.eml", tmp_path / "sealed.eml"
    src.write_bytes(attachments())
    invoke("mail", "protect", str(src), "-o", str(sealed), "-p", str(profiles[SENDER]),
           check=True)
    parsed = email.message_from_bytes(sealed.read_bytes(), policy=email.policy.default)
    names = [p.get_filename() for p in parsed.iter_attachments()]
    assert names == ["report.pdf.sceau", "totals.csv.sceau", "notes.txt.sceau"]
    saved = tmp_path / "saved"
    saved.mkdir()
    for part in parsed.iter_attachments():
        (saved / part.get_filename()).write_bytes(part.get_payload(decode=True))
    # A saved attachment opens on its own with the file connector, as any recipient.
    invoke("file", "open", str(saved / "report.pdf.sceau"), "-p", str(profiles[BCC]),
           check=True)
    assert (saved / "report.pdf").read_bytes() == PDF


def test_recipients_are_to_cc_bcc_and_owner_is_sender(server: Server, app: TestApp) -> None:
    with server.client(app, SENDER) as client:
        result = protect_message(client, alternative())
        meta = client.describe_key(result.key_id)
    assert meta["owner"] == SENDER
    assert sorted(a["principal"] for a in meta["authorizations"]) == sorted([TO, CC, BCC])
    assert result.sender == SENDER and set(result.recipients) == {TO, CC, BCC}


def test_stranger_cannot_open_and_nothing_is_written(tmp_path: Path,
                                                     profiles: dict[str, Path]) -> None:
    src, sealed, opened = tmp_path / "in.eml", tmp_path / "sealed.eml", tmp_path / "out.eml"
    src.write_bytes(text_only())
    invoke("mail", "protect", str(src), "-o", str(sealed), "-p", str(profiles[SENDER]),
           check=True)
    proc = invoke("mail", "open", str(sealed), "-o", str(opened), "-p", str(profiles[STRANGER]))
    assert proc.returncode == 1
    assert proc.stderr.decode() == f"sceau: error: {sealed}: access denied (not_authorized)\n"
    assert not opened.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.eml", "sealed.eml"]


def test_open_refuses_unprotected_and_output_exists(tmp_path: Path,
                                                    profiles: dict[str, Path]) -> None:
    src, out = tmp_path / "in.eml", tmp_path / "out.eml"
    src.write_bytes(text_only())
    proc = invoke("mail", "open", str(src), "-o", str(out), "-p", str(profiles[TO]))
    assert proc.returncode == 1 and "no Sceau block" in proc.stderr.decode()
    out.write_bytes(b"keep me")
    proc = invoke("mail", "protect", str(src), "-o", str(out), "-p", str(profiles[SENDER]))
    assert proc.returncode == 1 and "exists (use --force" in proc.stderr.decode()
    assert out.read_bytes() == b"keep me"


def _swap_attachments(protected: bytes) -> bytes:
    boundary = email.message_from_bytes(protected).get_boundary().encode()
    head, *parts = protected.split(b"--" + boundary)
    parts[1], parts[2] = parts[2], parts[1]
    return (b"--" + boundary).join([head, *parts])


def _drop_attachment(protected: bytes) -> bytes:
    boundary = email.message_from_bytes(protected).get_boundary().encode()
    head, *parts = protected.split(b"--" + boundary)
    del parts[1]
    return (b"--" + boundary).join([head, *parts])


def _other_block(protected: bytes, other: bytes) -> bytes:
    start = protected.index(b"-----BEGIN SCEAU")
    end = protected.index(b"-----END SCEAU")
    o_start, o_end = other.index(b"-----BEGIN SCEAU"), other.index(b"-----END SCEAU")
    return protected[:start] + other[o_start:o_end] + protected[end:]


@pytest.mark.parametrize("tamper", ["swap", "drop", "other block"])
def test_tampered_structure_is_refused(server: Server, app: TestApp, tamper: str) -> None:
    original = attachments()
    with server.client(app, SENDER) as client:
        protected = protect_message(client, original).message
        other = protect_message(client, attachments()).message
        bad = {"swap": lambda: _swap_attachments(protected),
               "drop": lambda: _drop_attachment(protected),
               "other block": lambda: _other_block(protected, other)}[tamper]()
        with pytest.raises(IntegrityFailure):
            open_message(client, bad)
        assert open_message(client, protected) == original


def test_message_without_from_is_refused(server: Server, app: TestApp) -> None:
    with server.client(app, SENDER) as client, pytest.raises(InvalidRequest):
        protect_message(client, b"To: bob@example.com\n\nhello\n")


@pytest.mark.parametrize(("head", "reason"), [
    (b"From : alice@example.com\nFrom: mallory@example.org\n",
     "a header field has a space before its colon (obsolete syntax, refused)"),
    (b"From: alice@example.com\nfrom: mallory@example.org\n",
     "the message has several From fields"),
    (b"From: =?utf-8?q?alice=40example.com?= <mallory@example.org>\n",
     "the From field has an encoded-word that decodes to an address or a control character"),
])
def test_protect_refuses_a_header_read_two_ways(server: Server, app: TestApp, tmp_path: Path,
                                                profiles: dict[str, Path], head: bytes,
                                                reason: str) -> None:
    src, out = tmp_path / "in.eml", tmp_path / "out.eml"
    src.write_bytes(head + b"To: bob@example.com\nSubject: x\n\nhello\n")
    with server.client(app, STRANGER) as client:
        before = sum(1 for _ in client.iter_keys(role="owner"))
        proc = invoke("mail", "protect", str(src), "-o", str(out), "-p", str(profiles[SENDER]))
        assert sum(1 for _ in client.iter_keys(role="owner")) == before  # no key for mallory
    assert proc.returncode == 1
    assert proc.stderr.decode() == f"sceau: error: {src}: {reason}\n"
    assert not out.exists()
