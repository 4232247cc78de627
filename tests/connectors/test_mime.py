"""The one header parser (SECURITY-CASES 50): what it reads, and what it refuses to read.

Pure functions, no service: each row is a message and either the sender and recipients it
must yield or the part of the error it must raise. The same tricks go through the real
relay in ``test_relay.py``.
"""

from __future__ import annotations

import pytest

from sceau.connectors.mime import (
    MalformedMessage,
    SenderNotAllowed,
    decode_unstructured,
    parse_header,
    participants,
    split_fields,
)

ALICE, VICTIM, BOB, CAROL = ("alice@example.com", "victim@example.com", "bob@example.com",
                             "carol@example.com")


def read(message: bytes, require_sender: str | None = None) -> tuple[str, tuple[str, ...]]:
    found = participants(parse_header(message), require_sender=require_sender)
    return found.sender, found.recipients


ACCEPTED: dict[str, tuple[bytes, str, tuple[str, ...]]] = {
    "plain": (b"From: alice@example.com\r\nTo: bob@example.com\r\n\r\nhi\r\n", ALICE, (BOB,)),
    "display names": (b'From: "Doe, Alice" <alice@example.com>\r\n'
                      b"To: Bob <bob@example.com>, J. Carol <carol@example.com>\r\n\r\nhi\r\n",
                      ALICE, (BOB, CAROL)),
    "upper-case name": (b"FROM: alice@example.com\r\nto: bob@example.com\r\n\r\nhi\r\n",
                        ALICE, (BOB,)),
    "lf line ends": (b"From: alice@example.com\nTo: bob@example.com\n\nhi\n", ALICE, (BOB,)),
    "folded list": (b"From: alice@example.com\r\nTo: bob@example.com,\r\n\tcarol@example.com\r\n"
                    b"\r\nhi\r\n", ALICE, (BOB, CAROL)),
    "folded display name": (b"From: Alice\r\n Doe <alice@example.com>\r\n\r\nhi\r\n", ALICE, ()),
    "comments": (b"From: alice@example.com (Alice (the (real) one))\r\n\r\nhi\r\n", ALICE, ()),
    "groups": (b"From: alice@example.com\r\nTo: team: bob@example.com, Carol <carol@example.com>;"
               b"\r\nCc: undisclosed-recipients:;\r\n\r\nhi\r\n", ALICE, (BOB, CAROL)),
    "benign encoded name": (b"From: =?utf-8?q?Al=C3=AFce?= <alice@example.com>\r\n\r\nhi\r\n",
                            ALICE, ()),
    "duplicates and sender dropped": (b"From: alice@example.com\r\nTo: BOB@example.com, "
                                      b"bob@example.com, Alice@example.com\r\n"
                                      b"Bcc: carol@example.com\r\n\r\nhi\r\n", ALICE,
                                      ("BOB@example.com", CAROL)),
    "empty list elements": (b"From: alice@example.com\r\nTo: bob@example.com,,\r\n"
                            b"Cc:\r\n\r\nhi\r\n", ALICE, (BOB,)),
    "fields in the body ignored": (b"From: alice@example.com\r\n\r\nFrom: victim@example.com\r\n"
                                   b"From : victim@example.com\r\n", ALICE, ()),
    "header without body": (b"From: alice@example.com\r\nSubject: hi\r\n", ALICE, ()),
    "utf-8 outside addresses": ("From: alice@example.com\r\nSubject: Résumé\r\n\r\nhi\r\n"
                                .encode(), ALICE, ()),
    "one sender field": (b"From: alice@example.com\r\nSender: Desk <desk@example.com>\r\n\r\n",
                         ALICE, ()),
    # A display name that looks like an address is only a name: the sender is victim, and
    # a relay bound to alice refuses it (test_relay.py).
    "address-like display name": (b'From: "alice@example.com" <victim@example.com>\r\n\r\n',
                                  VICTIM, ()),
}


@pytest.mark.parametrize("case", sorted(ACCEPTED))
def test_accepted_messages_yield_one_sender(case: str) -> None:
    message, sender, recipients = ACCEPTED[case]
    assert read(message) == (sender, recipients)
    assert read(message, require_sender=sender.upper()) == (sender, recipients)


FROMS = b"From : alice@example.com\r\nFrom: victim@example.com\r\n"

REFUSED: dict[str, tuple[bytes, str]] = {
    # One field, read two ways.
    "space before colon": (FROMS, "space before its colon"),
    "space before colon, second": (b"From: victim@example.com\r\nFrom : alice@example.com\r\n",
                                   "space before its colon"),
    "tab before colon": (b"From\t: alice@example.com\r\nFrom: victim@example.com\r\n",
                         "space before its colon"),
    "space before colon, other field": (b"From: alice@example.com\r\nTo : bob@example.com\r\n",
                                        "space before its colon"),
    "mbox from line": (b"From alice@example.com Sat Nov 28 12:00:00 2026\r\n"
                       b"From: victim@example.com\r\n", "not a field"),
    "line without colon": (b"From: alice@example.com\r\nvictim@example.com\r\n\r\nhi",
                           "not a field"),
    # Several senders.
    "two from fields": (b"From: alice@example.com\r\nFrom: victim@example.com\r\n",
                        "several From"),
    "two from fields, cases": (b"FROM: alice@example.com\r\nfrom: victim@example.com\r\n",
                               "several From"),
    "no from": (b"To: bob@example.com\r\n\r\nhi", "no From field"),
    "empty from": (b"From:\r\nTo: bob@example.com\r\n\r\nhi", "exactly one address"),
    "two mailboxes": (b"From: alice@example.com, victim@example.com\r\n", "exactly one"),
    "trailing comma": (b"From: alice@example.com,\r\n", "exactly one"),
    "group in from": (b"From: friends: alice@example.com;\r\n", "group"),
    "folded second address": (b"From: alice@example.com\r\n victim@example.com\r\n",
                              "exactly one"),
    "folded second mailbox": (b"From: Alice <alice@example.com>,\r\n <victim@example.com>\r\n",
                              "exactly one"),
    "two sender fields": (b"From: alice@example.com\r\nSender: a@example.com\r\n"
                          b"Sender: b@example.com\r\n", "several Sender"),
    "sender with two mailboxes": (b"From: alice@example.com\r\n"
                                  b"Sender: a@example.com, b@example.com\r\n", "exactly one"),
    # Encoded-words (RFC 2047).
    "encoded address in name": (b"From: =?utf-8?q?alice=40example.com?= <victim@example.com>"
                                b"\r\n", "decodes to an address"),
    "encoded address, base64": (b"From: =?utf-8?b?YWxpY2VAZXhhbXBsZS5jb20=?= "
                                b"<victim@example.com>\r\n", "decodes to an address"),
    "encoded angle brackets": (b"From: =?utf-8?q?=3Cvictim?= <alice@example.com>\r\n",
                               "decodes to an address"),
    "encoded address, fullwidth at": (b"From: =?utf-8?q?victim=EF=BC=A0example.com?= "
                                      b"<alice@example.com>\r\n", "decodes to an address"),
    "encoded address in quotes": (b'From: "=?utf-8?q?victim=40example.com?=" '
                                  b"<alice@example.com>\r\n", "decodes to an address"),
    "encoded address in comment": (b"From: alice@example.com (=?utf-8?q?victim=40example.com?=)"
                                   b"\r\n", "decodes to an address"),
    "encoded newline": (b"From: =?utf-8?q?a=0AFrom=3A_b?= <alice@example.com>\r\n",
                        "control character"),
    "encoded local part": (b"From: =?us-ascii?q?victim?=@example.com\r\n", "encoded-word"),
    "unknown charset": (b"From: =?x-nothing?q?Alice?= <alice@example.com>\r\n",
                        "does not decode"),
    "bad base64": (b"From: =?utf-8?b?!!!?= <alice@example.com>\r\n", "does not decode"),
    "unknown encoding": (b"From: =?utf-8?x?Alice?= <alice@example.com>\r\n", "does not decode"),
    # Injection and line ends.
    "nul": (b"From: alice@example.com\x00victim@example.com\r\n", "control character"),
    "vertical tab": (b"From: alice@example.com\x0bFrom: victim@example.com\r\n",
                     "control character"),
    "form feed": (b"Subject: x\x0cFrom: victim@example.com\r\nFrom: alice@example.com\r\n",
                  "control character"),
    "bare cr": (b"From: alice@example.com\rFrom: victim@example.com\r\n\r\nhi", "bare CR"),
    "bare lf in crlf header": (b"From: alice@example.com\r\nTo: bob@example.com\n"
                               b"From: victim@example.com\r\n\r\nhi", "mixes"),
    "lf separator in crlf header": (b"From: alice@example.com\r\n\nFrom: victim@example.com"
                                    b"\r\n\r\nhi", "mixes"),
    "line of only spaces": (b"From: alice@example.com\r\nSubject: x\r\n \r\n"
                            b"From: victim@example.com\r\n\r\nhi", "only spaces"),
    "folded first line": (b" From: victim@example.com\r\nFrom: alice@example.com\r\n",
                          "starts with a folded line"),
    # 8-bit.
    "8-bit in from": (b"From: alice@example.com\xff<victim@example.com>\r\n", "non-ASCII"),
    "utf-8 display name": ("From: Alïce <alice@example.com>\r\n".encode(), "non-ASCII"),
    "8-bit field name": (b"From: alice@example.com\r\nX-\xe9: 1\r\n", "not a field"),
    # Addresses another parser reads otherwise.
    "quoted local part": (b'From: "victim@example.com"@example.org\r\n', "quoted local part"),
    "domain literal": (b"From: alice@[127.0.0.1]\r\n", "not allowed outside quotes"),
    "parenthesis trick": (b"From: alice@example.com)<victim@example.com>\r\n",
                          "not allowed outside quotes"),
    "backslash": (b"From: alice\\@example.com\r\n", "not allowed outside quotes"),
    "source route": (b"From: <@evil.example:alice@example.com>\r\n", "source route"),
    "space in address": (b"From: alice @example.com\r\n", "space or comment"),
    "comment in address": (b"From: alice(x)@example.com\r\n", "space or comment"),
    "empty label": (b"From: alice@example..com\r\n", "empty part"),
    "odd domain": (b"From: alice@exa_mple.com\r\n", "letters, digits and hyphens"),
    "unclosed angle": (b"From: Alice <alice@example.com\r\n", "not closed"),
    "unclosed quote": (b'From: "Alice <alice@example.com>\r\n', "not closed"),
    "unclosed comment": (b"From: alice@example.com (Alice\r\n", "not closed"),
    "deep comment": (b"From: alice@example.com " + b"(" * 9 + b")" * 9 + b"\r\n", "too deep"),
    # Recipients and fields allowed once.
    "two to fields": (b"From: alice@example.com\r\nTo: bob@example.com\r\n"
                      b"To: mallory@example.org\r\n", "several To"),
    "two cc fields, cases": (b"From: alice@example.com\r\nCc: bob@example.com\r\n"
                             b"CC: mallory@example.org\r\n", "several Cc"),
    "two subjects": (b"From: alice@example.com\r\nSubject: [secure] x\r\nSubject: secret\r\n",
                     "several Subject"),
    "two message-ids": (b"From: alice@example.com\r\nMessage-ID: <a@x>\r\nMessage-ID: <b@x>\r\n",
                        "several Message-ID"),
    "text after a recipient": (b"From: alice@example.com\r\nTo: bob@example.com "
                               b"mallory@example.org\r\n", "text after an address"),
    "nested group": (b"From: alice@example.com\r\nTo: a: b: bob@example.com;;\r\n", "group"),
    "unclosed group": (b"From: alice@example.com\r\nTo: team: bob@example.com\r\n", "';'"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_ambiguous_messages_are_refused(case: str) -> None:
    message, reason = REFUSED[case]
    with pytest.raises(MalformedMessage) as refused:
        read(message)
    assert reason in refused.value.detail
    # Fixed texts: the reply never echoes the message (it goes into an SMTP answer).
    assert "victim" not in refused.value.detail and "\n" not in refused.value.detail


def test_sender_bound_to_a_login_comes_from_the_same_reading() -> None:
    message = b'From: "alice@example.com" <victim@example.com>\r\nTo: bob@example.com\r\n\r\n'
    with pytest.raises(SenderNotAllowed):
        read(message, require_sender=ALICE)
    assert read(message, require_sender=VICTIM) == (VICTIM, (BOB,))


def test_fields_keep_their_bytes_and_unfold() -> None:
    message = b"Subject: one\r\n two\r\nFROM: alice@example.com\r\n\r\nbody\r\n"
    header = parse_header(message)
    assert [f.name for f in header.fields] == ["subject", "from"]
    assert header.fields[0].raw == b"Subject: one\r\n two\r\n"
    assert header.fields[0].value == b" one two"
    assert header.named("From") == (header.fields[1],)
    assert (header.eol, header.separator, header.body) == (b"\r\n", b"\r\n", b"body\r\n")
    assert b"".join(f.raw for f in header.fields) + header.separator + header.body == message
    assert split_fields(message) == ([f.raw for f in header.fields], b"\r\n", b"body\r\n")


@pytest.mark.parametrize(("value", "text"), [
    (b" [secure] plain", " [secure] plain"),
    (b" =?UTF-8?Q?=5Bsecure=5D_R=C3=A9sum=C3=A9?=", " [secure] Résumé"),
    (b" =?utf-8?b?W3NlY3VyZV0=?= =?utf-8?q?_x?=", " [secure] x"),  # space between words dropped
    (b" a =?iso-8859-1?q?=E9?= b", " a é b"),
])
def test_decode_unstructured(value: bytes, text: str) -> None:
    [field] = parse_header(b"Subject:" + value + b"\r\n\r\n").fields
    assert decode_unstructured(field) == text


def test_decode_unstructured_refuses_what_it_cannot_decode() -> None:
    [field] = parse_header(b"Subject: =?x-nothing?q?=5Bsecure=5D?=\r\n\r\n").fields
    with pytest.raises(MalformedMessage, match="Subject field"):
        decode_unstructured(field)
