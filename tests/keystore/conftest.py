"""Fixtures for keystore tests: a throw-away SoftHSM2 store and keystores of both backends.

``keystore`` is parametrized over ``file`` and ``pkcs11``: every contract test runs against
both. The PKCS#11 side gets a fresh token per test (scripts/softhsm-token.sh), so tests never
see each other's keys. :func:`make_settings` is the one place that knows how to configure a
backend for a test; the ``settings_for`` fixture hands it to tests.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

import sceau.keystore.file as file_backend
from sceau.keystore import Keystore, KeystoreSettings, init_keystore, open_keystore

REPO = Path(__file__).resolve().parents[2]
TOKEN_SCRIPT = REPO / "scripts" / "softhsm-token.sh"
SOFTHSM_MODULE = os.environ.get("SCEAU_TEST_PKCS11_MODULE", "/usr/lib/softhsm/libsofthsm2.so")
PIN_ENV = "SCEAU_TEST_PKCS11_PIN"
TEST_PIN = "sceau-test-pin-4321"
BACKENDS = ("file", "pkcs11")


def softhsm_available() -> bool:
    """True when SoftHSM2 (tool and module) is installed."""
    return shutil.which("softhsm2-util") is not None and Path(SOFTHSM_MODULE).exists()


@dataclass
class SoftHsm:
    """A SoftHSM2 configuration in a temp dir; ``new_token`` adds a token to it."""

    root: Path
    module: str
    pin: str
    _counter: Iterator[int]

    @property
    def conf(self) -> Path:
        return self.root / "softhsm2.conf"

    @property
    def tokens(self) -> Path:
        return self.root / "tokens"

    def new_token(self, prefix: str = "sceau-test") -> str:
        """Initialize a fresh token and return its label."""
        label = f"{prefix}-{next(self._counter)}"
        env = {**os.environ, "SCEAU_PKCS11_PIN": self.pin}
        out = subprocess.run(
            ["bash", str(TOKEN_SCRIPT), str(self.root), label],
            env=env, check=True, capture_output=True, text=True,
        )
        assert out.stdout.strip() == f"export SOFTHSM2_CONF={self.conf}"
        return label


@pytest.fixture(scope="session")
def jwe_rsa_key() -> rsa.RSAPrivateKey:
    """One real RSA-3072 JWE key per session (generating one per test costs ~0.5 s)."""
    return file_backend.generate_jwe_rsa_key()


@pytest.fixture(autouse=True)
def _reuse_jwe_rsa_key(
    monkeypatch: pytest.MonkeyPatch, jwe_rsa_key: rsa.RSAPrivateKey
) -> None:
    monkeypatch.setattr(file_backend, "generate_jwe_rsa_key", lambda: jwe_rsa_key)


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoftHsm]:
    """One SoftHSM2 store for the session; SOFTHSM2_CONF and the PIN variable point at it.

    SoftHSM2 reads SOFTHSM2_CONF when the module initializes, so it is set before any
    keystore loads the module, and left in place for the whole session.
    """
    if not softhsm_available():
        pytest.skip("SoftHSM2 is not installed (make system)")
    root = tmp_path_factory.mktemp("softhsm")
    saved = {k: os.environ.get(k) for k in ("SOFTHSM2_CONF", PIN_ENV)}
    os.environ["SOFTHSM2_CONF"] = str(root / "softhsm2.conf")
    os.environ[PIN_ENV] = TEST_PIN
    hsm = SoftHsm(root=root, module=SOFTHSM_MODULE, pin=TEST_PIN, _counter=itertools.count(1))
    hsm.new_token("sceau-warmup")  # writes the conf file
    yield hsm
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def make_settings(
    backend: str, path: Path, softhsm: SoftHsm | None = None, **overrides: Any
) -> KeystoreSettings:
    """Settings for a new, uninitialized keystore of ``backend`` under ``path``.

    For ``pkcs11`` a fresh token is created in ``softhsm`` unless ``pkcs11_token`` is given.
    """
    if backend == "pkcs11":
        assert softhsm is not None
        options: dict[str, Any] = {
            "pkcs11_module": softhsm.module,
            "pin_env": PIN_ENV,
            "pool_size": 2,
        }
        options.update(overrides)
        if "pkcs11_token" not in options:
            options["pkcs11_token"] = softhsm.new_token()
        return KeystoreSettings(path, backend="pkcs11", **options)
    return KeystoreSettings(path, backend="file", **overrides)


@pytest.fixture
def settings_for(request: pytest.FixtureRequest) -> Any:
    """A factory ``(backend, path, **overrides) -> KeystoreSettings`` for any backend.

    For tests that need both backends at once (test modules cannot import conftest: every
    test dir has one and they would clash by name).
    """

    def factory(backend: str, path: Path, **overrides: Any) -> KeystoreSettings:
        hsm = request.getfixturevalue("softhsm") if backend == "pkcs11" else None
        return make_settings(backend, path, hsm, **overrides)

    return factory


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Each keystore backend in turn."""
    if request.param == "pkcs11":
        request.applymarker(pytest.mark.pkcs11)
    return str(request.param)


@pytest.fixture
def make_keystore_settings(
    request: pytest.FixtureRequest, backend: str, tmp_path: Path
) -> Any:
    """A factory ``(**overrides) -> KeystoreSettings`` for the current backend."""
    hsm = request.getfixturevalue("softhsm") if backend == "pkcs11" else None
    counter = itertools.count(1)

    def factory(**overrides: Any) -> KeystoreSettings:
        return make_settings(backend, tmp_path / f"keystore-{next(counter)}", hsm, **overrides)

    return factory


@pytest.fixture
def keystore_settings(make_keystore_settings: Any) -> KeystoreSettings:
    """Settings of an initialized keystore of the current backend."""
    settings: KeystoreSettings = make_keystore_settings()
    init_keystore(settings)
    return settings


@pytest.fixture
def keystore(keystore_settings: KeystoreSettings) -> Iterator[Keystore]:
    """An open, initialized keystore of the current backend (closed after the test)."""
    ks = open_keystore(keystore_settings)
    try:
        yield ks
    finally:
        ks.close()
