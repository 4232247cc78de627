"""The console's plumbing: sessions, CSRF and origin checks, headers, rendering, auditing.

Every console route is a :class:`ConsoleRoute`: it refuses cross-site state changes before
the endpoint runs, reads urlencoded forms itself (size-capped), turns the control-flow
exceptions below into pages, and puts the security headers on every answer, errors included.
Endpoints are plain functions that FastAPI runs in its thread pool, so they may block on the
store and on the writer's futures.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import os
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import sqlalchemy as sa
from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.routing import APIRoute
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.concurrency import run_in_threadpool

from sceau.core.b64 import b64u_encode
from sceau.errors import IntegrityFailure, InternalError, SceauError
from sceau.service.console import security
from sceau.service.params import rfc3339
from sceau.store import accounts
from sceau.store.writer import AuditContext, Job, JobFn, JobOutcome, Tx
from sceau.vocab import AccountStatus, Action, Role

if TYPE_CHECKING:
    from sceau.service.runtime import Runtime

log = logging.getLogger("sceau.console")

PREFIX = "/console"
CONSOLE_APP = "console"
SESSION_COOKIE = "__Host-sceau_session"
LOGIN_COOKIE = "__Host-sceau_login"
CSRF_FIELD = "csrf"
MAX_FORM_BYTES = 256 * 1024
HERE = Path(__file__).resolve().parent

CSP = (
    "default-src 'self'; script-src 'self'; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'self'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "Strict-Transport-Security": "max-age=31536000; includeSubDomains",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}


# --- control flow ------------------------------------------------------------------------------


class Redirect(Exception):
    """Answer with a 303 to ``location`` (a path under the console)."""

    def __init__(self, location: str) -> None:
        super().__init__(location)
        self.location = location


class PageError(Exception):
    """Answer with an error page: ``status`` and a message safe to show."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def not_found() -> PageError:
    # The same answer for "does not exist" and "not yours" (SPEC §6).
    return PageError(404, "Not found.")


# --- accounts and sessions -----------------------------------------------------------------------


@dataclass(frozen=True)
class Account:
    """The signed-in console account."""

    username: str
    role: Role
    must_change_password: bool
    totp_enabled: bool
    # The role must use a second factor (``console.totp_required_roles``).
    totp_required: bool = False

    @property
    def must_enrol_totp(self) -> bool:
        """Signed in, but nothing is reachable until TOTP is enrolled."""
        return self.totp_required and not self.totp_enabled

    @property
    def setting_up(self) -> bool:
        """The password change or the TOTP enrolment is still due (no navigation yet)."""
        return self.must_change_password or self.must_enrol_totp

    @property
    def sees_all(self) -> bool:
        """admin and auditor see every key and the audit trail."""
        return self.role in (Role.ADMIN, Role.AUDITOR)


@dataclass(frozen=True)
class Session:
    """A live, checked session: who, and the CSRF token of this session."""

    sid_hash: str
    csrf: str
    account: Account
    ip: str | None


@dataclass
class Console:
    """Per-application console state (no module-level singletons)."""

    rt: Runtime
    clock: Callable[[], float] = time.time
    idle_timeout: int = security.IDLE_TIMEOUT_S
    absolute_timeout: int = security.ABSOLUTE_TIMEOUT_S
    env: Environment = field(init=False)
    static: dict[str, tuple[bytes, str]] = field(init=False)

    def __post_init__(self) -> None:
        self.env = Environment(
            loader=FileSystemLoader(str(HERE / "templates")),
            autoescape=select_autoescape(default=True, default_for_string=True),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters["time"] = fmt_time
        self.env.globals["PREFIX"] = PREFIX
        types = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".svg": "image/svg+xml"}
        self.static = {}
        for path in sorted((HERE / "static").iterdir()):
            if path.suffix in types and path.name.replace(".", "").replace("-", "").isalnum():
                self.static[path.name] = (path.read_bytes(), types[path.suffix])

    def now(self) -> int:
        return int(self.clock())

    # --- rendering ------------------------------------------------------------------------

    def render(self, request: Request, template: str, *, status: int = 200,
               session: Session | None = None, **values: Any) -> HTMLResponse:
        page = self.env.get_template(template).render(
            session=session,
            account=session.account if session else None,
            csrf=session.csrf if session else None,
            path=request.url.path,
            **values,
        )
        return HTMLResponse(page, status_code=status)

    # --- sessions ---------------------------------------------------------------------------

    def load_session(self, request: Request) -> Session | None:
        """The live session of this request, or None (expired ones are deleted).

        The session row and its account are both verified against their seals: a row
        written with SQL alone is refused with ``integrity_failure`` and audited.
        """
        sid = request.cookies.get(SESSION_COOKIE)
        if not sid or len(sid) > 128:
            return None
        sid_hash = security.session_id_hash(sid)
        now = self.now()
        with self.rt.engines.read.connect() as conn:
            row = accounts.get_console_session(conn, sid_hash)
            account = accounts.get_account(conn, row.username) if row is not None else None
        if row is None:
            return None
        try:
            self.rt.rows.check(row)
            if account is not None:
                self.rt.rows.check(account)
        except IntegrityFailure as failure:
            self.refuse(Action.CONSOLE_SESSION, failure, user=row.username,
                        ip=client_ip(request))
            raise
        expired = security.session_expired(
            row.created_at, row.last_seen_at, now,
            idle=self.idle_timeout, absolute=self.absolute_timeout,
        )
        if expired or account is None or account.status != AccountStatus.ACTIVE:
            with self.rt.engines.write.begin() as conn:
                accounts.delete_console_session(conn, sid_hash)
            return None
        if now - row.last_seen_at >= security.TOUCH_EVERY_S:
            # Bookkeeping, not a console action: written directly, not audited.
            with self.rt.engines.write.begin() as conn:
                accounts.touch_console_session(conn, sid_hash, now)
        return Session(
            sid_hash=sid_hash,
            csrf=row.csrf,
            account=Account(
                username=account.username,
                role=Role(account.role),
                must_change_password=account.must_change_password,
                totp_enabled=account.totp_secret is not None,
                totp_required=account.role in self.totp_roles(),
            ),
            ip=client_ip(request),
        )

    def totp_roles(self) -> frozenset[str]:
        """Roles that must enrol TOTP before reaching any page (validated at load)."""
        return self.rt.config.console.totp_roles

    def require(self, request: Request, *roles: Role, allow_password_change: bool = False,
                enrolling: bool = False) -> Session:
        """The session of a signed-in account with one of ``roles`` (any when empty).

        POST requests also need this session's CSRF token in the form. An account that must
        change its password reaches nothing but the password page (and sign-out); then an
        account whose role requires a second factor reaches nothing but the TOTP enrolment
        page (``enrolling``) until it has one.
        """
        session = self.load_session(request)
        if session is None:
            if request.method == "POST":
                raise PageError(403, "Your session has ended. Sign in again.")
            raise Redirect(f"{PREFIX}/login")
        if request.method == "POST":
            given = form_of(request).get(CSRF_FIELD, "")
            if not hmac.compare_digest(given.encode(), session.csrf.encode()):
                raise PageError(403, "The form has expired. Reload the page and try again.")
        if session.account.must_change_password and not allow_password_change:
            raise Redirect(f"{PREFIX}/password")
        if session.account.must_enrol_totp and not (enrolling or allow_password_change):
            raise Redirect(f"{PREFIX}/totp")
        if roles and session.account.role not in roles:
            raise PageError(403, "Your role does not allow this page.")
        return session

    # --- audited changes --------------------------------------------------------------------

    def run(self, session: Session | None, action: Action, fn: JobFn, *,
            user: str | None = None, ip: str | None = None, key: str | None = None,
            ) -> JobOutcome:
        """Run ``fn`` in the writer as one audited console action; raises its SceauError."""
        ctx = AuditContext(
            action=action,
            app=CONSOLE_APP,
            user=session.account.username if session else user,
            ip=session.ip if session else ip,
            req=None,
            key=key,
        )
        outcome: JobOutcome = self.rt.writer.submit(Job(fn=fn, ctx=ctx)).result()
        return outcome

    def refuse(self, action: Action, error: SceauError, *, user: str | None,
               ip: str | None) -> None:
        """Write the audit record of a refusal decided outside a change (fail closed)."""

        def refused(_tx: Tx) -> None:
            raise error

        with contextlib.suppress(SceauError):
            self.run(None, action, refused, user=user, ip=ip)


def client_ip(request: Request) -> str | None:
    return request.client.host if request.client else None


def new_token() -> str:
    return b64u_encode(os.urandom(32))


def fmt_time(value: int | str | None) -> str:
    """RFC 3339 for NumericDates; strings pass through; None shows as a dash."""
    if value is None:
        return "—"
    if isinstance(value, int):
        return rfc3339(value) or "—"
    return value


def set_cookie(response: Response, name: str, value: str, *, max_age: int | None) -> None:
    response.set_cookie(name, value, max_age=max_age, path="/", secure=True, httponly=True,
                        samesite="strict")


def clear_cookie(response: Response, name: str) -> None:
    response.delete_cookie(name, path="/", secure=True, httponly=True, samesite="strict")


# --- forms and origin checks ---------------------------------------------------------------------


def form_of(request: Request) -> Mapping[str, str]:
    form: Mapping[str, str] = getattr(request.state, "form", {})
    return form


def form_list(request: Request, name: str) -> list[str]:
    pairs: list[tuple[str, str]] = getattr(request.state, "form_pairs", [])
    return [v for k, v in pairs if k == name]


def _same_origin(request: Request) -> bool:
    """Browser hints first: a cross-site or unknown-origin POST never reaches an endpoint.

    ``Referrer-Policy: no-referrer`` makes browsers send ``Origin: null`` on our own form
    posts (Fetch standard), so ``null`` is accepted only beside ``Sec-Fetch-Site:
    same-origin``, a header no page script can set; a sandboxed frame or a foreign page
    with the same policy says ``cross-site`` there. The CSRF token is checked in any case.
    """
    site = request.headers.get("sec-fetch-site")
    if site is not None and site != "same-origin":
        return False
    origin = request.headers.get("origin")
    if origin == "null":
        return site == "same-origin"
    if origin is not None:
        host = request.headers.get("host", "")
        parts = urlsplit(origin)
        if parts.scheme != "https" or parts.netloc.lower() != host.lower():
            return False
    return True


async def _read_form(request: Request) -> tuple[dict[str, str], list[tuple[str, str]]]:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/x-www-form-urlencoded":
        raise PageError(415, "Forms only.")
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_FORM_BYTES):
        raise PageError(413, "The form is too large.")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise PageError(413, "The form is too large.")
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False,
                          max_num_fields=5000)
    except (UnicodeDecodeError, ValueError):
        raise PageError(400, "Malformed form.") from None
    return dict(pairs), pairs


class ConsoleRoute(APIRoute):
    """A console route: origin/CSRF pre-checks, form parsing, error pages, headers."""

    console: Console | None = None

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        original = super().get_route_handler()
        console = self.console
        if console is None:
            raise InternalError("a console route needs the mounted console")

        async def handler(request: Request) -> Response:
            try:
                if request.method == "POST":
                    if not _same_origin(request):
                        raise PageError(403, "Cross-site requests are refused.")
                    request.state.form, request.state.form_pairs = await _read_form(request)
                response = await original(request)
            except Redirect as redirect:
                response = RedirectResponse(redirect.location, status_code=303)
            except PageError as error:
                response = await run_in_threadpool(_error_page, console, request, error)
            except SceauError as error:
                # Refusals not handled by the page itself; 5xx details stay in the log.
                log.warning("console: %s on %s", error.code, request.url.path)
                shown = error.detail if error.status < 500 else "The service cannot do this now."
                response = await run_in_threadpool(
                    _error_page, console, request, PageError(error.status, shown))
            for name, value in SECURITY_HEADERS.items():
                response.headers[name] = value
            response.headers.setdefault("Cache-Control", "no-store")
            return response

        return handler


def _error_page(console: Console, request: Request, error: PageError) -> Response:
    session = None
    try:
        session = console.load_session(request)
    except (sa.exc.SQLAlchemyError, SceauError):
        log.warning("console: could not load the session for an error page")
    return console.render(request, "error.html", status=error.status, session=session,
                          message=error.message)


def query_string(values: Mapping[str, str | None], **changes: str | None) -> str:
    merged = {**values, **changes}
    return urlencode([(k, v) for k, v in merged.items() if v])
