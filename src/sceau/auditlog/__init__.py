"""Audit trail tooling: exports (JSON Lines, syslog, follow), store verification, archives.

The record format, chain and verifier live in :mod:`sceau.core.audit` and
:mod:`sceau.core.verify`; the writer in :mod:`sceau.store.writer`. This package reads the
store for ``sceau audit verify|export|archive`` and for any HTTP export.

Layer: beside the service (its runtime opens the witness from here). May import core, jose,
keystore, store, config, errors, vocab, and :mod:`sceau.admin` (``registry`` and
``archive`` run as an audited admin session). Never imports the SDK, the CLI or the
connectors.
"""

from __future__ import annotations

from sceau.auditlog.export import ExportFormat, follow_export, iter_export, write_atomic
from sceau.auditlog.syslog import SyslogOptions, syslog_line
from sceau.auditlog.verify import Verification, verify_file, verify_store, verify_stream

__all__ = [
    "ExportFormat",
    "SyslogOptions",
    "Verification",
    "follow_export",
    "iter_export",
    "syslog_line",
    "verify_file",
    "verify_store",
    "verify_stream",
    "write_atomic",
]
