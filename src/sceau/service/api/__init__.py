"""API v1 operation handlers, one module per family (crypto, keys)."""
