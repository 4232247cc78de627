"""The JOSE layer (SPEC §3, §10): strict guard, application keys, request verification,
response signing and encryption, and the client side of the protocol.

:mod:`sceau.jose.guard` runs before the JOSE library ever sees a token; signatures are
checked with ``cryptography`` directly on what the guard parsed; JWE uses ``jwcrypto``.

May import: core, errors, vocab. Never the keystore, the store, the service, config, the
SDK, the CLI or the connectors (keys come in as arguments or lookups).
"""
