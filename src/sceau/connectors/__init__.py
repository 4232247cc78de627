"""Connectors: protection where the data lives, on the SDK's client-side encryption.

- :mod:`sceau.connectors.files`: ``.sceau`` files (suite-2 STREAM with a hidden file header).
- :mod:`sceau.connectors.mail`: MIME messages protected and opened under one key.
- :mod:`sceau.connectors.mime`: the one strict reading of a message's header (sender,
  recipients), shared by the mail connector and the relay.
- :mod:`sceau.connectors.relay`: an SMTP relay that protects marked messages in transit.

Contents never travel to the service: it only hands out data keys (``generate-data-key``,
``get-data-key``), and every access to them is authorized and audited there.

May import: the SDK (:mod:`sceau.client`), core, jose, errors and vocab. Never the keystore,
the store, the service, the configuration or the CLI (the CLI imports the connectors).
"""
