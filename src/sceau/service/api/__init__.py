"""API v1 operation handlers, one module per family (crypto, keys).

May import: the service (runtime, params, keyops, lifecycle), core, jose, keystore, store,
errors, vocab. Never the SDK, the CLI or the connectors.
"""
