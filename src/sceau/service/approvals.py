"""Separation of duties: console actions that could open a path to data wait for other
admins (SECURITY-CASES 46, docs/console.md "Separation of duties").

No one admin acting alone may obtain a data key or plaintext of an item they are not
authorized on. An admin *requests* a gated action (:class:`~sceau.vocab.Gated`): its full
parameters are stored, sealed, in an ``approvals`` row with a human summary. Other admins,
up to the quorum (``console.approval_quorum``, the requester included), *approve* it; the
last approval runs the action in the same audited transaction, and that record names both
sides (``details.approval = {id, requested_by, approved_by, approvers}``, ``user`` the admin
who acted last). Any admin may *reject* a pending request (the requester withdraws it).

Everything is checked again where it counts, inside the writer's transaction:

- the request row verifies against its seal (``integrity_failure``, audited): a row written
  or edited with SQL alone is never acted on;
- it is pending and not expired; the approver is an active admin, not the requester and not
  an earlier approver; the requester is still an active admin;
- the action itself re-checks what it needs (the account does not exist yet, the signing key
  is not registered, the application's users did not move since the request ...): it is the
  same :class:`~sceau.admin.Change` the CLI runs, built from the stored parameters.

A request is also checked when it is made, by running its change in a savepoint that is
rolled back (a dry run): a request that could never succeed is refused at once.

With fewer active admins than the quorum, the console offers none of these actions; the
host operator, trusted through the data dir and the keystore, runs them with the CLI
(``sceau account ...``, ``sceau app ...``), audited with ``details.via = "host_operator"``.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sceau import admin
from sceau.admin import Change, ChangeRunner
from sceau.core.b64 import b64u_decode, b64u_encode
from sceau.errors import AccessError, InvalidRequest, NotFound, SceauError
from sceau.keystore.base import Keystore
from sceau.service.accounts import hash_password
from sceau.service.console import keyactions
from sceau.service.workspace.admin import cse_admin_add_change, cse_admin_email
from sceau.store import approvals as store
from sceau.store.applications import ANY_USER
from sceau.store.approvals import ApprovalRow, encode_payload
from sceau.store.writer import Tx, savepoint
from sceau.vocab import Action, ApprovalStatus, ErrorCode, Gated, Right, Role

if TYPE_CHECKING:
    from sceau.config import Config
    from sceau.service.runtime import Runtime

__all__ = [
    "ApprovalRefused",
    "Ask",
    "Decision",
    "GateState",
    "RequestView",
    "approve",
    "gate_state",
    "list_requests",
    "reject",
    "request",
]

MAX_SUMMARY = 1000
# The password of a dry run: never stored (the savepoint is rolled back), never verifiable.
_NO_PASSWORD = "!dry-run"  # noqa: S105


class ApprovalRefused(AccessError):
    """A request or a decision the rules refuse (403); ``details.refused`` says which rule."""

    code = ErrorCode.ACCESS_DENIED
    title = "Refused"


# --- policy: which console actions are gated --------------------------------------------------


# Roles whose new accounts (or a role change to which) are gated. A ``user`` account's name is
# the identity the API acts for: creating one named like a key's owner opens that owner's data.
# An ``admin`` account counts toward the quorum: a lone admin who could create one would
# approve their own requests. An ``auditor`` never decrypts, manages or approves anything.
GATED_ROLES = frozenset({Role.USER, Role.ADMIN})


def quorum(config: Config) -> int:
    """Admins a gated action needs, the requester included (2 to 5, validated at load)."""
    return config.console.approval_quorum


@dataclass(frozen=True)
class GateState:
    """The installation's admins as separation of duties counts them."""

    quorum: int
    admins: tuple[str, ...]

    @property
    def offered(self) -> bool:
        """The console offers gated actions only when a request could be approved."""
        return len(self.admins) >= self.quorum

    @property
    def single_admin(self) -> bool:
        return len(self.admins) <= 1


def gate_state(rt: Runtime) -> GateState:
    with rt.engines.read.connect() as conn:
        admins = admin.active_admins(conn, rt.keystore)
    return GateState(quorum(rt.config), tuple(admins))


# --- what a request holds ------------------------------------------------------------------------


@dataclass(frozen=True)
class Ask:
    """A gated action with its full parameters and the summary a person reads."""

    action: Gated
    params: dict[str, Any]
    summary: str


def _cut(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def ask_account_create(username: str, role: Role) -> Ask:
    return Ask(Gated.ACCOUNT_CREATE, {"username": username, "role": str(role)},
               f"Create the {role} account {_cut(username)}")


def ask_account_reset(username: str) -> Ask:
    return Ask(Gated.ACCOUNT_RESET, {"username": username},
               f"Reset the password of {_cut(username)} (a one-time password; the second "
               "factor is kept)")


def ask_account_role(username: str, role: Role, role_before: str) -> Ask:
    return Ask(Gated.ACCOUNT_ROLE, {"username": username, "role": str(role),
                                    "role_before": role_before},
               f"Change the role of {_cut(username)} from {role_before} to {role}")


def ask_totp_clear(username: str) -> Ask:
    return Ask(Gated.TOTP_CLEAR, {"username": username},
               f"Remove the two-factor secret of {_cut(username)}")


def ask_app_add(name: str, jwk: Mapping[str, Any], enc_jwk: Mapping[str, Any] | None,
                users: Sequence[str]) -> Ask:
    shown = ", ".join(users)
    every = " — EVERY user ('*')" if ANY_USER in users else ""
    return Ask(Gated.APP_ADD, {"name": name, "jwk": dict(jwk),
                               "enc_jwk": dict(enc_jwk) if enc_jwk is not None else None,
                               "users": list(users)},
               f"Register the application {_cut(name)!r} with signing key "
               f"{_cut(str(jwk.get('kid', '?')), 60)} ({jwk.get('alg', '?')}); it may assert: "
               f"{_cut(shown, 400)}{every}")


def ask_app_users(app_id: str, name: str, users: Sequence[str],
                  before: Sequence[str]) -> Ask:
    every = " — EVERY user ('*')" if ANY_USER in users else ""
    return Ask(Gated.APP_USERS, {"app_id": app_id, "users": list(users),
                                 "users_before": list(before)},
               f"Let the application {_cut(name)!r} ({app_id}) assert "
               f"{_cut(', '.join(users), 400)}{every} (was: {_cut(', '.join(before), 300)})")


def ask_app_key_add(app_id: str, name: str, jwk: Mapping[str, Any]) -> Ask:
    return Ask(Gated.APP_KEY_ADD, {"app_id": app_id, "jwk": dict(jwk)},
               f"Add the signing key {_cut(str(jwk.get('kid', '?')), 60)} "
               f"({jwk.get('alg', '?')}) to the application {_cut(name)!r} ({app_id})")


def ask_add_authorization(key_id: str, principal: str, rights: Sequence[str],
                          not_before: int | None, not_after: int | None) -> Ask:
    return Ask(Gated.ADD_AUTHORIZATION,
               {"key_id": key_id, "principal": principal, "rights": sorted(rights),
                "not_before": not_before, "not_after": not_after},
               f"Authorize {_cut(principal)} ({', '.join(sorted(rights)) or 'no right'}) on "
               f"the key {key_id}, through an admin's management of every key")


def ask_cse_admin_add(email: str) -> Ask:
    address = cse_admin_email(email)
    return Ask(Gated.CSE_ADMIN_ADD, {"email": address},
               f"Grant cse_admin to {_cut(address)}: its holder may unwrap every Google "
               "Workspace resource through the privileged endpoints (Takeout, eDiscovery)")


def ask_enable_authorization(key_id: str, principal: str) -> Ask:
    return Ask(Gated.ENABLE_AUTHORIZATION, {"key_id": key_id, "principal": principal},
               f"Enable the authorization of {_cut(principal)} on the key {key_id}, through "
               "an admin's management of every key")


# --- how each gated action runs ------------------------------------------------------------------


@dataclass(frozen=True)
class Env:
    """What a change is built with: the runtime, and the admin it runs as."""

    rt: Runtime
    actor: str

    @property
    def keystore(self) -> Keystore:
        return self.rt.keystore


Builder = Callable[[Env, Mapping[str, Any], str], Change]


def _add_authorization(env: Env, p: Mapping[str, Any], _pw: str) -> Change:
    key_id = b64u_decode(p["key_id"])
    rights = frozenset(Right(r) for r in p["rights"])

    def add(tx: Tx) -> Any:
        params = keyactions.authorization_params(key_id, p["principal"], rights,
                                                 p["not_before"], p["not_after"])
        # Through the admin's manage-any: that is what the approval allows.
        actor = keyactions.console_actor(env.actor, Role.ADMIN)
        return env.rt.lifecycle.add_authorization(actor, params, tx)

    return Change(Action.ADD_AUTHORIZATION, add)


def _enable_authorization(env: Env, p: Mapping[str, Any], _pw: str) -> Change:
    key_id = b64u_decode(p["key_id"])

    def enable(tx: Tx) -> Any:
        params = keyactions.principal_ref(key_id, p["principal"])
        actor = keyactions.console_actor(env.actor, Role.ADMIN)
        return env.rt.lifecycle.enable_authorization(actor, params, tx)

    return Change(Action.ENABLE_AUTHORIZATION, enable)


@dataclass(frozen=True)
class Spec:
    """How one gated action runs; ``issues_password`` for those that set a one-time one."""

    build: Builder
    issues_password: bool = False


SPECS: Mapping[Gated, Spec] = {
    Gated.ACCOUNT_CREATE: Spec(lambda env, p, pw: admin.account_create_change(
        env.keystore, p["username"], Role(p["role"]), pw), issues_password=True),
    Gated.ACCOUNT_RESET: Spec(lambda env, p, pw: admin.account_update_change(
        env.keystore, p["username"], password_hash=pw), issues_password=True),
    Gated.ACCOUNT_ROLE: Spec(lambda env, p, _pw: admin.account_update_change(
        env.keystore, p["username"], role=Role(p["role"]), expect_role=p["role_before"])),
    Gated.TOTP_CLEAR: Spec(lambda env, p, _pw: admin.account_update_change(
        env.keystore, p["username"], clear_totp=True)),
    Gated.APP_ADD: Spec(lambda env, p, _pw: admin.app_add_change(
        env.keystore, name=p["name"], jwk=p["jwk"], enc_jwk=p["enc_jwk"], users=p["users"])),
    Gated.APP_USERS: Spec(lambda env, p, _pw: admin.app_users_change(
        env.keystore, p["app_id"], p["users"], expect_before=p["users_before"])),
    Gated.APP_KEY_ADD: Spec(lambda env, p, _pw: admin.app_key_add_change(
        env.keystore, p["app_id"], p["jwk"])),
    Gated.ADD_AUTHORIZATION: Spec(_add_authorization),
    Gated.ENABLE_AUTHORIZATION: Spec(_enable_authorization),
    Gated.CSE_ADMIN_ADD: Spec(lambda env, p, _pw: cse_admin_add_change(
        env.keystore, p["email"], env.actor)),
}


_ISSUING = frozenset(str(g) for g, spec in SPECS.items() if spec.issues_password)


class _DryRun(Exception):  # noqa: N818 - control flow inside one job, never escapes
    """Rolls a dry run's savepoint back."""


def _dry_run(tx: Tx, change: Change) -> None:
    """Run ``change`` and undo it: it raises what the real one would raise now."""
    try:
        with savepoint(tx.conn, "sceau_dry"):
            change.fn(tx)
            raise _DryRun
    except _DryRun:
        pass


# --- request, approve, reject --------------------------------------------------------------------


def _refuse(tx: Tx, rule: str, message: str) -> ApprovalRefused:
    tx.ctx.details = {**tx.ctx.details, "refused": rule}
    return ApprovalRefused(message)


def _active_admin(tx: Tx, keystore: Keystore, username: str) -> list[str]:
    admins = admin.active_admins(tx.conn, keystore)
    if username not in admins:
        raise _refuse(tx, "not_admin", "only an active admin may do this")
    return admins


def request(runner: ChangeRunner, rt: Runtime, requester: str, ask: Ask) -> str:
    """Record a request for ``ask`` (audited ``APPROVAL_REQUEST``); returns its id.

    Refused when the installation has fewer active admins than the quorum, when the same
    request is already pending, or when the action could not run now (dry run).
    """
    if len(ask.summary) > MAX_SUMMARY:
        ask = dataclasses.replace(ask, summary=_cut(ask.summary, MAX_SUMMARY))
    spec = SPECS[ask.action]
    keystore = rt.keystore
    needed = quorum(rt.config)
    ttl = rt.config.console.approval_ttl_s
    approval_id = "apr_" + b64u_encode(secrets.token_bytes(12))
    payload = encode_payload(ask.params, [])

    def ask_for(tx: Tx) -> str:
        tx.ctx.details = {"approval_id": approval_id, "action": str(ask.action),
                          "summary": ask.summary}
        admins = _active_admin(tx, keystore, requester)
        if len(admins) < needed:
            raise _refuse(tx, "quorum_unmet", f"this needs {needed} active admins; the host "
                          "operator does it with the sceau command line")
        for pending in store.list_approvals(tx.conn, status=ApprovalStatus.PENDING):
            # Compared on the parameters alone (earlier approvals change the payload).
            if (pending.action == ask.action and pending.expires_at > tx.now
                    and encode_payload(pending.params, []) == payload):
                raise _refuse(tx, "duplicate", "the same request is already waiting "
                              f"({pending.approval_id})")
        details = dict(tx.ctx.details)
        _dry_run(tx, spec.build(Env(rt, requester), ask.params, _NO_PASSWORD))
        tx.ctx.details = details
        store.insert_approval(tx.conn, keystore.seal_row(ApprovalRow(
            approval_id=approval_id, action=str(ask.action), payload=payload,
            summary=ask.summary, requested_by=requester, requested_at=tx.now,
            expires_at=tx.now + ttl, status=str(ApprovalStatus.PENDING), decided_by=None,
            decided_at=None)))
        tx.ctx.details = {**details, "expires_at": tx.now + ttl, "quorum": needed}
        return approval_id

    result: str = runner.run(Action.APPROVAL_REQUEST, ask_for)
    return result


@dataclass(frozen=True)
class Decision:
    """What an approval did: ran the action (``done``) or recorded one more approval."""

    approval_id: str
    action: Gated
    done: bool
    approvals: int
    needed: int
    value: Any = None
    # A one-time password the action set: shown once, to the admin who approved.
    one_time_password: str | None = None
    account: str | None = None


def _checked_request(tx: Tx, keystore: Keystore, approval_id: str) -> ApprovalRow:
    row = store.get_approval(tx.conn, approval_id, for_update=True)
    if row is None:
        raise NotFound("no such request")
    # A row written or edited with SQL alone: integrity_failure, audited by the writer.
    keystore.verify_row(row)
    tx.ctx.details = {"approval_id": approval_id, "action": row.action,
                      "requested_by": row.requested_by}
    return row


def _pending(tx: Tx, row: ApprovalRow) -> None:
    if row.status != ApprovalStatus.PENDING:
        raise _refuse(tx, "decided", f"this request was {row.status} already")
    if row.expires_at <= tx.now:
        raise _refuse(tx, "expired", "this request expired; ask again")


def _peek(rt: Runtime, approval_id: str) -> ApprovalRow | None:
    with rt.engines.read.connect() as conn:
        return store.get_approval(conn, approval_id)


def approve(runner: ChangeRunner, rt: Runtime, approver: str, approval_id: str) -> Decision:
    """Approve a request; the last approval the quorum needs runs the action.

    Audited as ``APPROVAL_APPROVE`` when refused or when more approvals are needed, and as
    the action itself (``ACCOUNT_CREATE``, ``APP_ADD`` ...) with ``details.approval`` when it
    runs, granted or refused.
    """
    keystore = rt.keystore
    needed = quorum(rt.config)
    # argon2 runs here, in the request's thread, never in the writer: the password is made
    # before the job for the actions that set one (the job checks the row again).
    peeked = _peek(rt, approval_id)
    issues = peeked is not None and peeked.action in _ISSUING
    password = admin.one_time_password() if issues else None
    hashed = hash_password(password) if password is not None else _NO_PASSWORD

    def decide(tx: Tx) -> Decision:
        tx.ctx.action = Action.APPROVAL_APPROVE
        tx.ctx.details = {"approval_id": approval_id}
        row = _checked_request(tx, keystore, approval_id)
        gated = Gated(row.action)
        spec = SPECS[gated]
        if spec.issues_password and password is None:
            raise InvalidRequest("the request changed meanwhile; try again")
        _pending(tx, row)
        admins = _active_admin(tx, keystore, approver)
        earlier = [a["by"] for a in row.approvals]
        if approver == row.requested_by:
            raise _refuse(tx, "own_request", "a request needs another admin's approval")
        if approver in earlier:
            raise _refuse(tx, "already_approved", "you approved this request already")
        if row.requested_by not in admins:
            raise _refuse(tx, "requester_not_admin", "the requester is no longer an admin")
        approvers = [*earlier, approver]
        payload = encode_payload(row.params, [*row.approvals, {"by": approver, "at": tx.now}])
        if len(approvers) + 1 < needed:
            store.save_approval(tx.conn, row, keystore.seal_row(dataclasses.replace(
                row, payload=payload, revision=row.revision + 1)))
            tx.ctx.details = {**tx.ctx.details, "approvals": len(approvers),
                              "needed": needed - 1}
            return Decision(approval_id, gated, False, len(approvers), needed - 1)
        approval = {"id": approval_id, "requested_by": row.requested_by,
                    "approved_by": approver, "approvers": approvers}
        change = spec.build(Env(rt, approver), row.params, hashed)
        # From here on the record is the action's own, naming both admins.
        tx.ctx.action = change.action
        try:
            value = change.fn(tx)
        except SceauError:
            tx.ctx.details = {**tx.ctx.details, "approval": approval}
            raise
        store.save_approval(tx.conn, row, keystore.seal_row(dataclasses.replace(
            row, payload=payload, status=str(ApprovalStatus.APPROVED), decided_by=approver,
            decided_at=tx.now, revision=row.revision + 1)))
        tx.ctx.details = {**tx.ctx.details, "approval": approval}
        return Decision(approval_id, gated, True, len(approvers), needed - 1, value=value,
                        one_time_password=password,
                        account=row.params.get("username") if password else None)

    result: Decision = runner.run(Action.APPROVAL_APPROVE, decide)
    return result


def reject(runner: ChangeRunner, rt: Runtime, admin_name: str, approval_id: str) -> None:
    """Reject a pending request (its requester withdraws it); audited ``APPROVAL_REJECT``."""
    keystore = rt.keystore

    def decline(tx: Tx) -> None:
        tx.ctx.details = {"approval_id": approval_id}
        row = _checked_request(tx, keystore, approval_id)
        if row.status != ApprovalStatus.PENDING:
            raise _refuse(tx, "decided", f"this request was {row.status} already")
        _active_admin(tx, keystore, admin_name)
        store.save_approval(tx.conn, row, keystore.seal_row(dataclasses.replace(
            row, status=str(ApprovalStatus.REJECTED), decided_by=admin_name,
            decided_at=tx.now, revision=row.revision + 1)))
        tx.ctx.details = {**tx.ctx.details, "withdrawn": admin_name == row.requested_by}

    runner.run(Action.APPROVAL_REJECT, decline)


# --- listing -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RequestView:
    """A request as the approvals page shows it: the stored row (never acted on from here)
    with its status as of now (``expired`` once past), its approvers so far, whether its
    seal verifies, and whether the viewer may approve it."""

    row: ApprovalRow
    status: str
    approvers: tuple[str, ...]
    sealed: bool
    may_approve: bool


def list_requests(rt: Runtime, viewer: str, now: int, *, limit: int = 100) -> list[RequestView]:
    """Pending requests first, then the latest decided ones; a row that fails its seal is
    shown flagged and offers nothing."""
    with rt.engines.read.connect() as conn:
        rows = store.list_approvals(conn, limit=limit)
    views = []
    for row in rows:
        sealed = admin.row_verifies(rt.keystore, row)
        status = row.status
        if status == ApprovalStatus.PENDING and row.expires_at <= now:
            status = str(ApprovalStatus.EXPIRED)
        try:
            approvers = tuple(a["by"] for a in row.approvals)
        except (ValueError, KeyError, TypeError):
            approvers, sealed = (), False
        views.append(RequestView(
            row, status, approvers, sealed,
            may_approve=sealed and status == ApprovalStatus.PENDING
            and viewer != row.requested_by and viewer not in approvers))
    views.sort(key=lambda v: (v.status != ApprovalStatus.PENDING, -v.row.requested_at))
    return views
