"""Sceau: data-centric encryption service.

Public surface: :mod:`sceau.client` (SDK) and :mod:`sceau.errors`. Everything else is
internal to the service and may change.

Layers (SPEC §1), dependencies pointing inwards: core → jose → keystore → store →
service → SDK (:mod:`sceau.client`) → CLI, with the connectors on the SDK; ``vocab`` and
``errors`` are shared by all. This package root holds only the version and imports only
:mod:`sceau._native`, which decides before anything else is imported whether the modules
compiled with mypyc or their Python sources run (``SCEAU_PURE_PYTHON=1``: the sources);
``tests/core/test_layers.py`` checks every package's rule.
"""

from sceau import _native as _native

__version__ = "0.1.0"
