"""Applications, accounts and approvals (role ``admin``), through the same functions as the CLI.

The actions that could open a path to data are gated (service/approvals.py, SECURITY-CASES
46): here they become requests that another admin approves on the approvals page, and with
fewer active admins than the quorum the pages do not offer them at all (the host operator
runs them with the CLI). The others run at once, audited as the signed-in admin.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from sceau import admin
from sceau.errors import InvalidRequest, NotFound, SceauError
from sceau.jose.appkeys import app_key_from_jwk, app_key_from_pem
from sceau.keystore.base import Keystore
from sceau.service import approvals
from sceau.service.approvals import Ask, GateState
from sceau.service.console.auth import reauthenticate
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
from sceau.store import approvals as approval_store
from sceau.vocab import AccountStatus, ApprovalStatus, AppStatus, Role

APP_ALGS = ("ES256", "EdDSA", "PS256", "RS256")
QUORUM_NOTE = ("This action needs a second admin's approval, and this installation has fewer "
               "active admins than that: the host operator does it with the command line.")


@dataclass
class ConsoleRunner:
    """:class:`sceau.admin.ChangeRunner` for the console: audited as the signed-in account."""

    console: Console
    session: Session
    # Console changes are the signed-in admin's own; gated ones come through approvals.
    via: str | None = None

    @property
    def keystore(self) -> Keystore:
        return self.console.rt.keystore

    def run(self, action: Any, fn: Any, *, key: str | None = None) -> Any:
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


def identities(text: str) -> list[str]:
    """A form field's list of identities or ``*@domain`` patterns: comma- or space-separated."""
    return text.replace(",", " ").split()


def duty(console: Console) -> dict[str, Any]:
    """What the dashboard and the admin pages say about separation of duties."""
    state = approvals.gate_state(console.rt)
    now = console.now()
    with console.rt.engines.read.connect() as conn:
        pending = [r for r in approval_store.list_approvals(conn, status=ApprovalStatus.PENDING)
                   if r.expires_at > now]
    return {"quorum": state.quorum, "admins": len(state.admins), "offered": state.offered,
            "single_admin": state.single_admin, "pending": len(pending)}


def ask_approval(console: Console, session: Session, ask: Ask) -> Response:
    """Record a request for a gated action, then show it on the approvals page."""
    approval_id = approvals.request(ConsoleRunner(console, session), console.rt,
                                    session.account.username, ask)
    raise Redirect(f"{PREFIX}/approvals?done=requested&request={approval_id}")


def gate(state: GateState) -> None:
    """Refuse a gated action the page does not offer (fewer admins than the quorum): a
    crafted POST gets the same answer as the missing form, before any work."""
    if not state.offered:
        raise PageError(403, QUORUM_NOTE)


def admin_page(console: Console, r: APIRouter, path: str,
               render: Callable[[Request, Session], Response]) -> None:
    """``GET path``: the page ``render`` draws, for a signed-in admin only."""

    def page(request: Request) -> Response:
        return render(request, console.require(request, Role.ADMIN))

    r.add_api_route(path, page, methods=["GET"], name=f"page:{path}")


def router(console: Console, route_class: type) -> APIRouter:
    r = APIRouter(prefix=PREFIX, route_class=route_class)
    # Templates ask for it (the dashboard's standing warning); computed only when shown.
    console.env.globals["duty"] = lambda: duty(console)

    def runner(session: Session) -> ConsoleRunner:
        return ConsoleRunner(console, session)

    def ask_for(session: Session, ask: Ask) -> Response:
        return ask_approval(console, session, ask)

    # --- applications ----------------------------------------------------------------------

    def render_apps(request: Request, session: Session, *, status: int = 200,
                    error: str | None = None, form: dict[str, str] | None = None) -> Response:
        apps = admin.list_applications(console.rt.engines, console.rt.keystore)
        return console.render(request, "apps.html", status=status, session=session, apps=apps,
                              error=error, form=form or {}, algs=APP_ALGS,
                              gate=approvals.gate_state(console.rt), quorum_note=QUORUM_NOTE,
                              notice={"added": "Application registered."}.get(
                                  request.query_params.get("done", "")))

    admin_page(console, r, "/apps", render_apps)

    @r.post("/apps")
    def register(request: Request) -> Response:
        session = console.require(request, Role.ADMIN)
        form = dict(form_of(request))
        kept = {k: form.get(k, "") for k in ("name", "users", "key", "enc_key", "alg", "kid")}
        try:
            gate(approvals.gate_state(console.rt))
            reauthenticate(console, session, form.get("password", ""))
            name = form.get("name", "").strip()
            if not name or len(name) > 200:
                raise InvalidRequest("name: 1 to 200 characters")
            ask = approvals.ask_app_add(name, signing_jwk(form), _pasted_enc(form),
                                        admin.user_patterns(identities(form.get("users", ""))))
            return ask_for(session, ask)
        except PageError as error:
            return render_apps(request, session, status=error.status, error=error.message,
                               form=kept)
        except SceauError as error:
            return render_apps(request, session, status=error.status, error=error.detail,
                               form=kept)

    def found_app(app_id: str) -> dict[str, Any]:
        found = [a for a in admin.list_applications(console.rt.engines, console.rt.keystore)
                 if a["app_id"] == app_id]
        if not found:
            raise not_found()
        return found[0]

    def render_app(request: Request, session: Session, app_id: str, *, status: int = 200,
                   error: str | None = None) -> Response:
        notices = {"added": "Application registered.", "key_added": "Signing key added.",
                   "key_retired": "Signing key retired.", "enabled": "Application enabled.",
                   "disabled": "Application disabled.", "users": "Allowed users narrowed."}
        return console.render(request, "app.html", status=status, session=session,
                              app=found_app(app_id), error=error, algs=APP_ALGS,
                              gate=approvals.gate_state(console.rt), quorum_note=QUORUM_NOTE,
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
            lambda: admin.set_application_status(runner(session), app_id, status),
            "enabled" if enable else "disabled",
        )

    @r.post("/apps/{app_id}/users")
    def app_users(request: Request, app_id: str) -> Response:
        """Narrowing the users an app may assert runs at once; widening is a request."""
        session = console.require(request, Role.ADMIN)
        form = dict(form_of(request))

        def change() -> None:
            app = found_app(app_id)
            users = admin.user_patterns(identities(form.get("users", "")))
            if not admin.widens(app["users"], users):
                admin.set_application_users(runner(session), app_id, users)
                return
            gate(approvals.gate_state(console.rt))
            ask_for(session, approvals.ask_app_users(app_id, app["name"], users, app["users"]))

        return app_change(request, session, app_id, change, "users")

    @r.post("/apps/{app_id}/keys")
    def add_key(request: Request, app_id: str) -> Response:
        session = console.require(request, Role.ADMIN)
        form = dict(form_of(request))

        def add() -> None:
            gate(approvals.gate_state(console.rt))
            reauthenticate(console, session, form.get("password", ""))
            app = found_app(app_id)
            ask_for(session, approvals.ask_app_key_add(app_id, app["name"], signing_jwk(form)))

        return app_change(request, session, app_id, add, "key_added")

    @r.post("/apps/{app_id}/keys/retire")
    def retire_key(request: Request, app_id: str) -> Response:
        session = console.require(request, Role.ADMIN)
        kid = form_of(request).get("kid", "")
        return app_change(
            request, session, app_id,
            lambda: admin.retire_app_key(runner(session), app_id, kid),
            "key_retired",
        )

    # --- accounts ---------------------------------------------------------------------------

    def render_accounts(request: Request, session: Session, *, status: int = 200,
                        error: str | None = None, issued: tuple[str, str] | None = None,
                        notice: str | None = None) -> Response:
        with console.rt.engines.read.connect() as conn:
            rows = accounts.list_accounts(conn)
        listed = [(row, admin.row_verifies(console.rt.keystore, row)) for row in rows]
        state = approvals.gate_state(console.rt)
        return console.render(request, "accounts.html", status=status, session=session,
                              accounts=listed, roles=[str(x) for x in Role], error=error,
                              issued=issued, gate=state, quorum_note=QUORUM_NOTE,
                              gated_roles=sorted(str(x) for x in approvals.GATED_ROLES),
                              notice=notice)

    admin_page(console, r, "/accounts", render_accounts)

    @r.post("/accounts")
    def create_account(request: Request) -> Response:
        session = console.require(request, Role.ADMIN)
        form = form_of(request)
        try:
            role = admin.account_role(form.get("role", ""))
            username = admin.account_name(form.get("username", ""))
            if role in approvals.GATED_ROLES:
                gate(approvals.gate_state(console.rt))
                return ask_for(session, approvals.ask_account_create(username, role))
            # An auditor reads metadata and the trail, never data: no approval needed.
            password = admin.create_account(runner(session), username, role)
        except PageError as error:
            return render_accounts(request, session, status=error.status, error=error.message)
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
        with console.rt.engines.read.connect() as conn:
            current = accounts.get_account(conn, username)
        if current is None:
            raise not_found()
        try:
            if action == "role":
                role = admin.account_role(form.get("role", ""))
                if role in approvals.GATED_ROLES and str(role) != current.role:
                    gate(approvals.gate_state(console.rt))
                    return ask_for(session, approvals.ask_account_role(username, role,
                                                                       current.role))
                admin.run_change(runner(session), admin.account_update_change(
                    console.rt.keystore, username, role=role))
            elif action in ("enable", "disable"):
                admin.set_account_status(runner(session), username,
                                         AccountStatus.DISABLED if action == "disable"
                                         else AccountStatus.ACTIVE)
            elif action in ("reset", "clear_totp"):
                gate(approvals.gate_state(console.rt))
                return ask_for(session, approvals.ask_account_reset(username)
                               if action == "reset" else approvals.ask_totp_clear(username))
            else:
                raise PageError(400, "Unknown account action.")
        except NotFound:
            raise not_found() from None
        except PageError as error:
            return render_accounts(request, session, status=error.status, error=error.message)
        except SceauError as error:
            return render_accounts(request, session, status=error.status, error=error.detail)
        return render_accounts(request, session, notice="Account updated.")

    # --- approvals --------------------------------------------------------------------------

    def render_approvals(request: Request, session: Session, *, status: int = 200,
                         error: str | None = None, notice: str | None = None,
                         issued: tuple[str, str] | None = None) -> Response:
        views = approvals.list_requests(console.rt, session.account.username, console.now())
        notices = {"requested": "Request recorded: it runs once another admin approves it.",
                   "rejected": "Request rejected."}
        return console.render(
            request, "approvals.html", status=status, session=session, requests=views,
            gate=approvals.gate_state(console.rt), error=error, issued=issued,
            notice=notice or notices.get(request.query_params.get("done", "")))

    @r.get("/approvals")
    def approvals_page(request: Request) -> Response:
        session = console.require(request, Role.ADMIN)
        return render_approvals(request, session)

    @r.post("/approvals/{approval_id}/approve")
    def approve(request: Request, approval_id: str) -> Response:
        session = console.require(request, Role.ADMIN)
        try:
            reauthenticate(console, session, form_of(request).get("password", ""))
            decision = approvals.approve(runner(session), console.rt,
                                         session.account.username, approval_id)
        except PageError as error:
            return render_approvals(request, session, status=error.status, error=error.message)
        except SceauError as error:
            return render_approvals(request, session, status=error.status, error=error.detail)
        console.rt.app_keys.forget()
        if not decision.done:
            notice = (f"Approval recorded ({decision.approvals} of {decision.needed}); it runs "
                      "once the others approve.")
            return render_approvals(request, session, notice=notice)
        issued = (decision.account, decision.one_time_password) \
            if decision.account and decision.one_time_password else None
        return render_approvals(request, session, issued=issued,
                                notice="Approved: the action ran.")

    @r.post("/approvals/{approval_id}/reject")
    def reject(request: Request, approval_id: str) -> Response:
        session = console.require(request, Role.ADMIN)
        try:
            approvals.reject(runner(session), console.rt, session.account.username,
                             approval_id)
        except SceauError as error:
            return render_approvals(request, session, status=error.status, error=error.detail)
        raise Redirect(f"{PREFIX}/approvals?done=rejected")

    return r
