"""The authorization decision (SPEC §6): pure functions over a key record.

No I/O and no clock: ``now`` is an integer NumericDate passed in by the caller, so every
decision can be replayed in a test at an exact second. The caller has already done SPEC §6
step 1 (application enabled, ``sub`` allowed, seal verified) before calling
:func:`decide_use`.

Boundaries (documented in ``docs/policy.md``):

* key lifetime: usable iff ``now < expires_at`` (``key_expired`` from ``expires_at`` on);
* data validity and per-authorization windows: closed intervals, usable iff
  ``not_before <= now <= not_after`` (``None`` means unbounded on that side).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass

from sceau.core.model import Authorization, KeyRecord, normalize_identity
from sceau.errors import AccessDenied, InvalidRequest
from sceau.vocab import AuthorizationStatus, KeyStatus, ListStatus, Reason, Right

__all__ = [
    "MAX_NETWORKS",
    "Actor",
    "can_manage",
    "decide_use",
    "display_status",
    "management_refusal",
    "matching_authorizations",
    "principal_matches",
    "validate_networks",
    "validate_principal",
]

MAX_NETWORKS = 256
_MAX_PRINCIPAL = 254  # the longest forward-path address (RFC 5321 §4.5.3.1.3)
_PATTERN_PREFIX = "*@"
# One DNS label in ASCII (LDH); IDNs are written in their A-label ("xn--") form.
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?", re.IGNORECASE)
# Printable ASCII minus space; local parts never need more in practice and anything else
# (controls, bidi overrides, homoglyphs) only helps someone spoof an identity in the console.
_LOCAL = re.compile(r"[!-~]+")

_NetworkT = ipaddress.IPv4Network | ipaddress.IPv6Network
_AddressT = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class Actor:
    """Who acts on a key, as every decision and every audit record names them.

    ``app_id`` is the application (``console``, ``cli``, a registered one), or None for the
    service itself (the destruction sweep); ``user`` the identity it acts for, already
    normalized; ``ip`` the client address, if any. ``manage_any`` is the console ``admin``
    role's management of every key (SPEC §6): it never grants a use of a key, which
    :func:`decide_use` decides from the identity alone.
    """

    app_id: str | None
    user: str
    ip: str | None = None
    manage_any: bool = False


# --- principals ------------------------------------------------------------------------------


def _valid_domain(domain: str, *, min_labels: int) -> bool:
    labels = domain.split(".")
    return (
        len(labels) >= min_labels
        and len(domain) <= 253
        and all(_LABEL.fullmatch(label) for label in labels)
    )


def _pattern_domain(principal: str) -> str | None:
    """The lower-cased domain of a well-formed ``*@domain`` pattern, else ``None``."""
    if not principal.startswith(_PATTERN_PREFIX):
        return None
    domain = principal[len(_PATTERN_PREFIX) :]
    if not _valid_domain(domain, min_labels=2):
        return None
    return domain.lower()


def principal_matches(principal: str, identity: str) -> bool:
    """True when ``identity`` is ``principal`` or falls under its ``*@domain`` pattern.

    Domains compare case-insensitively and as whole strings: ``*@corp.com`` matches
    ``x@corp.com`` only, not ``x@sub.corp.com``, ``x@evil-corp.com`` or
    ``x@corp.com.evil.org``. A malformed pattern (``*``, ``*@``, ``a*@corp.com``) matches
    nothing: fail closed rather than guess what the writer meant.
    """
    if principal.startswith("*"):
        domain = _pattern_domain(principal)
        if domain is None:
            return False
        local, at, id_domain = identity.rpartition("@")
        return bool(at) and bool(local) and id_domain.lower() == domain
    return normalize_identity(principal) == normalize_identity(identity)


def matching_authorizations(record: KeyRecord, identity: str) -> list[Authorization]:
    """The authorization entries that govern ``identity`` on ``record``, in stored order.

    An exact entry takes precedence: when one exists it alone is returned, so an owner can
    carve one person out of a domain grant with a disabled exact entry. Without an exact
    entry, every matching ``*@domain`` entry is returned and any of them may grant.
    """
    wanted = normalize_identity(identity)
    exact: list[Authorization] = []
    patterns: list[Authorization] = []
    for entry in record.authorizations:
        if entry.principal.startswith("*"):
            if principal_matches(entry.principal, identity):
                patterns.append(entry)
        elif normalize_identity(entry.principal) == wanted:
            exact.append(entry)
    return exact or patterns


def validate_principal(p: object) -> str:
    """Check a principal's syntax and return its normalized form.

    Accepted: an exact identity (any printable ASCII without spaces or ``*``; when it has an
    ``@`` the part after the last one must be a DNS name) or ``*@domain`` with a domain of
    at least two labels. Raises :class:`InvalidRequest` naming ``principal`` otherwise.
    """
    if not isinstance(p, str) or not p or len(p) > _MAX_PRINCIPAL:
        raise InvalidRequest("principal: must be a non-empty string of at most 254 characters")
    if p.startswith("*"):
        if _pattern_domain(p) is None:
            raise InvalidRequest(
                "principal: a pattern must be '*@domain' with a DNS domain of two labels or more"
            )
        return normalize_identity(p)
    if "*" in p or _LOCAL.fullmatch(p) is None:
        raise InvalidRequest(
            "principal: printable ASCII only, no spaces, '*' only in a '*@domain' pattern"
        )
    local, at, domain = p.rpartition("@")
    if at and (not local or not _valid_domain(domain, min_labels=1)):
        raise InvalidRequest("principal: the part after '@' must be a DNS domain")
    return normalize_identity(p)


# --- networks ----------------------------------------------------------------------------------


def _unmap_network(net: _NetworkT) -> _NetworkT:
    """An IPv6 network inside ``::ffff:0:0/96`` as the IPv4 network it denotes."""
    if (
        isinstance(net, ipaddress.IPv6Network)
        and net.prefixlen >= 96
        and net.network_address.ipv4_mapped is not None
    ):
        return ipaddress.IPv4Network((net.network_address.ipv4_mapped, net.prefixlen - 96))
    return net


def _unmap_address(addr: _AddressT) -> _AddressT:
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _parse_network(text: object) -> _NetworkT | None:
    if not isinstance(text, str) or "%" in text:
        return None
    try:
        return _unmap_network(ipaddress.ip_network(text, strict=True))
    except ValueError:
        return None


def validate_networks(nets: object) -> tuple[str, ...]:
    """Normalized CIDR strings for ``rules.allowed_networks``.

    Host bits must be zero (``10.0.0.1/8`` is refused: the writer probably meant something
    else); a bare address is a /32 or /128; IPv4-mapped IPv6 networks become IPv4; scope ids
    are refused; duplicates are dropped. An empty list is refused: it would lock every
    caller, the owner included — ``disable-key`` says that more clearly. ``nets`` is typed
    ``object`` (as ``p`` above): the checks below, not a compiled type check, refuse a
    value of the wrong type, with an error that names it.
    """
    if isinstance(nets, str | bytes) or not isinstance(nets, Sequence):
        raise InvalidRequest("allowed_networks: must be an array of CIDR strings")
    if not nets:
        raise InvalidRequest("allowed_networks: must not be empty (omit it to allow any)")
    if len(nets) > MAX_NETWORKS:
        raise InvalidRequest(f"allowed_networks: at most {MAX_NETWORKS} networks")
    out: list[str] = []
    for index, text in enumerate(nets):
        net = _parse_network(text) if isinstance(text, str) else None
        if net is None:
            shown = repr(text)[:64] if isinstance(text, str) else type(text).__name__
            raise InvalidRequest(f"allowed_networks[{index}]: not a CIDR network: {shown}")
        norm = str(net)
        if norm not in out:
            out.append(norm)
    return tuple(out)


def _address_allowed(ip: str | None, networks: Sequence[str]) -> bool:
    """Fail closed: no address, a malformed address or a malformed rule never matches."""
    if ip is None:
        return False
    try:
        addr = _unmap_address(ipaddress.ip_address(ip))
    except ValueError:
        return False
    for text in networks:
        net = _parse_network(text)
        if net is not None and net.version == addr.version and addr in net:
            return True
    return False


# --- decisions ---------------------------------------------------------------------------------


def _in_window(now: int, not_before: int | None, not_after: int | None) -> Reason | None:
    """Closed interval [not_before, not_after]; ``None`` bounds are open."""
    if not_before is not None and now < not_before:
        return Reason.NOT_YET_VALID
    if not_after is not None and now > not_after:
        return Reason.DATA_EXPIRED
    return None


_STATUS_REASON: dict[KeyStatus, Reason] = {
    KeyStatus.DISABLED: Reason.KEY_DISABLED,
    KeyStatus.PENDING_DESTRUCTION: Reason.KEY_PENDING_DESTRUCTION,
    KeyStatus.DESTROYED: Reason.KEY_DESTROYED,
}


def _entry_refusal(entry: Authorization, right: Right, now: int) -> tuple[int, Reason | None]:
    """SPEC §6 step 4 for one entry: (how far it got, first failing reason or None)."""
    if entry.status != AuthorizationStatus.ACTIVE:
        return 0, Reason.AUTHORIZATION_DISABLED
    if right not in entry.rights:
        return 1, Reason.NOT_AUTHORIZED
    window = _in_window(now, entry.not_before, entry.not_after)
    return 2, window


def _entries_refusal(entries: Sequence[Authorization], right: Right, now: int) -> Reason | None:
    """None when any entry grants ``right`` now; else the reason of the entry that got
    furthest through step 4 (ties: the first in stored order), so the answer does not
    depend on the order pattern entries were added in more than it must."""
    best: tuple[int, Reason] | None = None
    for entry in entries:
        stage, reason = _entry_refusal(entry, right, now)
        if reason is None:
            return None
        if best is None or stage > best[0]:
            best = (stage, reason)
    return Reason.NOT_AUTHORIZED if best is None else best[1]


def _is_owner(record: KeyRecord, user: str) -> bool:
    return normalize_identity(record.owner) == normalize_identity(user)


def decide_use(record: KeyRecord, caller: Actor, now: int) -> Reason | None:
    """SPEC §6 steps 2–5 for ``decrypt`` / ``get-data-key``; None means GRANTED.

    The order is the contract: membership first, so a stranger always gets
    ``not_authorized`` and learns nothing about the key's status or windows. On a grant the
    caller increments ``decryptions`` atomically with the check of ``max_decryptions``.
    """
    owner = _is_owner(record, caller.user)
    entries = matching_authorizations(record, caller.user)
    # Step 2: owner or listed (whatever the entry's status).
    if not owner and not entries:
        return Reason.NOT_AUTHORIZED
    # Step 3: the key itself.
    status_reason = _STATUS_REASON.get(record.status)
    if status_reason is not None:
        return status_reason
    if record.status != KeyStatus.ACTIVE:  # an unknown status fails closed
        return Reason.KEY_DISABLED
    if now >= record.expires_at:
        return Reason.KEY_EXPIRED
    window = _in_window(now, record.not_before, record.not_after)
    if window is not None:
        return window
    # Step 4: the caller's own authorization (the owner needs none).
    if not owner:
        refusal = _entries_refusal(entries, Right.DECRYPT, now)
        if refusal is not None:
            return refusal
    # Step 5: rules, for everyone including the owner.
    rules = record.rules
    if rules.allowed_networks is not None and not _address_allowed(
        caller.ip, rules.allowed_networks
    ):
        return Reason.NETWORK_NOT_ALLOWED
    if rules.max_decryptions is not None and record.decryptions >= rules.max_decryptions:
        return Reason.MAX_DECRYPTIONS_REACHED
    return None


def require_use(record: KeyRecord, caller: Actor, now: int) -> None:
    """:func:`decide_use`, refusing with ``AccessDenied(reason)`` unless it grants."""
    reason = decide_use(record, caller, now)
    if reason is not None:
        raise AccessDenied(reason)


def can_manage(record: KeyRecord, user: str, now: int) -> bool:
    """Owner, or a governing authorization that is active, in its window, with ``manage``.

    Key status does not matter here (management works on disabled keys); see
    :func:`management_refusal` for what a manager may still not do.
    """
    if _is_owner(record, user):
        return True
    entries = matching_authorizations(record, user)
    return bool(entries) and _entries_refusal(entries, Right.MANAGE, now) is None


def management_refusal(record: KeyRecord, *, allow_pending: bool) -> Reason | None:
    """Why a management operation on a key the caller may manage is refused, or None.

    SPEC §10: a destroyed key refuses every change (``key_destroyed``); a key pending
    destruction refuses all but ``cancel-destruction`` and ``destroy-key`` (which pass
    ``allow_pending=True``).
    """
    if record.status == KeyStatus.DESTROYED:
        return Reason.KEY_DESTROYED
    if record.status == KeyStatus.PENDING_DESTRUCTION and not allow_pending:
        return Reason.KEY_PENDING_DESTRUCTION
    return None


def display_status(record: KeyRecord, now: int) -> ListStatus:
    """The ``list-keys`` status: ``expired`` for an active key from ``expires_at`` on."""
    if record.status == KeyStatus.ACTIVE and now >= record.expires_at:
        return ListStatus.EXPIRED
    return ListStatus(record.status.value)
