"""Administration that runs beside the service (CLI): applications, with audit records.

An :class:`AdminSession` opens the store and keystore of a data dir and leases an audit node
id of its own (``cli1``, ``cli2`` ...), so administrative changes are chained and signed like
any other record, whether or not the service is running.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import secrets
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sceau.config import Config
from sceau.core.b64 import b64u_encode
from sceau.core.policy import validate_principal
from sceau.errors import InvalidRequest, NotFound
from sceau.jose.appkeys import app_key_from_jwk, enc_key_from_jwk, thumbprint
from sceau.keystore import open_keystore
from sceau.keystore.base import Keystore
from sceau.service.runtime import ANY_USER, keystore_settings, open_store
from sceau.store import repo
from sceau.store.db import Engines
from sceau.store.writer import AuditContext, Job, Tx, Writer
from sceau.vocab import Action, AppKeyStatus, AppStatus

CLI_APP = "cli"


class ChangeRunner(Protocol):
    """Runs ``fn(tx)`` as one audited change: the CLI's :class:`AdminSession`, the console."""

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
    writer = Writer(engines, keystore, node_prefix="cli")
    try:
        writer.open()
        yield AdminSession(config, engines, keystore, writer, getpass.getuser())
    finally:
        writer.stop()
        keystore.close()
        engines.dispose()


def _users(patterns: Sequence[str]) -> tuple[str, ...]:
    out = []
    for p in patterns or [ANY_USER]:
        out.append(ANY_USER if p == ANY_USER else validate_principal(p))
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
    patterns = _users(users)
    app_id = "app_" + b64u_encode(secrets.token_bytes(12))
    now = int(time.time())

    def add(tx: Tx) -> str:
        if repo.app_key_exists(tx.conn, key.kid, thumbprint(key.public_jwk)):
            raise InvalidRequest("jwk: this key is already registered to an application")
        repo.insert_application(
            tx.conn,
            repo.AppRow(app_id, name, patterns, AppStatus.ENABLED,
                        dict(enc.public_jwk) if enc else None, now, None),
        )
        repo.insert_app_key(
            tx.conn,
            repo.AppKeyRow(key.kid, app_id, key.alg, dict(key.public_jwk), AppKeyStatus.ACTIVE,
                           now, None),
            thumbprint(key.public_jwk),
        )
        tx.ctx.details = {"app_id": app_id, "name": name, "kid": key.kid, "alg": key.alg,
                          "users": list(patterns), "enc_kid": enc.kid if enc else None}
        return app_id

    result: str = session.run(Action.APP_ADD, add)
    return result


def set_application_status(session: ChangeRunner, app_id: str, status: AppStatus) -> None:
    action = Action.APP_ENABLE if status is AppStatus.ENABLED else Action.APP_DISABLE

    def change(tx: Tx) -> None:
        tx.ctx.details = {"app_id": app_id}
        if not repo.set_application_status(tx.conn, app_id, status):
            raise NotFound(f"no application {app_id}")

    session.run(action, change)


def add_app_key(session: ChangeRunner, app_id: str, jwk: Mapping[str, Any]) -> str:
    """Add a signing key to an application (rotation); returns its kid."""
    key = app_key_from_jwk(jwk)
    now = int(time.time())

    def add(tx: Tx) -> str:
        if repo.get_application(tx.conn, app_id) is None:
            raise NotFound(f"no application {app_id}")
        if repo.app_key_exists(tx.conn, key.kid, thumbprint(key.public_jwk)):
            raise InvalidRequest("jwk: this key is already registered to an application")
        repo.insert_app_key(
            tx.conn,
            repo.AppKeyRow(key.kid, app_id, key.alg, dict(key.public_jwk), AppKeyStatus.ACTIVE,
                           now, None),
            thumbprint(key.public_jwk),
        )
        tx.ctx.details = {"app_id": app_id, "kid": key.kid, "alg": key.alg}
        return key.kid

    result: str = session.run(Action.APP_KEY_ADD, add)
    return result


def retire_app_key(session: ChangeRunner, app_id: str, kid: str) -> None:
    def retire(tx: Tx) -> None:
        tx.ctx.details = {"app_id": app_id, "kid": kid}
        row = repo.get_app_key(tx.conn, kid)
        if row is None or row.app_id != app_id:
            raise NotFound(f"no key {kid} for application {app_id}")
        if not repo.retire_app_key(tx.conn, kid, int(time.time())):
            raise InvalidRequest(f"key {kid} is already retired")

    session.run(Action.APP_KEY_RETIRE, retire)


def list_applications(engines: Engines) -> list[dict[str, Any]]:
    with engines.read.connect() as conn:
        apps = repo.list_applications(conn)
        out = []
        for app in apps:
            out.append(
                {
                    "app_id": app.app_id,
                    "name": app.name,
                    "status": str(app.status),
                    "users": list(app.users),
                    "keys": [
                        {"kid": k.kid, "alg": k.alg, "status": str(k.status)}
                        for k in repo.list_app_keys(conn, app.app_id)
                    ],
                    "enc_kid": app.enc_jwk.get("kid") if app.enc_jwk else None,
                    "created_at": app.created_at,
                    "last_used_at": app.last_used_at,
                }
            )
    return out


def load_jwk_file(text: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise InvalidRequest(f"{what}: not a JSON JWK") from None
    if not isinstance(value, dict):
        raise InvalidRequest(f"{what}: not a JSON object")
    return value
