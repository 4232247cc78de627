"""Administration that runs beside the service (CLI) and in the console: applications and
console accounts, with audit records.

An :class:`AdminSession` opens the store and keystore of a data dir and leases an audit node
id of its own (``cli1``, ``cli2`` ...), so administrative changes are chained and signed like
any other record, whether or not the service is running. Whoever runs it holds the data dir
and the keystore: the host operator, already trusted with everything, so the actions the
console gates behind a second admin (service/approvals.py) run here directly and their
records say so (``details.via = "host_operator"``).

Each change is built as a :class:`Change` (its audit action and a function of the open
transaction) by a ``*_change`` function that checks its inputs first; the CLI runs it at
once, the console's approvals service runs the same change when the last approval comes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import getpass
import json
import secrets
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import sqlalchemy as sa

from sceau.auditlog.witness import open_witness
from sceau.config import Config
from sceau.core.b64 import b64u_encode
from sceau.core.jwk import jwk_thumbprint
from sceau.core.model import normalize_identity
from sceau.core.policy import principal_matches, validate_principal
from sceau.errors import ConcurrentChange, IntegrityFailure, InvalidRequest, NotFound
from sceau.jose.appkeys import app_key_from_jwk, enc_key_from_jwk
from sceau.keystore import open_keystore
from sceau.keystore.base import Keystore
from sceau.service.accounts import hash_password
from sceau.service.runtime import keystore_settings, open_store
from sceau.store import accounts, applications
from sceau.store.accounts import AccountRow
from sceau.store.applications import ANY_USER, AppKeyRow, AppRow
from sceau.store.db import Engines
from sceau.store.writer import AuditContext, Job, Tx, Writer
from sceau.vocab import AccountStatus, Action, AppKeyStatus, AppStatus, Role

CLI_APP = "cli"
# ``details.via`` of a gated action the host operator ran with the CLI (docs/console.md).
HOST_OPERATOR = "host_operator"


class ChangeRunner(Protocol):
    """Runs ``fn(tx)`` as one audited change: the CLI's :class:`AdminSession`, the console."""

    @property
    def keystore(self) -> Keystore: ...

    @property
    def via(self) -> str | None:
        """What gated actions run through this runner record as ``details.via``."""
        ...

    def run(self, action: Action, fn: Any, *, key: str | None = None) -> Any: ...


@dataclass(frozen=True)
class Change:
    """One audited change: its audit action and a function of the open transaction.

    The function is pure in the writer's sense (it may run again after a conflict) and
    fills ``tx.ctx.details``; its inputs were checked when the change was built.
    """

    action: Action
    fn: Callable[[Tx], Any]


def run_change(session: ChangeRunner, change: Change) -> Any:
    """Run ``change`` through ``session``; a host operator's record says ``via``."""
    via = session.via
    if via is None:
        return session.run(change.action, change.fn)

    def as_operator(tx: Tx) -> Any:
        try:
            return change.fn(tx)
        finally:
            tx.ctx.details = {**tx.ctx.details, "via": via}

    return session.run(change.action, as_operator)


@dataclass
class AdminSession:
    """The host operator at the command line: store and keystore of a data dir at hand."""

    config: Config
    engines: Engines
    keystore: Keystore
    writer: Writer
    actor: str
    via: str | None = HOST_OPERATOR

    def run(self, action: Action, fn: Any, *, key: str | None = None) -> Any:
        """Run ``fn(tx)`` as one audited change (``app`` cli, ``user`` the OS user)."""
        ctx = AuditContext(action=action, app=CLI_APP, user=self.actor, ip=None, req=None, key=key)
        return self.writer.run_now(Job(fn=fn, ctx=ctx)).value


@contextlib.contextmanager
def admin_session(config: Config) -> Iterator[AdminSession]:
    engines = open_store(config)
    keystore = open_keystore(keystore_settings(config))
    writer = Writer(engines, keystore, witness=open_witness(config), node_prefix="cli")
    try:
        writer.open()
        yield AdminSession(config, engines, keystore, writer, getpass.getuser())
    finally:
        writer.stop()
        keystore.close()
        engines.dispose()


def user_patterns(patterns: Sequence[str]) -> tuple[str, ...]:
    """The users an application may assert, validated; at least one, and ``*`` only if given.

    An application registered without users may assert nobody: privacy by default
    (GDPR art. 25, SECURITY-CASES 47). ``*`` (every user) must be asked for explicitly.
    """
    out = []
    for p in patterns:
        out.append(ANY_USER if p == ANY_USER else validate_principal(p))
    if not out:
        raise InvalidRequest(
            "users: name the users this application may assert (addresses or *@domain); "
            "'*' allows every user and must be given explicitly"
        )
    return tuple(dict.fromkeys(out))


def app_add_change(keystore: Keystore, *, name: str, jwk: Mapping[str, Any],
                   enc_jwk: Mapping[str, Any] | None, users: Sequence[str]) -> Change:
    """Register an application with one signing key; the change returns its new ``app_id``."""
    if not name or len(name) > 200:
        raise InvalidRequest("name: 1 to 200 characters")
    key = app_key_from_jwk(jwk)
    enc = enc_key_from_jwk(enc_jwk) if enc_jwk is not None else None
    patterns = user_patterns(users)
    app_id = "app_" + b64u_encode(secrets.token_bytes(12))

    def add(tx: Tx) -> str:
        if applications.app_key_exists(tx.conn, key.kid, jwk_thumbprint(key.public_jwk)):
            raise InvalidRequest("jwk: this key is already registered to an application")
        applications.insert_application(tx.conn, keystore.seal_row(
            AppRow(app_id, name, patterns, AppStatus.ENABLED,
                   dict(enc.public_jwk) if enc else None, tx.now, None)))
        applications.insert_app_key(
            tx.conn,
            keystore.seal_row(AppKeyRow(key.kid, app_id, key.alg, dict(key.public_jwk),
                                        AppKeyStatus.ACTIVE, tx.now, None)),
            jwk_thumbprint(key.public_jwk),
        )
        tx.ctx.details = {"app_id": app_id, "name": name, "kid": key.kid, "alg": key.alg,
                          "users": list(patterns), "enc_kid": enc.kid if enc else None}
        return app_id

    return Change(Action.APP_ADD, add)


def add_application(
    session: ChangeRunner,
    *,
    name: str,
    jwk: Mapping[str, Any],
    enc_jwk: Mapping[str, Any] | None,
    users: Sequence[str],
) -> str:
    """Register an application with one signing key; returns its new ``app_id``."""
    change = app_add_change(session.keystore, name=name, jwk=jwk, enc_jwk=enc_jwk, users=users)
    result: str = run_change(session, change)
    return result


def _checked_app(tx: Tx, keystore: Keystore, app_id: str) -> AppRow:
    """The application row, its seal verified (``not_found``, ``integrity_failure``)."""
    app = applications.get_application(tx.conn, app_id)
    if app is None:
        raise NotFound(f"no application {app_id}")
    return keystore.verify_row(app)


def _resealed(keystore: Keystore, row: Any, **changes: Any) -> Any:
    return keystore.seal_row(dataclasses.replace(row, revision=row.revision + 1, **changes))


def set_application_status(session: ChangeRunner, app_id: str, status: AppStatus) -> None:
    action = Action.APP_ENABLE if status is AppStatus.ENABLED else Action.APP_DISABLE
    keystore = session.keystore

    def change(tx: Tx) -> None:
        tx.ctx.details = {"app_id": app_id}
        app = _checked_app(tx, keystore, app_id)
        applications.save_application(tx.conn, app, _resealed(keystore, app, status=status))

    session.run(action, change)


def covers(patterns: Sequence[str], pattern: str) -> bool:
    """True when every user ``pattern`` allows is already allowed by ``patterns``."""
    if ANY_USER in patterns or pattern in patterns:
        return True
    if pattern == ANY_USER or pattern.startswith("*"):
        # A domain pattern is covered only by itself (compared normalized) or by '*'.
        return normalize_identity(pattern) in {normalize_identity(p) for p in patterns}
    return any(principal_matches(p, pattern) for p in patterns)


def widens(before: Sequence[str], after: Sequence[str]) -> bool:
    """True when ``after`` lets an application assert a user ``before`` did not."""
    return not all(covers(before, p) for p in after)


def app_users_change(keystore: Keystore, app_id: str, users: Sequence[str], *,
                     expect_before: Sequence[str] | None = None) -> Change:
    """Replace the users an application may assert (audited with before and after).

    With ``expect_before`` (an approved request) the change is refused when the list moved
    since it was requested: what was approved is exactly what happens.
    """
    patterns = user_patterns(users)

    def change(tx: Tx) -> None:
        app = _checked_app(tx, keystore, app_id)
        tx.ctx.details = {"app_id": app_id, "users_before": list(app.users),
                          "users": list(patterns)}
        if expect_before is not None and list(app.users) != list(expect_before):
            raise ConcurrentChange("the application's users changed since the request")
        applications.save_application(tx.conn, app, _resealed(keystore, app, users=patterns))

    return Change(Action.APP_UPDATE, change)


def set_application_users(session: ChangeRunner, app_id: str, users: Sequence[str]) -> None:
    """Replace the users an application may assert (audited with before and after)."""
    run_change(session, app_users_change(session.keystore, app_id, users))


def app_key_add_change(keystore: Keystore, app_id: str, jwk: Mapping[str, Any]) -> Change:
    """Add a signing key to an application (rotation); the change returns its kid."""
    key = app_key_from_jwk(jwk)

    def add(tx: Tx) -> str:
        _checked_app(tx, keystore, app_id)
        if applications.app_key_exists(tx.conn, key.kid, jwk_thumbprint(key.public_jwk)):
            raise InvalidRequest("jwk: this key is already registered to an application")
        applications.insert_app_key(
            tx.conn,
            keystore.seal_row(AppKeyRow(key.kid, app_id, key.alg, dict(key.public_jwk),
                                        AppKeyStatus.ACTIVE, tx.now, None)),
            jwk_thumbprint(key.public_jwk),
        )
        tx.ctx.details = {"app_id": app_id, "kid": key.kid, "alg": key.alg}
        return key.kid

    return Change(Action.APP_KEY_ADD, add)


def add_app_key(session: ChangeRunner, app_id: str, jwk: Mapping[str, Any]) -> str:
    """Add a signing key to an application (rotation); returns its kid."""
    result: str = run_change(session, app_key_add_change(session.keystore, app_id, jwk))
    return result


def retire_app_key(session: ChangeRunner, app_id: str, kid: str) -> None:
    keystore = session.keystore

    def retire(tx: Tx) -> None:
        tx.ctx.details = {"app_id": app_id, "kid": kid}
        row = applications.get_app_key(tx.conn, kid)
        if row is None or row.app_id != app_id:
            raise NotFound(f"no key {kid} for application {app_id}")
        keystore.verify_row(row)
        if row.status is not AppKeyStatus.ACTIVE:
            raise InvalidRequest(f"key {kid} is already retired")
        applications.save_app_key(tx.conn, row, _resealed(
            keystore, row, status=AppKeyStatus.RETIRED, retired_at=tx.now))

    session.run(Action.APP_KEY_RETIRE, retire)


# --- console accounts ---------------------------------------------------------------------------

def account_name(raw: str) -> str:
    """A console account name: an identity as the API writes it, never a pattern."""
    raw = raw.strip()
    if "*" in raw:
        raise InvalidRequest("username: an identity, not a pattern")
    return normalize_identity(validate_principal(raw))


def account_role(text: str) -> Role:
    if text not in Role.__members__.values():
        raise InvalidRequest("role: admin, auditor or user")
    return Role(text)


def one_time_password() -> str:
    """A fresh one-time password (120 bits), to be changed at first sign-in."""
    return secrets.token_urlsafe(15)


def checked_account(tx: Tx, keystore: Keystore, username: str) -> AccountRow:
    """The account row inside a change, its seal verified (``not_found``, ``integrity``)."""
    account = accounts.get_account(tx.conn, username)
    if account is None:
        raise NotFound("no such account")
    return keystore.verify_row(account)


def account_create_change(keystore: Keystore, username: str, role: Role,
                          password_hash: str) -> Change:
    """A new password account that must change its one-time password at first sign-in.

    The hash is computed by the caller, outside the writer (argon2 takes tens of ms).
    """

    def create(tx: Tx) -> None:
        tx.ctx.details = {"account": username, "role": str(role)}
        if accounts.get_account(tx.conn, username) is not None:
            raise InvalidRequest("username: this account exists already")
        accounts.insert_account(tx.conn, keystore.seal_row(AccountRow(
            username=username, password_hash=password_hash, role=str(role),
            status=AccountStatus.ACTIVE, must_change_password=True, totp_secret=None,
            created_at=tx.now, updated_at=tx.now)))

    return Change(Action.ACCOUNT_CREATE, create)


def account_update_change(keystore: Keystore, username: str, *, role: Role | None = None,
                          status: str | None = None, password_hash: str | None = None,
                          clear_totp: bool = False, expect_role: str | None = None) -> Change:
    """Change an account's role, status, password (a reset) or second factor.

    A reset sets a new one-time password and keeps the second factor: clearing it is its
    own change (``clear_totp``). Anything but enabling ends the account's sessions at once.
    With ``expect_role`` (an approved request) the change is refused when the role moved
    since it was requested.
    """
    values: dict[str, Any] = {}
    shown: dict[str, Any] = {}
    if role is not None:
        values["role"] = shown["role"] = str(role)
    if status is not None:
        try:
            values["status"] = shown["status"] = AccountStatus(status)
        except ValueError:
            raise InvalidRequest("status: active or disabled") from None
    if password_hash is not None:
        values.update(password_hash=password_hash, must_change_password=True)
        shown["credentials"] = "reset"
    if clear_totp:
        values["totp_secret"] = None
        shown["second_factor"] = "cleared"
    if not values:
        raise InvalidRequest("nothing to change")

    def change(tx: Tx) -> None:
        tx.ctx.details = {"account": username, "changed": shown}
        before = checked_account(tx, keystore, username)
        if expect_role is not None and before.role != expect_role:
            raise ConcurrentChange("the account's role changed since the request")
        if clear_totp and before.totp_secret is None:
            raise InvalidRequest("this account has no second factor")
        after = keystore.seal_row(dataclasses.replace(
            before, revision=before.revision + 1, updated_at=tx.now, **values))
        accounts.save_account(tx.conn, before, after)
        ended = 0 if status == AccountStatus.ACTIVE and len(values) == 1 else \
            accounts.delete_console_sessions_of(tx.conn, username)
        tx.ctx.details = {"account": username, "changed": shown, "sessions_ended": ended}

    return Change(Action.ACCOUNT_UPDATE, change)


def create_account(session: ChangeRunner, username: str, role: Role) -> str:
    """Create a password account; returns its one-time password (show it once)."""
    name = account_name(username)
    password = one_time_password()
    run_change(session, account_create_change(session.keystore, name, role,
                                              hash_password(password)))
    return password


def reset_account(session: ChangeRunner, username: str, *, clear_totp: bool = False) -> str:
    """Give an account a new one-time password (its second factor kept unless
    ``clear_totp``); returns the password."""
    password = one_time_password()
    run_change(session, account_update_change(session.keystore, username,
                                              password_hash=hash_password(password),
                                              clear_totp=clear_totp))
    return password


def set_account_status(session: ChangeRunner, username: str, status: str) -> None:
    run_change(session, account_update_change(session.keystore, username, status=status))


def list_accounts(engines: Engines, keystore: Keystore) -> list[dict[str, Any]]:
    """Every console account (no secret): ``sealed`` False flags a row that fails its seal."""
    with engines.read.connect() as conn:
        rows = accounts.list_accounts(conn)
    return [
        {"username": a.username, "role": a.role, "status": a.status, "auth": a.auth,
         "second_factor": a.totp_secret is not None,
         "must_change_password": a.must_change_password, "created_at": a.created_at,
         "updated_at": a.updated_at, "sealed": row_verifies(keystore, a)}
        for a in rows
    ]


def active_admins(conn: sa.Connection, keystore: Keystore) -> list[str]:
    """The accounts that count toward the approval quorum: role ``admin``, active, and
    sealed (a row written with SQL alone is no admin)."""
    return [a.username for a in accounts.list_accounts(conn)
            if a.role == Role.ADMIN and a.status == AccountStatus.ACTIVE
            and row_verifies(keystore, a)]


SINGLE_ADMIN_WARNING = (
    "warning: this installation has a single console admin: the console offers no action "
    "that needs a second admin's approval (accounts, applications, signing keys); the host "
    "operator does them with `sceau account ...` and `sceau app ...`"
)


def row_verifies(keystore: Keystore, row: Any) -> bool:
    """For listings only: show a tampered row flagged rather than hide or trust it."""
    try:
        keystore.verify_row(row)
    except IntegrityFailure:
        return False
    return True


def list_applications(engines: Engines, keystore: Keystore) -> list[dict[str, Any]]:
    """Every application with its keys; ``sealed`` False flags a row that fails its seal
    (such a row opens nothing: the service refuses it at its first use)."""
    with engines.read.connect() as conn:
        apps = applications.list_applications(conn)
        out = []
        for app in apps:
            keys = applications.list_app_keys(conn, app.app_id)
            out.append(
                {
                    "app_id": app.app_id,
                    "name": app.name,
                    "status": str(app.status),
                    "users": list(app.users),
                    "any_user": app.any_user,
                    "sealed": row_verifies(keystore, app),
                    "keys": [
                        {"kid": k.kid, "alg": k.alg, "status": str(k.status),
                         "sealed": row_verifies(keystore, k)}
                        for k in keys
                    ],
                    "enc_kid": app.enc_jwk.get("kid") if app.enc_jwk else None,
                    "created_at": app.created_at,
                    "last_used_at": app.last_used_at,
                }
            )
    return out


@dataclass(frozen=True)
class Unsealed:
    """Rows a schema upgrade found without a seal."""

    applications: tuple[AppRow, ...]
    app_keys: tuple[AppKeyRow, ...]
    accounts: tuple[accounts.AccountRow, ...]
    sessions: int

    def __bool__(self) -> bool:
        return bool(self.applications or self.app_keys or self.accounts or self.sessions)


def unsealed_rows(engines: Engines) -> Unsealed:
    """What :func:`seal_existing_rows` would seal (read with the store alone)."""
    with engines.read.connect() as conn:
        apps = applications.list_applications(conn)
        return Unsealed(
            applications=tuple(a for a in apps if a.seal is None),
            app_keys=tuple(k for a in apps for k in applications.list_app_keys(conn, a.app_id)
                           if k.seal is None),
            accounts=tuple(a for a in accounts.list_accounts(conn) if a.seal is None),
            sessions=accounts.count_unsealed_sessions(conn),
        )


def seal_existing_rows(session: AdminSession, pending: Unsealed) -> dict[str, int]:
    """Seal the rows a schema upgrade found unsealed (trust on upgrade, docs/security.md).

    Run by ``sceau db upgrade`` right after the migration that added the seals, when
    :func:`unsealed_rows` found any: every application, application key and console
    account as it stands is sealed once with the keystore's seal key, and console sessions
    without a seal are ended. The counts go into one ``ROWS_SEALED`` audit record. Rows
    that already carry a seal are left alone (they are checked at their next use), so
    running it again changes nothing.
    """
    keystore = session.keystore

    def seal(tx: Tx) -> dict[str, int]:
        for app in pending.applications:
            applications.save_application(tx.conn, app, keystore.seal_row(app))
        for key in pending.app_keys:
            applications.save_app_key(tx.conn, key, keystore.seal_row(key))
        for account in pending.accounts:
            accounts.save_account(tx.conn, account, keystore.seal_row(account))
        counts = {"applications": len(pending.applications),
                  "app_keys": len(pending.app_keys), "accounts": len(pending.accounts),
                  "sessions_ended": accounts.delete_unsealed_sessions(tx.conn)}
        tx.ctx.details = {"trust_on_upgrade": counts}
        return counts

    result: dict[str, int] = session.run(Action.ROWS_SEALED, seal)
    return result


def load_jwk_file(text: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise InvalidRequest(f"{what}: not a JSON JWK") from None
    if not isinstance(value, dict):
        raise InvalidRequest(f"{what}: not a JSON object")
    return value
