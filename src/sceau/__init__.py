"""Sceau: data-centric encryption service.

Public surface: :mod:`sceau.client` (SDK) and :mod:`sceau.errors`. Everything else is
internal to the service and may change.
"""

__version__ = "0.1.0"
