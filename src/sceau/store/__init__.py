"""Persistence: tables, migrations, one query module per aggregate, and the group-commit writer.

Runs on SQLite (embedded default, WAL) and PostgreSQL; nothing here uses SQL that only one of
them understands except behind an explicit dialect check.

- ``schema``: every table, in one catalogue (the migrations create exactly these);
- ``db``: engines, connection settings, migrations and the start-up checks;
- ``rows``: rows as frozen dataclasses (one column per field) and the queries every such
  table needs, the optimistic save of sealed rows included;
- ``driver``: statements run on the database driver directly (the request path);
- aggregates: ``keys`` (key records and their authorizations), ``applications`` (with
  their signing keys and the replay cache), ``accounts`` (console accounts and sessions),
  ``signin`` (console sign-in throttling, TOTP steps, OpenID Connect sign-ins),
  ``approvals``, ``audit`` (records and checkpoints), ``nodes`` (the audit node registry),
  ``leases``, ``workspace`` (CSE and DKE);
- ``writer``: every state change and its audit record, durably, in order.

Every query function takes a live connection; transactions belong to the caller.

May import: core, jose, keystore (seals), errors, vocab. Never the service, the
configuration (settings come in as arguments), the SDK, the CLI or the connectors.
"""
