"""Attack 6 of issue 14 on every backend: the relay's sender check and the key owner come
from one reading of the message, whatever store and keystore the service runs on.

The rest of the relay's tests run on SQLite only (tests/connectors/conftest.py); this module
gives the relay fixtures of that conftest a ``server`` on each backend (SQLite, PostgreSQL,
a PKCS#11 token) and runs the attack end to end there: a real relay over loopback SMTP with
AUTH as alice, a real next hop, the real service.
"""

from __future__ import annotations

import smtplib
from collections.abc import Iterator

import pytest
from connectors_support import SENDER, VICTIM, Sink, owned, send

from sceau.client import Client
from sceau.connectors.relay import Relay
from support import BACKENDS, Server, backend_server


@pytest.fixture(scope="module", params=BACKENDS)
def server(request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    backend = str(request.param)
    with backend_server(request, tmp_path_factory.mktemp(f"relay-{backend}"), backend) as srv:
        yield srv


TRICK = (b"From : alice@example.com\r\nFrom: victim@example.com\r\nTo: bob@example.com\r\n"
         b"Subject: [secure] Numbers\r\n\r\nThe numbers are in: 42.\r\n")


def test_from_space_colon_names_no_one_else_as_sender(
        server: Server, relay: tuple[Relay, Sink], sink: Sink, keys_client: Client) -> None:
    with pytest.raises(smtplib.SMTPDataError) as refused:
        send(relay[0], TRICK, cafile=server.cert)
    assert refused.value.smtp_code == 554
    assert sink.received == []
    assert owned(keys_client, VICTIM) == 0
    # Control: the same relay protects an honest message of alice's, on this backend.
    honest = TRICK.replace(b"From : alice@example.com\r\nFrom: victim@example.com",
                           b"From: alice@example.com")
    send(relay[0], honest, cafile=server.cert)
    assert len(sink.received) == 1 and b"SCEAU" in sink.received[0][2]
    assert owned(keys_client, SENDER) >= 1
