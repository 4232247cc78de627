"""Applications and accounts (role ``admin``), through the same functions as the CLI."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from sceau import admin
from sceau.core.model import normalize_identity
from sceau.core.policy import validate_principal
from sceau.errors import InvalidRequest, NotFound, SceauError
from sceau.jose.appkeys import app_key_from_jwk, app_key_from_pem
from sceau.keystore.base import Keystore
from sceau.service.accounts import hash_password
from sceau.service.console.auth import checked_account, reauthenticate, save_changed
from sceau.service.console.web import (
    PREFIX,
    Console,
    PageError,
    Redirect,
    Session,
    form_of,
    not_found,
)
from sceau.store import accounts
from sceau.store.writer import Tx
from sceau.vocab import Action, AppStatus, Role

APP_ALGS = ("ES256", "EdDSA", "PS256", "RS256")


@dataclass
class ConsoleRunner:
    """:class:`sceau.admin.ChangeRunner` for the console: audited as the signed-in account."""

    console: Console
    session: Session

    @property
    def keystore(self) -> Keystore:
        return self.console.rt.keystore

    def run(self, action: Action, fn: Any, *, key: str | None = None) -> Any:
        return self.console.run(self.session, action, fn, key=key).value


def signing_jwk(form: dict[str, str]) -> dict[str, Any]:
    """The pasted public key as a JWK: JSON as is, PEM converted with the chosen ``alg``."""
    text = form.get("key", "").strip()
    if text.startswith("-----BEGIN"):
        alg = form.get("alg", "")
        if alg not in APP_ALGS:
            raise InvalidRequest("alg: choose the algorithm this PEM key signs with")
        key = app_key_from_pem(text.encode("ascii", "replace"), alg,
                               form.get("kid", "").strip() or None)
        return dict(key.public_jwk)
    jwk = admin.load_jwk_file(text, "key")
    return dict(app_key_from_jwk(jwk).public_jwk)


def _pasted_enc(form: dict[str, str]) -> dict[str, Any] | None:
    text = form.get("enc_key", "").strip()
    return admin.load_jwk_file(text, "enc_key") if text else None


def _users(text: str) -> list[str]:
    return [u for u in text.replace(",", " ").split() if u]


def router(console: Console, route_class: type) -> APIRouter:
    r = APIRouter(prefix=PREFIX, route_class=route_class)

    # --- applications ----------------------------------------------------------------------

    def render_apps(request: Request, session: Session, *, status: int = 200,
                    error: str | None = None, form: dict[str, str] | None = None) -> Response:
        apps = admin.list_applications(console.rt.engines, console.rt.keystore)
        return console.render(request, "apps.html", status=status, session=session, apps=apps,
                              error=error, form=form or {}, algs=APP_ALGS,
                              notice={"added": "Application registered."}.get(
                                  request.query_params.get("done", "")))

    @r.get("/apps")
    def apps_page(request: Request) -> Response:
        session = console.require(request, Role.ADMIN)
        return render_apps(request, session)

    @r.post("/apps")
    def register(request: Request) -> Response:
        session = console.require(request, Role.ADMIN)
        form = dict(form_of(request))
        kept = {k: form.get(k, "") for k in ("name", "users", "key", "enc_key", "alg", "kid")}
        try:
            reauthenticate(console, session, form.get("password", ""))
            app_id = admin.add_application(
                ConsoleRunner(console, session), name=form.get("name", "").strip(),
                jwk=signing_jwk(form), enc_jwk=_pasted_enc(form),
                users=_users(form.get("users", "")),
            )
        except PageError as error:
            return render_apps(request, session, status=error.status, error=error.message,
                               form=kept)
        except SceauError as error:
            return render_apps(request, session, status=error.status, error=error.detail,
                               form=kept)
        raise Redirect(f"{PREFIX}/apps/{app_id}?done=added")

    def render_app(request: Request, session: Session, app_id: str, *, status: int = 200,
                   error: str | None = None) -> Response:
        found = [a for a in admin.list_applications(console.rt.engines, console.rt.keystore)
                 if a["app_id"] == app_id]
        if not found:
            raise not_found()
        notices = {"added": "Application registered.", "key_added": "Signing key added.",
                   "key_retired": "Signing key retired.", "enabled": "Application enabled.",
                   "disabled": "Application disabled."}
        return console.render(request, "app.html", status=status, session=session,
                              app=found[0], error=error, algs=APP_ALGS,
                              notice=notices.get(request.query_params.get("done", "")))

    @r.get("/apps/{app_id}")
    def app_page(request: Request, app_id: str) -> Response:
        session = console.require(request, Role.ADMIN)
        return render_app(request, session, app_id)

    def app_change(request: Request, session: Session, app_id: str, fn: Any,
                   done: str) -> Response:
        try:
            fn()
        except NotFound:
            raise not_found() from None
        except PageError as error:
            return render_app(request, session, app_id, status=error.status, error=error.message)
        except SceauError as error:
            return render_app(request, session, app_id, status=error.status, error=error.detail)
        console.rt.app_keys.forget()
        raise Redirect(f"{PREFIX}/apps/{app_id}?done={done}")

    @r.post("/apps/{app_id}/status")
    def app_status(request: Request, app_id: str) -> Response:
        session = console.require(request, Role.ADMIN)
        enable = form_of(request).get("action") == "enable"
        status = AppStatus.ENABLED if enable else AppStatus.DISABLED
        return app_change(
            request, session, app_id,
            lambda: admin.set_application_status(ConsoleRunner(console, session), app_id, status),
            "enabled" if enable else "disabled",
        )

    @r.post("/apps/{app_id}/keys")
    def add_key(request: Request, app_id: str) -> Response:
        session = console.require(request, Role.ADMIN)
        form = dict(form_of(request))

        def add() -> None:
            reauthenticate(console, session, form.get("password", ""))
            admin.add_app_key(ConsoleRunner(console, session), app_id, signing_jwk(form))

        return app_change(request, session, app_id, add, "key_added")

    @r.post("/apps/{app_id}/keys/retire")
    def retire_key(request: Request, app_id: str) -> Response:
        session = console.require(request, Role.ADMIN)
        kid = form_of(request).get("kid", "")
        return app_change(
            request, session, app_id,
            lambda: admin.retire_app_key(ConsoleRunner(console, session), app_id, kid),
            "key_retired",
        )

    # --- accounts ---------------------------------------------------------------------------

    def render_accounts(request: Request, session: Session, *, status: int = 200,
                        error: str | None = None, issued: tuple[str, str] | None = None,
                        ) -> Response:
        with console.rt.engines.read.connect() as conn:
            rows = accounts.list_accounts(conn)
        listed = [(row, admin.row_verifies(console.rt.keystore, row)) for row in rows]
        return console.render(request, "accounts.html", status=status, session=session,
                              accounts=listed, roles=[str(x) for x in Role], error=error,
                              issued=issued)

    @r.get("/accounts")
    def accounts_page(request: Request) -> Response:
        session = console.require(request, Role.ADMIN)
        return render_accounts(request, session)

    @r.post("/accounts")
    def create_account(request: Request) -> Response:
        session = console.require(request, Role.ADMIN)
        form = form_of(request)
        role_text = form.get("role", "")
        try:
            if role_text not in Role.__members__.values():
                raise InvalidRequest("role: admin, auditor or user")
            raw = form.get("username", "").strip()
            if "*" in raw:
                raise InvalidRequest("username: an identity, not a pattern")
            username = normalize_identity(validate_principal(raw))
        except InvalidRequest as error:
            return render_accounts(request, session, status=400, error=error.detail)
        password = secrets.token_urlsafe(15)
        hashed = hash_password(password)

        def create(tx: Tx) -> None:
            tx.ctx.details = {"account": username, "role": role_text}
            if accounts.get_account(tx.conn, username) is not None:
                raise InvalidRequest("username: this account exists already")
            accounts.insert_account(tx.conn, console.rt.keystore.seal_row(accounts.AccountRow(
                username=username, password_hash=hashed, role=role_text, status="active",
                must_change_password=True, totp_secret=None, created_at=tx.now,
                updated_at=tx.now)))

        try:
            console.run(session, Action.ACCOUNT_CREATE, create)
        except SceauError as error:
            return render_accounts(request, session, status=error.status, error=error.detail)
        return render_accounts(request, session, issued=(username, password))

    @r.post("/accounts/{username}")
    def update_account(request: Request, username: str) -> Response:
        session = console.require(request, Role.ADMIN)
        form = form_of(request)
        action = form.get("action", "")
        if username == session.account.username and action in ("role", "disable"):
            return render_accounts(request, session, status=400,
                                   error="You cannot demote or disable your own account.")
        issued: tuple[str, str] | None = None
        values: dict[str, Any]
        if action == "role":
            role_text = form.get("role", "")
            if role_text not in Role.__members__.values():
                raise PageError(400, "Unknown role.")
            values = {"role": role_text}
        elif action in ("enable", "disable"):
            values = {"status": "disabled" if action == "disable" else "active"}
        elif action == "reset":
            password = secrets.token_urlsafe(15)
            values = {"password_hash": hash_password(password), "must_change_password": True,
                      "totp_secret": None}
            issued = (username, password)
        else:
            raise PageError(400, "Unknown account action.")

        def change(tx: Tx) -> None:
            shown = {k: v for k, v in values.items() if k in ("role", "status")}
            if action == "reset":
                shown["credentials"] = "reset"
            save_changed(console, tx, checked_account(console, tx, username), **values)
            # A role change, a reset or a disable ends the account's sessions at once.
            ended = (0 if action == "enable"
                     else accounts.delete_console_sessions_of(tx.conn, username))
            tx.ctx.details = {"account": username, "changed": shown, "sessions_ended": ended}

        try:
            console.run(session, Action.ACCOUNT_UPDATE, change)
        except NotFound:
            raise not_found() from None
        except SceauError as error:
            return render_accounts(request, session, status=error.status, error=error.detail)
        return render_accounts(request, session, issued=issued)

    return r


def pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True)
