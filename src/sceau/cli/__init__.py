"""The ``sceau`` command line."""
