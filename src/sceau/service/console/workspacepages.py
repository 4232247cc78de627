"""Google Workspace CSE and Microsoft DKE administration (role ``admin``): the same functions
as ``sceau cse admins ...`` and ``sceau dke key ...``.

Who can do what here, and why:

- granting ``cse_admin`` opens every Drive/Gmail resource's key to its holder through the
  privileged endpoints, so it is gated (``Gated.CSE_ADMIN_ADD``): a request that other admins
  approve, not offered below the quorum (the host operator runs ``sceau cse admins add``);
- withdrawing ``cse_admin`` closes a path and runs at once;
- a DKE key made here is new: nothing is encrypted under it yet, and its record's owner is
  a name no bearer token carries, so creating, rotating, enabling or disabling one opens no
  existing document to anyone. Its allowed principals are authorizations of its Sceau key,
  changed on the key's page (where adding one through manage-any is gated as for any key);
- retiring a version destroys its private key (what it protected is shredded): it asks for
  the admin's password, as destroying a key does.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from sceau.errors import SceauError
from sceau.service import approvals
from sceau.service.console.adminpages import (
    QUORUM_NOTE,
    ConsoleRunner,
    admin_page,
    ask_approval,
    gate,
    identities,
)
from sceau.service.console.auth import reauthenticate
from sceau.service.console.web import PREFIX, Console, PageError, Redirect, Session, form_of
from sceau.service.workspace import admin as ws_admin
from sceau.vocab import Role

NOTICES = {
    "cse_admin_removed": "cse_admin withdrawn.",
    "dke_created": "DKE key created.",
    "dke_enabled": "DKE key enabled.",
    "dke_disabled": "DKE key disabled.",
    "dke_rotated": "DKE key rotated: a new version is published.",
    "dke_retired": "DKE key version retired: its private key is destroyed.",
}


def router(console: Console, route_class: type) -> APIRouter:
    r = APIRouter(prefix=PREFIX, route_class=route_class)
    rt = console.rt

    def render(request: Request, session: Session, *, status: int = 200,
               error: str | None = None, form: dict[str, str] | None = None) -> Response:
        return console.render(
            request, "workspace.html", status=status, session=session, error=error,
            form=form or {}, gate=approvals.gate_state(rt), quorum_note=QUORUM_NOTE,
            cse_admins=ws_admin.list_cse_admins(rt.engines, rt.keystore),
            dke_keys=ws_admin.list_dke_keys(rt.engines, rt.keystore),
            notice=NOTICES.get(request.query_params.get("done", "")))

    def change(request: Request, session: Session, fn: Any, done: str,
               form: dict[str, str] | None = None) -> Response:
        """Run ``fn``; a refusal shows the page again with the reason (nothing changed)."""
        try:
            fn()
        except PageError as error:
            return render(request, session, status=error.status, error=error.message, form=form)
        except SceauError as error:
            return render(request, session, status=error.status, error=error.detail, form=form)
        raise Redirect(f"{PREFIX}/workspace?done={done}")

    admin_page(console, r, "/workspace", render)

    @r.post("/workspace/cse-admins")
    def cse_admin_add(request: Request) -> Response:
        """A request for other admins to approve; refused below the quorum."""
        session = console.require(request, Role.ADMIN)
        form = dict(form_of(request))

        def ask() -> None:
            gate(approvals.gate_state(rt))
            reauthenticate(console, session, form.get("password", ""))
            ask_approval(console, session, approvals.ask_cse_admin_add(form.get("email", "")))

        return change(request, session, ask, "", {"email": form.get("email", "")})

    @r.post("/workspace/cse-admins/remove")
    def cse_admin_remove(request: Request) -> Response:
        session = console.require(request, Role.ADMIN)
        email = form_of(request).get("email", "")
        return change(request, session, lambda: ws_admin.remove_cse_admin(
            ConsoleRunner(console, session), email), "cse_admin_removed")

    @r.post("/workspace/dke")
    def dke_create(request: Request) -> Response:
        session = console.require(request, Role.ADMIN)
        form = dict(form_of(request))
        kept = {k: form.get(k, "") for k in ("name", "allow")}
        return change(request, session, lambda: ws_admin.create_dke_key(
            ConsoleRunner(console, session), form.get("name", "").strip(),
            identities(form.get("allow", ""))), "dke_created", kept)

    @r.post("/workspace/dke/{name}/status")
    def dke_status(request: Request, name: str) -> Response:
        session = console.require(request, Role.ADMIN)
        enable = form_of(request).get("action") == "enable"
        return change(request, session, lambda: ws_admin.set_dke_key_enabled(
            ConsoleRunner(console, session), name, enable),
            "dke_enabled" if enable else "dke_disabled")

    @r.post("/workspace/dke/{name}/rotate")
    def dke_rotate(request: Request, name: str) -> Response:
        session = console.require(request, Role.ADMIN)
        return change(request, session, lambda: ws_admin.rotate_dke_key(
            ConsoleRunner(console, session), name), "dke_rotated")

    @r.post("/workspace/dke/{name}/retire")
    def dke_retire(request: Request, name: str) -> Response:
        """Destroys the version's private key: the admin's password first."""
        session = console.require(request, Role.ADMIN)
        form = dict(form_of(request))

        def retire() -> None:
            reauthenticate(console, session, form.get("password", ""))
            ws_admin.retire_dke_key(ConsoleRunner(console, session), name,
                                    form.get("keyid", ""))

        return change(request, session, retire, "dke_retired")

    return r
