"""Connector tests: one real server per module, on SQLite only.

The connectors talk to the service through the SDK alone (``generate-data-key``,
``get-data-key``); the store behind the service changes nothing for them, and the
store-parametrized ``server`` of the root conftest would double these end-to-end runs.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from aiosmtpd.controller import Controller
from connectors_support import PASSWORD, SENDER, Sink

from sceau.client import Client
from sceau.connectors.relay import (
    Credentials,
    ProtectingHandler,
    Relay,
    hash_password,
    server_tls_context,
)
from support import Server, TestApp, free_port, make_server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = make_server(tmp_path_factory.mktemp("server-sqlite"))
    yield srv
    if srv.proc is not None:
        srv.stop()


# --- the SMTP relay in front of that server (test_relay*.py) ---------------------------------


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


@pytest.fixture()
def sink(relay: tuple[Relay, Sink]) -> Sink:
    relay[1].received.clear()
    relay[1].over_tls.clear()
    return relay[1]


@pytest.fixture(scope="module")
def keys_client(server: Server, relay_app: TestApp) -> Iterator[Client]:
    """The relay's application, to see which keys exist and whose they are."""
    with server.client(relay_app) as client:
        yield client
