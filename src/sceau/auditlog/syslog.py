"""RFC 5424 syslog lines for a SOC/SIEM, one per audit record or checkpoint.

Mapping (see docs/audit.md):

- PRI = facility * 8 + severity; severity from ``outcome``: GRANTED informational (6),
  DENIED warning (4), ERROR error (3); checkpoints notice (5).
- TIMESTAMP = the record's ``time`` (already RFC 3339 UTC with milliseconds);
  HOSTNAME = the exporting host (or ``--hostname``); APP-NAME = ``sceau``;
  PROCID = the audit node id (a chain: discontinuities show per PROCID); MSGID = the
  ``action`` (``CHECKPOINT`` for checkpoints).
- STRUCTURED-DATA: one element ``[sceau@32473 ...]`` carrying every non-null member of the
  line (``details`` as its canonical JSON), values escaped per RFC 5424 §6.3.3.
- MSG: a UTF-8 BOM then the exact stored line, so the SOC can run the same verification.

32473 is the private enterprise number RFC 5612 reserves for documentation; deployments
with their own PEN pass ``sd_id``.
"""

from __future__ import annotations

import json
import re
import socket
from dataclasses import dataclass, field
from typing import Any

from sceau.core.audit import CHECKPOINT_TYPE
from sceau.core.canonical import canonical_json
from sceau.errors import InvalidRequest
from sceau.vocab import Outcome

__all__ = [
    "APP_NAME",
    "DEFAULT_FACILITY",
    "DEFAULT_SD_ID",
    "FACILITIES",
    "SEVERITY",
    "SyslogOptions",
    "escape_param_value",
    "facility_code",
    "syslog_line",
]

APP_NAME = "sceau"
DEFAULT_SD_ID = "sceau@32473"
BOM = "\ufeff"

# RFC 5424 §6.2.1 facility codes, by their usual names.
FACILITIES = {
    "kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5, "lpr": 6,
    "news": 7, "uucp": 8, "cron": 9, "authpriv": 10, "ftp": 11, "ntp": 12, "audit": 13,
    "alert": 14, "clock": 15, "local0": 16, "local1": 17, "local2": 18, "local3": 19,
    "local4": 20, "local5": 21, "local6": 22, "local7": 23,
}  # fmt: skip
# "log audit" is what these records are.
DEFAULT_FACILITY = "audit"

SEVERITY = {
    Outcome.GRANTED.value: 6,  # informational
    Outcome.DENIED.value: 4,  # warning: a refusal is what a SOC watches for
    Outcome.ERROR.value: 3,  # error
}
CHECKPOINT_SEVERITY = 5  # notice
CHECKPOINT_MSGID = "CHECKPOINT"

_SD_NAME = re.compile(r'[!-~]{1,32}')  # PRINTUSASCII
_SD_NAME_FORBIDDEN = set('= ]"')
_HEADER_FIELD = re.compile(r"[!-~]+")
# Members of the line carried as SD-PARAMs, in a stable order.
_PARAMS = (
    "type", "v", "seq", "node", "node_seq", "time", "app", "user", "ip", "action", "outcome",
    "reason", "key", "req", "prev", "hash", "kid", "sig", "details",
)  # fmt: skip


def facility_code(name: str) -> int:
    """A facility name (``audit``, ``local0``...) or number 0-23; InvalidRequest otherwise."""
    if name.isdigit() and 0 <= int(name) <= 23:
        return int(name)
    if name in FACILITIES:
        return FACILITIES[name]
    raise InvalidRequest(f"facility: one of {', '.join(FACILITIES)} or 0-23")


def _check_sd_name(name: str, what: str) -> str:
    if _SD_NAME.fullmatch(name) is None or _SD_NAME_FORBIDDEN & set(name):
        raise InvalidRequest(f"{what}: 1-32 printable ASCII characters, no '=', ' ', ']', '\"'")
    return name


def _header_field(value: str | None, limit: int) -> str:
    """A header field: printable ASCII without spaces, truncated, or the NILVALUE ``-``."""
    if not value:
        return "-"
    cleaned = "".join(c if "!" <= c <= "~" else "_" for c in value)[:limit]
    return cleaned if _HEADER_FIELD.fullmatch(cleaned) else "-"


@dataclass(frozen=True)
class SyslogOptions:
    """Where the syslog lines say they come from: facility, HOSTNAME and SD-ID."""

    facility: int = FACILITIES[DEFAULT_FACILITY]
    hostname: str = field(default_factory=socket.gethostname)
    sd_id: str = DEFAULT_SD_ID

    def __post_init__(self) -> None:
        if type(self.facility) is not int or not 0 <= self.facility <= 23:
            raise InvalidRequest("facility: 0-23")
        _check_sd_name(self.sd_id, "sd_id")


def escape_param_value(value: str) -> str:
    """RFC 5424 §6.3.3: escape ``"``, ``\\`` and ``]`` with a backslash.

    Control characters (possible in ``user``, ``details``...) are replaced by their
    ``\\uXXXX`` spelling, since one message must stay on one line for line-based transports;
    that makes such a value display-only, which is fine: MSG carries the exact line.
    """
    out: list[str] = []
    for char in value:
        if char in '"\\]':
            out.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return "".join(out)


def _param_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return canonical_json(value).decode("utf-8")


def syslog_line(line: str, options: SyslogOptions) -> str:
    """The RFC 5424 message for one stored audit line (a record or a checkpoint)."""
    obj = json.loads(line)
    if not isinstance(obj, dict):
        raise InvalidRequest("audit line: not a JSON object")
    if obj.get("type") == CHECKPOINT_TYPE:
        severity, msgid = CHECKPOINT_SEVERITY, CHECKPOINT_MSGID
    else:
        # An unknown outcome is itself worth a SOC's attention.
        severity = SEVERITY.get(str(obj.get("outcome")), 3)
        msgid = str(obj.get("action") or "-")
    pri = options.facility * 8 + severity
    params = " ".join(
        f'{name}="{escape_param_value(_param_text(obj[name]))}"'
        for name in _PARAMS
        if obj.get(name) is not None
    )
    header = " ".join(
        (
            f"<{pri}>1",
            _header_field(str(obj.get("time") or ""), 128),
            _header_field(options.hostname, 255),
            APP_NAME,
            _header_field(str(obj.get("node") or ""), 128),
            _header_field(msgid, 32),
        )
    )
    return f"{header} [{options.sd_id} {params}] {BOM}{line}"
