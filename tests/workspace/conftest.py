"""A Sceau server with Google CSE and Microsoft DKE configured, on every backend.

``ws_server`` mirrors tests/conftest.py's ``server`` (SQLite, PostgreSQL, SQLite on a
PKCS#11 token), with a ``sceau.toml`` that trusts this module's issuers, whose JWKS a
loopback HTTPS server publishes (``vendors``).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from wskit import Kacls, Vendors, make_vendors

from support import STORES, Server, databases_for, make_server, store_env

# As tests/conftest.py: both stores on the file keystore, and SQLite on a PKCS#11 token.
BACKENDS = (*STORES, "sqlite-pkcs11")


@pytest.fixture(scope="module")
def vendors(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Vendors]:
    found = make_vendors(tmp_path_factory.mktemp("vendors"))
    yield found
    found.jwks.close()


def start_workspace_server(base, vendors: Vendors, env: dict[str, str],
                           init_args: tuple[str, ...] = (), **toml: str) -> Server:
    srv = make_server(base, env=env, init_args=init_args, start=False)
    config = srv.data_dir / "sceau.toml"
    config.write_text(config.read_text() + vendors.toml(**toml))
    srv.start()
    return srv


@pytest.fixture(scope="module", params=BACKENDS)
def ws_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
              vendors: Vendors) -> Iterator[Server]:
    store, _, keystore = str(request.param).partition("-")
    databases = databases_for(request, store)
    env = store_env(store, databases)
    base = tmp_path_factory.mktemp(f"ws-{request.param}")
    init_args: tuple[str, ...] = ()
    if keystore == "pkcs11":
        from hsm_support import need_softhsm, pkcs11_server_args

        need_softhsm()
        token_env, init_args = pkcs11_server_args(base)
        env = {**env, **token_env}
    srv = start_workspace_server(base, vendors, env, init_args)
    yield srv
    if srv.proc is not None:
        srv.stop()
    if databases is not None:
        databases.drop(env["SCEAU_DATABASE_URL"])


@pytest.fixture(scope="module")
def kacls(ws_server: Server, vendors: Vendors) -> Kacls:
    return Kacls(ws_server.url, ws_server.cert, vendors)
