"""The HTTPS service: API v1 (JOSE), discovery, health, metrics and the console."""
