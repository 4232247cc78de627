"""The SDK's two clients come from one operation table: same operations, same arguments."""

from __future__ import annotations

import inspect
from collections.abc import Iterator

import pytest

from sceau.client import AsyncClient, Client
from sceau.jose.client import ClientIdentity, generate_app_keys

# What only a transport has: closing it, and the context-manager protocol of its kind.
TRANSPORT = {"close", "aclose"}


def _public(cls: type) -> set[str]:
    return {name for name in dir(cls) if not name.startswith("_")} - TRANSPORT


@pytest.fixture(scope="module")
def clients() -> Iterator[tuple[Client, AsyncClient]]:
    private, public, enc_private, _ = generate_app_keys("ES256")
    identity = ClientIdentity(app_id="app_x", kid=public["kid"], alg="ES256",
                              private_jwk=private, enc_private_jwk=enc_private)
    kwargs = {"service_url": "https://sceau.invalid", "identity": identity, "user": "a@b"}
    sync, asynchronous = Client(**kwargs), AsyncClient(**kwargs)
    yield sync, asynchronous
    sync.close()


def test_same_operation_set() -> None:
    assert _public(Client) == _public(AsyncClient)
    for wanted in ("encrypt_batch", "decrypt_batch", "iter_keys", "protect_stream"):
        assert wanted in _public(AsyncClient)


def test_same_signatures(clients: tuple[Client, AsyncClient]) -> None:
    sync, asynchronous = clients
    for name in sorted(_public(Client) - {"from_profile"}):
        here, there = getattr(sync, name), getattr(asynchronous, name)
        if not callable(here):
            assert here == there, name
            continue
        assert inspect.signature(here) == inspect.signature(there), name
        assert here.__doc__ == there.__doc__, name


def test_async_operations_are_coroutines(clients: tuple[Client, AsyncClient]) -> None:
    sync, asynchronous = clients
    for name in sorted(_public(Client) - {"from_profile", "iter_keys"}):
        if callable(getattr(sync, name)):
            assert inspect.iscoroutinefunction(getattr(asynchronous, name)), name
            assert not inspect.iscoroutinefunction(getattr(sync, name)), name
    assert inspect.isasyncgen(asynchronous.iter_keys())
    assert inspect.isgenerator(sync.iter_keys())
