"""SPEC §6 decision tables for sceau.core.policy."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sceau.core.model import Authorization, KeyRecord, Rules
from sceau.core.policy import (
    Actor,
    can_manage,
    decide_use,
    display_status,
    management_refusal,
    matching_authorizations,
    principal_matches,
    validate_networks,
    validate_principal,
)
from sceau.errors import InvalidRequest
from sceau.vocab import AuthorizationStatus, KeyStatus, ListStatus, Reason, Right

NOW = 1_800_000_000
OWNER = "alice@corp.com"
BOB = "bob@corp.com"
STRANGER = "eve@elsewhere.org"
ACTIVE = AuthorizationStatus.ACTIVE
DISABLED = AuthorizationStatus.DISABLED
D = frozenset({Right.DECRYPT})
M = frozenset({Right.MANAGE})
DM = frozenset({Right.DECRYPT, Right.MANAGE})


def auth(
    principal: str = BOB,
    rights: frozenset[Right] = D,
    status: AuthorizationStatus = ACTIVE,
    not_before: int | None = None,
    not_after: int | None = None,
) -> Authorization:
    return Authorization(principal, rights, status, not_before, not_after, OWNER, NOW - 100)


def record(**changes: Any) -> KeyRecord:
    base = KeyRecord(
        key_id=bytes(16),
        seed=bytes(32),
        master_version=1,
        owner=OWNER,
        application="app1",
        name=None,
        tag=None,
        created_at=NOW - 100,
        expires_at=NOW + 1000,
        not_before=None,
        not_after=None,
        status=KeyStatus.ACTIVE,
        destroy_at=None,
        destroyed_at=None,
        authorizations=(auth(),),
        rules=Rules(),
        decryptions=0,
        revision=1,
    )
    return dataclasses.replace(base, **changes)


def caller(user: str, ip: str | None = "10.1.2.3") -> Actor:
    return Actor(app_id="app1", user=user, ip=ip)


# --- every reason, and the order of the checks ---------------------------------------------

NETS = Rules(allowed_networks=("192.0.2.0/24",))
MAXED = Rules(max_decryptions=5)

DECISIONS = [
    # (id, record changes, user, expected)
    ("owner-granted", {}, OWNER, None),
    ("recipient-granted", {}, BOB, None),
    ("stranger", {}, STRANGER, Reason.NOT_AUTHORIZED),
    ("stranger-disabled-key", {"status": KeyStatus.DISABLED}, STRANGER, Reason.NOT_AUTHORIZED),
    ("stranger-destroyed-key", {"status": KeyStatus.DESTROYED}, STRANGER, Reason.NOT_AUTHORIZED),
    ("stranger-expired-key", {"expires_at": NOW}, STRANGER, Reason.NOT_AUTHORIZED),
    (
        "stranger-vs-disabled-auth",
        {"authorizations": (auth(status=DISABLED),)},
        STRANGER,
        Reason.NOT_AUTHORIZED,
    ),
    ("key-disabled", {"status": KeyStatus.DISABLED}, BOB, Reason.KEY_DISABLED),
    ("owner-key-disabled", {"status": KeyStatus.DISABLED}, OWNER, Reason.KEY_DISABLED),
    ("key-pending", {"status": KeyStatus.PENDING_DESTRUCTION}, BOB, Reason.KEY_PENDING_DESTRUCTION),
    ("key-destroyed", {"status": KeyStatus.DESTROYED, "seed": None}, BOB, Reason.KEY_DESTROYED),
    ("key-expired", {"expires_at": NOW - 1}, BOB, Reason.KEY_EXPIRED),
    ("not-yet-valid", {"not_before": NOW + 1}, BOB, Reason.NOT_YET_VALID),
    ("data-expired", {"not_after": NOW - 1}, BOB, Reason.DATA_EXPIRED),
    (
        "authorization-disabled",
        {"authorizations": (auth(status=DISABLED),)},
        BOB,
        Reason.AUTHORIZATION_DISABLED,
    ),
    ("manage-only-recipient", {"authorizations": (auth(rights=M),)}, BOB, Reason.NOT_AUTHORIZED),
    (
        "auth-not-yet-valid",
        {"authorizations": (auth(not_before=NOW + 1),)},
        BOB,
        Reason.NOT_YET_VALID,
    ),
    ("auth-expired", {"authorizations": (auth(not_after=NOW - 1),)}, BOB, Reason.DATA_EXPIRED),
    ("network-not-allowed", {"rules": NETS}, BOB, Reason.NETWORK_NOT_ALLOWED),
    ("owner-network-not-allowed", {"rules": NETS}, OWNER, Reason.NETWORK_NOT_ALLOWED),
    ("max-reached", {"rules": MAXED, "decryptions": 5}, BOB, Reason.MAX_DECRYPTIONS_REACHED),
    ("max-above", {"rules": MAXED, "decryptions": 6}, OWNER, Reason.MAX_DECRYPTIONS_REACHED),
    ("max-one-left", {"rules": MAXED, "decryptions": 4}, BOB, None),
    ("max-zero", {"rules": Rules(max_decryptions=0)}, OWNER, Reason.MAX_DECRYPTIONS_REACHED),
    # Order: step 3 (key) before step 4 (authorization) before step 5 (rules).
    (
        "order-status-before-expiry",
        {"status": KeyStatus.DISABLED, "expires_at": NOW - 1},
        BOB,
        Reason.KEY_DISABLED,
    ),
    (
        "order-expiry-before-window",
        {"expires_at": NOW - 1, "not_after": NOW - 5},
        BOB,
        Reason.KEY_EXPIRED,
    ),
    (
        "order-key-before-auth",
        {"not_before": NOW + 1, "authorizations": (auth(status=DISABLED),)},
        BOB,
        Reason.NOT_YET_VALID,
    ),
    (
        "order-disabled-before-right",
        {"authorizations": (auth(status=DISABLED, rights=M),)},
        BOB,
        Reason.AUTHORIZATION_DISABLED,
    ),
    (
        "order-right-before-window",
        {"authorizations": (auth(rights=M, not_after=NOW - 1),)},
        BOB,
        Reason.NOT_AUTHORIZED,
    ),
    (
        "order-auth-before-network",
        {"rules": NETS, "authorizations": (auth(status=DISABLED),)},
        BOB,
        Reason.AUTHORIZATION_DISABLED,
    ),
    (
        "order-network-before-max",
        {"rules": Rules(("192.0.2.0/24",), 1), "decryptions": 1},
        BOB,
        Reason.NETWORK_NOT_ALLOWED,
    ),
    # Owner skips step 4 even when listed with a disabled entry.
    ("owner-with-disabled-entry", {"authorizations": (auth(OWNER, status=DISABLED),)}, OWNER, None),
    # Patterns.
    ("pattern-grants", {"authorizations": (auth("*@corp.com"),)}, BOB, None),
    ("pattern-case-insensitive", {"authorizations": (auth("*@Corp.COM"),)}, BOB, None),
    (
        "pattern-other-domain",
        {"authorizations": (auth("*@corp.com"),)},
        "x@evil-corp.com",
        Reason.NOT_AUTHORIZED,
    ),
    (
        "exact-disabled-beats-pattern",
        {"authorizations": (auth("*@corp.com"), auth(BOB, status=DISABLED))},
        BOB,
        Reason.AUTHORIZATION_DISABLED,
    ),
    (
        "exact-manage-beats-pattern",
        {"authorizations": (auth("*@corp.com"), auth(BOB, rights=M))},
        BOB,
        Reason.NOT_AUTHORIZED,
    ),
    (
        "pattern-disabled-for-member",
        {"authorizations": (auth("*@corp.com", status=DISABLED),)},
        BOB,
        Reason.AUTHORIZATION_DISABLED,
    ),
    ("identity-domain-case", {}, "bob@CORP.com", None),
]


@pytest.mark.parametrize(
    ("changes", "user", "expected"),
    [row[1:] for row in DECISIONS],
    ids=[row[0] for row in DECISIONS],
)
def test_decide_use(changes: dict[str, Any], user: str, expected: Reason | None) -> None:
    assert decide_use(record(**changes), caller(user, ip="10.1.2.3"), NOW) == expected


def test_every_reason_is_reachable() -> None:
    produced = {row[3] for row in DECISIONS} - {None}
    assert produced == set(Reason)


# --- window boundaries ---------------------------------------------------------------------

T = NOW + 50


def _bound_rows() -> list[Any]:
    rows = []
    # (name, record changes, expected at T-1, T, T+1)
    specs = [
        ("expires_at", {"expires_at": T}, (None, Reason.KEY_EXPIRED, Reason.KEY_EXPIRED)),
        ("not_before", {"not_before": T}, (Reason.NOT_YET_VALID, None, None)),
        ("not_after", {"not_after": T}, (None, None, Reason.DATA_EXPIRED)),
        (
            "auth.not_before",
            {"authorizations": (auth(not_before=T),)},
            (Reason.NOT_YET_VALID, None, None),
        ),
        (
            "auth.not_after",
            {"authorizations": (auth(not_after=T),)},
            (None, None, Reason.DATA_EXPIRED),
        ),
    ]
    for name, changes, expected in specs:
        for delta, exp in zip((-1, 0, 1), expected, strict=True):
            rows.append(pytest.param(changes, T + delta, exp, id=f"{name}{delta:+d}"))
    return rows


@pytest.mark.parametrize(("changes", "now", "expected"), _bound_rows())
def test_window_bounds(changes: dict[str, Any], now: int, expected: Reason | None) -> None:
    assert decide_use(record(**changes), caller(BOB), now) == expected


# --- networks ------------------------------------------------------------------------------

NETWORK_ROWS = [
    ("v4-inside", ("10.0.0.0/8",), "10.1.2.3", None),
    ("v4-outside", ("10.0.0.0/8",), "11.0.0.1", Reason.NETWORK_NOT_ALLOWED),
    ("v4-host", ("10.1.2.3/32",), "10.1.2.3", None),
    ("v6-inside", ("2001:db8::/32",), "2001:db8::1", None),
    ("v6-outside", ("2001:db8::/32",), "2001:db9::1", Reason.NETWORK_NOT_ALLOWED),
    ("v6-uppercase", ("2001:db8::/32",), "2001:DB8::1", None),
    ("mapped-caller-in-v4", ("10.0.0.0/8",), "::ffff:10.1.2.3", None),
    ("mapped-caller-out-v4", ("10.0.0.0/8",), "::ffff:11.1.2.3", Reason.NETWORK_NOT_ALLOWED),
    ("v4-caller-mapped-rule", ("::ffff:10.0.0.0/104",), "10.1.2.3", None),
    ("v4-not-in-v6-any", ("::/0",), "10.1.2.3", Reason.NETWORK_NOT_ALLOWED),
    ("v6-not-in-v4-any", ("0.0.0.0/0",), "2001:db8::1", Reason.NETWORK_NOT_ALLOWED),
    ("second-network", ("192.0.2.0/24", "10.0.0.0/8"), "10.9.9.9", None),
    ("no-ip", ("10.0.0.0/8",), None, Reason.NETWORK_NOT_ALLOWED),
    ("empty-ip", ("10.0.0.0/8",), "", Reason.NETWORK_NOT_ALLOWED),
    ("garbage-ip", ("10.0.0.0/8",), "not-an-ip", Reason.NETWORK_NOT_ALLOWED),
    ("octet-overflow", ("10.0.0.0/8",), "10.0.0.256", Reason.NETWORK_NOT_ALLOWED),
    ("leading-zero", ("10.0.0.0/8",), "010.0.0.1", Reason.NETWORK_NOT_ALLOWED),
    ("ip-with-port", ("10.0.0.0/8",), "10.1.2.3:443", Reason.NETWORK_NOT_ALLOWED),
    ("cidr-as-ip", ("10.0.0.0/8",), "10.0.0.0/8", Reason.NETWORK_NOT_ALLOWED),
    ("empty-rule-list", (), "10.1.2.3", Reason.NETWORK_NOT_ALLOWED),
    ("malformed-stored-rule", ("nonsense", "10.0.0.0/8"), "10.1.2.3", None),
    ("only-malformed-rule", ("nonsense",), "10.1.2.3", Reason.NETWORK_NOT_ALLOWED),
    ("no-rule-no-ip", None, None, None),
]


@pytest.mark.parametrize(
    ("nets", "ip", "expected"), [r[1:] for r in NETWORK_ROWS], ids=[r[0] for r in NETWORK_ROWS]
)
def test_networks(nets: tuple[str, ...] | None, ip: str | None, expected: Reason | None) -> None:
    rec = record(rules=Rules(allowed_networks=nets))
    assert decide_use(rec, caller(BOB, ip=ip), NOW) == expected


# --- principals ----------------------------------------------------------------------------

MATCH_ROWS = [
    ("exact", "alice@corp.com", "alice@corp.com", True),
    ("exact-domain-case", "alice@Corp.COM", "alice@corp.com", True),
    ("exact-local-case-differs", "Alice@corp.com", "alice@corp.com", False),
    ("exact-no-at", "svc-batch", "svc-batch", True),
    ("pattern-case", "*@Corp.COM", "alice@corp.com", True),
    ("pattern-identity-case", "*@corp.com", "alice@CORP.COM", True),
    ("pattern-suffix-label", "*@corp.com", "x@evil-corp.com", False),
    ("pattern-prefix", "*@corp.com", "x@corp.com.evil.org", False),
    ("pattern-subdomain", "*@corp.com", "x@sub.corp.com", False),
    ("pattern-no-local", "*@corp.com", "@corp.com", False),
    ("pattern-no-at", "*@corp.com", "corp.com", False),
    ("pattern-two-at", "*@corp.com", "a@b@corp.com", True),
    ("pattern-at-in-domain", "*@corp.com", "a@corp.com@evil.org", False),
    ("star-alone", "*", "alice@corp.com", False),
    ("star-alone-vs-star", "*", "*", False),
    ("star-at", "*@", "alice@", False),
    ("star-in-local", "a*@corp.com", "ab@corp.com", False),
    ("pattern-single-label", "*@com", "x@com", False),
    ("pattern-trailing-dot", "*@corp.com.", "x@corp.com.", False),
]


@pytest.mark.parametrize(
    ("principal", "identity", "expected"),
    [r[1:] for r in MATCH_ROWS],
    ids=[r[0] for r in MATCH_ROWS],
)
def test_principal_matches(principal: str, identity: str, expected: bool) -> None:
    assert principal_matches(principal, identity) is expected


def test_matching_authorizations_exact_wins() -> None:
    exact = auth(BOB, status=DISABLED)
    pattern = auth("*@corp.com")
    rec = record(authorizations=(pattern, exact, auth("carol@corp.com")))
    assert matching_authorizations(rec, BOB) == [exact]
    assert matching_authorizations(rec, "dave@corp.com") == [pattern]
    assert matching_authorizations(rec, STRANGER) == []


VALID_PRINCIPALS = [
    ("alice@corp.com", "alice@corp.com"),
    ("Alice@CORP.com", "Alice@corp.com"),
    ("*@Corp.COM", "*@corp.com"),
    ("*@xn--bcher-kva.example", "*@xn--bcher-kva.example"),
    ("svc-batch", "svc-batch"),
    ("ops@localhost", "ops@localhost"),
    ("a+tag@sub.corp.com", "a+tag@sub.corp.com"),
]


@pytest.mark.parametrize(("given_", "normalized"), VALID_PRINCIPALS)
def test_validate_principal_accepts(given_: str, normalized: str) -> None:
    assert validate_principal(given_) == normalized


INVALID_PRINCIPALS = [
    "",
    "*",
    "*@",
    "*@com",
    "**@corp.com",
    "a*@corp.com",
    "*.corp.com",
    "*@corp..com",
    "*@-corp.com",
    "*@corp.com.",
    "*@corp_x.com",
    "alice@",
    "@corp.com",
    "al ice@corp.com",
    "alice@corp.com ",
    "alice\n@corp.com",
    "alicé@corp.com",
    "alice@cörp.com",
    "a" * 255,
    "alice@corp.com\u202e",
    "*@" + "a" * 64 + ".com",
]


@pytest.mark.parametrize("bad", INVALID_PRINCIPALS)
def test_validate_principal_refuses(bad: str) -> None:
    with pytest.raises(InvalidRequest, match="principal"):
        validate_principal(bad)


@pytest.mark.parametrize("bad", [None, 3, b"alice@corp.com"])
def test_validate_principal_refuses_non_strings(bad: Any) -> None:
    with pytest.raises(InvalidRequest, match="principal"):
        validate_principal(bad)


# --- networks validation -------------------------------------------------------------------

VALID_NETWORKS = [
    (["10.0.0.0/8"], ("10.0.0.0/8",)),
    (["10.1.2.3"], ("10.1.2.3/32",)),
    (["2001:DB8:0:0::/32"], ("2001:db8::/32",)),
    (["::ffff:10.0.0.0/104"], ("10.0.0.0/8",)),
    (["::ffff:10.1.2.3"], ("10.1.2.3/32",)),
    (["10.0.0.0/8", "10.0.0.0/8", "::1"], ("10.0.0.0/8", "::1/128")),
]


@pytest.mark.parametrize(("nets", "expected"), VALID_NETWORKS)
def test_validate_networks_accepts(nets: list[str], expected: tuple[str, ...]) -> None:
    assert validate_networks(nets) == expected


@pytest.mark.parametrize(
    ("nets", "index"),
    [
        (["10.0.0.0/8", "10.0.0.1/8"], 1),  # host bits set
        (["10.0.0.0/33"], 0),
        (["garbage"], 0),
        (["fe80::%eth0/64"], 0),
        (["10.0.0.0/8", 7], 1),
        (["010.0.0.0/8"], 0),
        ([" 10.0.0.0/8"], 0),
    ],
)
def test_validate_networks_names_the_bad_one(nets: list[Any], index: int) -> None:
    with pytest.raises(InvalidRequest, match=rf"allowed_networks\[{index}\]"):
        validate_networks(nets)


@pytest.mark.parametrize("nets", [[], "10.0.0.0/8", ["10.0.0.0/8"] * 257])
def test_validate_networks_refuses_shape(nets: Any) -> None:
    with pytest.raises(InvalidRequest, match="allowed_networks"):
        validate_networks(nets)


# --- management ----------------------------------------------------------------------------

MANAGE_ROWS = [
    ("owner-no-entries", {"authorizations": ()}, OWNER, True),
    ("owner-disabled-key", {"status": KeyStatus.DISABLED}, OWNER, True),
    ("decrypt-only", {}, BOB, False),
    ("manager", {"authorizations": (auth(rights=M),)}, BOB, True),
    (
        "manager-disabled-key",
        {"authorizations": (auth(rights=DM),), "status": KeyStatus.DISABLED},
        BOB,
        True,
    ),
    ("manager-entry-disabled", {"authorizations": (auth(rights=M, status=DISABLED),)}, BOB, False),
    ("manager-not-yet", {"authorizations": (auth(rights=M, not_before=NOW + 1),)}, BOB, False),
    ("manager-at-start", {"authorizations": (auth(rights=M, not_before=NOW),)}, BOB, True),
    ("manager-at-end", {"authorizations": (auth(rights=M, not_after=NOW),)}, BOB, True),
    ("manager-past", {"authorizations": (auth(rights=M, not_after=NOW - 1),)}, BOB, False),
    ("pattern-manager", {"authorizations": (auth("*@corp.com", rights=M),)}, BOB, True),
    (
        "exact-decrypt-beats-pattern-manage",
        {"authorizations": (auth("*@corp.com", rights=M), auth(BOB))},
        BOB,
        False,
    ),
    ("stranger", {"authorizations": (auth(rights=DM),)}, STRANGER, False),
]


@pytest.mark.parametrize(
    ("changes", "user", "expected"), [r[1:] for r in MANAGE_ROWS], ids=[r[0] for r in MANAGE_ROWS]
)
def test_can_manage(changes: dict[str, Any], user: str, expected: bool) -> None:
    assert can_manage(record(**changes), user, NOW) is expected


@pytest.mark.parametrize(
    ("status", "allow_pending", "expected"),
    [
        (KeyStatus.ACTIVE, False, None),
        (KeyStatus.DISABLED, False, None),
        (KeyStatus.PENDING_DESTRUCTION, False, Reason.KEY_PENDING_DESTRUCTION),
        (KeyStatus.PENDING_DESTRUCTION, True, None),
        (KeyStatus.DESTROYED, False, Reason.KEY_DESTROYED),
        (KeyStatus.DESTROYED, True, Reason.KEY_DESTROYED),
    ],
)
def test_management_refusal(
    status: KeyStatus, allow_pending: bool, expected: Reason | None
) -> None:
    assert management_refusal(record(status=status), allow_pending=allow_pending) == expected


@pytest.mark.parametrize(
    ("status", "now", "expected"),
    [
        (KeyStatus.ACTIVE, NOW + 999, ListStatus.ACTIVE),
        (KeyStatus.ACTIVE, NOW + 1000, ListStatus.EXPIRED),
        (KeyStatus.DISABLED, NOW + 5000, ListStatus.DISABLED),
        (KeyStatus.PENDING_DESTRUCTION, NOW, ListStatus.PENDING_DESTRUCTION),
        (KeyStatus.DESTROYED, NOW + 5000, ListStatus.DESTROYED),
    ],
)
def test_display_status(status: KeyStatus, now: int, expected: ListStatus) -> None:
    assert display_status(record(status=status), now) == expected


# --- properties ----------------------------------------------------------------------------

IDENTITIES = [OWNER, BOB, STRANGER, "x@evil-corp.com", "x@sub.corp.com", "svc", "", "@", "*"]
PRINCIPALS = IDENTITIES + ["*@corp.com", "*@CORP.COM", "*@", "*@com", "a*@corp.com"]
times = st.one_of(st.none(), st.integers(NOW - 10, NOW + 10))
ips = st.one_of(
    st.none(),
    st.text(max_size=40),
    st.ip_addresses().map(str),
    st.ip_addresses(v=4).map(lambda a: f"::ffff:{a}"),
)
networks = st.one_of(
    st.none(),
    st.lists(
        st.one_of(
            st.sampled_from(["10.0.0.0/8", "::/0", "0.0.0.0/0", "::ffff:10.0.0.0/104", "junk"]),
            st.text(max_size=20),
        ),
        max_size=4,
    ).map(tuple),
)
authorizations = st.builds(
    Authorization,
    principal=st.sampled_from(PRINCIPALS),
    rights=st.frozensets(st.sampled_from(list(Right))),
    status=st.sampled_from(list(AuthorizationStatus)),
    not_before=times,
    not_after=times,
    added_by=st.just(OWNER),
    added_at=st.just(NOW),
)
records = st.builds(
    record,
    owner=st.sampled_from(IDENTITIES),
    status=st.sampled_from(list(KeyStatus)),
    expires_at=st.integers(NOW - 10, NOW + 10),
    not_before=times,
    not_after=times,
    authorizations=st.lists(authorizations, max_size=4).map(tuple),
    rules=st.builds(
        Rules,
        allowed_networks=networks,
        max_decryptions=st.one_of(st.none(), st.integers(-1, 5)),
    ),
    decryptions=st.integers(0, 6),
)
callers = st.builds(
    Actor,
    app_id=st.just("app1"),
    user=st.one_of(st.sampled_from(IDENTITIES), st.text(max_size=30)),
    ip=ips,
)


@settings(max_examples=400, deadline=None)
@given(rec=records, who=callers, now=st.integers(NOW - 20, NOW + 20))
def test_decide_use_total(rec: KeyRecord, who: Actor, now: int) -> None:
    result = decide_use(rec, who, now)
    assert result is None or isinstance(result, Reason)
    listed = bool(matching_authorizations(rec, who.user))
    if who.user == rec.owner:
        assert result != Reason.NOT_AUTHORIZED
    elif not listed:
        # A stranger learns nothing about the key: always the same answer.
        assert result == Reason.NOT_AUTHORIZED
    if result is None:
        assert rec.status == KeyStatus.ACTIVE and now < rec.expires_at
        assert can_manage(rec, who.user, now) or listed
