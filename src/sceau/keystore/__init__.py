"""The keystore: the HSM boundary (SPEC §1). Master keys never leave it.

:func:`open_keystore` gives the configured backend (``file`` or ``pkcs11``) behind the one
:class:`Keystore` interface; :func:`init_keystore` creates the keys of a new installation.

May import: core, jose, errors, vocab (its own ``KeystoreSettings``, not the configuration).
Never the store, the service, config, the SDK, the CLI or the connectors.
"""

from __future__ import annotations

from sceau.keystore.base import KeyPurpose, Keystore, KeystoreSettings, SigningKeyInfo

__all__ = [
    "KeyPurpose",
    "Keystore",
    "KeystoreSettings",
    "SigningKeyInfo",
    "init_keystore",
    "open_keystore",
]


def open_keystore(settings: KeystoreSettings) -> Keystore:
    """Open the configured backend. Raises :class:`sceau.errors.KeystoreUnavailable`."""
    if settings.backend == "pkcs11":
        # Imported here so that the file backend works where no PKCS#11 module is installed.
        from sceau.keystore.pkcs11 import Pkcs11Keystore

        return Pkcs11Keystore(settings)
    from sceau.keystore.file import FileKeystore

    return FileKeystore(settings)


def init_keystore(settings: KeystoreSettings) -> None:
    """Create master key v1, the seal key, both signing keys and the JWE key.

    Refuses (:class:`sceau.errors.ConfigError`) when the keystore is already initialized.
    """
    if settings.backend == "pkcs11":
        from sceau.keystore.pkcs11 import Pkcs11Keystore

        Pkcs11Keystore.initialize(settings)
        return
    from sceau.keystore.file import FileKeystore

    FileKeystore.initialize(settings)
