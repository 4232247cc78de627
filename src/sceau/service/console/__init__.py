"""The admin console under ``/console/`` (server-rendered Jinja2, no inline script).

Pages work without JavaScript (plain forms, POST then redirect); ``static/console.js`` only
adds conveniences (select all). See docs/console.md for the security model.

May import: the service and its API and workspace handlers, :mod:`sceau.admin`, core, jose,
keystore, store, config, errors, vocab. Never the SDK, the CLI or the connectors.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import sqlalchemy as sa
from fastapi import APIRouter
from fastapi.routing import APIRoute

from sceau.service.console import (
    adminpages,
    auditpages,
    auth,
    keypages,
    oidc,
    protectpage,
    security,
    workspacepages,
)
from sceau.service.console.web import Console, ConsoleRoute, PageError
from sceau.store import accounts
from sceau.store.signin import purge_throttle

if TYPE_CHECKING:
    from fastapi import FastAPI

    from sceau.service.runtime import Runtime

__all__ = ["Console", "mount"]


def _refuse_get_on_post_only(router: APIRouter) -> None:
    """A GET to a state-changing URL is answered 403, like any other refused change."""
    routes = [r for r in router.routes if isinstance(r, APIRoute)]
    gets = {r.path for r in routes if "GET" in (r.methods or set())}
    posts = {r.path for r in routes if "POST" in (r.methods or set())}

    def refuse() -> None:
        raise PageError(403, "Changes are made with the page's forms only.")

    for path in sorted(posts - gets):
        router.add_api_route(path[len(router.prefix):], refuse, methods=["GET"],
                             include_in_schema=False)


def mount(app: FastAPI, rt: Runtime) -> Console:
    """Attach the console's routes to ``app``; returns its state."""
    console = Console(rt)
    route_class = type("BoundConsoleRoute", (ConsoleRoute,), {"console": console})
    for module in (auth, keypages, adminpages, auditpages, protectpage, workspacepages):
        router = module.router(console, route_class)
        _refuse_get_on_post_only(router)
        app.include_router(router)
    # OpenID Connect sign-in, when configured (its settings are checked here, at start).
    login = oidc.mount_login(console)
    if login is not None:
        app.include_router(oidc.router(login, route_class))

    def purge(conn: sa.Connection, now: int) -> None:
        # Runs in the writer's periodic maintenance: expired sessions and stale counters go.
        accounts.purge_console_sessions(conn, idle_before=now - console.idle_timeout,
                                    created_before=now - console.absolute_timeout)
        purge_throttle(conn, now - security.THROTTLE_WINDOW_S)
        oidc.purge(conn, now)

    rt.writer.maintenance.append(purge)
    return console
