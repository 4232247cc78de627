"""The trusted core: cryptography, formats, the policy decision and audit hashing.

Nothing in this package performs I/O (network, disk, database) or reads the clock: time,
randomness that tests must fix, and the keystore come in as arguments.

May import: :mod:`sceau.errors` and :mod:`sceau.vocab` only, and no library of I/O, HTTP or
SQL (no sqlalchemy, fastapi, httpx, socket ...). Never jose, keystore, store, service,
config, the SDK, the CLI or the connectors.
"""
