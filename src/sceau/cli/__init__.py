"""The ``sceau`` command line.

The outermost layer: it wires the others (service, admin, store, keystore, SDK,
connectors) into commands, so it may import any of them; no package imports it.
"""
