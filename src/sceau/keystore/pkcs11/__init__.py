"""The ``pkcs11`` keystore: master, seal and signing keys inside a PKCS#11 token.

- :mod:`~sceau.keystore.pkcs11.pool`: logged-in sessions, pooled and rebuilt after token
  errors (never a fallback to another keystore);
- :mod:`~sceau.keystore.pkcs11.objects`: Sceau's objects in the token (labels, templates,
  creation, inventory);
- :mod:`~sceau.keystore.pkcs11.keystore`: :class:`Pkcs11Keystore`, the keystore itself;
- :mod:`~sceau.keystore.pkcs11.migrate`: moving a file keystore into a token.

May import: the keystore interface (:mod:`sceau.keystore.base`), core, errors, vocab.
Never the store, the service, config, the SDK, the CLI or the connectors.
"""

from sceau.keystore.pkcs11.keystore import Pkcs11Keystore
from sceau.keystore.pkcs11.migrate import migrate_file_to_pkcs11

__all__ = ["Pkcs11Keystore", "migrate_file_to_pkcs11"]
