"""The trusted core: cryptography, formats, the policy decision and audit hashing.

Nothing in this package performs I/O (network, disk, database) or reads the clock: time,
randomness that tests must fix, and the keystore come in as arguments.
"""
