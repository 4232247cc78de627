"""Sign-in, sign-out, password change and TOTP enrolment (SECURITY-CASES 35, 38, 39, 40).

The argon2 verification runs in the request's thread, never in the writer (it takes tens of
milliseconds and the writer serves every node request); the writer job then records the
outcome, moves the throttle counters, consumes the TOTP step and creates the session, all in
one audited transaction.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from sceau.core.model import normalize_identity
from sceau.errors import BadCredentials, IntegrityFailure, InvalidRequest, NotFound
from sceau.service.accounts import hash_password, verify_password
from sceau.service.console import security
from sceau.service.console.security import ThrottleScope
from sceau.service.console.web import (
    LOGIN_COOKIE,
    PREFIX,
    SESSION_COOKIE,
    Console,
    PageError,
    Redirect,
    Session,
    clear_cookie,
    client_ip,
    form_of,
    new_token,
    set_cookie,
)
from sceau.store import accounts
from sceau.store.accounts import AUTH_PASSWORD, AccountRow, ConsoleSessionRow
from sceau.store.signin import (
    charge_throttle,
    clear_throttle,
    refund_throttle,
    set_totp_last_step,
    totp_last_step,
)
from sceau.store.writer import Tx
from sceau.vocab import AccountStatus, Action, Outcome

GENERIC_FAILURE = "Wrong account name, password or code."
THROTTLED = "Too many failed sign-ins. Wait a few minutes and try again."
ISSUER = "Sceau"


@dataclass(frozen=True)
class LoginOutcome:
    session_id: str | None
    throttled: bool = False


def _throttle_keys(username: str, ip: str | None) -> list[tuple[ThrottleScope, str]]:
    keys = [(ThrottleScope.ACCOUNT, username)]
    if ip:
        keys.append((ThrottleScope.ADDRESS, ip))
    return keys


def attempt_login(console: Console, username: str, password: str, code: str,
                  ip: str | None) -> LoginOutcome:
    """Check credentials and open a session; the same refusal for every failure cause.

    The throttle is decided inside the writer's transaction: each attempt is first counted
    with one atomic increment per counter (account, address) and judged on the count it got,
    so concurrent attempts can never see a stale count and overshoot the limit
    (SECURITY-CASES 39); a success takes its count back (and clears the account's counter).
    """
    username = normalize_identity(username.strip())[:320]
    with console.rt.engines.read.connect() as conn:
        account = accounts.get_account(conn, username)
    tampered = account is not None and not _seal_holds(console, account)
    # Only password accounts sign in here; an OpenID Connect account proves its identity at
    # its provider, never with a password an admin could have set.
    usable = (account is not None and account.status == AccountStatus.ACTIVE
              and account.auth == AUTH_PASSWORD and not tampered)
    # Always one argon2 verification, throttled or not, known account or not: timing says
    # nothing about which check failed.
    try:
        verify_password(account.password_hash if usable and account else None,
                        password[: security.MAX_PASSWORD])
        password_ok = True
    except BadCredentials:
        password_ok = False
    totp_step: int | None = None
    if account is not None and account.totp_secret:
        match = security.totp_match(account.totp_secret, code, console.clock())
        totp_step = match.step if match else None
    known = account is not None
    session_id = new_token()

    def record(tx: Tx) -> LoginOutcome:
        throttled = False
        for scope, subject in _throttle_keys(username, ip):
            failures, start = charge_throttle(tx.conn, str(scope), subject, tx.now,
                                                   security.THROTTLE_WINDOW_S)
            # Judged on the count before this attempt, exactly as is_throttled reads it.
            throttled = security.is_throttled((failures - 1, start), tx.now) or throttled
        second_ok = True
        if account is not None and account.totp_secret:
            last = totp_last_step(tx.conn, username)
            second_ok = totp_step is not None and (last is None or totp_step > last)
        granted = not throttled and usable and password_ok and second_ok
        if granted and account is not None:
            if totp_step is not None:
                set_totp_last_step(tx.conn, username, totp_step)
            clear_throttle(tx.conn, str(ThrottleScope.ACCOUNT), username)
            if ip:
                refund_throttle(tx.conn, str(ThrottleScope.ADDRESS), ip)
            open_session(console, tx, session_id, username, ip)
            tx.item_record(outcome=Outcome.GRANTED, key=None,
                           details={"second_factor": account.totp_secret is not None})
            return LoginOutcome(session_id)
        # A row written behind the service's back is refused and audited as such; the
        # visitor gets the same answer as for any other failure.
        reason = ("throttled" if throttled else
                  IntegrityFailure.code if tampered else "bad_credentials")
        tx.item_record(outcome=Outcome.DENIED, key=None, reason=reason,
                       details={"unknown_account": not known})
        return LoginOutcome(None, throttled=throttled)

    # The record names the account only when it exists: a password typed into the name field
    # must not land in the audit trail.
    outcome = console.run(None, Action.CONSOLE_LOGIN, record,
                          user=username if known else None, ip=ip)
    result: LoginOutcome = outcome.value
    return result


def _seal_holds(console: Console, account: AccountRow) -> bool:
    try:
        console.rt.rows.check(account)
    except IntegrityFailure:
        return False
    return True


def open_session(console: Console, tx: Tx, session_id: str, username: str,
                 ip: str | None) -> None:
    """Store a new session, sealed (a session row written with SQL alone opens nothing)."""
    accounts.insert_console_session(tx.conn, console.rt.keystore.seal_row(ConsoleSessionRow(
        sid_hash=security.session_id_hash(session_id), username=username,
        csrf=new_token(), created_at=tx.now, last_seen_at=tx.now, ip=ip)))


def checked_account(console: Console, tx: Tx, username: str) -> AccountRow:
    """The account row inside a change, its seal verified (``not_found``, ``integrity``)."""
    account = accounts.get_account(tx.conn, username)
    if account is None:
        raise NotFound("no such account")
    return console.rt.rows.check(account)


def save_changed(console: Console, tx: Tx, before: AccountRow, **changes: Any) -> AccountRow:
    """Write ``before`` with ``changes``, the revision bumped and sealed anew."""
    after = console.rt.keystore.seal_row(dataclasses.replace(
        before, revision=before.revision + 1, updated_at=tx.now, **changes))
    accounts.save_account(tx.conn, before, after)
    return after


def _end_session(tx: Tx, sid_hash: str) -> None:
    accounts.delete_console_session(tx.conn, sid_hash)


def change_password(console: Console, session: Session, current: str, new: str,
                    confirm: str) -> str:
    """Set a new password, end every session of the account, open a fresh one."""
    username = session.account.username
    try:
        _confirm_password(console, username, current)
    except BadCredentials:
        raise PageError(400, "The current password is wrong.") from None
    if new != confirm:
        raise PageError(400, "The two new passwords differ.")
    try:
        security.check_new_password(new, username=username, current=current)
    except security.PasswordRefused as refused:
        raise PageError(400, f"New password refused: {refused}.") from None
    hashed = hash_password(new)
    session_id = new_token()

    def change(tx: Tx) -> None:
        save_changed(console, tx, checked_account(console, tx, username),
                     password_hash=hashed, must_change_password=False)
        ended = accounts.delete_console_sessions_of(tx.conn, username)
        open_session(console, tx, session_id, username, session.ip)
        tx.ctx.details = {"sessions_ended": ended}

    console.run(session, Action.CONSOLE_PASSWORD_CHANGE, change)
    return session_id


def reauthenticate(console: Console, session: Session, password: str) -> None:
    """Ask for the password again before a grave action (destroy, app key registration)."""
    try:
        _confirm_password(console, session.account.username, password)
    except BadCredentials:
        raise PageError(403, "Re-authentication failed: wrong password.") from None


def _confirm_password(console: Console, username: str, password: str) -> None:
    """Raise :class:`BadCredentials` unless ``password`` is the signed-in account's own
    (its row verifying: a hash written behind the service's back proves nothing)."""
    with console.rt.engines.read.connect() as conn:
        account = accounts.get_account(conn, username)
    if account is None or not _seal_holds(console, account):
        raise BadCredentials("no usable account")
    verify_password(account.password_hash, password[: security.MAX_PASSWORD])


def router(console: Console, route_class: type) -> APIRouter:
    r = APIRouter(prefix=PREFIX, route_class=route_class)

    @r.get("/login")
    def login_page(request: Request) -> Response:
        if console.load_session(request) is not None:
            raise Redirect(f"{PREFIX}/")
        token = new_token()
        response = console.render(request, "login.html", login_token=token)
        set_cookie(response, LOGIN_COOKIE, token, max_age=3600)
        return response

    @r.post("/login")
    def login(request: Request) -> Response:
        form = form_of(request)
        # Login CSRF: a double-submit token bound to a cookie only this origin can set.
        cookie = request.cookies.get(LOGIN_COOKIE, "")
        if not cookie or form.get("login_token", "") != cookie:
            raise PageError(403, "The sign-in form has expired. Reload the page.")
        outcome = attempt_login(console, form.get("username", ""), form.get("password", ""),
                                form.get("code", ""), client_ip(request))
        if outcome.session_id is None:
            token = new_token()
            response = console.render(
                request, "login.html", status=429 if outcome.throttled else 401,
                login_token=token, error=THROTTLED if outcome.throttled else GENERIC_FAILURE,
                username=form.get("username", ""),
            )
            set_cookie(response, LOGIN_COOKIE, token, max_age=3600)
            return response
        done = RedirectResponse(f"{PREFIX}/", status_code=303)
        set_cookie(done, SESSION_COOKIE, outcome.session_id, max_age=None)
        clear_cookie(done, LOGIN_COOKIE)
        return done

    @r.post("/logout")
    def logout(request: Request) -> Response:
        session = console.require(request, allow_password_change=True)
        console.run(session, Action.CONSOLE_LOGOUT, lambda tx: _end_session(tx, session.sid_hash))
        response = RedirectResponse(f"{PREFIX}/login", status_code=303)
        clear_cookie(response, SESSION_COOKIE)
        return response

    @r.get("/password")
    def password_page(request: Request) -> Response:
        session = console.require(request, allow_password_change=True)
        return console.render(request, "password.html", session=session,
                              min_length=security.MIN_PASSWORD)

    @r.post("/password")
    def password(request: Request) -> Response:
        session = console.require(request, allow_password_change=True)
        form = form_of(request)
        try:
            session_id = change_password(console, session, form.get("current", ""),
                                         form.get("new", ""), form.get("confirm", ""))
        except PageError as error:
            return console.render(request, "password.html", status=error.status,
                                  session=session, error=error.message,
                                  min_length=security.MIN_PASSWORD)
        response = RedirectResponse(f"{PREFIX}/?done=password", status_code=303)
        set_cookie(response, SESSION_COOKIE, session_id, max_age=None)
        return response

    @r.get("/totp")
    def totp_page(request: Request) -> Response:
        session = console.require(request, enrolling=True)
        secret = security.totp_secret_text(os.urandom(security.TOTP_SECRET_BYTES))
        return console.render(
            request, "totp.html", session=session, secret=secret,
            uri=security.totp_uri(secret, session.account.username, ISSUER),
        )

    @r.post("/totp")
    def totp(request: Request) -> Response:
        session = console.require(request, enrolling=True)
        form = form_of(request)
        reauthenticate(console, session, form.get("password", ""))
        username = session.account.username
        enable = form.get("action") == "enable"
        if not enable and session.account.totp_required:
            # Removing a required second factor takes two admins (a gated request).
            raise PageError(403, "Two-factor sign-in is required for your role.")
        secret = form.get("secret", "")
        match = security.totp_match(secret, form.get("code", ""), console.clock())
        if enable and match is None:
            raise PageError(400, "The code does not match this secret; check the device clock.")

        def change(tx: Tx) -> None:
            account = checked_account(console, tx, username)
            if not enable and account.role in console.totp_roles():
                raise InvalidRequest("two-factor sign-in is required for this role")
            if enable and match is not None:
                save_changed(console, tx, account, totp_secret=secret)
                set_totp_last_step(tx.conn, username, match.step)
            else:
                save_changed(console, tx, account, totp_secret=None)
            tx.ctx.details = {"account": username,
                              "second_factor": "enabled" if enable else "disabled"}

        try:
            console.run(session, Action.ACCOUNT_UPDATE, change)
        except InvalidRequest as error:
            raise PageError(400, error.detail) from None
        raise Redirect(f"{PREFIX}/?done=totp")

    return r
