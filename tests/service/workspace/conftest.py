"""A Sceau server with Google CSE and Microsoft DKE configured, on every backend.

``ws_server`` mirrors tests/conftest.py's ``server`` (SQLite, PostgreSQL, SQLite on a
PKCS#11 token), with a ``sceau.toml`` that trusts this module's issuers, whose JWKS a
loopback HTTPS server publishes (``vendors``).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from workspace_support import Kacls, Vendors, make_vendors

from support import BACKENDS, Server, backend_server


@pytest.fixture(scope="module")
def vendors(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Vendors]:
    found = make_vendors(tmp_path_factory.mktemp("vendors"))
    yield found
    found.jwks.close()


def start_workspace_server(srv: Server, vendors: Vendors, **toml: str) -> Server:
    """Start ``srv`` (made with ``start=False``) with the vendors' workspace settings."""
    config = srv.data_dir / "sceau.toml"
    config.write_text(config.read_text() + vendors.toml(**toml))
    srv.start()
    return srv


@pytest.fixture(scope="module", params=BACKENDS)
def ws_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
              vendors: Vendors) -> Iterator[Server]:
    base = tmp_path_factory.mktemp(f"ws-{request.param}")
    with backend_server(request, base, str(request.param), start=False) as srv:
        yield start_workspace_server(srv, vendors)


@pytest.fixture(scope="module")
def kacls(ws_server: Server, vendors: Vendors) -> Kacls:
    return Kacls(ws_server.url, ws_server.cert, vendors)
