"""Administration that runs beside the service (CLI): applications, with audit records.

An :class:`AdminSession` opens the store and keystore of a data dir and leases an audit node
id of its own (``cli1``, ``cli2`` ...), so administrative changes are chained and signed like
any other record, whether or not the service is running.
"""

from __future__ import annotations

import contextlib
import dataclasses
import getpass
import json
import secrets
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sceau.auditlog.witness import open_witness
from sceau.config import Config
from sceau.core.b64 import b64u_encode
from sceau.core.policy import validate_principal
from sceau.errors import IntegrityFailure, InvalidRequest, NotFound
from sceau.jose.appkeys import app_key_from_jwk, enc_key_from_jwk, thumbprint
from sceau.keystore import open_keystore
from sceau.keystore.base import Keystore
from sceau.service.runtime import keystore_settings, open_store
from sceau.store import accounts, applications
from sceau.store.applications import ANY_USER, AppKeyRow, AppRow
from sceau.store.db import Engines
from sceau.store.writer import AuditContext, Job, Tx, Writer
from sceau.vocab import Action, AppKeyStatus, AppStatus

CLI_APP = "cli"


class ChangeRunner(Protocol):
    """Runs ``fn(tx)`` as one audited change: the CLI's :class:`AdminSession`, the console."""

    @property
    def keystore(self) -> Keystore: ...

    def run(self, action: Action, fn: Any, *, key: str | None = None) -> Any: ...


@dataclass
class AdminSession:
    config: Config
    engines: Engines
    keystore: Keystore
    writer: Writer
    actor: str

    def run(self, action: Action, fn: Any, *, key: str | None = None) -> Any:
        """Run ``fn(tx)`` as one audited change."""
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


def add_application(
    session: ChangeRunner,
    *,
    name: str,
    jwk: Mapping[str, Any],
    enc_jwk: Mapping[str, Any] | None,
    users: Sequence[str],
) -> str:
    """Register an application with one signing key; returns its new ``app_id``."""
    if not name or len(name) > 200:
        raise InvalidRequest("name: 1 to 200 characters")
    key = app_key_from_jwk(jwk)
    enc = enc_key_from_jwk(enc_jwk) if enc_jwk is not None else None
    patterns = user_patterns(users)
    app_id = "app_" + b64u_encode(secrets.token_bytes(12))
    now = int(time.time())
    keystore = session.keystore

    def add(tx: Tx) -> str:
        if applications.app_key_exists(tx.conn, key.kid, thumbprint(key.public_jwk)):
            raise InvalidRequest("jwk: this key is already registered to an application")
        applications.insert_application(tx.conn, keystore.seal_row(
            AppRow(app_id, name, patterns, AppStatus.ENABLED,
                   dict(enc.public_jwk) if enc else None, now, None)))
        applications.insert_app_key(
            tx.conn,
            keystore.seal_row(AppKeyRow(key.kid, app_id, key.alg, dict(key.public_jwk),
                                        AppKeyStatus.ACTIVE, now, None)),
            thumbprint(key.public_jwk),
        )
        tx.ctx.details = {"app_id": app_id, "name": name, "kid": key.kid, "alg": key.alg,
                          "users": list(patterns), "enc_kid": enc.kid if enc else None}
        return app_id

    result: str = session.run(Action.APP_ADD, add)
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


def set_application_users(session: ChangeRunner, app_id: str, users: Sequence[str]) -> None:
    """Replace the users an application may assert (audited with before and after)."""
    patterns = user_patterns(users)
    keystore = session.keystore

    def change(tx: Tx) -> None:
        app = _checked_app(tx, keystore, app_id)
        tx.ctx.details = {"app_id": app_id, "users_before": list(app.users),
                          "users": list(patterns)}
        applications.save_application(tx.conn, app, _resealed(keystore, app, users=patterns))

    session.run(Action.APP_UPDATE, change)


def add_app_key(session: ChangeRunner, app_id: str, jwk: Mapping[str, Any]) -> str:
    """Add a signing key to an application (rotation); returns its kid."""
    key = app_key_from_jwk(jwk)
    now = int(time.time())
    keystore = session.keystore

    def add(tx: Tx) -> str:
        _checked_app(tx, keystore, app_id)
        if applications.app_key_exists(tx.conn, key.kid, thumbprint(key.public_jwk)):
            raise InvalidRequest("jwk: this key is already registered to an application")
        applications.insert_app_key(
            tx.conn,
            keystore.seal_row(AppKeyRow(key.kid, app_id, key.alg, dict(key.public_jwk),
                                        AppKeyStatus.ACTIVE, now, None)),
            thumbprint(key.public_jwk),
        )
        tx.ctx.details = {"app_id": app_id, "kid": key.kid, "alg": key.alg}
        return key.kid

    result: str = session.run(Action.APP_KEY_ADD, add)
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
