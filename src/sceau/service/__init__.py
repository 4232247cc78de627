"""The HTTPS service: API v1 (JOSE), discovery, health, metrics and the console.

May import: core, jose, keystore, store, config, errors, vocab, and the modules beside it
(:mod:`sceau.admin`, :mod:`sceau.auditlog`). Never the SDK (:mod:`sceau.client`), the
CLI, the connectors or :mod:`sceau.provision`.
"""
